//! The publishing side of a run: N keep-alive HTTP connections posting to the publish API,
//! either as fast as the servers answer (closed loop) or on a schedule (open loop, `--rate`),
//! where each message carries its intended send time so a stalled server cannot hide its tail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;

use super::plan::Plan;
use super::receiver::now_ns;

/// How much to publish.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    Messages(u64),
    Duration(Duration),
}

pub struct Publishing {
    pub plan: Plan,
    pub targets: Vec<SocketAddr>,
    pub api_key: String,
    pub concurrency: usize,
    /// Messages per second; `None` is closed loop.
    pub rate: Option<f64>,
    pub limit: Limit,
    pub pad: super::plan::Padding,
    /// The Pusher app whose HTTP API the events go to, signed.
    pub pusher: Option<crate::pusher::App>,
}

/// Counters the progress line reads while publishing runs.
#[derive(Default)]
pub struct Progress {
    pub messages: AtomicU64,
    pub failed_requests: AtomicU64,
}

/// What was published: messages `0..messages` (every request that was started is finished).
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub messages: u64,
    pub failed_requests: u64,
    pub elapsed: Duration,
    pub started_ns: u64,
}

pub async fn run(p: Publishing, progress: Arc<Progress>) -> anyhow::Result<Published> {
    let per_request = p.plan.per_request();
    let max_requests = match (p.limit, p.rate) {
        (Limit::Messages(m), _) => Some(m.div_ceil(per_request)),
        (Limit::Duration(d), Some(rate)) => {
            Some(((d.as_secs_f64() * rate) as u64 / per_request).max(1))
        }
        (Limit::Duration(_), None) => None,
    };
    let deadline = match p.limit {
        Limit::Duration(d) => Some(Instant::now() + d),
        Limit::Messages(_) => None,
    };
    let p = Arc::new(p);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let started_ns = now_ns();
    let mut tasks = Vec::new();
    for j in 0..p.concurrency {
        let (p, next, progress) = (p.clone(), next.clone(), progress.clone());
        let mut at = j % p.targets.len();
        tasks.push(tokio::spawn(async move {
            let mut target = p.targets[at];
            let mut sender = connect(target).await?;
            let mut k = 0u64;
            loop {
                let (r, sent_at_ns) = match p.rate {
                    None => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        (next.fetch_add(1, Relaxed), now_ns())
                    }
                    Some(rate) => {
                        let r = j as u64 + k * p.concurrency as u64;
                        k += 1;
                        let due = Duration::from_secs_f64((r * per_request) as f64 / rate);
                        if Instant::now() >= start + due {
                            // Late because the server held the previous request: count the
                            // wait (no coordinated omission).
                            (r, started_ns + due.as_nanos() as u64)
                        } else {
                            // On time: the timer's own lateness (up to 1 ms) is ours, not the
                            // server's, so the clock starts when the request really goes out.
                            tokio::time::sleep_until((start + due).into()).await;
                            (r, now_ns())
                        }
                    }
                };
                if max_requests.is_some_and(|m| r >= m) {
                    break;
                }
                let (path, body) = p.plan.request(r * per_request, j, sent_at_ns, &p.pad);
                let path = match &p.pusher {
                    Some(app) => signed(app, path, &body),
                    None => path.to_string(),
                };
                let mut ok = post(&mut sender, target, &path, body.clone(), &p.api_key).await;
                // The server closed the connection before this request went out (some close
                // after each response; a restarting one stops): again on a new one, on the
                // next target if this one is gone; nothing was sent.
                for attempt in 0..p.targets.len() * 2 {
                    if ok.is_some() {
                        break;
                    }
                    if attempt > 0 {
                        // A stopping server may take the connection and close it unanswered.
                        at = (at + 1) % p.targets.len();
                        target = p.targets[at];
                    }
                    sender = match connect(target).await {
                        Ok(s) => s,
                        Err(_) => {
                            at = (at + 1) % p.targets.len();
                            target = p.targets[at];
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    ok = post(&mut sender, target, &path, body.clone(), &p.api_key).await;
                }
                // Refused (a server draining for a restart): with keys, again on the next server
                // until one takes it; a repeat is delivered nowhere.
                for _ in 0..p.targets.len() * 20 {
                    if ok != Some(false) || !p.plan.keyed {
                        break;
                    }
                    at = (at + 1) % p.targets.len();
                    target = p.targets[at];
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Ok(s) = connect(target).await {
                        sender = s;
                        ok = post(&mut sender, target, &path, body.clone(), &p.api_key).await;
                    }
                }
                if ok != Some(true) {
                    progress.failed_requests.fetch_add(1, Relaxed);
                    if sender.is_closed() {
                        if let Ok(s) = connect(target).await {
                            sender = s;
                        }
                    }
                }
                progress.messages.fetch_add(per_request, Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(Published {
        messages: progress.messages.load(Relaxed),
        failed_requests: progress.failed_requests.load(Relaxed),
        elapsed: start.elapsed(),
        started_ns,
    })
}

async fn connect(target: SocketAddr) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .with_context(|| format!("cannot reach the publish API at {target}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One POST: whether it was accepted (202, or Pusher's 200); `None` if the connection was
/// closed before it could be sent.
async fn post(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    target: SocketAddr,
    path: &str,
    body: String,
    api_key: &str,
) -> Option<bool> {
    let request = Request::post(path)
        .header("host", target.to_string())
        .header("authorization", format!("Bearer {api_key}"))
        // Pusher-protocol servers (the SDKs send it) refuse a body without it.
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a request from valid parts");
    if sender.ready().await.is_err() {
        return None;
    }
    Some(match sender.send_request(request).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            // fanfare's API accepts with 202, Pusher's with 200.
            let accepted = status == 202 || status == 200;
            if !accepted {
                eprintln!("bench: {path} answered {status}");
            }
            accepted
        }
        Err(e) => {
            eprintln!("bench: {path} failed: {e}");
            false
        }
    })
}

/// `/apps/{id}{path}` with the query Pusher's API checks: key, timestamp, the body's MD5, and
/// the HMAC-SHA256 of all that with the app secret.
fn signed(app: &crate::pusher::App, path: &str, body: &str) -> String {
    use md5::{Digest, Md5};
    let path = format!("/apps/{}{path}", app.id);
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let md5 = crate::pusher::hex(&Md5::digest(body.as_bytes()));
    let query = format!(
        "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={md5}",
        app.key
    );
    let signature = app.hmac_hex(&format!("POST\n{path}\n{query}"));
    format!("{path}?{query}&auth_signature={signature}")
}

/// The servers' `fanfare_socket_writes_total` and `fanfare_frames_written_total`, summed over
/// `targets`; `None` when one cannot be read (an older server, a peer that is not fanfare).
pub async fn socket_writes(targets: &[SocketAddr]) -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for &target in targets {
        let mut sender = connect(target).await.ok()?;
        let request = Request::get("/metrics")
            .header("host", target.to_string())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let text = std::str::from_utf8(&body).ok()?;
        let value = |name: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.starts_with(name))?;
            line.rsplit(' ').next()?.parse().ok()
        };
        total.0 += value("fanfare_socket_writes_total ")?;
        total.1 += value("fanfare_frames_written_total ")?;
    }
    Some(total)
}
