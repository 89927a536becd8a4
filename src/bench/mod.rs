//! `fanfare bench`: the load generator. Opens C authenticated WebSocket connections over one
//! or more servers, publishes through the HTTP API of one or more servers, and measures what
//! arrives: deliveries per second, end-to-end latency, lost, duplicated and reordered messages.
//!
//! The coordinating process publishes; the connections live in receiver processes (at most
//! 15,000 each, as a process here may hold 20,000 descriptors), which it starts, feeds and
//! whose results (HDR histograms included) it merges exactly.

mod plan;
mod publisher;
mod receiver;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub use plan::Scenario;
use plan::{Padding, PayloadKind, Plan};
use publisher::{Limit, Progress, Publishing};
use receiver::{Outcome, Report, Share};

/// Connections one receiver process holds at most.
const PER_PROCESS: u64 = 15_000;

/// The protocol a run speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Fanfare,
    Pusher,
}

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Server(s) the connections go to, as host:port; repeatable (connection g goes to target
    /// g mod T)
    #[arg(
        long = "target",
        default_value = "127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub targets: Vec<String>,
    /// Server(s) whose publish API gets the messages [default: the first target]; repeatable,
    /// used round-robin by the publishing connections
    #[arg(long = "publish-to", value_delimiter = ',')]
    pub publish_to: Vec<String>,
    /// The servers' --token-secret (not with --protocol pusher)
    #[arg(
        long,
        env = "FANFARE_TOKEN_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub token_secret: String,
    /// The servers' --api-key; with --protocol pusher, the app key
    #[arg(long, env = "FANFARE_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// The protocol the servers speak: fanfare's own (`/ws`), or Pusher Channels (`/app/{key}`
    /// and the signed `/apps/{id}/events`: any Pusher-protocol server; channel scenario only)
    #[arg(long, value_enum, default_value = "fanfare")]
    pub protocol: Protocol,
    /// With --protocol pusher: the app id
    #[arg(long = "app-id", default_value = "")]
    pub app_id: String,
    /// With --protocol pusher: the app secret, which signs the events published
    #[arg(long, hide_env_values = true, default_value = "")]
    pub secret: String,
    #[arg(long, value_enum, default_value = "direct")]
    pub scenario: Scenario,
    /// WebSocket connections (C), one user each
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// Channels (K) of the channel scenario; each has C/K subscribers
    #[arg(long, default_value_t = 10)]
    pub channels: u64,
    /// Messages per POST /batch in the batch scenario (B)
    #[arg(long = "batch-size", default_value_t = 50)]
    pub batch_size: u64,
    /// Messages to publish [default: 10000 unless --duration is given]
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,
    /// Publish for this many seconds instead of a number of messages
    #[arg(long)]
    pub duration: Option<f64>,
    /// Open loop: publish this many messages per second on a fixed schedule; latency counts
    /// from the scheduled time. Without it: closed loop, as fast as the servers answer
    #[arg(long)]
    pub rate: Option<f64>,
    /// Publishing HTTP connections (requests in flight at most)
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Offer permessage-deflate; the report says the bytes received per delivery either way
    #[arg(long)]
    pub compression: bool,
    /// Ask for channel messages as deltas (`"delta":"fossil"`; the servers need
    /// --history-size); the receivers rebuild each one
    #[arg(long)]
    pub delta: bool,
    /// Padding added to each message's payload, in bytes, of the --payload kind, so
    /// compression and deltas see what they would in production
    #[arg(long = "payload-bytes", default_value_t = 0)]
    pub payload_bytes: usize,
    /// What the padding is like: a document whose values change a little per message, or
    /// chat lines that are new each time
    #[arg(long, value_enum, default_value = "document")]
    pub payload: PayloadKind,
    /// Seconds to wait for stragglers after the last publish
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Spread client sockets over source addresses 127.0.0.1 .. 127.0.0.N (loopback targets),
    /// so one host does not run out of ports
    #[arg(long = "source-addrs", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addrs: u8,
    /// Receiver processes [default: one per 15,000 connections]
    #[arg(long)]
    pub processes: Option<u64>,
    /// Every second, drop this percentage of the connections and reconnect them at once,
    /// resuming where each left off, on the next target (the servers need --history-size;
    /// not with broadcast): lost must stay 0
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Tokens that expire: connection g's token lives TTL + (g mod TTL) seconds, so expiries
    /// spread over TTL seconds, and each connection refreshes it when told `expiring`
    #[arg(long = "token-ttl")]
    pub token_ttl: Option<u64>,
    /// A connection the server closes (a restart's 1012, a lost server) opens again after a
    /// random delay up to this many seconds (0: at once), on the next target, resuming where
    /// it was (the servers need --history-size); the report gives the most connections any
    /// target took in one second. Without it, such a connection ends
    #[arg(long = "reconnect-within")]
    pub reconnect_within: Option<f64>,
    /// PID of a server process to measure (repeatable): reports server CPU per delivery and RSS
    /// per connection
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// End with one JSON object on the last line
    #[arg(long)]
    pub json: bool,
    /// Internal: run as receiver process number N
    #[arg(long, hide = true)]
    pub receiver: Option<u64>,
}

impl BenchArgs {
    fn plan(&self) -> Plan {
        Plan {
            scenario: self.scenario,
            connections: self.connections.max(1),
            channels: self.channels.clamp(1, self.connections.max(1)),
            batch: self.batch_size.max(1),
            pusher: self.protocol == Protocol::Pusher,
            keyed: self.reconnect_within.is_some(),
        }
    }

    fn processes(&self) -> u64 {
        self.processes
            .unwrap_or_else(|| self.connections.div_ceil(PER_PROCESS))
            .clamp(1, self.connections.max(1))
    }

    /// Connections of receiver `i`: `first..first + count`.
    fn share_of(&self, i: u64) -> (u64, u64) {
        let (c, p) = (self.connections, self.processes());
        let first = i * c / p;
        (first, (i + 1) * c / p - first)
    }
}

fn resolve(addrs: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    addrs
        .iter()
        .map(|a| {
            let a = a.trim_start_matches("http://").trim_start_matches("ws://");
            let a = a.trim_end_matches('/');
            a.to_socket_addrs()
                .with_context(|| format!("bad address {a}"))?
                .next()
                .with_context(|| format!("{a} resolves to nothing"))
        })
        .collect()
}

/// CPU seconds (user + system) a process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / per_second)
}

/// Resident memory of a process, in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn total_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| rss_bytes(*p)).sum()
}

/// Runs the bench; returns the process exit code (1 when messages were lost or duplicated).
pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    // Each connection holds a descriptor.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let targets = resolve(&args.targets)?;
    if let Some(i) = args.receiver {
        let (first, count) = args.share_of(i);
        receiver::run(Share {
            plan: args.plan(),
            first,
            count,
            targets,
            source_addrs: args.source_addrs,
            secret: args.token_secret.clone(),
            drain: Duration::from_secs_f64(args.drain),
            publishers: args.concurrency.max(1),
            churn: args.churn,
            reconnect_within: args.reconnect_within.map(Duration::from_secs_f64),
            token_ttl: args.token_ttl,
            pusher_key: (args.protocol == Protocol::Pusher).then(|| args.api_key.clone()),
            compression: args.compression,
            delta: args.delta,
        })?;
        return Ok(0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(coordinate(args, targets))
}

/// What the receivers last said, for the progress line.
struct Status {
    begun: Instant,
    connected: Vec<u64>,
    received: Vec<u64>,
    last: (u64, u64),
}

impl Status {
    fn update(&mut self, i: usize, report: &Report) {
        match report {
            Report::Ready { connected, .. } => self.connected[i] = *connected,
            Report::Progress {
                connected,
                received,
            } => {
                self.connected[i] = *connected;
                self.received[i] = *received;
            }
            Report::Result(o) => self.received[i] = o.received,
        }
    }

    /// One line a second: connections, and messages sent and received in the last second.
    fn print(&mut self, published: u64) {
        let received: u64 = self.received.iter().sum();
        eprintln!(
            "[{:6.1}s] connected {} | published {published} (+{}/s) | received {received} (+{}/s)",
            self.begun.elapsed().as_secs_f64(),
            self.connected.iter().sum::<u64>(),
            published - self.last.0,
            received - self.last.1,
        );
        self.last = (published, received);
    }
}

async fn coordinate(args: BenchArgs, targets: Vec<SocketAddr>) -> anyhow::Result<i32> {
    let publish_to = if args.publish_to.is_empty() {
        vec![targets[0]]
    } else {
        resolve(&args.publish_to)?
    };
    let plan = args.plan();
    anyhow::ensure!(
        args.churn == 0.0 || !matches!(args.scenario, plan::Scenario::Broadcast),
        "--churn needs messages with history to resume from; broadcasts have none"
    );
    match args.protocol {
        Protocol::Pusher => anyhow::ensure!(
            plan.scenario == plan::Scenario::Channel
                && args.churn == 0.0
                && args.token_ttl.is_none()
                && !args.app_id.is_empty()
                && !args.secret.is_empty(),
            "--protocol pusher runs the channel scenario, without --churn or --token-ttl, and \
             needs --app-id, --api-key (the app key) and --secret"
        ),
        Protocol::Fanfare => anyhow::ensure!(
            !args.token_secret.is_empty(),
            "--token-secret is required (the servers' own)"
        ),
    }
    let processes = args.processes();
    eprintln!(
        "{:?}: {} connections over {} server(s) in {processes} receiver process(es)",
        plan.scenario,
        args.connections,
        targets.len()
    );

    let rss_before = total_rss(&args.server_pids);
    let exe = std::env::current_exe()?;
    let (report_tx, mut reports) = tokio::sync::mpsc::channel::<(usize, Report)>(1024);
    let mut children = Vec::new();
    for i in 0..processes {
        let mut child = tokio::process::Command::new(&exe)
            .arg("bench")
            .args(receiver_args(&args, i))
            .env("FANFARE_TOKEN_SECRET", &args.token_secret)
            .env("FANFARE_API_KEY", &args.api_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("receiver stdout")?).lines();
        let report_tx = report_tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(report) = serde_json::from_str(&line) {
                    if report_tx.send((i as usize, report)).await.is_err() {
                        return;
                    }
                }
            }
        });
        children.push(child);
    }
    drop(report_tx);
    let n = children.len();
    let mut status = Status {
        begun: Instant::now(),
        connected: vec![0; n],
        received: vec![0; n],
        last: (0, 0),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let died = || anyhow::anyhow!("a receiver process died (see its error above)");

    // Connecting.
    let mut ready = 0;
    let mut connect_errors = 0;
    while ready < n {
        tokio::select! {
            r = reports.recv() => {
                let (i, report) = r.ok_or_else(died)?;
                status.update(i, &report);
                match report {
                    Report::Ready { errors, .. } => {
                        ready += 1;
                        connect_errors += errors;
                    }
                    Report::Result(_) => bail!("receiver {i} ended early"),
                    Report::Progress { .. } => {}
                }
            }
            _ = tick.tick() => status.print(0),
        }
    }
    let connect_seconds = status.begun.elapsed().as_secs_f64();
    let connected: u64 = status.connected.iter().sum();
    if connected == 0 {
        bail!("no connection could be opened");
    }
    if connect_errors > 0 {
        eprintln!("{connect_errors} connections failed");
    }
    // Let the servers finish settling the new connections before reading their memory.
    if !args.server_pids.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rss_per_connection = (!args.server_pids.is_empty())
        .then(|| total_rss(&args.server_pids).saturating_sub(rss_before) as f64 / connected as f64);
    eprintln!("{connected} connected; publishing");

    // Publishing.
    let server_cpu_before: Vec<f64> = args
        .server_pids
        .iter()
        .filter_map(|p| cpu_seconds(*p))
        .collect();
    let writes_before = publisher::socket_writes(&targets).await;
    let progress = Arc::new(Progress::default());
    let limit = match (args.messages, args.duration) {
        (_, Some(d)) => Limit::Duration(Duration::from_secs_f64(d)),
        (m, None) => Limit::Messages(m.unwrap_or(10_000)),
    };
    let publishing = Publishing {
        plan,
        targets: publish_to,
        api_key: args.api_key.clone(),
        concurrency: args.concurrency.max(1),
        rate: args.rate,
        limit,
        pad: Padding {
            kind: args.payload,
            bytes: args.payload_bytes,
        },
        pusher: (args.protocol == Protocol::Pusher).then(|| {
            crate::pusher::App::new(
                args.app_id.clone(),
                args.api_key.clone(),
                args.secret.clone(),
            )
        }),
    };
    let run = publisher::run(publishing, progress.clone());
    tokio::pin!(run);
    let published = loop {
        tokio::select! {
            p = &mut run => break p?,
            Some((i, report)) = reports.recv() => status.update(i, &report),
            _ = tick.tick() => status.print(progress.messages.load(Relaxed)),
        }
    };
    eprintln!(
        "published {} messages in {:.2}s; waiting for them to arrive",
        published.messages,
        published.elapsed.as_secs_f64()
    );

    // Draining.
    for child in &mut children {
        let stdin = child.stdin.as_mut().context("receiver stdin")?;
        let line = format!("{}\n", json!({"published": published.messages}));
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
    }
    let mut total = Outcome::default();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut done = 0;
    while done < n {
        tokio::select! {
            r = reports.recv() => {
                let (i, report) = r.ok_or_else(died)?;
                status.update(i, &report);
                if let Report::Result(outcome) = report {
                    for (value, count) in &outcome.latency_us {
                        latency.saturating_record_n(*value, *count);
                    }
                    merge(&mut total, outcome);
                    done += 1;
                }
            }
            _ = tick.tick() => status.print(published.messages),
        }
    }
    for child in &mut children {
        let _ = child.wait().await;
    }
    let frames_per_write = match (writes_before, publisher::socket_writes(&targets).await) {
        (Some((w0, f0)), Some((w1, f1))) if w1 > w0 => Some((f1 - f0) as f64 / (w1 - w0) as f64),
        _ => None,
    };
    let server_cpu: Option<f64> = (!args.server_pids.is_empty()).then(|| {
        args.server_pids
            .iter()
            .filter_map(|p| cpu_seconds(*p))
            .sum::<f64>()
            - server_cpu_before.iter().sum::<f64>()
    });
    let bench_cpu = cpu_seconds(std::process::id()).unwrap_or(0.0) + total.cpu_seconds;

    let window = total
        .last_received_ns
        .saturating_sub(published.started_ns)
        .max(1) as f64
        / 1e9;
    let q = |p: f64| latency.value_at_quantile(p) as f64 / 1000.0;
    let per_delivery_us = |cpu: f64| cpu * 1e6 / total.received.max(1) as f64;
    let summary = json!({
        "scenario": plan.scenario,
        "connections": args.connections,
        "connected": total.connected,
        "connect_errors": total.connect_errors,
        "connect_seconds": connect_seconds,
        "disconnects": total.disconnects,
        "reconnects": total.reconnects,
        "refreshes": total.refreshes,
        "resume_ms": resume_ms(&mut total.resume_us),
        "peak_reconnects_per_second": total.arrivals.iter().map(|(_, n)| *n).max().unwrap_or(0),
        "unrecovered": total.unrecovered,
        "published": published.messages,
        "publish_errors": published.failed_requests,
        "publish_seconds": published.elapsed.as_secs_f64(),
        "publishes_per_second": published.messages as f64 / published.elapsed.as_secs_f64().max(1e-9),
        "expected": total.expected,
        "received": total.received,
        "deliveries_per_second": total.received as f64 / window,
        "latency_ms": {
            "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
            "max": latency.max() as f64 / 1000.0,
        },
        "lost": total.lost,
        "duplicated": total.duplicated,
        "reordered": total.reordered,
        "bench_cpu_seconds": bench_cpu,
        "bench_cpu_us_per_delivery": per_delivery_us(bench_cpu),
        "bench_cpu_share": server_cpu.map(|c| bench_cpu / (bench_cpu + c).max(1e-9)),
        "server_cpu_seconds": server_cpu,
        "server_cpu_us_per_delivery": server_cpu.map(per_delivery_us),
        "deliveries_per_server_cpu_second": server_cpu.map(|c| total.received as f64 / c.max(1e-9)),
        "server_rss_bytes_per_connection": rss_per_connection,
        "server_frames_per_write": frames_per_write,
        "compression": args.compression,
        "delta": args.delta,
        "wire_bytes_per_delivery": total.wire_bytes as f64 / total.received.max(1) as f64,
    });
    print_summary(&summary);
    if args.json {
        println!("{summary}");
    }
    let failed = total.lost > 0 || total.duplicated > 0 || published.failed_requests > 0;
    Ok(i32::from(failed))
}

/// The arguments a receiver process gets: the coordinator's own, plus its number.
fn receiver_args(args: &BenchArgs, i: u64) -> Vec<String> {
    vec![
        format!("--target={}", args.targets.join(",")),
        format!(
            "--scenario={}",
            clap::ValueEnum::to_possible_value(&args.scenario)
                .expect("every scenario has a name")
                .get_name()
        ),
        format!("--connections={}", args.connections),
        format!("--channels={}", args.channels),
        format!("--batch-size={}", args.batch_size),
        format!("--drain={}", args.drain),
        format!("--concurrency={}", args.concurrency),
        format!("--source-addrs={}", args.source_addrs),
        format!("--processes={}", args.processes()),
        format!("--churn={}", args.churn),
        format!(
            "--protocol={}",
            clap::ValueEnum::to_possible_value(&args.protocol)
                .expect("every protocol has a name")
                .get_name()
        ),
        format!("--receiver={i}"),
    ]
    .into_iter()
    .chain(args.compression.then(|| "--compression".to_string()))
    .chain(args.delta.then(|| "--delta".to_string()))
    .chain(
        args.reconnect_within
            .map(|s| format!("--reconnect-within={s}")),
    )
    .chain(args.token_ttl.map(|t| format!("--token-ttl={t}")))
    .collect()
}

/// p50, p99 and max of the resume times, in milliseconds.
fn resume_ms(us: &mut [u64]) -> serde_json::Value {
    us.sort_unstable();
    let at = |q: f64| {
        let i = ((us.len() as f64 * q) as usize).min(us.len().saturating_sub(1));
        us.get(i).map_or(0.0, |v| *v as f64 / 1000.0)
    };
    json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
}

fn merge(total: &mut Outcome, o: Outcome) {
    total.connected += o.connected;
    total.connect_errors += o.connect_errors;
    total.disconnects += o.disconnects;
    total.expected += o.expected;
    total.received += o.received;
    total.lost += o.lost;
    total.duplicated += o.duplicated;
    total.reordered += o.reordered;
    total.reconnects += o.reconnects;
    total.refreshes += o.refreshes;
    total.resume_us.extend(o.resume_us);
    for (at, n) in o.arrivals {
        match total.arrivals.iter_mut().find(|(a, _)| *a == at) {
            Some((_, m)) => *m += n,
            None => total.arrivals.push((at, n)),
        }
    }
    total.unrecovered += o.unrecovered;
    total.last_received_ns = total.last_received_ns.max(o.last_received_ns);
    total.cpu_seconds += o.cpu_seconds;
    total.wire_bytes += o.wire_bytes;
}

fn print_summary(s: &serde_json::Value) {
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    let l = |k: &str| s["latency_ms"][k].as_f64().unwrap_or(0.0);
    println!("scenario       {}", s["scenario"].as_str().unwrap_or("?"));
    println!(
        "connections    {} of {} in {:.1}s ({} failed, {} dropped during the run)",
        s["connected"],
        s["connections"],
        f("connect_seconds"),
        s["connect_errors"],
        s["disconnects"]
    );
    if s["peak_reconnects_per_second"].as_u64().unwrap_or(0) > 0 {
        println!(
            "reconnects     at most {} in one second on one target (after the servers closed them)",
            s["peak_reconnects_per_second"]
        );
    }
    if s["reconnects"].as_u64().unwrap_or(0) > 0 {
        println!(
            "churn          {} reconnects resumed, {} not recovered; resume ms p50 {:.2}  p99 {:.2}  max {:.2}",
            s["reconnects"],
            s["unrecovered"],
            s["resume_ms"]["p50"].as_f64().unwrap_or(0.0),
            s["resume_ms"]["p99"].as_f64().unwrap_or(0.0),
            s["resume_ms"]["max"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "published      {} messages in {:.2}s = {:.0}/s ({} failed requests)",
        s["published"],
        f("publish_seconds"),
        f("publishes_per_second"),
        s["publish_errors"]
    );
    println!(
        "delivered      {} of {} expected = {:.0}/s",
        s["received"],
        s["expected"],
        f("deliveries_per_second")
    );
    println!(
        "latency ms     p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        l("p50"),
        l("p90"),
        l("p99"),
        l("p999"),
        l("max")
    );
    println!(
        "lost {}  duplicated {}  reordered {}",
        s["lost"], s["duplicated"], s["reordered"]
    );
    println!(
        "on the wire    {:.0} bytes received per delivery{}",
        f("wire_bytes_per_delivery"),
        match (s["compression"].as_bool(), s["delta"].as_bool()) {
            (Some(true), Some(true)) => " (permessage-deflate offered, deltas asked)",
            (Some(true), _) => " (permessage-deflate offered)",
            (_, Some(true)) => " (deltas asked)",
            _ => "",
        }
    );
    println!(
        "bench CPU      {:.2}s = {:.2} µs per delivery{}",
        f("bench_cpu_seconds"),
        f("bench_cpu_us_per_delivery"),
        match s["bench_cpu_share"].as_f64() {
            Some(share) => format!(" ({:.0}% of bench + server CPU)", share * 100.0),
            None => String::new(),
        }
    );
    if !s["server_rss_bytes_per_connection"].is_null() {
        println!(
            "server memory  {:.0} bytes RSS per connection (growth while connecting)",
            f("server_rss_bytes_per_connection")
        );
    }
    if !s["server_cpu_seconds"].is_null() {
        println!(
            "server CPU     {:.2}s = {:.2} µs per delivery = {:.0} deliveries per CPU-second",
            f("server_cpu_seconds"),
            f("server_cpu_us_per_delivery"),
            f("deliveries_per_server_cpu_second")
        );
    }
    if let Some(n) = s["server_frames_per_write"].as_f64() {
        println!("server writes  {n:.2} frames per write (from the servers' /metrics)");
    }
}
