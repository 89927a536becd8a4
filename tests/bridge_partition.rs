//! A silent partition between one server and Redis — packets dropped, no error, no reset —
//! made with this test's own network namespace, a veth pair and an nftables DROP rule.
//!
//! Topology: Redis in the root namespace on 127.0.0.1 and on the veth's host end; server A in
//! namespace `ff<pid>`, reaching Redis over the veth; server B in-process on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http, RedisServer, TestClient, TestServer, API_KEY, SECRET};
use serde_json::json;

/// Runs a command that must succeed; says how to get the tool when it is missing.
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install it with `apt-get install -y iproute2 nftables`",
                args[0]
            )
        });
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespace, its veth pair and the server inside; all removed on drop.
struct IsolatedHost {
    ns: String,
    /// The veth's end in the root namespace (where Redis listens) and inside the namespace.
    host_ip: String,
    inner_ip: String,
    server: Option<Child>,
}

impl IsolatedHost {
    fn new() -> IsolatedHost {
        // Unique per test too: `cargo test` runs both tests of this file in one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = std::process::id() % 10_000 * 10 + n % 10;
        let (ns, outer, inner) = (format!("ff{id}"), format!("ffh{id}"), format!("ffn{id}"));
        // A subnet per process and test: two of them sharing one would route each other's
        // connections (nextest runs the tests of this file in two processes at once).
        let x = std::process::id() * 10 + n % 10;
        let net = format!("10.{}.{}", 100 + (x >> 8) % 150, x & 0xff);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&["ip", "netns", "add", &ns]);
        let host = IsolatedHost {
            ns: ns.clone(),
            host_ip: format!("{net}.1"),
            inner_ip: format!("{net}.2"),
            server: None,
        };
        sh(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        sh(&["ip", "link", "set", &inner, "netns", &ns]);
        sh(&["ip", "addr", "add", &format!("{net}.1/30"), "dev", &outer]);
        sh(&["ip", "link", "set", &outer, "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{net}.2/30"),
            "dev",
            &inner,
        ]);
        sh(&[
            "ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up",
        ]);
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        host
    }

    /// Starts `fanfare serve` inside the namespace; returns its address.
    fn serve(&mut self, redis_url: &str, extra: &[&str]) -> SocketAddr {
        let listen = format!("{}:0", self.inner_ip);
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                env!("CARGO_BIN_EXE_fanfare"),
                "serve",
            ])
            .args([
                "--listen",
                &listen,
                "--workers",
                "2",
                "--token-secret",
                SECRET,
                "--api-key",
                API_KEY,
            ])
            .args([
                "--redis",
                redis_url,
                "--redis-prefix",
                "part:",
                "--node-id",
                "isolated",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap());
        let addr = loop {
            let mut line = String::new();
            assert!(
                lines.read_line(&mut line).unwrap() > 0,
                "server in namespace exited"
            );
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || {
            for l in lines.lines() {
                eprintln!("[isolated] {}", l.unwrap_or_default())
            }
        });
        self.server = Some(child);
        addr
    }

    /// Drops every packet to and from Redis inside the namespace, silently.
    fn partition(&self, redis_port: u16) {
        let port = redis_port.to_string();
        let nft = |rule: &[&str]| {
            let mut args = vec!["ip", "netns", "exec", &self.ns, "nft"];
            args.extend_from_slice(rule);
            sh(&args);
        };
        nft(&["add", "table", "inet", "partition"]);
        nft(&[
            "add",
            "chain",
            "inet",
            "partition",
            "out",
            "{ type filter hook output priority 0 ; }",
        ]);
        nft(&[
            "add",
            "chain",
            "inet",
            "partition",
            "in",
            "{ type filter hook input priority 0 ; }",
        ]);
        nft(&[
            "add",
            "rule",
            "inet",
            "partition",
            "out",
            "tcp",
            "dport",
            &port,
            "drop",
        ]);
        nft(&[
            "add",
            "rule",
            "inet",
            "partition",
            "in",
            "tcp",
            "sport",
            &port,
            "drop",
        ]);
    }

    fn heal(&self) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "nft",
            "delete",
            "table",
            "inet",
            "partition",
        ]);
    }
}

impl Drop for IsolatedHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

async fn readyz(addr: SocketAddr) -> u16 {
    http(addr, "GET", "/readyz", &[], b"").await.0
}

/// Waits until `/readyz` of `addr` answers `status`, at most `within`.
async fn until_readyz(addr: SocketAddr, status: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while readyz(addr).await != status {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish(addr: SocketAddr, body: serde_json::Value) {
    let auth = format!("Bearer {API_KEY}");
    let (status, text) = http(
        addr,
        "POST",
        "/message",
        &[("Authorization", &auth)],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{text}");
}

#[tokio::test]
async fn silent_partition_is_noticed_and_healed() {
    let mut host = IsolatedHost::new();
    let port = common::free_port();
    let redis = RedisServer::bound(port, &format!("127.0.0.1 {}", host.host_ip));
    let isolated = host.serve(&format!("redis://{}:{port}", host.host_ip), &[]);
    let b = TestServer::in_fleet(&redis, "part:", "b");
    b.wait_readyz(200).await;
    until_readyz(
        isolated,
        200,
        common::PATIENCE,
        "the isolated server to be ready",
    )
    .await;
    let token = |sub: &str| {
        fanfare::auth::TokenKeys::new(SECRET)
            .unwrap()
            .issue(&fanfare::auth::claims(sub, None, None))
            .unwrap()
    };
    let mut on_isolated = TestClient::connect(isolated, &token("far")).await;
    b.publish("/message", json!({"userId": "far", "message": "before"}))
        .await;
    assert_eq!(on_isolated.recv_message().await, json!("before"));

    host.partition(port);
    let noticed = Duration::from_secs(5);
    until_readyz(isolated, 503, noticed, "the partition to be noticed").await;
    // Local delivery goes on.
    publish(isolated, json!({"userId": "far", "message": "local"})).await;
    assert_eq!(on_isolated.recv_message().await, json!("local"));

    host.heal();
    until_readyz(isolated, 200, common::PATIENCE, "the bridge to reconnect").await;
    let reconnected = Instant::now();
    // The same client connection gets cross-machine messages again.
    loop {
        b.publish("/message", json!({"userId": "far", "message": "after"}))
            .await;
        if let Ok(v) =
            tokio::time::timeout(Duration::from_millis(100), on_isolated.recv_json()).await
        {
            assert_eq!(v["message"], "after");
            break;
        }
        assert!(
            reconnected.elapsed() < Duration::from_secs(2),
            "no cross-machine delivery 2 s after reconnecting"
        );
    }
}

/// With history in Redis, a machine cut off from Redis catches up when the link is back: its
/// clients get every message published meanwhile, in order, without reconnecting.
#[tokio::test]
async fn a_partitioned_machine_catches_up_from_history_without_clients_reconnecting() {
    const MISSED: u64 = 50;
    let mut host = IsolatedHost::new();
    let port = common::free_port();
    let redis = RedisServer::bound(port, &format!("127.0.0.1 {}", host.host_ip));
    let url = format!("redis://{}:{port}", host.host_ip);
    let isolated = host.serve(&url, &["--history-size", "1000"]);
    let redis_url = redis.url();
    let b = TestServer::start_with(move |c| {
        c.redis = Some(redis_url);
        c.redis_prefix = "part:".into();
        c.node_id = Some("b".into());
        c.history_size = 1000;
    });
    b.wait_readyz(200).await;
    until_readyz(
        isolated,
        200,
        common::PATIENCE,
        "the isolated server to be ready",
    )
    .await;
    let token = fanfare::auth::TokenKeys::new(SECRET)
        .unwrap()
        .issue(&fanfare::auth::claims(
            "far",
            Some(vec!["room".into()]),
            None,
        ))
        .unwrap();
    let mut client = TestClient::connect(isolated, &token).await;
    assert_eq!(client.recv_json().await["offset"], 0);
    client
        .send_json(json!({"type": "subscribe", "channel": "room"}))
        .await;
    assert_eq!(client.recv_json().await["type"], "subscribed");
    let send = |n: u64| {
        let b = &b;
        async move {
            b.publish("/message", json!({"userId": "far", "message": n}))
                .await;
            b.publish("/publish", json!({"channel": "room", "message": n}))
                .await;
        }
    };
    send(1).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(client.recv_json().await);
    }

    host.partition(port);
    let cut = Instant::now();
    // Until the subscribing link gives up its connection: what is published from then on is
    // lost to this machine's pub/sub for good (a connection that survived would get it late).
    let subscriber_down = r#"fanfare_bridge_up{link="subscribe"} 0"#;
    while !http(isolated, "GET", "/metrics", &[], b"")
        .await
        .1
        .contains(subscriber_down)
    {
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "partition not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 2..=1 + MISSED {
        send(n).await;
    }
    host.heal();
    // Nothing new is published: the catch-up on reconnecting brings what was missed.
    while got.len() < 2 * (1 + MISSED as usize) {
        got.push(client.recv_json().await);
    }
    send(2 + MISSED).await;
    while got.len() < 2 * (2 + MISSED as usize) {
        got.push(client.recv_json().await);
    }
    client.expect_nothing_for(200).await;
    // Per topic: every offset once, in order, nothing else (no reset, no reconnect).
    for channel in [None, Some("room")] {
        let topic: Vec<(u64, u64)> = got
            .iter()
            .filter(|m| m.get("channel").and_then(|c| c.as_str()) == channel)
            .map(|m| {
                assert_eq!(m["type"], "message", "{m}");
                (
                    m["offset"].as_u64().unwrap(),
                    m["message"].as_u64().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(u64, u64)> = (1..=2 + MISSED).map(|n| (n, n)).collect();
        assert_eq!(topic, expected, "{channel:?}");
    }
    let (_, metrics) = http(isolated, "GET", "/metrics", &[], b"").await;
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let reads = metric("fanfare_bridge_gap_reads_total");
    assert!(reads >= 2.0, "{reads}");
    assert_eq!(metric("fanfare_bridge_gaps_lost_total"), 0.0);
}
