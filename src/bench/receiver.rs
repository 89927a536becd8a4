//! A receiver process: holds its share of the run's connections, checks every message against
//! the plan, and measures latency. It talks to the coordinating process over stdio, one JSON
//! object per line: `ready` once connected, `progress` twice a second, `result` at the end;
//! it reads one line `{"published": M}` once publishing is over.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::Poll;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::plan::Plan;
use crate::auth::{claims, TokenKeys};
use crate::deflate::Inflating;

/// Connections being opened at once by one receiver process.
const CONNECT_CONCURRENCY: usize = 128;

/// What one receiver process needs to know.
pub struct Share {
    pub plan: Plan,
    /// Global indexes of this process's connections.
    pub first: u64,
    pub count: u64,
    pub targets: Vec<SocketAddr>,
    pub source_addrs: u8,
    pub secret: String,
    pub drain: Duration,
    /// Publishing connections of the coordinator (the `p` of each payload).
    pub publishers: usize,
    /// Percentage of the connections dropped and resumed every second.
    pub churn: f64,
    /// Tokens expire: connection g's lives this + (g mod this) seconds, and is refreshed.
    pub token_ttl: Option<u64>,
    /// The servers speak Pusher's protocol: connect to `/app/{this key}`.
    pub pusher_key: Option<String>,
    /// Offer permessage-deflate (`--compression`).
    pub compression: bool,
    /// Ask for deltas (`--delta`) and rebuild each message.
    pub delta: bool,
    /// A connection the server closes opens again after a random delay up to this.
    pub reconnect_within: Option<Duration>,
}

/// Lines a receiver prints.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Report {
    Ready { connected: u64, errors: u64 },
    Progress { connected: u64, received: u64 },
    Result(Outcome),
}

/// What a receiver process saw, mergeable across processes.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Outcome {
    pub connected: u64,
    pub connect_errors: u64,
    /// Connections the server closed or lost during the run.
    pub disconnects: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Connections dropped by `--churn` and opened again, resuming.
    pub reconnects: u64,
    /// Tokens refreshed after an `expiring` (`--token-ttl`).
    #[serde(default)]
    pub refreshes: u64,
    /// Resumes the server answered with `recovered: false` (its history could not fill the gap).
    pub unrecovered: u64,
    /// How long each resume took, from dropping the connection to the server's answer
    /// (the upgrade for direct messages, `subscribed` for a channel), in microseconds.
    #[serde(default)]
    pub resume_us: Vec<u64>,
    /// Reconnects after a server's close, per (target, wall-clock second): how fast a restart
    /// sends its connections to the others.
    #[serde(default)]
    pub arrivals: Vec<((usize, u64), u64)>,
    /// Wall-clock time of the last message received (ns since the epoch).
    pub last_received_ns: u64,
    pub cpu_seconds: f64,
    /// Latency histogram in microseconds, as (value, count) pairs.
    pub latency_us: Vec<(u64, u64)>,
    /// Bytes read from the sockets once every connection was open (messages, pings, their
    /// WebSocket headers; compressed where deflate was agreed).
    #[serde(default)]
    pub wire_bytes: u64,
}

/// What one connection received. Each publishing connection of the coordinator sends one
/// request at a time, so its messages must arrive in increasing order: a repeat of the last
/// one is a duplicate, an older one is out of order, and the newer ones are counted as unique.
#[derive(Default, Clone)]
struct ConnState {
    connected: bool,
    /// Last sequence number seen from each publisher.
    last: Box<[Option<u64>]>,
    unique: u64,
    duplicated: u64,
    reordered: u64,
    /// Where this connection stands in its topic (offset, epoch), to resume from.
    resume: Option<(u64, String)>,
    /// With deltas: the text of the last message, the base of the next delta.
    base: Option<String>,
}

struct Shared {
    conns: RefCell<Vec<ConnState>>,
    latency: RefCell<Histogram<u64>>,
    received: Cell<u64>,
    connected: Cell<u64>,
    errors: Cell<u64>,
    disconnects: Cell<u64>,
    last_received_ns: Cell<u64>,
    reconnects: Cell<u64>,
    refreshes: Cell<u64>,
    unrecovered: Cell<u64>,
    resume_us: RefCell<Vec<u64>>,
    arrivals: RefCell<std::collections::HashMap<(usize, u64), u64>>,
    /// One per connection: notified to drop and resume it (`--churn`).
    churn: Vec<Rc<tokio::sync::Notify>>,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow, rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    message: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    delta: bool,
    offset: Option<u64>,
    epoch: Option<String>,
    recovered: Option<bool>,
}

#[derive(Deserialize)]
struct Payload {
    seq: u64,
    t: u64,
    p: usize,
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn emit(report: &Report) {
    println!(
        "{}",
        serde_json::to_string(report).expect("reports serialize")
    );
}

pub fn run(share: Share) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, receive(share))
}

async fn receive(share: Share) -> anyhow::Result<()> {
    let keys = TokenKeys::new(&share.secret)?;
    let shared = Rc::new(Shared {
        conns: RefCell::new(vec![
            ConnState {
                last: vec![None; share.publishers].into(),
                ..ConnState::default()
            };
            share.count as usize
        ]),
        latency: RefCell::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        received: Cell::new(0),
        connected: Cell::new(0),
        errors: Cell::new(0),
        disconnects: Cell::new(0),
        last_received_ns: Cell::new(0),
        reconnects: Cell::new(0),
        refreshes: Cell::new(0),
        unrecovered: Cell::new(0),
        resume_us: RefCell::default(),
        arrivals: RefCell::default(),
        churn: (0..share.count).map(|_| Rc::default()).collect(),
    });
    let progress = {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                emit(&Report::Progress {
                    connected: shared.connected.get(),
                    received: shared.received.get(),
                });
            }
        })
    };
    let share = Rc::new(share);
    let keys = Rc::new(keys);
    futures_util::stream::iter(0..share.count)
        .for_each_concurrent(CONNECT_CONCURRENCY, |i| {
            let (shared, share, keys) = (shared.clone(), share.clone(), keys.clone());
            async move {
                match open(&share, share.first + i, &keys, None, 0).await {
                    Ok((ws, reply)) => {
                        let mut conns = shared.conns.borrow_mut();
                        conns[i as usize].connected = true;
                        conns[i as usize].resume = reply.and_then(|r| position(&r));
                        drop(conns);
                        shared.connected.set(shared.connected.get() + 1);
                        tokio::task::spawn_local(read(ws, i as usize, shared, share, keys));
                    }
                    Err(e) => {
                        if shared.errors.get() == 0 {
                            eprintln!("bench: connect failed: {e:#}");
                        }
                        shared.errors.set(shared.errors.get() + 1);
                    }
                }
            }
        })
        .await;
    emit(&Report::Ready {
        connected: shared.connected.get(),
        errors: shared.errors.get(),
    });
    let wire_at_ready = WIRE_BYTES.load(Relaxed);
    let churning = (share.churn > 0.0).then(|| {
        let shared = shared.clone();
        let per_second = ((share.count as f64 * share.churn / 100.0).round() as usize).max(1);
        tokio::task::spawn_local(async move {
            let mut next = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for _ in 0..per_second {
                    shared.churn[next % shared.churn.len()].notify_one();
                    next += 1;
                }
            }
        })
    });

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let line = stdin
        .next_line()
        .await?
        .context("coordinator closed stdin")?;
    #[derive(Deserialize)]
    struct Published {
        published: u64,
    }
    let published = serde_json::from_str::<Published>(&line)?.published;
    let expected: u64 = shared
        .conns
        .borrow()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.connected)
        .map(|(i, _)| share.plan.expected(share.first + i as u64, published))
        .sum();
    // Publishing is over: churning stops, so the last resumes can catch up.
    if let Some(churning) = churning {
        churning.abort();
    }
    let deadline = Instant::now() + share.drain;
    while shared.received.get() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.abort();

    let mut outcome = Outcome {
        connected: shared.connected.get(),
        connect_errors: shared.errors.get(),
        disconnects: shared.disconnects.get(),
        reconnects: shared.reconnects.get(),
        refreshes: shared.refreshes.get(),
        unrecovered: shared.unrecovered.get(),
        resume_us: shared.resume_us.take(),
        arrivals: shared.arrivals.take().into_iter().collect(),
        expected,
        received: shared.received.get(),
        last_received_ns: shared.last_received_ns.get(),
        cpu_seconds: super::cpu_seconds(std::process::id()).unwrap_or(0.0),
        latency_us: shared
            .latency
            .borrow()
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
        wire_bytes: WIRE_BYTES.load(Relaxed) - wire_at_ready,
        ..Outcome::default()
    };
    for (i, c) in shared.conns.borrow().iter().enumerate() {
        if !c.connected {
            continue;
        }
        let want = share.plan.expected(share.first + i as u64, published);
        outcome.lost += want.saturating_sub(c.unique);
        outcome.duplicated += c.duplicated;
        outcome.reordered += c.reordered;
    }
    emit(&Report::Result(outcome));
    Ok(())
}

type Ws = tokio_tungstenite::WebSocketStream<BenchIo>;

/// Bytes read from this process's sockets.
static WIRE_BYTES: AtomicU64 = AtomicU64::new(0);

/// A connection's socket as tungstenite reads it: every byte counted, and with deflate agreed,
/// the server's compressed messages made plain first.
struct BenchIo {
    stream: TcpStream,
    inflating: Option<Box<Inflating>>,
}

impl AsyncRead for BenchIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(inflating) = this.inflating.as_mut() else {
            let before = buf.filled().len();
            let read = Pin::new(&mut this.stream).poll_read(cx, buf);
            WIRE_BYTES.fetch_add((buf.filled().len() - before) as u64, Relaxed);
            return read;
        };
        let seen = |n: usize| {
            WIRE_BYTES.fetch_add(n as u64, Relaxed);
        };
        inflating.poll_read(&mut this.stream, usize::MAX / 2, cx, buf, seen)
    }
}

impl AsyncWrite for BenchIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Opens connection `g` (on target `(g + hop) % T`, from source address `127.0.0.(1 + g % N)`),
/// and subscribes it to its channel when the scenario has one; with `resume`, from there.
/// `hop` counts its reconnects, so a churned connection resumes on the next target: with a
/// fleet, on another machine. Returns the `subscribed` reply, if any.
async fn open(
    share: &Share,
    g: u64,
    keys: &TokenKeys,
    resume: Option<&(u64, String)>,
    hop: u64,
) -> anyhow::Result<(Ws, Option<String>)> {
    let target = share.targets[((g + hop) % share.targets.len() as u64) as usize];
    let channels = share.plan.channel_of(g).map(|c| vec![c]);
    let token = token(share, g, keys, false)?;
    let socket = TcpSocket::new_v4()?;
    if share.source_addrs > 1 && target.ip().is_loopback() {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (g % u64::from(share.source_addrs)) as u8);
        // Pick the port at connect, where only the whole 4-tuple must be unique: bind(2) would
        // search a port free for every destination, which at ~900,000 sockets took all the
        // CPU in the kernel's bind hash.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    }
    let stream = socket.connect(target).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    let stream = BenchIo {
        stream,
        inflating: None,
    };
    if let Some(key) = &share.pusher_key {
        return open_pusher(stream, target, key, channels.and_then(|mut c| c.pop())).await;
    }
    let direct_resume = match (resume, channels.is_some()) {
        (Some((offset, epoch)), false) => format!("&since={offset}&epoch={epoch}"),
        _ => String::new(),
    };
    let mut request =
        format!("ws://{target}/ws?token={token}{direct_resume}").into_client_request()?;
    if share.compression {
        let offer = HeaderValue::from_static("permessage-deflate; client_max_window_bits");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Extensions", offer);
    }
    // Small buffers: the bench holds up to 15,000 connections per process.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .context("WebSocket upgrade")?;
    let agreed = response
        .headers()
        .get("Sec-WebSocket-Extensions")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("permessage-deflate"));
    if agreed {
        ws.get_mut().inflating = Some(Box::new(Inflating::for_client()));
    }
    let mut subscribed = None;
    if let Some(channel) = channels.and_then(|mut c| c.pop()) {
        let mut subscribe = serde_json::json!({"type": "subscribe", "channel": channel});
        if share.delta {
            subscribe["delta"] = serde_json::json!("fossil");
        }
        if let Some((offset, epoch)) = resume {
            subscribe["since"] = serde_json::json!({"offset": offset, "epoch": epoch});
        }
        ws.send(Message::text(subscribe.to_string())).await?;
        loop {
            let reply = ws.next().await.context("closed before subscribed")??;
            if let Message::Text(t) = reply {
                // With history on, `connected` comes first.
                if t.as_str().starts_with(r#"{"type":"connected""#) {
                    continue;
                }
                anyhow::ensure!(
                    t.as_str().contains("\"subscribed\""),
                    "subscribe refused: {t}"
                );
                subscribed = Some(t.to_string());
                break;
            }
        }
    }
    Ok((ws, subscribed))
}

/// [`open`] for a Pusher-protocol server: `pusher:connection_established`, then the channel's
/// `pusher:subscribe` (public: no signature) and its `subscription_succeeded`.
async fn open_pusher(
    stream: BenchIo,
    target: SocketAddr,
    key: &str,
    channel: Option<String>,
) -> anyhow::Result<(Ws, Option<String>)> {
    let url = format!("ws://{target}/app/{key}?protocol=7&client=fanfare-bench&version=1.0");
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        url.into_client_request()?,
        stream,
        Some(config),
    )
    .await
    .context("WebSocket upgrade")?;
    wait_for(&mut ws, "pusher:connection_established").await?;
    if let Some(channel) = channel {
        let subscribe =
            serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}});
        ws.send(Message::text(subscribe.to_string())).await?;
        wait_for(&mut ws, "subscription_succeeded").await?;
    }
    Ok((ws, None))
}

/// Reads until a frame naming `event`; a `pusher:error` before it is a refusal.
async fn wait_for(ws: &mut Ws, event: &str) -> anyhow::Result<()> {
    loop {
        let reply = ws.next().await.context("closed before Pusher answered")??;
        if let Message::Text(t) = reply {
            anyhow::ensure!(!t.as_str().contains("pusher:error"), "refused: {t}");
            if t.as_str().contains(event) {
                return Ok(());
            }
        }
    }
}

/// A Pusher event of the bench (`bench`): its `data` is the payload's JSON text.
fn pusher_payload(text: &str) -> Option<Payload> {
    #[derive(Deserialize)]
    struct Event<'a> {
        event: &'a str,
        data: String,
    }
    let e: Event = serde_json::from_str(text).ok()?;
    (e.event == "bench").then(|| serde_json::from_str(&e.data).ok())?
}

/// Connection `g`'s token: it may subscribe to its channel, and with `--token-ttl` it expires,
/// the first at TTL + (g mod TTL) seconds (so expiries spread over TTL seconds), a refreshed one
/// a TTL later still (so a refresh always moves `exp`).
fn token(share: &Share, g: u64, keys: &TokenKeys, refresh: bool) -> anyhow::Result<String> {
    let channels = share.plan.channel_of(g).map(|c| vec![c]);
    let ttl = share
        .token_ttl
        .map(|t| t + g % t.max(1) + if refresh { t } else { 0 });
    Ok(keys.issue(&claims(&Plan::user(g), channels, ttl))?)
}

/// The (offset, epoch) of a `subscribed` or `connected` frame with a position.
fn position(text: &str) -> Option<(u64, String)> {
    let frame: Incoming = serde_json::from_str(text).ok()?;
    Some((frame.offset?, frame.epoch?))
}

async fn read(mut ws: Ws, i: usize, shared: Rc<Shared>, share: Rc<Share>, keys: Rc<TokenKeys>) {
    let by_channel = share.plan.channel_of(share.first + i as u64).is_some();
    let churn = shared.churn[i].clone();
    let mut hops = 0;
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            () = churn.notified() => {
                // Drop the connection and open it again where it left off.
                let resume = shared.conns.borrow()[i].resume.clone();
                let dropped = Instant::now();
                let _ = ws.close(None).await;
                hops += 1;
                match open(&share, share.first + i as u64, &keys, resume.as_ref(), hops).await {
                    Ok((again, reply)) => {
                        ws = again;
                        shared.reconnects.set(shared.reconnects.get() + 1);
                        let took = dropped.elapsed().as_micros() as u64;
                        shared.resume_us.borrow_mut().push(took);
                        if let Some(reply) = reply {
                            note_position(&shared, i, &reply);
                        }
                    }
                    Err(e) => {
                        eprintln!("bench: reconnect failed: {e:#}");
                        break;
                    }
                }
                continue;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_)) | Err(_)) | None => match share.reconnect_within {
                Some(within) => match reopen(&share, i, &shared, &keys, within, &mut hops).await {
                    Some(again) => {
                        ws = again;
                        continue;
                    }
                    None => break,
                },
                None => break,
            },
            Some(Ok(_)) => continue,
        };
        let p = if share.pusher_key.is_some() {
            match pusher_payload(text.as_str()) {
                Some(p) => p,
                None => continue,
            }
        } else {
            let Ok(frame) = serde_json::from_str::<Incoming>(text.as_str()) else {
                continue;
            };
            match frame {
                Incoming {
                    kind: "message",
                    message: Some(raw),
                    offset,
                    delta,
                    ..
                } => {
                    let mut conns = shared.conns.borrow_mut();
                    let c = &mut conns[i];
                    if let (Some(offset), Some(resume)) = (offset, c.resume.as_mut()) {
                        resume.0 = offset;
                    }
                    let text = match delta {
                        true => rebuild(c.base.as_deref(), raw.get()),
                        false => Some(raw.get().to_string()),
                    };
                    let Some(p) = text.as_deref().and_then(|t| serde_json::from_str(t).ok()) else {
                        // Not rebuilt: it counts as lost.
                        c.base = None;
                        continue;
                    };
                    if share.delta {
                        c.base = text;
                    }
                    p
                }
                Incoming {
                    kind: "connected", ..
                } if !by_channel => {
                    note_position(&shared, i, text.as_str());
                    continue;
                }
                Incoming {
                    kind: "expiring", ..
                } => {
                    let refresh = token(&share, share.first + i as u64, &keys, true).map(|token| {
                        serde_json::json!({"type": "refresh", "token": token}).to_string()
                    });
                    if let Ok(refresh) = refresh {
                        if ws.send(Message::text(refresh)).await.is_ok() {
                            shared.refreshes.set(shared.refreshes.get() + 1);
                        }
                    }
                    continue;
                }
                _ => continue,
            }
        };
        let now = now_ns();
        shared
            .latency
            .borrow_mut()
            .saturating_record(now.saturating_sub(p.t).max(1000) / 1000);
        shared.received.set(shared.received.get() + 1);
        shared.last_received_ns.set(now);
        let mut conns = shared.conns.borrow_mut();
        let c = &mut conns[i];
        let Some(last) = c.last.get_mut(p.p) else {
            continue;
        };
        match *last {
            Some(l) if p.seq == l => c.duplicated += 1,
            Some(l) if p.seq < l => c.reordered += 1,
            _ => {
                c.unique += 1;
                *last = Some(p.seq);
            }
        }
    }
    shared.disconnects.set(shared.disconnects.get() + 1);
}

/// A delta message's text: `delta` (a JSON string) applied to `base`.
fn rebuild(base: Option<&str>, delta: &str) -> Option<String> {
    let delta: String = serde_json::from_str(delta).ok()?;
    let text = fossil_delta::apply(base?, delta).ok()?;
    String::from_utf8(text).ok()
}

/// After the server closed connection `i`: waits a random moment within `within`, then opens
/// it again on the next target (a restarting one refuses: the one after), resuming; `None`
/// if no target takes it within a few tries.
async fn reopen(
    share: &Share,
    i: usize,
    shared: &Shared,
    keys: &TokenKeys,
    within: Duration,
    hops: &mut u64,
) -> Option<Ws> {
    shared.disconnects.set(shared.disconnects.get() + 1);
    tokio::time::sleep(within.mul_f64(rand::random::<f64>())).await;
    let dropped = Instant::now();
    for _ in 0..(share.targets.len() * 3) {
        *hops += 1;
        let resume = shared.conns.borrow()[i].resume.clone();
        let g = share.first + i as u64;
        match open(share, g, keys, resume.as_ref(), *hops).await {
            Ok((ws, reply)) => {
                shared.reconnects.set(shared.reconnects.get() + 1);
                let took = dropped.elapsed().as_micros() as u64;
                shared.resume_us.borrow_mut().push(took);
                if let Some(reply) = reply {
                    note_position(shared, i, &reply);
                }
                let target = ((g + *hops) % share.targets.len() as u64) as usize;
                let second = now_ns() / 1_000_000_000;
                *shared
                    .arrivals
                    .borrow_mut()
                    .entry((target, second))
                    .or_default() += 1;
                return Some(ws);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}

/// Records where a `subscribed` or `connected` says the connection stands, and counts a resume
/// the server could not recover.
fn note_position(shared: &Shared, i: usize, text: &str) {
    let Ok(frame) = serde_json::from_str::<Incoming>(text) else {
        return;
    };
    if frame.recovered == Some(false) {
        shared.unrecovered.set(shared.unrecovered.get() + 1);
    }
    if let (Some(offset), Some(epoch)) = (frame.offset, frame.epoch) {
        shared.conns.borrow_mut()[i].resume = Some((offset, epoch));
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to an int that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
