//! Presence across a fleet (one Redis): members and counts agree on every machine, `join` and
//! `leave` come once for the fleet, a user on two machines is one member until both are gone,
//! a machine killed with `kill -9` loses its members everywhere within the stated bound, and a
//! storm of joins costs a few Redis calls, not one each.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, http, RedisServer, TestClient, TestServer, API_KEY, SECRET};
use fanfare::auth::Claims;
use serde_json::{json, Value};

fn token(sub: &str) -> String {
    let keys = fanfare::auth::TokenKeys::new(SECRET).unwrap();
    keys.issue(&Claims {
        sub: sub.into(),
        channels: Some(vec!["room*".into()]),
        presence: Some(vec!["room*".into()]),
        ..Claims::default()
    })
    .unwrap()
}

async fn member(addr: std::net::SocketAddr, sub: impl AsRef<str>, watch: bool) -> TestClient {
    let mut c = TestClient::connect(addr, &token(sub.as_ref())).await;
    c.send_json(json!({"type": "subscribe", "channel": "room", "presence": watch}))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"type": "subscribed", "channel": "room"})
    );
    c
}

async fn api(addr: std::net::SocketAddr, path: &str) -> Value {
    let auth = format!("Bearer {API_KEY}");
    let (status, text) = http(addr, "GET", path, &[("Authorization", &auth)], b"").await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// A `fanfare serve` process of the fleet (so it can be killed, and holds its own sockets).
async fn machine(
    redis: &RedisServer,
    prefix: &str,
    node: &str,
) -> (std::process::Child, std::net::SocketAddr) {
    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workers",
            "1",
        ])
        .args([
            "--redis",
            &redis.url(),
            "--redis-prefix",
            prefix,
            "--node-id",
            node,
        ])
        .args(["--token-secret", SECRET, "--api-key", API_KEY])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready(addr).await {
        assert!(Instant::now() < deadline, "{node} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr)
}

/// Whether `/readyz` answers 200 (a server still starting may close the connection).
async fn ready(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut response)).await;
    read.is_ok() && response.starts_with(b"HTTP/1.1 200")
}

/// Kills a machine's process when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the fleet's count of `room` seen from `addr` is (users, connections).
async fn count_becomes(addr: std::net::SocketAddr, users: u64, connections: u64) -> Duration {
    let started = Instant::now();
    loop {
        // A 503 (Redis not reachable yet) is asked again.
        let auth = format!("Bearer {API_KEY}");
        let path = "/presence/count?channel=room";
        let (_, text) = http(addr, "GET", path, &[("Authorization", &auth)], b"").await;
        let c: Value = serde_json::from_str(&text).unwrap_or_default();
        if c["users"] == users && c["connections"] == connections {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "count stayed {c}, wanted {users} users and {connections} connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next `n` presence events a watcher gets, as "join u" / "leave u", sorted.
async fn events(c: &mut TestClient, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let e = c.recv_json().await;
        got.push(format!(
            "{} {}",
            e["type"].as_str().unwrap(),
            e["user"].as_str().unwrap()
        ));
    }
    got.sort();
    got
}

#[tokio::test]
async fn two_machines_agree_and_a_user_on_both_is_one_member() {
    let redis = RedisServer::start();
    let a = TestServer::in_fleet(&redis, "pf:", "a");
    let b = TestServer::in_fleet(&redis, "pf:", "b");
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    // Events start once the fleet knows a subscription watches: its own join says so.
    let mut on_a = member(a.addr, "wa", true).await;
    assert_eq!(events(&mut on_a, 1).await, ["join wa"]);
    let mut on_b = member(b.addr, "wb", true).await;
    assert_eq!(events(&mut on_b, 1).await, ["join wb"]);
    assert_eq!(events(&mut on_a, 1).await, ["join wb"]);
    let mut x_a = member(a.addr, "x", false).await;
    let mut x_b = member(b.addr, "x", false).await;
    let _y = member(b.addr, "y", false).await;
    for addr in [a.addr, b.addr] {
        count_becomes(addr, 4, 5).await;
    }
    // Each watcher sees every join once, whichever machine it happened on.
    let joins = ["join x", "join y"];
    assert_eq!(events(&mut on_a, 2).await, joins);
    assert_eq!(events(&mut on_b, 2).await, joins);
    let page = api(b.addr, "/presence?channel=room").await;
    let x = page["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "x")
        .cloned();
    assert_eq!(x, Some(json!({"user": "x", "connections": 2})));
    // x leaves one machine: still a member; then the other: one `leave`, seen on both.
    x_a.send_json(json!({"type": "unsubscribe", "channel": "room"}))
        .await;
    count_becomes(a.addr, 4, 4).await;
    on_a.expect_nothing_for(200).await;
    x_b.send_json(json!({"type": "unsubscribe", "channel": "room"}))
        .await;
    count_becomes(b.addr, 3, 3).await;
    assert_eq!(events(&mut on_a, 1).await, ["leave x"]);
    assert_eq!(events(&mut on_b, 1).await, ["leave x"]);
    on_a.expect_nothing_for(200).await;
    on_b.expect_nothing_for(100).await;
}

/// A machine killed with `kill -9` (a separate process) cannot say its members left: the
/// survivors notice it stopped beating and purge them, with their `leave`s.
#[tokio::test]
async fn a_killed_machines_members_vanish_everywhere_with_their_leaves() {
    let redis = RedisServer::start();
    let a = TestServer::in_fleet(&redis, "pk:", "a");
    a.wait_readyz(200).await;
    let (doomed, doomed_addr) = machine(&redis, "pk:", "doomed").await;
    let mut doomed = Killed(doomed);
    let mut watcher = member(a.addr, "w", true).await;
    // Events start once the fleet knows someone watches: its own join says so.
    assert_eq!(events(&mut watcher, 1).await, ["join w"]);
    let _p = member(doomed_addr, "p", false).await;
    let _q = member(doomed_addr, "q", false).await;
    count_becomes(a.addr, 3, 3).await;
    assert_eq!(events(&mut watcher, 2).await, ["join p", "join q"]);

    doomed.0.kill().unwrap();
    let killed = Instant::now();
    let leaves = tokio::time::timeout(Duration::from_secs(30), events(&mut watcher, 2)).await;
    assert_eq!(
        leaves.expect("no leave within 30 s"),
        ["leave p", "leave q"]
    );
    let gone = killed.elapsed();
    count_becomes(a.addr, 1, 1).await;
    let _ = doomed.0.wait();
    println!(
        "kill -9: its members gone everywhere after {:.1} s",
        gone.as_secs_f64()
    );
    assert!(
        gone < Duration::from_secs(8),
        "took {gone:?}, the bound is 8 s"
    );
    watcher.expect_nothing_for(300).await;
}

/// 5,000 connections join one channel at once: the counts converge on the other machine and
/// the writes to Redis are a batch per channel every 100 ms, not one each.
#[tokio::test]
async fn a_storm_of_joins_is_written_in_batches() {
    let redis = RedisServer::start();
    // Processes of their own: the clients alone hold one descriptor each.
    let (a, a_addr) = machine(&redis, "ps:", "a").await;
    let (b, b_addr) = machine(&redis, "ps:", "b").await;
    let _machines = (Killed(a), Killed(b));
    let calls = || {
        let mut c = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut c)
            .unwrap();
        // Every script call: the writes (EVALSHA) and the heartbeats (EVAL).
        ["cmdstat_evalsha:calls=", "cmdstat_eval:calls="]
            .iter()
            .filter_map(|stat| info.lines().find_map(|l| l.strip_prefix(stat)))
            .filter_map(|rest| rest.split(',').next())
            .map(|n| n.parse::<u64>().unwrap())
            .sum::<u64>()
    };
    let before = calls();
    let started = Instant::now();
    let mut clients = Vec::new();
    // FANFARE_STORM=10000 for the figure in BENCHMARKS.md (two waves' worth of fds per 5,000).
    let storm: usize = std::env::var("FANFARE_STORM")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000);
    for wave in 0..storm / 500 {
        let joining = (0..500).map(|i| member(a_addr, format!("u{wave}-{i}"), false));
        clients.extend(futures_util::future::join_all(joining).await);
    }
    let converged = count_becomes(b_addr, storm as u64, storm as u64).await;
    let writes = calls() - before;
    println!(
        "{storm} joins in {:.1} s, counted on the other machine {:.2} s later; {writes} script calls to Redis",
        started.elapsed().as_secs_f64(),
        converged.as_secs_f64()
    );
    assert!(
        writes < storm as u64 / 10,
        "{writes} Redis calls for {storm} joins"
    );
}

/// A page of 1,000 members with large info is a big Redis reply: it is read, not taken for a
/// broken link (which would drop the messages on their way to other machines).
#[tokio::test]
async fn a_full_page_of_members_with_large_info_is_answered() {
    let redis = RedisServer::start();
    let a = TestServer::in_fleet(&redis, "bp:", "a");
    a.wait_readyz(200).await;
    let _x = member(a.addr, "x", false).await;
    count_becomes(a.addr, 1, 1).await;
    // 1,100 members as other processes would have written them, 400 bytes of info each.
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let info = format!("{{\"bio\":\"{}\"}}", "b".repeat(400));
    for i in 0..1100 {
        let user = format!("seed{i:05}");
        let value = format!("1|{info}");
        redis::cmd("HSET")
            .arg("bp:q:c:room")
            .arg(&user)
            .arg(value)
            .query::<()>(&mut c)
            .unwrap();
        redis::cmd("ZADD")
            .arg("bp:z:c:room")
            .arg(0)
            .arg(&user)
            .query::<()>(&mut c)
            .unwrap();
    }
    let page = api(a.addr, "/presence?channel=room&limit=1000").await;
    assert_eq!(page["members"].as_array().unwrap().len(), 1000);
    assert_eq!(page["next"], "seed00999");
    assert_eq!(a.metric("fanfare_bridge_reconnects_total").await, 0.0);
}

/// A user who leaves while Redis does not answer is written once it does: no ghost.
#[tokio::test]
async fn a_leave_while_redis_is_frozen_is_written_when_it_is_back() {
    let redis = RedisServer::start();
    let a = TestServer::in_fleet(&redis, "lo:", "a");
    a.wait_readyz(200).await;
    let mut x = member(a.addr, "x", false).await;
    let _y = member(a.addr, "y", false).await;
    count_becomes(a.addr, 2, 2).await;
    redis.freeze(true);
    x.send_json(json!({"type": "unsubscribe", "channel": "room"}))
        .await;
    assert_eq!(x.recv_json().await["type"], "unsubscribed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.freeze(false);
    count_becomes(a.addr, 1, 1).await;
}

/// A live process the others took for dead (its beats late: here its registry entry is aged by
/// hand) is purged, notices it at its next beat, and writes its members again.
#[tokio::test]
async fn a_live_process_purged_by_mistake_writes_its_members_again() {
    let redis = RedisServer::start();
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // b is a user of its own, so the test can stop its beats (and only its).
    let acl = ["ACL", "SETUSER", "b", "on", ">pw", "~*", "&*", "+@all"];
    let _: () = redis::cmd(acl[0]).arg(&acl[1..]).query(&mut c).unwrap();
    let a = TestServer::in_fleet(&redis, "pl:", "a");
    let b_url = format!("redis://b:pw@127.0.0.1:{}", redis.port);
    let b = TestServer::start_with(move |c| {
        c.redis = Some(b_url);
        c.redis_prefix = "pl:".into();
        c.node_id = Some("b".into());
    });
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    let mut w = member(a.addr, "w", true).await;
    // Its own join says the fleet knows it watches.
    assert_eq!(events(&mut w, 1).await, ["join w"]);
    let _y1 = member(b.addr, "y", false).await;
    let _y2 = member(b.addr, "y", false).await;
    count_becomes(a.addr, 2, 3).await;
    assert_eq!(events(&mut w, 1).await, ["join y"]);
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg("pl:p:c:room")
        .query(&mut c)
        .unwrap();
    let b_instance = fields
        .iter()
        .find_map(|f| f.strip_suffix("|y"))
        .unwrap()
        .to_string();
    // b cannot beat (its beat script's ZADD is refused) and its last beat is made old: a
    // survivor purges it (y leaves). Then b may beat again.
    let deny = ["ACL", "SETUSER", "b", "-zadd"];
    let _: () = redis::cmd(deny[0]).arg(&deny[1..]).query(&mut c).unwrap();
    redis::cmd("ZADD")
        .arg("pl:r:presence")
        .arg(0)
        .arg(&b_instance)
        .query::<()>(&mut c)
        .unwrap();
    let e = w.recv_json().await;
    assert_eq!(e["type"], "leave", "{e}");
    let allow = ["ACL", "SETUSER", "b", "+zadd"];
    let _: () = redis::cmd(allow[0]).arg(&allow[1..]).query(&mut c).unwrap();
    // b notices at its next beat and writes y again.
    assert_eq!(events(&mut w, 1).await, ["join y"]);
    count_becomes(a.addr, 2, 3).await;
}

/// Questions Redis answers take their place among the connection's replies and one at a time:
/// a flood of `presence_count` frames interleaved with frames answered at once gets its
/// answers strictly in order (each question used to be a task of its own: thousands in
/// flight, answers overtaken by later replies).
#[tokio::test]
async fn presence_questions_are_answered_in_order_one_at_a_time() {
    let redis = RedisServer::start();
    let url = redis.url();
    let s = TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.redis_prefix = "pq:".into();
    });
    s.wait_readyz(200).await;
    let mut c = member(s.addr, "asker", false).await;
    const ROUNDS: usize = 200;
    for _ in 0..ROUNDS {
        c.send_json(json!({"type": "presence_count", "channel": "room"}))
            .await;
        c.send_json(json!({"type": "unsubscribe", "channel": "nowhere"}))
            .await;
    }
    for round in 0..ROUNDS {
        let count = c.recv_json().await;
        assert_eq!(count["type"], "presence_count", "round {round}: {count}");
        let other = c.recv_json().await;
        assert_ne!(other["type"], "presence_count", "round {round}: {other}");
    }
}

/// The set of channels a process registers (for survivors to purge if it dies) follows what
/// it holds now: a client that subscribes to and leaves many channels leaves it empty, where
/// it used to keep every channel ever joined (+10 MB for 50,000).
#[tokio::test]
async fn the_registered_channels_follow_what_the_process_holds() {
    let redis = RedisServer::start();
    let url = redis.url();
    let s = TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.redis_prefix = "pr:".into();
    });
    s.wait_readyz(200).await;
    let mut c = TestClient::connect(s.addr, &token("sprayer")).await;
    let mut stays = member(s.addr, "stays", false).await;
    for i in 0..300 {
        let channel = format!("room:{i}");
        c.send_json(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(c.recv_json().await["type"], "subscribed");
        c.send_json(json!({"type": "unsubscribe", "channel": channel}))
            .await;
        assert_eq!(c.recv_json().await["type"], "unsubscribed");
    }
    let mut redis_conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let registered = |conn: &mut redis::Connection| -> Vec<String> {
        let sets: Vec<String> = redis::cmd("KEYS")
            .arg("pr:r:presence:*")
            .query(conn)
            .unwrap();
        sets.iter()
            .flat_map(|set| {
                redis::cmd("SMEMBERS")
                    .arg(set)
                    .query::<Vec<String>>(conn)
                    .unwrap()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = registered(&mut redis_conn);
        if now == ["room"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still registered: {} channels",
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stays
        .send_json(json!({"type": "unsubscribe", "channel": "room"}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !registered(&mut redis_conn).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the last channel stayed registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A clean stop (SIGTERM) takes the process's members out of Redis as it goes, with nobody
/// else running to purge them: they used to stay until another server started.
#[tokio::test]
async fn a_clean_stop_takes_its_members_out_of_redis() {
    let redis = RedisServer::start();
    let (child, addr) = machine(&redis, "cs:", "alone").await;
    let mut child = Killed(child);
    let _members = [
        member(addr, "1", true).await,
        member(addr, "2", false).await,
    ];
    count_becomes(addr, 2, 2).await;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("cs:*").query(&mut conn).unwrap();
    let left: Vec<&String> = keys.iter().filter(|k| !k.starts_with("cs:n:")).collect();
    assert!(left.is_empty(), "still in Redis: {left:?}");
}
