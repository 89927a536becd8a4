//! History and recovery across a fleet (PROTOCOL.md section 7 with `--redis`): offsets are the
//! same on every machine, a client resumes anywhere, two machines publishing to one topic are
//! seen in one order, and a publish that Redis cannot take gets 503, never a silent loss.

mod common;

use common::{post_offset, subscribe_since, RedisServer, TestClient, TestServer};
use serde_json::{json, Value};

async fn machine(redis: &RedisServer, node: &str) -> TestServer {
    machine_with(redis, node, 200).await
}

/// A machine of the fleet, once it reaches Redis and holds its node id.
async fn machine_with(redis: &RedisServer, node: &str, size: u32) -> TestServer {
    machine_kept(redis, node, size, None).await
}

/// [`machine_with`], keeping history `ttl` seconds when given.
async fn machine_kept(redis: &RedisServer, node: &str, size: u32, ttl: Option<u64>) -> TestServer {
    let (url, node) = (redis.url(), node.to_string());
    let s = TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.redis_prefix = "hf:".into();
        c.node_id = Some(node);
        c.history_size = size;
        if let Some(ttl) = ttl {
            c.history_ttl = ttl;
        }
    });
    s.wait_readyz(200).await;
    s
}

async fn connected(s: &TestServer, user: &str, channels: &[&str]) -> (TestClient, Value) {
    let mut c = s.connect(user, channels).await;
    let hello = c.recv_json().await;
    assert_eq!(hello["type"], "connected", "{hello}");
    (c, hello)
}

/// The `subscribed` that says a channel's epoch changed under a connected client. The same
/// change of its direct messages' topic (`connected`) may come before or after it, or after
/// later messages: it is a topic of its own.
async fn channel_reset(c: &mut TestClient) -> Value {
    loop {
        let reset = c.recv_json().await;
        assert_eq!(reset["recovered"], false, "{reset}");
        match reset["type"].as_str() {
            Some("subscribed") => return reset,
            Some("connected") => {}
            _ => panic!("{reset}"),
        }
    }
}

/// A `/batch` that gets 503: its body, and its text for messages.
async fn batch_refused(s: &TestServer, batch: Value) -> (Value, String) {
    let (status, text) = s.post("/batch", &batch.to_string()).await;
    assert_eq!(status, 503, "{text}");
    (serde_json::from_str(&text).unwrap(), text)
}

/// The next `n` messages, as (offset, message) pairs.
async fn next_messages(c: &mut TestClient, n: usize) -> Vec<(u64, Value)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let m = c.recv_json().await;
        // The direct messages' topic told of a new epoch: another topic's news.
        if m["type"] == "connected" && m["recovered"] == false {
            continue;
        }
        assert_eq!(m["type"], "message", "{m}");
        got.push((m["offset"].as_u64().unwrap(), m["message"].clone()));
    }
    got
}

#[tokio::test]
async fn a_client_resumes_on_another_machine_with_exactly_what_it_missed() {
    let redis = RedisServer::start();
    let (a, b) = (machine(&redis, "a").await, machine(&redis, "b").await);
    let (mut c, hello) = connected(&a, "42", &["news"]).await;
    assert_eq!(hello["offset"], 0);
    let user_epoch = hello["epoch"].as_str().unwrap().to_string();
    let first = subscribe_since(&mut c, "news", None).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for n in 1..=3u64 {
        let offset = post_offset(&b, "/publish", json!({"channel": "news", "message": n})).await;
        assert_eq!(offset, n);
        assert_eq!(next_messages(&mut c, 1).await, [(n, json!(n))]);
    }
    let direct = post_offset(&a, "/message", json!({"userId": "42", "message": "d1"})).await;
    assert_eq!(direct, 1);
    assert_eq!(next_messages(&mut c, 1).await, [(1, json!("d1"))]);
    drop(c);
    for n in 4..=103u64 {
        post_offset(&a, "/publish", json!({"channel": "news", "message": n})).await;
        post_offset(&b, "/message", json!({"userId": "42", "message": n})).await;
    }
    // Back on the other machine, with both positions.
    let token = b.token("42", &["news"]);
    let path = format!("/ws?token={token}&since=1&epoch={user_epoch}");
    let mut back = TestClient::try_connect(b.addr, &path, &[]).await.unwrap();
    let hello = back.recv_json().await;
    assert_eq!(
        hello,
        json!({"type": "connected", "recovered": true, "offset": 101, "epoch": user_epoch})
    );
    let missed: Vec<_> = (4..=103u64).map(|n| (n - 2, json!(n))).collect();
    assert_eq!(next_messages(&mut back, 100).await, missed);
    let reply = subscribe_since(&mut back, "news", Some((3, &epoch))).await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "channel": "news", "recovered": true, "offset": 103, "epoch": epoch})
    );
    let missed: Vec<_> = (4..=103u64).map(|n| (n, json!(n))).collect();
    assert_eq!(next_messages(&mut back, 100).await, missed);
    post_offset(
        &a,
        "/publish",
        json!({"channel": "news", "message": "live"}),
    )
    .await;
    assert_eq!(next_messages(&mut back, 1).await, [(104, json!("live"))]);
    back.expect_nothing_for(100).await;
}

#[tokio::test]
async fn what_the_history_no_longer_has_is_not_recovered_and_says_where_it_stands() {
    let redis = RedisServer::start();
    let (a, b) = (
        machine_with(&redis, "a", 10).await,
        machine_with(&redis, "b", 10).await,
    );
    let (mut c, _) = connected(&a, "7", &["room"]).await;
    let epoch = subscribe_since(&mut c, "room", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    drop(c);
    // Far more than the 10 kept (the stream is trimmed in blocks, so well past it).
    let batch: Vec<_> = (0..500)
        .map(|n| json!({"channel": "room", "message": n}))
        .collect();
    let (status, text) = a.post("/batch", &json!(batch).to_string()).await;
    assert_eq!(status, 202, "{text}");
    let (mut back, _) = connected(&b, "7", &["room", "nothing"]).await;
    let reply = subscribe_since(&mut back, "room", Some((1, &epoch))).await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "channel": "room", "recovered": false, "offset": 500, "epoch": epoch})
    );
    let reply = subscribe_since(&mut back, "nothing", Some((1, "ffff"))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["offset"], 0, "{reply}");
    post_offset(
        &b,
        "/publish",
        json!({"channel": "room", "message": "next"}),
    )
    .await;
    assert_eq!(next_messages(&mut back, 1).await, [(501, json!("next"))]);
    // The same for direct messages, at connect.
    let user_epoch = hello_epoch(&a, "8").await;
    let batch: Vec<_> = (0..500)
        .map(|n| json!({"userId": "8", "message": n}))
        .collect();
    let (status, text) = b.post("/batch", &json!(batch).to_string()).await;
    assert_eq!(status, 202, "{text}");
    let path = format!("/ws?token={}&since=1&epoch={user_epoch}", b.token("8", &[]));
    let mut late = TestClient::try_connect(b.addr, &path, &[]).await.unwrap();
    assert_eq!(
        late.recv_json().await,
        json!({"type": "connected", "recovered": false, "offset": 500, "epoch": user_epoch})
    );
    late.expect_nothing_for(100).await;
}

/// The epoch of `user`'s direct messages, from a connection that then closes.
async fn hello_epoch(s: &TestServer, user: &str) -> String {
    let (_, hello) = connected(s, user, &[]).await;
    hello["epoch"].as_str().unwrap().to_string()
}

/// A machine restarted in a rolling restart: its clients come back at once, before its Redis
/// links are up (here Redis is slow to answer). It answers them once it reaches Redis, so a
/// resume is recovered, not told that something was lost (which would make every such client
/// reload).
#[tokio::test]
async fn a_machine_just_started_answers_a_resuming_client_once_it_reaches_redis() {
    let redis = RedisServer::start();
    let a = machine(&redis, "a").await;
    let epoch = hello_epoch(&a, "42").await;
    post_offset(&a, "/message", json!({"userId": "42", "message": 1})).await;
    drop(a);
    redis.freeze(true);
    let url = redis.url();
    let again = TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.redis_prefix = "hf:".into();
        c.node_id = Some("a".into());
        c.history_size = 200;
    });
    let path = format!("/ws?token={}&since=0&epoch={epoch}", again.token("42", &[]));
    let back = async {
        let mut back = TestClient::try_connect(again.addr, &path, &[])
            .await
            .unwrap();
        let hello = back.recv_json().await;
        (back, hello)
    };
    let thaw = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        redis.freeze(false);
    };
    let ((mut back, hello), ()) = tokio::join!(back, thaw);
    assert_eq!(
        hello,
        json!({"type": "connected", "recovered": true, "offset": 1, "epoch": epoch})
    );
    assert_eq!(next_messages(&mut back, 1).await, [(1, json!(1))]);
}

#[tokio::test]
async fn two_machines_publishing_to_one_topic_are_seen_in_one_order_everywhere() {
    const EACH: u64 = 300;
    let redis = RedisServer::start();
    let (a, b) = (machine(&redis, "a").await, machine(&redis, "b").await);
    let mut clients = Vec::new();
    for (s, user) in [(&a, "1"), (&a, "2"), (&b, "3"), (&b, "4")] {
        let (mut c, _) = connected(s, user, &["race"]).await;
        subscribe_since(&mut c, "race", None).await;
        clients.push(c);
    }
    let publisher = |s: &TestServer, tag: &'static str| {
        let addr = s.addr;
        tokio::spawn(async move {
            for n in 0..EACH {
                let body = json!({"channel": "race", "message": format!("{tag}{n}")});
                let (status, text) = common::post_to(addr, "/publish", &body.to_string()).await;
                assert_eq!(status, 202, "{text}");
            }
        })
    };
    let (pa, pb) = (publisher(&a, "a"), publisher(&b, "b"));
    pa.await.unwrap();
    pb.await.unwrap();
    let mut orders = Vec::new();
    for c in &mut clients {
        let got = next_messages(c, 2 * EACH as usize).await;
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (1..=2 * EACH).collect::<Vec<_>>());
        orders.push(got);
        c.expect_nothing_for(50).await;
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "one order everywhere"
    );
    // Each machine's own messages in the order it accepted them.
    for tag in ["a", "b"] {
        let own: Vec<String> = orders[0]
            .iter()
            .filter_map(|(_, m)| m.as_str().filter(|s| s.starts_with(tag)).map(String::from))
            .collect();
        let expected: Vec<String> = (0..EACH).map(|n| format!("{tag}{n}")).collect();
        assert_eq!(own, expected);
    }
}

#[tokio::test]
async fn a_publish_redis_cannot_take_gets_503_and_the_retry_is_delivered_once() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let a = machine(&redis, "a").await;
    let (mut c, _) = connected(&a, "9", &["news"]).await;
    subscribe_since(&mut c, "news", None).await;
    post_offset(
        &a,
        "/publish",
        json!({"channel": "news", "message": "before"}),
    )
    .await;
    assert_eq!(next_messages(&mut c, 1).await, [(1, json!("before"))]);
    redis.kill();
    a.wait_readyz(503).await;
    let (status, text) = a
        .post(
            "/publish",
            &json!({"channel": "news", "message": "during"}).to_string(),
        )
        .await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("not delivered; retry"), "{text}");
    let batch = json!([{"channel": "news", "message": 1}, {"userId": "9", "message": 2}]);
    let (status, text) = a.post("/batch", &batch.to_string()).await;
    assert_eq!(status, 503, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("took 0 of 2"),
        "{text}"
    );
    assert_eq!(body["offsets"], json!([null, null]), "{text}");
    assert_eq!(body["unknown"], json!([]), "{text}");
    let (status, text) = a
        .post(
            "/message",
            &json!({"userId": "9", "message": "direct"}).to_string(),
        )
        .await;
    assert_eq!(status, 503, "{text}");
    // Broadcasts have no history: delivered here, as without history.
    let (status, _) = a
        .post("/broadcast", &json!({"message": "all"}).to_string())
        .await;
    assert_eq!(status, 202);
    assert_eq!(c.recv_json().await["message"], "all");
    // Where the user stands cannot be read: said, not guessed.
    let path = format!("/ws?token={}&since=1&epoch=ab", a.token("9", &[]));
    let mut blind = TestClient::try_connect(a.addr, &path, &[]).await.unwrap();
    assert_eq!(
        blind.recv_json().await,
        json!({"type": "connected", "recovered": false})
    );
    let _redis = RedisServer::on_port(port);
    a.wait_readyz(200).await;
    // The new Redis lost everything: each topic of the connection says so (new epoch, not
    // recovered) as soon as the machine finds out, and before the topic's next message.
    let offset = post_offset(
        &a,
        "/publish",
        json!({"channel": "news", "message": "during"}),
    )
    .await;
    assert_eq!(offset, 1);
    let (mut resets, mut message): (Vec<Value>, Option<Value>) = (Vec::new(), None);
    while resets.len() < 2 || message.is_none() {
        let frame = c.recv_json().await;
        match frame["type"].as_str() {
            Some("message") => {
                assert!(resets.iter().any(|r| r["type"] == "subscribed"), "{frame}");
                message = Some(frame);
            }
            _ => resets.push(frame),
        }
    }
    let message = message.unwrap();
    assert_eq!(
        (&message["offset"], &message["message"]),
        (&json!(1), &json!("during"))
    );
    resets.sort_by_key(|r| r["type"].to_string());
    assert_eq!(resets.len(), 2, "{resets:?}");
    for (reset, kind) in resets.iter().zip(["connected", "subscribed"]) {
        assert_eq!(reset["type"], kind, "{reset}");
        assert_eq!(reset["recovered"], false, "{reset}");
        assert_eq!(reset["offset"], 0, "{reset}");
    }
    assert_ne!(resets[1]["epoch"], json!(null));
    c.expect_nothing_for(200).await;
}

/// A Redis restarted from disk cannot prove it holds everything it acknowledged (an AOF
/// written every second, a snapshot): even one that did (here `appendfsync always`) moves each
/// topic to a new epoch, so a connected client is told before the next message and a resuming
/// one reloads. A false alarm costs a reload; nothing is lost or given twice.
#[tokio::test]
async fn a_redis_restart_moves_its_topics_to_a_new_epoch_even_when_it_kept_its_data() {
    let (dir, port) = (scratch_dir("aof"), common::free_port());
    let mut redis = RedisServer::persistent(port, &dir);
    let (a, b) = (machine(&redis, "a").await, machine(&redis, "b").await);
    let (mut stays, _) = connected(&a, "1", &["news"]).await;
    let epoch = subscribe_since(&mut stays, "news", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 1..=5u64 {
        post_offset(&b, "/publish", json!({"channel": "news", "message": n})).await;
    }
    assert_eq!(next_messages(&mut stays, 5).await.last().unwrap().0, 5);
    redis.kill();
    a.wait_readyz(503).await;
    b.wait_readyz(503).await;
    redis = RedisServer::persistent(port, &dir);
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    post_offset(&b, "/publish", json!({"channel": "news", "message": 6})).await;
    let reset = channel_reset(&mut stays).await;
    assert_ne!(reset["epoch"], epoch.as_str(), "{reset}");
    assert_eq!(next_messages(&mut stays, 1).await, [(6, json!(6))]);
    let (mut back, _) = connected(&b, "2", &["news"]).await;
    let reply = subscribe_since(&mut back, "news", Some((2, &epoch))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["offset"], 6, "{reply}");
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The window the catch-up cannot close: nobody relays the topic when Redis comes back from an
/// older snapshot, and the next publishes come before any read. They must not reuse the
/// offsets Redis forgot: a client resuming from one of those is told `recovered: false`, on a
/// channel and for direct messages alike.
#[tokio::test]
async fn appends_after_redis_forgot_acknowledged_messages_start_a_new_epoch_first() {
    let (dir, port) = (scratch_dir("rdb-append"), common::free_port());
    let mut redis = RedisServer::snapshotting(port, &dir);
    let (a, b) = (machine(&redis, "a").await, machine(&redis, "b").await);
    let (mut c, hello) = connected(&a, "7", &["news"]).await;
    let user_epoch = hello["epoch"].as_str().unwrap().to_string();
    let epoch = subscribe_since(&mut c, "news", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 1..=30u64 {
        post_offset(&b, "/publish", json!({"channel": "news", "message": n})).await;
        post_offset(&b, "/message", json!({"userId": "7", "message": n})).await;
        if n == 20 {
            redis_cmd(port, &["SAVE"]);
        }
    }
    let mut last = (0, 0);
    while last != (30, 30) {
        let m = c.recv_json().await;
        match m["channel"].is_string() {
            true => last.0 = m["offset"].as_u64().unwrap(),
            false => last.1 = m["offset"].as_u64().unwrap(),
        }
    }
    drop(c);
    redis.kill();
    b.wait_readyz(503).await;
    redis = RedisServer::snapshotting(port, &dir);
    b.wait_readyz(200).await;
    for n in 31..=45u64 {
        post_offset(&b, "/publish", json!({"channel": "news", "message": n})).await;
        post_offset(&b, "/message", json!({"userId": "7", "message": n})).await;
    }
    let path = format!(
        "/ws?token={}&since=30&epoch={user_epoch}",
        a.token("7", &["news"])
    );
    let mut back = TestClient::try_connect(a.addr, &path, &[]).await.unwrap();
    let hello = back.recv_json().await;
    assert_eq!(hello["type"], "connected", "{hello}");
    assert_eq!(hello["recovered"], false, "{hello}");
    assert_ne!(hello["epoch"], user_epoch.as_str(), "{hello}");
    let reply = subscribe_since(&mut back, "news", Some((30, &epoch))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(reply["epoch"], epoch.as_str(), "{reply}");
    back.expect_nothing_for(200).await;
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn resubscribing_anywhere_while_two_machines_publish_misses_nothing_and_repeats_nothing() {
    const N: u64 = 400;
    let redis = RedisServer::start();
    let (a, b) = (machine(&redis, "a").await, machine(&redis, "b").await);
    let (mut steady, _) = connected(&b, "7", &["live"]).await;
    subscribe_since(&mut steady, "live", None).await;
    let addrs = [a.addr, b.addr];
    let publisher = tokio::spawn(async move {
        for n in 1..=N {
            let body = json!({"channel": "live", "message": n}).to_string();
            let addr = addrs[n as usize % 2];
            let (status, text) = common::post_to(addr, "/publish", &body).await;
            assert_eq!(status, 202, "{text}");
        }
    });
    let mut seen: Vec<u64> = Vec::new();
    let mut resume: Option<(u64, String)> = None;
    let mut rounds = 0;
    while seen.last().copied() != Some(N) {
        rounds += 1;
        assert!(rounds < 1000, "never caught up");
        let machine = [&a, &b][rounds % 2];
        let (mut c, _) = connected(machine, "42", &["live"]).await;
        let since = resume.as_ref().map(|(o, e)| (*o, e.as_str()));
        let reply = subscribe_since(&mut c, "live", since).await;
        if resume.is_some() {
            assert_eq!(reply["recovered"], true, "{reply}");
        }
        let epoch = reply["epoch"].as_str().unwrap().to_string();
        for _ in 0..20 {
            if seen.last().copied() == Some(N) {
                break;
            }
            let m = c.recv_json().await;
            assert_eq!(m["type"], "message", "{m}");
            seen.push(m["offset"].as_u64().unwrap());
        }
        resume = seen.last().map(|o| (*o, epoch));
    }
    publisher.await.unwrap();
    let offsets: Vec<u64> = next_messages(&mut steady, N as usize)
        .await
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(offsets, (1..=N).collect::<Vec<_>>());
    let first = seen[0];
    assert_eq!(
        seen,
        (first..=N).collect::<Vec<_>>(),
        "a gap or a repeat at a seam"
    );
    assert!(rounds > 3);
}

#[tokio::test]
async fn a_backend_subscribe_through_another_machine_misses_nothing_published_right_after_it() {
    let redis = RedisServer::start();
    let (a, b) = (machine(&redis, "a").await, machine(&redis, "b").await);
    for round in 0..5 {
        let channel = format!("vip{round}");
        let (mut steady, _) = connected(&b, "steady", &[&channel]).await;
        subscribe_since(&mut steady, &channel, None).await;
        post_offset(
            &a,
            "/publish",
            json!({"channel": channel, "message": "old"}),
        )
        .await;
        let (mut c, _) = connected(&b, "42", &[]).await;
        a.publish("/subscribe", json!({"userId": "42", "channel": channel}))
            .await;
        post_offset(
            &a,
            "/publish",
            json!({"channel": channel, "message": "welcome"}),
        )
        .await;
        let subscribed = c.recv_json().await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        assert_eq!(subscribed["recovered"], json!(null), "{subscribed}");
        assert_eq!(
            next_messages(&mut c, 1).await,
            [(2, json!("welcome"))],
            "round {round}"
        );
        c.expect_nothing_for(50).await;
    }
}

#[tokio::test]
async fn the_backends_word_comes_in_order_with_the_messages_before_it() {
    let redis = RedisServer::start();
    let a = machine(&redis, "a").await;
    for round in 0..5 {
        let (mut c, _) = connected(&a, "42", &[]).await;
        post_offset(&a, "/message", json!({"userId": "42", "message": round})).await;
        a.publish("/disconnect", json!({"userId": "42", "reason": "bye"}))
            .await;
        assert_eq!(next_messages(&mut c, 1).await[0].1, json!(round));
        assert_eq!(c.recv_close().await.0, 4003);
    }
}

#[tokio::test]
async fn a_quiet_topic_with_a_recipient_keeps_its_position_in_redis() {
    let redis = RedisServer::start();
    let a = machine_kept(&redis, "a", 10, Some(1)).await;
    let (mut c, _) = connected(&a, "1", &["quiet"]).await;
    subscribe_since(&mut c, "quiet", None).await;
    post_offset(&a, "/publish", json!({"channel": "quiet", "message": 1})).await;
    // Remembered 10 × the TTL after the last message (10 s); the machine with a recipient
    // pushes that back every TTL.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("hf:o:c:quiet")
        .query(&mut conn)
        .unwrap();
    assert!(ttl > 8000, "position expires in {ttl} ms: not kept alive");
}

/// An empty directory of this test process, for Redis's files.
fn scratch_dir(kind: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fanfare-{kind}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn redis_cmd(port: u16, args: &[&str]) {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query(&mut c).unwrap();
}

async fn machine_at(url: String, node: &str) -> TestServer {
    let node = node.to_string();
    let s = TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.redis_prefix = "hf:".into();
        c.node_id = Some(node);
        c.history_size = 100;
    });
    s.wait_readyz(200).await;
    s
}

/// Only the subscribing link is down (Redis refuses its SUBSCRIBE), the publishing one is up:
/// a client that connects then reads its position, and the catch-up must start there.
#[tokio::test]
async fn a_position_read_while_only_the_subscriber_is_down_is_caught_up_from() {
    let redis = RedisServer::start();
    let port = redis.port;
    redis_cmd(
        port,
        &["ACL", "SETUSER", "a", "on", ">pw", "~*", "&*", "+@all"],
    );
    let a = machine_at(format!("redis://a:pw@127.0.0.1:{port}"), "a").await;
    let b = machine_at(redis.url(), "b").await;
    redis_cmd(port, &["ACL", "SETUSER", "a", "resetchannels"]);
    redis_cmd(port, &["CLIENT", "KILL", "USER", "a"]);
    a.wait_readyz(503).await;
    // The publisher reconnects at once (50 ms backoff); the subscriber cannot.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let hello = loop {
        let (_, hello) = connected(&a, "9", &[]).await;
        if hello["offset"] == 0 {
            break hello;
        }
        assert!(std::time::Instant::now() < deadline, "{hello}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let path = format!(
        "/ws?token={}&since=0&epoch={}",
        a.token("9", &[]),
        hello["epoch"].as_str().unwrap()
    );
    let mut c = TestClient::try_connect(a.addr, &path, &[]).await.unwrap();
    assert_eq!(c.recv_json().await["recovered"], true);
    for n in 1..=3u64 {
        post_offset(&b, "/message", json!({"userId": "9", "message": n})).await;
    }
    redis_cmd(port, &["ACL", "SETUSER", "a", "allchannels"]);
    a.wait_readyz(200).await;
    let got = next_messages(&mut c, 3).await;
    assert_eq!(got, [(1, json!(1)), (2, json!(2)), (3, json!(3))]);
}

/// Messages still on their way when a machine unsubscribes a topic must not leave a stale
/// memory of it, which would make a later subscriber's next message look like a gap.
#[tokio::test]
async fn messages_arriving_after_an_unsubscribe_do_not_mislead_a_later_subscriber() {
    let redis = RedisServer::start();
    let (a, b) = (machine(&redis, "a").await, machine(&redis, "b").await);
    let (mut c1, _) = connected(&a, "1", &["x"]).await;
    subscribe_since(&mut c1, "x", None).await;
    let baddr = b.addr;
    let flood = tokio::spawn(async move {
        for _ in 0..30 {
            let batch: Vec<_> = (0..200)
                .map(|n| json!({"channel": "x", "message": n}))
                .collect();
            common::post_to(baddr, "/batch", &json!(batch).to_string()).await;
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    c1.send_json(json!({"type": "unsubscribe", "channel": "x"}))
        .await;
    flood.await.unwrap();
    drop(c1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (mut c2, _) = connected(&a, "2", &["x"]).await;
    let at = subscribe_since(&mut c2, "x", None).await["offset"]
        .as_u64()
        .unwrap();
    post_offset(&b, "/publish", json!({"channel": "x", "message": "next"})).await;
    assert_eq!(next_messages(&mut c2, 1).await, [(at + 1, json!("next"))]);
}

/// Redis comes back with less than it relayed (an older snapshot; likewise a lagging replica
/// or `appendfsync everysec` after a crash): the machines notice when they catch up, the topic
/// moves to a new epoch and its subscribers are told, instead of offsets being given twice.
#[tokio::test]
async fn a_redis_back_from_an_older_snapshot_moves_the_topic_to_a_new_epoch() {
    let (dir, port) = (scratch_dir("rdb"), common::free_port());
    let mut redis = RedisServer::snapshotting(port, &dir);
    let (a, b) = (machine(&redis, "a").await, machine(&redis, "b").await);
    let (mut c, _) = connected(&a, "1", &["news"]).await;
    let epoch = subscribe_since(&mut c, "news", None).await["epoch"].clone();
    for n in 1..=5u64 {
        post_offset(&b, "/publish", json!({"channel": "news", "message": n})).await;
        if n == 3 {
            redis_cmd(port, &["SAVE"]);
        }
    }
    assert_eq!(next_messages(&mut c, 5).await.last().unwrap().0, 5);
    redis.kill();
    a.wait_readyz(503).await;
    b.wait_readyz(503).await;
    redis = RedisServer::snapshotting(port, &dir);
    let reset = channel_reset(&mut c).await;
    assert_eq!(reset["offset"], 3, "{reset}");
    assert_ne!(reset["epoch"], epoch, "{reset}");
    b.wait_readyz(200).await;
    for n in 6..=8u64 {
        post_offset(&b, "/publish", json!({"channel": "news", "message": n})).await;
    }
    let got = next_messages(&mut c, 3).await;
    assert_eq!(got, [(4, json!(6)), (5, json!(7)), (6, json!(8))]);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis refuses one message of a batch (here its topic's key is of the wrong type): the 503
/// says which were taken, so the caller retries exactly the others.
#[tokio::test]
async fn a_batch_redis_takes_in_part_says_which_messages_were_taken() {
    let redis = RedisServer::start();
    let a = machine(&redis, "a").await;
    let (mut c, _) = connected(&a, "1", &["good"]).await;
    subscribe_since(&mut c, "good", None).await;
    redis_cmd(redis.port, &["SET", "hf:o:c:broken", "not a hash"]);
    let batch = json!([
        {"channel": "good", "message": 1},
        {"channel": "broken", "message": 2},
        {"channel": "good", "message": 3},
    ]);
    let (body, text) = batch_refused(&a, batch).await;
    assert_eq!(body["offsets"], json!([1, null, 2]), "{text}");
    assert_eq!(body["unknown"], json!([]), "{text}");
    assert!(
        body["error"].as_str().unwrap().contains("took 2 of 3"),
        "{text}"
    );
    assert_eq!(
        next_messages(&mut c, 2).await,
        [(1, json!(1)), (2, json!(3))]
    );
}

/// Appends waiting together go to Redis in one call of the append script (what a call costs
/// beside its commands was most of what an append cost Redis), which reads a topic's position
/// once, and each is still answered and delivered as itself, in order.
#[tokio::test]
async fn appends_waiting_together_take_one_script_call() {
    let redis = RedisServer::start();
    let a = machine(&redis, "a").await;
    let (mut c, _) = connected(&a, "7", &["many"]).await;
    subscribe_since(&mut c, "many", None).await;
    let calls = |command: &str| -> u64 {
        let stats: String = common::redis_query(redis.port, &["INFO", "commandstats"]).unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    let (before, reads_before) = (calls("evalsha"), calls("hmget"));
    let batch: Vec<Value> = (1..=50)
        .map(|n| json!({"channel": "many", "message": n}))
        .collect();
    let (status, text) = a.post("/batch", &Value::from(batch).to_string()).await;
    assert_eq!(status, 202, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["offsets"],
        json!((1..=50).collect::<Vec<u64>>()),
        "{text}"
    );
    let made = calls("evalsha") - before;
    assert!(made < 25, "{made} script calls for 50 appends");
    // One topic: its position is read once a call.
    let reads = calls("hmget") - reads_before;
    assert!(reads <= made, "{reads} position reads in {made} calls");
    let got = next_messages(&mut c, 50).await;
    let want: Vec<(u64, Value)> = (1..=50u64).map(|n| (n, json!(n))).collect();
    assert_eq!(got, want);
}

/// A 202 says where its message was taken: the offset and the epoch it belongs to (an offset
/// alone means nothing once the epoch changes), for one message and for a batch.
#[tokio::test]
async fn a_202_names_the_epoch_of_its_offsets() {
    let redis = RedisServer::start();
    let a = machine(&redis, "a").await;
    let (mut c, hello) = connected(&a, "5", &["news"]).await;
    let epoch = subscribe_since(&mut c, "news", None).await["epoch"].clone();
    let (status, text) = a
        .post(
            "/publish",
            &json!({"channel": "news", "message": 1}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (body["offset"].clone(), body["epoch"].clone()),
        (json!(1), epoch.clone())
    );
    let batch = json!([
        {"channel": "news", "message": 2},
        {"userId": "5", "message": 3},
    ]);
    let (status, text) = a.post("/batch", &batch.to_string()).await;
    assert_eq!(status, 202, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["offsets"], json!([2, 1]), "{body}");
    assert_eq!(body["epochs"], json!([epoch, hello["epoch"]]), "{body}");
}

/// A subscribe alone makes Redis remember the topic's position for 2 × the TTL, not 10 ×
/// (a sprayer of distinct channels used to leave a key each for 50 minutes); a published
/// topic's position is kept the full 10 ×.
#[tokio::test]
async fn a_position_nobody_published_to_is_kept_briefly_in_redis() {
    let redis = RedisServer::start();
    let a = machine(&redis, "a").await;
    let (mut c, _) = connected(&a, "6", &["quiet", "busy"]).await;
    subscribe_since(&mut c, "quiet", None).await;
    subscribe_since(&mut c, "busy", None).await;
    post_offset(&a, "/publish", json!({"channel": "busy", "message": 1})).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let pttl = |conn: &mut redis::Connection, key: &str| -> i64 {
        redis::cmd("PTTL").arg(key).query(conn).unwrap()
    };
    let ttl_ms = 300_000;
    let quiet = pttl(&mut conn, "hf:o:c:quiet");
    assert!(quiet > 0 && quiet <= 2 * ttl_ms, "{quiet}");
    let busy = pttl(&mut conn, "hf:o:c:busy");
    assert!(busy > 2 * ttl_ms, "{busy}");
}

/// A Redis at `maxmemory` (no eviction) refuses history writes, a new topic's too: the 503
/// says so, `/readyz` says 503 too (it used to say 200 while every history publish failed),
/// and both recover once Redis has room again.
#[tokio::test]
async fn a_redis_out_of_memory_is_said_by_the_503_and_by_readyz() {
    let redis = RedisServer::start();
    let a = machine(&redis, "a").await;
    redis_cmd(
        redis.port,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    redis_cmd(redis.port, &["CONFIG", "SET", "maxmemory", "1"]);
    // Redis may still take the first write after the limit is set.
    let mut refused = None;
    for _ in 0..10 {
        let body = json!({"channel": "news", "message": 1}).to_string();
        if let (503, text) = a.post("/publish", &body).await {
            refused = Some(text);
            break;
        }
    }
    let text = refused.expect("Redis at maxmemory refused no write");
    assert!(text.contains("out of memory"), "{text}");
    a.wait_readyz(503).await;
    let (_, why) = a.get("/readyz").await;
    assert!(why.contains("out of memory"), "{why}");
    // A topic Redis has never seen, among others in one call: nothing of it gets past the
    // limit either (its stream's DEL must not come first: a write that frees the rest).
    let batch = json!([
        {"channel": "news", "message": 3},
        {"channel": "fresh", "message": 4},
        {"channel": "news", "message": 5},
    ]);
    let (body, text) = batch_refused(&a, batch).await;
    assert_eq!(body["offsets"], json!([null, null, null]), "{text}");
    redis_cmd(redis.port, &["CONFIG", "SET", "maxmemory", "0"]);
    a.wait_readyz(200).await;
    post_offset(&a, "/publish", json!({"channel": "news", "message": 2})).await;
}

/// A topic's stream gone while its position stays (evicted under `maxmemory`, or deleted): the
/// next append makes it again, with an expiry, although the position's was pushed back just
/// before (appends push expiries back only when the stream has less than the TTL left).
#[tokio::test]
async fn a_stream_made_again_by_an_append_expires_like_any_other() {
    let redis = RedisServer::start();
    let a = machine(&redis, "a").await;
    let publish = |n: u64| post_offset(&a, "/publish", json!({"channel": "kept", "message": n}));
    assert_eq!(publish(1).await, 1);
    let ttl_ms = |key: &str| -> i64 { common::redis_query(redis.port, &["PTTL", key]).unwrap() };
    let (stream, position) = ("hf:h:c:kept", "hf:o:c:kept");
    // The default --history-ttl, 300 s.
    let ttl = 300_000;
    assert!(
        ttl_ms(stream) > ttl,
        "pushed back a tenth more than the TTL"
    );
    assert!(ttl_ms(position) > 10 * ttl, "the position too");
    assert_eq!(publish(2).await, 2);
    redis_cmd(redis.port, &["DEL", stream]);
    assert_eq!(publish(3).await, 3);
    assert!(ttl_ms(stream) > 0, "the stream made again expires");
}

/// An append pushes the expiries back only when due (the hash's `x`, a tenth of the TTL after
/// the last push), yet after every append the stream still has at least the TTL left.
#[tokio::test]
async fn after_every_append_the_stream_has_at_least_the_ttl_left() {
    let redis = RedisServer::start();
    let a = machine_kept(&redis, "a", 10, Some(5)).await;
    let ttl_ms = |key: &str| -> i64 { common::redis_query(redis.port, &["PTTL", key]).unwrap() };
    for n in 1..=3u64 {
        let offset = post_offset(&a, "/publish", json!({"channel": "due", "message": n})).await;
        assert_eq!(offset, n);
        let left = ttl_ms("hf:h:c:due");
        assert!(left > 5_000, "append {n}: {left} ms left");
        assert!(ttl_ms("hf:o:c:due") > 50_000, "append {n}: the position");
        // Past the tenth of the TTL after which the next append must push them back.
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
}

/// The due time `x` is of the clock of the master that wrote it: a position from another
/// lineage (a failover, a restart, a slot move, where the stream's expiry may have moved onto
/// another clock) has its expiries pushed back at its next append, whatever `x` says.
#[tokio::test]
async fn an_append_after_a_change_of_master_pushes_the_expiries_back() {
    let redis = RedisServer::start();
    let a = machine(&redis, "a").await;
    let publish = |n: u64| post_offset(&a, "/publish", json!({"channel": "moved", "message": n}));
    publish(1).await;
    let ttl_ms = |key: &str| -> i64 { common::redis_query(redis.port, &["PTTL", key]).unwrap() };
    // Written by another master whose clock put the stream's expiry closer than this one's.
    redis_cmd(redis.port, &["HSET", "hf:o:c:moved", "l", "another"]);
    redis_cmd(redis.port, &["PEXPIRE", "hf:h:c:moved", "10000"]);
    publish(2).await;
    let left = ttl_ms("hf:h:c:moved");
    assert!(left > 300_000, "{left} ms left");
}
