//! Redis Sentinel (PROTOCOL section 13): `redis+sentinel://` finds the master through the
//! sentinels and follows a failover. Three sentinels, a master and a replica started here; the
//! master is killed (`kill -9`) while a fleet publishes with history and replica
//! acknowledgements, and started again (as its supervisor would) so the new master has a
//! replica to acknowledge writes again: every accepted message (retried with its idempotency
//! key while the failover lasts) reaches a client that never reconnects, once and in order.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, redis_query, RedisServer, TestServer, PATIENCE};
use serde_json::json;

/// Sentinels, killed with the test.
struct Sentinels {
    children: Vec<Child>,
    ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `check` holds, or fails saying `what`.
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sentinels(master: u16) -> Sentinels {
    let dir = std::env::temp_dir().join(format!("fanfare-sentinel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = Sentinels {
        children: Vec::new(),
        ports: Vec::new(),
        dir,
    };
    for _ in 0..3 {
        let port = free_port();
        let conf = s.dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor main 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds main 1000\n\
                 sentinel failover-timeout main 4000\n",
                s.dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        s.children.push(child);
        s.ports.push(port);
    }
    for &port in &s.ports {
        until("the sentinels never saw each other and the replica", || {
            let info: Vec<String> =
                redis_query(port, &["SENTINEL", "MASTER", "main"]).unwrap_or_default();
            let field = |name: &str| {
                let at = info.iter().position(|f| f == name)?;
                info.get(at + 1).cloned()
            };
            field("num-other-sentinels").as_deref() == Some("2")
                && field("num-slaves").as_deref() == Some("1")
        });
    }
    s
}

/// Publishes message `n` with its key: 202, or why not.
async fn publish(s: &TestServer, n: u64) -> Result<(), String> {
    let body = json!({"channel": "feed", "message": n, "idempotencyKey": format!("m{n}")});
    let (status, text) = s.post("/publish", &body.to_string()).await;
    (status == 202).then_some(()).ok_or(text)
}

#[tokio::test]
async fn a_failover_found_through_sentinels_loses_no_accepted_message() {
    let mut master = RedisServer::apart(free_port());
    let replicas = [RedisServer::apart(free_port())];
    let replicas_started = Instant::now();
    for replica in &replicas {
        let master = master.port.to_string();
        let () = redis_query(replica.port, &["REPLICAOF", "127.0.0.1", &master]).unwrap();
        until("a replica never synced", || {
            let info: String =
                redis_query(replica.port, &["INFO", "replication"]).unwrap_or_default();
            info.contains("master_link_status:up")
        });
    }
    let sentinels = sentinels(master.port);
    let hosts: Vec<String> = sentinels
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let url = format!("redis+sentinel://{}/main", hosts.join(","));
    let machine = |node: &str| {
        let (url, node) = (url.clone(), node.to_string());
        TestServer::start_with(move |c| {
            c.redis = Some(url);
            c.redis_prefix = "sent:".into();
            c.node_id = Some(node);
            c.history_size = 1000;
            c.history_ack_replicas = 1;
        })
    };
    let (a, b) = (machine("a"), machine("b"));
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    let mut c = b.connect("u", &["feed"]).await;
    c.recv_json().await;
    c.send_json(json!({"type": "subscribe", "channel": "feed"}))
        .await;
    let subscribed = c.recv_json().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    // A promoted replica continues an epoch only for writes made once it had run 5 s (it
    // held them by replication, not from a disk it started with: see bridge/history.rs).
    if let Some(rest) = Duration::from_secs(7).checked_sub(replicas_started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    // The client reads (and answers pings) while the messages are published.
    let reading = async {
        let mut got = Vec::new();
        while got.len() < 60 {
            let frame = c.recv_json_within(PATIENCE * 6).await;
            // The user's own stream, which never had a message, may start again under the new
            // master's epoch: nothing lost (offset 0).
            if frame["type"] == "connected" && frame["offset"] == 0 {
                continue;
            }
            assert_eq!(frame["type"], "message", "no gap, no new epoch: {frame}");
            got.push(frame["message"].as_u64().unwrap());
        }
        got
    };
    // The old master, back as its supervisor would start it: it must outlive the publishing,
    // since the new master confirms writes, and the gaps' reads, through it.
    let mut restarted = None;
    let publishing = async {
        let (mut recovered_in, mut master_found_in) = (None, None);
        for n in 1..=60u64 {
            let started = Instant::now();
            if n == 20 {
                master.kill();
            }
            // Each message is retried (same key) until a master takes it.
            while let Err(why) = publish(&a, n).await {
                // Taken by the new master, not yet confirmed by a replica.
                if why.contains("fewer replicas") {
                    master_found_in.get_or_insert(started.elapsed());
                }
                assert!(
                    started.elapsed() < PATIENCE * 3,
                    "no master took message {n}"
                );
                if n == 20 && restarted.is_none() && started.elapsed() > Duration::from_secs(2) {
                    restarted = Some(RedisServer::apart(master.port));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if n == 20 {
                recovered_in = Some(started.elapsed());
            }
        }
        (master_found_in, recovered_in)
    };
    let (got, (master_found_in, recovered_in)) = tokio::join!(reading, publishing);
    assert_eq!(got, (1..=60).collect::<Vec<_>>());
    // Nothing more, but perhaps the user's empty stream under the new epoch (as above).
    while let Ok(frame) = tokio::time::timeout(Duration::from_millis(300), c.recv_json()).await {
        assert!(
            frame["type"] == "connected" && frame["offset"] == 0,
            "nothing more: {frame}"
        );
    }
    eprintln!(
        "sentinel failover: the new master took writes {master_found_in:?} after the kill; \
         with a replica to confirm them (the old master back as one) {recovered_in:?}"
    );
}
