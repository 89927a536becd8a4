//! Messages per second through the Redis bridge alone, without HTTP or WebSockets: bridge A
//! publishes, a private redis-server relays, bridge B (interested in the user) hands every
//! message to its bus. Compare with `redis-benchmark -P 64 PUBLISH` on the same Redis, which
//! this prints too. With `history`, A appends each message to the topic's history in Redis
//! (the append script, which publishes it with its offset) and the comparison is
//! `redis-benchmark -P 64` running that script with one message a call (the bridge sends a
//! pipeline's appends in one call).
//!
//! `replica` gives that Redis a replica; `ack` (with `history`) also waits for it
//! (`--history-ack-replicas 1`). With history, it then times appends one at a time, each
//! answered before the next (what a caller of `/publish` waits).
//!
//!     cargo bench --bench bridge_throughput            # 1,000,000 messages
//!     cargo bench --bench bridge_throughput -- 200000
//!     cargo bench --bench bridge_throughput -- 200000 history
//!     cargo bench --bench bridge_throughput -- 200000 history replica
//!     cargo bench --bench bridge_throughput -- 200000 history ack
//!
//! It also prints what each relayed message cost in CPU, from the threads' and the process's
//! own counters over the run: both bridges' threads (publish side and receive side) beside
//! `redis-server`, in one line:
//! `bridge: N msg/s; fanfare bridge CPU X us/msg; redis-server CPU Y us/msg`.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanfare::bridge::{Acknowledged, Bridge, BridgeConfig, HistorySettings};
use fanfare::bus::{Bus, Delivery};
use fanfare::metrics::BridgeMetrics;
use fanfare::protocol::Topic;
use fanfare::protocol::{Frame, Target, UserId, WorkerId};
use fanfare::routes::Routes;
use fanfare::subscriptions::SubscriptionLog;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let flag = |name: &str| std::env::args().any(|a| a == name);
    let ack = flag("ack").then_some(Acknowledged {
        replicas: 1,
        timeout_ms: 1000,
    });
    let history = flag("history").then_some(HistorySettings {
        size: 100,
        ttl_ms: 300_000,
        ack,
        once_ttl_ms: 300_000,
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // A replica's full sync writes an RDB: not in the checkout.
            "--dir",
            &std::env::temp_dir().to_string_lossy(),
            "--dbfilename",
            &format!("fanfare-bench-{port}.rdb"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install -y redis-server)");
    let _redis = KillOnDrop(redis);
    std::thread::sleep(Duration::from_millis(300));
    let _replica = (flag("replica") || ack.is_some()).then(|| {
        // The first sync would wait 5 s for more replicas.
        let _ = redis_cli(
            &port.to_string(),
            &["CONFIG", "SET", "repl-diskless-sync-delay", "0"],
        );
        let replica_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let child = Command::new("redis-server")
            .args(["--port", &replica_port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .args(["--dbfilename", &format!("fanfare-bench-{replica_port}.rdb")])
            .args([
                "--appendonly",
                "no",
                "--replicaof",
                "127.0.0.1",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        // Measured once the replica is in sync.
        let started = Instant::now();
        while !redis_cli(&replica_port, &["INFO", "replication"]).contains("master_link_status:up")
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the replica never synced"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        KillOnDrop(child)
    });
    let url = format!("redis://127.0.0.1:{port}");
    let shutdown = CancellationToken::new();
    let user = UserId::new("u").unwrap();

    let start_bridge = |node: &str, interested: bool| {
        let log = Arc::new(SubscriptionLog::default());
        let routes = Arc::new(Routes::new(1, Some(log.clone())));
        if interested {
            routes.add(&Topic::User(user.clone()), WorkerId(0));
        }
        let (bus, mut inboxes) = Bus::new(routes, 1);
        let metrics = Arc::new(BridgeMetrics::default());
        let config = BridgeConfig {
            url: url.clone(),
            prefix: "tp:".into(),
            node_id: node.into(),
            max_message_bytes: 65536,
            history,
            tls: Default::default(),
            once_ttl_ms: 300_000,
        };
        let (bridge, _thread) = Bridge::prepare(config, log, metrics.clone())
            .unwrap()
            .spawn(bus, None, None, shutdown.clone())
            .unwrap();
        (bridge, metrics, inboxes.pop().unwrap())
    };
    let (a, a_metrics, _a_inbox) = start_bridge("a", false);
    let (_b, b_metrics, mut b_inbox) = start_bridge("b", true);
    while !(a_metrics.is_up() && b_metrics.is_up() && b_metrics.subscriptions.load(Relaxed) == 2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let inbox_full = b_metrics.clone();
    let counted = std::thread::spawn(move || {
        let mut got = 0u64;
        let mut batch = Vec::with_capacity(1024);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Every message is relayed or counted as missed by a full inbox (the relay never
            // waits for a worker); stop when all are accounted for, or after 5 s of nothing.
            let mut last = Instant::now();
            while got + inbox_full.inbox_full.load(Relaxed) < n
                && last.elapsed() < Duration::from_secs(5)
            {
                let wait = Duration::from_millis(50);
                if let Ok(k) = tokio::time::timeout(wait, b_inbox.recv_many(&mut batch, 1024)).await
                {
                    if k == 0 {
                        break;
                    }
                    got += k as u64;
                    last = Instant::now();
                }
                batch.clear();
            }
        });
        (got, Instant::now())
    });

    let payload = RawValue::from_string(r#"{"seq":1,"t":1700000000000000000}"#.into()).unwrap();
    let delivery = Delivery {
        target: Target::User(user.clone()),
        frame: Frame::direct(&payload),
        position: None,
    };
    let payload_bytes = bytes::Bytes::from(payload.get().to_string());
    let redis_pid = _redis.0.id();
    let cpu_before = (
        bridge_cpu(),
        fanfare::bench::cpu_seconds(redis_pid).unwrap_or(0.0),
    );
    let started = Instant::now();
    for i in 0..n {
        // Stay under the publisher's queue (16,384): the bridge drops, never waits, by design.
        while i - a_metrics.published.load(Relaxed) - a_metrics.dropped.load(Relaxed) >= 8192 {
            // Sleep rather than spin: the cores are shared with both bridges and Redis.
            std::thread::sleep(Duration::from_micros(200));
        }
        match history {
            // The answer (its offset) is not awaited: the bench counts what B receives.
            Some(_) => drop(a.append(Topic::User(user.clone()), payload_bytes.clone(), None)),
            None => a.publish(&delivery),
        }
    }
    let (got, done) = counted.join().unwrap();
    let cpu_after = (
        bridge_cpu(),
        fanfare::bench::cpu_seconds(redis_pid).unwrap_or(0.0),
    );
    let secs = done.duration_since(started).as_secs_f64();
    println!(
        "relay: {n} published, {got} relayed to the other process's bus in {secs:.2}s = {:.0} msg/s (dropped by the publisher {}, by a full inbox {})",
        got as f64 / secs,
        a_metrics.dropped.load(Relaxed),
        b_metrics.inbox_full.load(Relaxed)
    );
    let per_message = |before: f64, after: f64| (after - before) * 1e6 / got.max(1) as f64;
    println!(
        "bridge: {:.0} msg/s; fanfare bridge CPU {:.2} us/msg; redis-server CPU {:.2} us/msg",
        got as f64 / secs,
        per_message(cpu_before.0, cpu_after.0),
        per_message(cpu_before.1, cpu_after.1),
    );
    if history.is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut took: Vec<Duration> = rt.block_on(async {
            let mut took = Vec::with_capacity(2000);
            for _ in 0..2000 {
                let t = Instant::now();
                let answer = a.append(Topic::User(user.clone()), payload_bytes.clone(), None);
                let fate = answer.expect("queued").await;
                assert!(matches!(fate, fanfare::bridge::Fate::Taken(..)), "{fate:?}");
                took.push(t.elapsed());
            }
            took
        });
        took.sort();
        let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
        println!(
            "append answered, one at a time ({} of them): p50 {} us, p99 {} us",
            took.len(),
            at(0.5).as_micros(),
            at(0.99).as_micros()
        );
    }
    shutdown.cancel();
    let port = port.to_string();
    let (what, command): (&str, Vec<String>) = match history {
        None => (
            "PUBLISH",
            vec!["PUBLISH".into(), "tp:u:x".into(), "x".repeat(60)],
        ),
        Some(h) => {
            let sha = redis_cli(&port, &["SCRIPT", "LOAD", fanfare::bridge::history::APPEND]);
            let call = [
                "EVALSHA",
                &sha,
                "2",
                "tp:o:u:x",
                "tp:h:u:x",
                "0a0b0c0d0e0f",
                &h.size.to_string(),
                &h.ttl_ms.to_string(),
                "PUBLISH",
                "lineage",
                "",
                "0",
                "",
                ",",
                "",
                "60000",
                "0123456789",
                "tp:u:x",
                payload.get(),
                "2",
            ];
            (
                "the append script",
                call.iter().map(|s| s.to_string()).collect(),
            )
        }
    };
    let out = Command::new("redis-benchmark")
        .args(["-p", &port, "-n", "400000", "-P", "64", "-q"])
        .args(&command)
        .output();
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(last) = text.split('\r').next_back() {
            println!("redis-benchmark -P 64, {what}: {}", last.trim());
        }
    }
}

/// CPU seconds the bridges' threads (`fanfare-bridge`, both of this process's bridges) have
/// used so far (each thread's own `/proc/self/task/<tid>/stat`: `/proc/<tid>/stat` would
/// count the whole process).
fn bridge_cpu() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |stat: String| -> Option<u64> {
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("fanfare-bridge"))
        })
        .filter_map(|t| ticks(std::fs::read_to_string(t.path().join("stat")).ok()?))
        .map(|t| t as f64 / per_second)
        .sum()
}

/// `redis-cli` on the private Redis; its one-line answer.
fn redis_cli(port: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", port])
        .args(args)
        .output()
        .expect("redis-cli (apt-get install -y redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Stops the private redis-server however the run ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
