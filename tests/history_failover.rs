//! An acknowledged message is never silently lost across a Redis Cluster failover (PROTOCOL
//! section 7): a replica promoted without the last writes moves their topics to a new epoch
//! before anything is appended there, so nobody resumes past what it lost; with
//! `--history-ack-replicas` nothing acknowledged is lost at all, and the epoch holds.

mod common;

use std::time::{Duration, Instant};

use common::cluster::RedisCluster;
use common::{TestClient, TestServer, PATIENCE};
use serde_json::{json, Value};

/// A machine of fleet `prefix` on the cluster, with history, `ack` replicas per history write.
async fn machine(cluster: &RedisCluster, prefix: &str, node: &str, ack: u32) -> TestServer {
    let (url, prefix, node) = (cluster.url(), prefix.to_string(), node.to_string());
    let s = TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.redis_prefix = prefix;
        c.node_id = Some(node);
        c.history_size = 200;
        c.history_ack_replicas = ack;
        c.history_ack_timeout = 300;
    });
    s.wait_readyz(200).await;
    s
}

/// The replica of the master at `master`.
fn replica_of(cluster: &RedisCluster, master: u16) -> u16 {
    let needle = format!("master_port:{master}\r");
    cluster
        .nodes
        .iter()
        .filter(|n| n.running())
        .map(|n| n.port)
        .find(|port| {
            let info: String = cluster
                .on(*port, &["INFO", "replication"])
                .unwrap_or_default();
            info.contains(&needle)
        })
        .expect("every master has a replica")
}

/// Waits until the replica at `replica` has everything its master at `master` has.
fn wait_in_sync(cluster: &RedisCluster, master: u16, replica: u16) {
    let offset = |port: u16| -> i64 {
        let info: String = cluster.on(port, &["INFO", "replication"]).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let deadline = Instant::now() + PATIENCE;
    while offset(replica) < offset(master) {
        assert!(Instant::now() < deadline, "the replica never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn post(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = s.post(path, &body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Publishes `n` on the channel and to the user; both must be taken (202); their offsets.
async fn publish_both(s: &TestServer, channel: &str, user: &str, n: u64) -> (u64, u64) {
    let (cs, c) = post(s, "/publish", json!({"channel": channel, "message": n})).await;
    let (us, u) = post(s, "/message", json!({"userId": user, "message": n})).await;
    assert_eq!((cs, us), (202, 202), "{c} {u}");
    (c["offset"].as_u64().unwrap(), u["offset"].as_u64().unwrap())
}

/// Waits until `probe` (a channel on the same master as what follows) takes messages again
/// (the failover ended, and with acks the new master has a replica that answers), then
/// publishes `n` messages from `first` on, each on the channel and to the user, every one
/// taken at once (a 503 may have taken it, so it is never retried blindly); their offsets.
async fn publish_through_failover(
    s: &TestServer,
    probe: &str,
    channel: &str,
    user: &str,
    first: u64,
    n: u64,
) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = post(s, "/publish", json!({"channel": probe, "message": 0})).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "the failover never ended: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut offsets = Vec::new();
    for message in first..first + n {
        offsets.push(publish_both(s, channel, user, message).await);
    }
    offsets
}

/// Reads frames until the channel's and the user's messages reach `upto`.
async fn read_until(c: &mut TestClient, upto: u64) {
    let mut last = (0, 0);
    while last != (upto, upto) {
        let m = c.recv_json().await;
        assert_eq!(m["type"], "message", "{m}");
        let offset = m["offset"].as_u64().unwrap();
        match m["channel"].is_string() {
            true => last.0 = offset,
            false => last.1 = offset,
        }
    }
}

/// A client on `s` for `user` and `channel`: its `connected` and `subscribed`.
async fn client(s: &TestServer, user: &str, channel: &str) -> (TestClient, Value, Value) {
    let mut c = s.connect(user, &[channel]).await;
    let hello = c.recv_json().await;
    assert_eq!(hello["type"], "connected", "{hello}");
    c.send_json(json!({"type": "subscribe", "channel": channel}))
        .await;
    let sub = c.recv_json().await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    (c, hello, sub)
}

/// What a resume was answered: `connected`, the direct messages replayed after it,
/// `subscribed`.
struct Resumed {
    client: TestClient,
    connected: Value,
    direct: Vec<(u64, Value)>,
    subscribed: Value,
}

/// Resumes on `s` from `upto` in the epochs of `hello` and `sub`.
async fn resume(
    s: &TestServer,
    user: &str,
    channel: &str,
    hello: &Value,
    sub: &Value,
    upto: u64,
) -> Resumed {
    let path = format!(
        "/ws?token={}&since={upto}&epoch={}",
        s.token(user, &[channel]),
        hello["epoch"].as_str().unwrap()
    );
    let mut c = TestClient::try_connect(s.addr, &path, &[]).await.unwrap();
    let connected = c.recv_json().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let since = json!({"offset": upto, "epoch": sub["epoch"]});
    c.send_json(json!({"type": "subscribe", "channel": channel, "since": since}))
        .await;
    let mut direct = Vec::new();
    loop {
        let m = c.recv_json().await;
        if m["type"] == "subscribed" {
            return Resumed {
                client: c,
                connected,
                direct,
                subscribed: m,
            };
        }
        assert_eq!(m["type"], "message", "{m}");
        assert!(m["channel"].is_null(), "{m}");
        direct.push((m["offset"].as_u64().unwrap(), m["message"].clone()));
    }
}

/// The issue's reproduction: the replica misses offsets 21–30 (frozen, cut from its master),
/// the master dies, the replica is promoted. The next publishes must not take 21–30 again in
/// the same epoch: a client resuming from 30 on another machine is told `recovered: false`, and
/// a client that stayed connected is told before the first message of the new epoch.
#[tokio::test]
async fn a_failover_onto_a_lagging_replica_moves_its_topics_to_a_new_epoch() {
    let mut cluster = RedisCluster::start();
    let m = cluster.masters()[0];
    let r = replica_of(&cluster, m);
    let (channel, user) = (
        cluster.name_on(m, "c", "room"),
        cluster.name_on(m, "u", "user"),
    );
    let a = machine(&cluster, "lf:", "a", 0).await;
    let b = machine(&cluster, "lf:", "b", 0).await;
    let (mut c, hello, sub) = client(&a, &user, &channel).await;
    let (mut stays, _, _) = client(&b, "watcher", &channel).await;
    for n in 1..=20 {
        publish_both(&a, &channel, &user, n).await;
    }
    read_until(&mut c, 20).await;
    wait_in_sync(&cluster, m, r);
    cluster.freeze(r, true);
    let _: redis::Value = cluster
        .on(m, &["CLIENT", "KILL", "TYPE", "replica"])
        .unwrap();
    for n in 21..=30 {
        assert_eq!(publish_both(&a, &channel, &user, n).await, (n, n));
    }
    read_until(&mut c, 30).await;
    drop(c);
    // On the master's slots, which the replica takes over.
    let probe = cluster.name_on(m, "c", "probe");
    cluster.kill(m);
    cluster.freeze(r, false);
    let after = publish_through_failover(&a, &probe, &channel, &user, 31, 15).await;
    println!("offsets after the failover: {after:?}");

    let Resumed {
        client: mut back,
        connected,
        direct,
        subscribed,
    } = resume(&b, &user, &channel, &hello, &sub, 30).await;
    assert_eq!(connected["recovered"], false, "{connected}");
    assert!(direct.is_empty(), "{direct:?}");
    assert_ne!(connected["epoch"], hello["epoch"], "{connected}");
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_ne!(subscribed["epoch"], sub["epoch"], "{subscribed}");
    // A resume inside the failover's window cannot read where its topics stand (no position
    // yet, still not recovered); it may be told the position once this machine's relay knows
    // it. Nothing else comes: no message of either epoch.
    while let Ok(told) = tokio::time::timeout(Duration::from_millis(300), back.recv_json()).await {
        assert!(
            matches!(told["type"].as_str(), Some("connected" | "subscribed")),
            "{told}"
        );
        assert_eq!(told["recovered"], false, "{told}");
        assert_ne!(told["epoch"], sub["epoch"], "{told}");
        assert_ne!(told["epoch"], hello["epoch"], "{told}");
    }

    // The watcher got 1–30 live; then it is told, before any message of the new epoch.
    let mut seen = 0;
    let reset = loop {
        let m = stays.recv_json().await;
        if m["type"] == "connected" {
            // Its own direct messages' topic may live on the same master.
            assert_eq!(m["recovered"], false, "{m}");
            continue;
        }
        if m["type"] != "message" {
            break m;
        }
        assert_eq!(m["offset"].as_u64().unwrap(), seen + 1, "{m}");
        seen += 1;
    };
    assert_eq!(seen, 30);
    assert_eq!(reset["type"], "subscribed", "{reset}");
    assert_eq!(reset["recovered"], false, "{reset}");
    assert_ne!(reset["epoch"], sub["epoch"], "{reset}");
    // Told where the new epoch stands: then its messages after that follow in order (none if
    // this machine's relay could only learn the position once all were published).
    let at = reset["offset"].as_u64().unwrap();
    let last = after.last().expect("published after the failover").0;
    assert!(at <= last, "{reset}");
    for offset in at + 1..=last {
        let m = loop {
            let m = stays.recv_json().await;
            if m["type"] != "connected" {
                break m;
            }
        };
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["offset"].as_u64().unwrap(), offset, "{m}");
    }
}

/// With `--history-ack-replicas 1` the same fault loses nothing acknowledged: while the
/// replica cannot confirm, publishes get 503 and are delivered to nobody; once it is promoted
/// the topic keeps its epoch, and a client resumes from 20 with everything taken since.
#[tokio::test]
async fn with_replica_acks_a_lagging_failover_loses_no_acknowledged_message() {
    let mut cluster = RedisCluster::start();
    let m = cluster.masters()[0];
    let r = replica_of(&cluster, m);
    let (channel, user) = (
        cluster.name_on(m, "c", "room"),
        cluster.name_on(m, "u", "user"),
    );
    let a = machine(&cluster, "ak:", "a", 1).await;
    let b = machine(&cluster, "ak:", "b", 1).await;
    let (mut c, hello, sub) = client(&a, &user, &channel).await;
    for n in 1..=20 {
        publish_both(&a, &channel, &user, n).await;
    }
    read_until(&mut c, 20).await;
    cluster.freeze(r, true);
    let _: redis::Value = cluster
        .on(m, &["CLIENT", "KILL", "TYPE", "replica"])
        .unwrap();
    for n in 21..=25 {
        let (status, body) = post(&a, "/publish", json!({"channel": channel, "message": n})).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("replicas"),
            "{body}"
        );
        assert_eq!(body["unknown"], json!([0]), "{body}");
    }
    c.expect_nothing_for(300).await;
    drop(c);
    cluster.kill(m);
    cluster.freeze(r, false);
    // The promoted replica needs a replica of its own before anything counts again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.masters().contains(&r) {
        assert!(Instant::now() < deadline, "the replica was never promoted");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.add_replica(r);
    let probe = cluster.name_on(r, "c", "probe");
    let after = publish_through_failover(&b, &probe, &channel, &user, 31, 15).await;
    let Resumed {
        client: mut back,
        connected,
        direct,
        subscribed,
    } = resume(&b, &user, &channel, &hello, &sub, 20).await;
    assert_eq!(connected["recovered"], true, "{connected}");
    assert_eq!(connected["epoch"], hello["epoch"], "{connected}");
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(subscribed["epoch"], sub["epoch"], "{subscribed}");
    let mut channel_got = Vec::new();
    while channel_got.len() < 15 {
        let m = back.recv_json().await;
        assert_eq!(m["type"], "message", "{m}");
        channel_got.push((m["offset"].as_u64().unwrap(), m["message"].clone()));
    }
    let user_got = direct;
    let want = |pick: fn(&(u64, u64)) -> u64| -> Vec<(u64, Value)> {
        after
            .iter()
            .zip(31u64..)
            .map(|(o, n)| (pick(o), json!(n)))
            .collect()
    };
    assert_eq!(channel_got, want(|o| o.0), "{after:?}");
    assert_eq!(user_got, want(|o| o.1), "{after:?}");
    assert_eq!(
        after.first(),
        Some(&(21, 21)),
        "offsets go on from what replicas held"
    );
}

/// A clean failover (`CLUSTER FAILOVER`: the replica catches up, then takes over) loses
/// nothing. Without replica acks the new master cannot prove that, so every topic it serves
/// moves to a new epoch (a false alarm: clients reload); with them, the epochs hold. Counted.
#[tokio::test]
async fn a_clean_failover_loses_nothing_and_its_false_alarms_are_counted() {
    const TOPICS: usize = 5;
    let cluster = RedisCluster::start();
    let m = cluster.masters()[0];
    let r = replica_of(&cluster, m);
    let channels: Vec<String> = (0..TOPICS)
        .map(|i| cluster.name_on(m, "c", &format!("clean{i}x")))
        .collect();
    // A replica's start is known to within a second (INFO's uptime): writes in its first
    // second could not be told from ones it loaded from disk.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut fleets = Vec::new();
    for (prefix, ack) in [("cd:", 0), ("ca:", 1)] {
        let a = machine(&cluster, prefix, "a", ack).await;
        let b = machine(&cluster, prefix, "b", ack).await;
        let mut positions = Vec::new();
        for channel in &channels {
            let (_, _, sub) = client(&a, "u", channel).await;
            for n in 1..=3 {
                let (status, body) =
                    post(&a, "/publish", json!({"channel": channel, "message": n})).await;
                assert_eq!(status, 202, "{body}");
            }
            positions.push(sub);
        }
        fleets.push((prefix, ack, a, b, positions));
    }
    wait_in_sync(&cluster, m, r);
    let _: redis::Value = cluster.on(r, &["CLUSTER", "FAILOVER"]).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while cluster.masters().contains(&m) {
        assert!(Instant::now() < deadline, "the failover never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (prefix, ack, _, b, positions) in &fleets {
        // Through the machine that resumes: its map of the cluster follows the failover on
        // the way (a read meeting the old map is unanswered: a brief, told false alarm).
        let probe = cluster.name_on(r, "c", "probe");
        for channel in &channels {
            publish_through_failover(b, &probe, channel, "nobody", 4, 1).await;
        }
        let mut alarms = 0;
        for (channel, sub) in channels.iter().zip(positions) {
            let hello = json!({"epoch": "00"});
            let Resumed {
                client: mut c,
                subscribed,
                ..
            } = resume(b, "u", channel, &hello, sub, 0).await;
            match subscribed["recovered"].as_bool() {
                Some(true) => {
                    for n in 1..=4 {
                        let m = c.recv_message().await;
                        assert_eq!(m, json!(n), "nothing lost, in order");
                    }
                }
                _ => {
                    assert_eq!(subscribed["recovered"], false, "{subscribed}");
                    assert_eq!(subscribed["offset"], 4, "{subscribed}");
                    alarms += 1
                }
            }
        }
        println!("clean failover, {prefix} (--history-ack-replicas {ack}): {alarms} false alarms of {TOPICS} topics");
        match ack {
            0 => assert_eq!(
                alarms, TOPICS,
                "without acks a failover cannot be proved clean"
            ),
            _ => assert_eq!(alarms, 0, "with acks a clean failover keeps every epoch"),
        }
    }
}

/// Replica acknowledgements are Redis's: asked for without `--redis` and history, the server
/// refuses to start rather than promise what it cannot keep.
#[test]
fn replica_acks_without_redis_history_are_refused_at_start() {
    let mut config = fanfare::Config::new();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.token_secret = Some("s".into());
    config.api_key = Some("k".into());
    config.history_size = 10;
    config.history_ack_replicas = 1;
    let refused = fanfare::Server::start(config).err().expect("refused");
    assert!(refused.to_string().contains("--redis"), "{refused}");
}

/// The append script keeps the continuation ticket `t` only for a write every replica had to
/// confirm: a write answered without that (another machine without replica acks, or a master
/// with more replicas than it waits for) takes it away, so a promoted replica that may lack
/// that write starts a new epoch instead of giving its offset again.
#[test]
fn only_a_write_every_replica_confirmed_lets_a_promoted_replica_continue() {
    let redis = common::RedisServer::start();
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let append = |c: &mut redis::Connection, confirmed: bool| -> String {
        let publish = if confirmed { "" } else { "PUBLISH" };
        let answers: Vec<String> = redis::cmd("EVAL")
            .arg(fanfare::bridge::history::APPEND)
            .arg(2)
            .arg(&["o:t", "h:t", "0e0e", "100", "60000", publish])
            .arg(&["old", "", "0", "1", ","])
            .arg(if confirmed { "1" } else { "" })
            .arg(&["60000", "hdr", "chan", "{}", "2"])
            .query(c)
            .unwrap();
        answers[0].clone()
    };
    // The master's data moves to a replica promoted long after it started ("old" is what it
    // continued); the read tells whether the epoch holds.
    let epoch_after_failover = |c: &mut redis::Connection| -> String {
        let reply: Vec<String> = redis::cmd("EVAL")
            .arg(fanfare::bridge::history::READ)
            .arg(2)
            .arg(&["o:t", "h:t", "", "", "1f1f", "60000", "0"])
            .arg(&["new", "old", "0", "1", ","])
            .query(c)
            .unwrap();
        reply[0].clone()
    };
    assert_eq!(append(&mut c, true), "1 0e0e");
    let t: Option<String> = redis::cmd("HGET")
        .arg("o:t")
        .arg("t")
        .query(&mut c)
        .unwrap();
    assert!(t.is_some());
    let _: () = redis::cmd("HSET")
        .arg("o:t")
        .arg("l")
        .arg("old")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        epoch_after_failover(&mut c),
        "0e0e",
        "every replica held it: continued"
    );

    let _: () = redis::cmd("HSET")
        .arg("o:t")
        .arg("l")
        .arg("old")
        .query(&mut c)
        .unwrap();
    assert_eq!(append(&mut c, false), "2 0e0e");
    let t: Option<String> = redis::cmd("HGET")
        .arg("o:t")
        .arg("t")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        t, None,
        "a write not every replica confirmed takes the ticket away"
    );
    let _: () = redis::cmd("HSET")
        .arg("o:t")
        .arg("l")
        .arg("old")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        epoch_after_failover(&mut c),
        "1f1f",
        "a new epoch, not offset 2 again"
    );
}
