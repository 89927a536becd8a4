//! A fleet on a real Redis Cluster (three masters, three replicas, started by each test):
//! sharded pub/sub carries every kind of message to the machines that want it and nowhere
//! else, history recovers across machines, and a master that dies or a slot that moves is
//! followed without a client reconnecting.

mod common;

use std::time::{Duration, Instant};

use common::cluster::RedisCluster;
use common::{TestClient, TestServer};
use serde_json::{json, Value};

const PREFIX: &str = "cl:";

async fn machine(cluster: &RedisCluster, node: &str, history: u32) -> TestServer {
    let s = TestServer::on_cluster(&cluster.url(), PREFIX, node, history);
    s.wait_readyz(200).await;
    s
}

/// One user and one channel on each master, so every test crosses all three.
fn spread(cluster: &RedisCluster) -> (Vec<u16>, Vec<String>, Vec<String>) {
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let users = masters
        .iter()
        .map(|m| cluster.name_on(*m, "u", "user"))
        .collect();
    let channels = masters
        .iter()
        .map(|m| cluster.name_on(*m, "c", "room"))
        .collect();
    (masters, users, channels)
}

async fn subscribed(c: &mut TestClient, channel: &str, since: Option<&Value>) -> Value {
    let since = since.map(|p| (p["offset"].as_u64().unwrap(), p["epoch"].as_str().unwrap()));
    common::subscribe_since(c, channel, since).await
}

#[tokio::test]
async fn every_kind_of_message_crosses_the_cluster_and_goes_only_where_it_is_wanted() {
    let cluster = RedisCluster::start();
    let (masters, users, channels) = spread(&cluster);
    let a = machine(&cluster, "a", 0).await;
    let b = machine(&cluster, "b", 0).await;
    let idle = machine(&cluster, "idle", 0).await;
    let mut clients = Vec::new();
    for (user, channel) in users.iter().zip(&channels) {
        let mut c = b.connect(user, &[channel]).await;
        c.subscribe(channel).await;
        clients.push(c);
    }
    for (user, channel) in users.iter().zip(&channels) {
        a.publish("/message", json!({"userId": user, "message": user}))
            .await;
        a.publish("/publish", json!({"channel": channel, "message": channel}))
            .await;
    }
    a.publish("/broadcast", json!({"message": "all"})).await;
    let batch: Vec<Value> = users
        .iter()
        .map(|u| json!({"userId": u, "message": format!("batch {u}")}))
        .collect();
    a.publish("/batch", Value::Array(batch)).await;
    // Each topic (the user, the channel, the broadcasts) keeps its order; on a cluster the three
    // travel through different masters, so not against each other.
    for ((c, user), channel) in clients.iter_mut().zip(&users).zip(&channels) {
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(c.recv_json().await);
        }
        let of_user: Vec<&Value> = got
            .iter()
            .filter(|m| m.get("channel").is_none() && m["message"] != "all")
            .map(|m| &m["message"])
            .collect();
        assert_eq!(of_user, [&json!(user), &json!(format!("batch {user}"))]);
        let on_channel = json!({"type": "message", "channel": channel, "message": channel});
        assert!(got.contains(&on_channel), "{got:?}");
        assert!(
            got.contains(&json!({"type": "message", "message": "all"})),
            "{got:?}"
        );
        c.expect_nothing_for(100).await;
    }
    // Each master holds b's subscription to the topics it serves, and only b's.
    for ((master, user), channel) in masters.iter().zip(&users).zip(&channels) {
        let (u, c) = (
            format!("{PREFIX}{{u:{user}}}"),
            format!("{PREFIX}{{c:{channel}}}"),
        );
        assert_eq!(cluster.shard_subscribers(*master, &u), 1, "{u}");
        assert_eq!(cluster.shard_subscribers(*master, &c), 1, "{c}");
    }
    // Its metrics say the same: 3 users, 3 channels and the broadcasts, spread over the masters.
    assert_eq!(b.metric("fanfare_bridge_subscriptions").await, 7.0);
    let mut per_shard = 0.0;
    for master in &masters {
        let series = format!("fanfare_bridge_shard_subscriptions{{shard=\"127.0.0.1:{master}\"}}");
        let n = b.metric(&series).await;
        assert!(n >= 2.0, "{series} {n}");
        per_shard += n;
    }
    assert_eq!(per_shard, 7.0);
    // The machine with no recipient was sent the broadcast only (it may still be on its way).
    let deadline = Instant::now() + Duration::from_secs(10);
    while idle.metric("fanfare_bridge_received_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the broadcast never reached the idle machine"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(idle.metric("fanfare_bridge_received_total").await, 1.0);
    assert_eq!(b.metric("fanfare_bridge_received_total").await, 10.0);
}

#[tokio::test]
async fn history_is_recovered_across_machines_on_the_cluster() {
    let cluster = RedisCluster::start();
    let (_, users, channels) = spread(&cluster);
    let a = machine(&cluster, "a", 100).await;
    let b = machine(&cluster, "b", 100).await;
    let mut c = a
        .connect(
            &users[0],
            &channels.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
    assert_eq!(c.recv_json().await["type"], "connected");
    let mut positions = Vec::new();
    for channel in &channels {
        positions.push(subscribed(&mut c, channel, None).await);
    }
    drop(c);
    for n in 1..=5 {
        for channel in &channels {
            b.publish("/publish", json!({"channel": channel, "message": n}))
                .await;
        }
    }
    let mut back = b
        .connect(
            &users[0],
            &channels.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
    assert_eq!(back.recv_json().await["type"], "connected");
    for (channel, position) in channels.iter().zip(&positions) {
        let reply = subscribed(&mut back, channel, Some(position)).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(reply["offset"], 5, "{reply}");
        for n in 1..=5 {
            let m = back.recv_json().await;
            assert_eq!(m["channel"], json!(channel), "{m}");
            assert_eq!(
                (m["offset"].clone(), m["message"].clone()),
                (json!(n), json!(n))
            );
        }
    }
    back.expect_nothing_for(100).await;
}

/// Publishes to `user` through `a` every 50 ms until `got` has `want` more messages from it,
/// and returns how long that took, with every message received (in order).
async fn publish_until_received(
    a: &TestServer,
    c: &mut TestClient,
    user: &str,
    next: &mut u64,
    got: &mut Vec<u64>,
    want: usize,
) -> Duration {
    let started = Instant::now();
    let goal = got.len() + want;
    while got.len() < goal {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{user} got nothing for 30 s"
        );
        let _ = a
            .post(
                "/message",
                &json!({"userId": user, "message": *next}).to_string(),
            )
            .await;
        *next += 1;
        let until = tokio::time::Instant::now() + Duration::from_millis(50);
        while let Ok(m) = tokio::time::timeout_at(until, c.recv_message()).await {
            got.push(m.as_u64().unwrap());
        }
    }
    started.elapsed()
}

fn assert_once_in_order(got: &[u64]) {
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "duplicated or out of order: {got:?}"
    );
}

#[tokio::test]
async fn a_master_that_dies_is_replaced_and_its_subscriptions_follow() {
    let mut cluster = RedisCluster::start();
    let (masters, users, _) = spread(&cluster);
    let a = machine(&cluster, "a", 0).await;
    let b = machine(&cluster, "b", 0).await;
    let mut clients = Vec::new();
    for user in &users {
        clients.push(b.connect(user, &[]).await);
    }
    let (mut next, mut got) = (vec![0u64; 3], vec![Vec::new(), Vec::new(), Vec::new()]);
    for i in 0..3 {
        publish_until_received(&a, &mut clients[i], &users[i], &mut next[i], &mut got[i], 1).await;
    }

    cluster.kill(masters[0]);
    let killed = Instant::now();
    // The other shards never stop: every message to them arrives while the failover runs.
    let mut unready_seen = false;
    for round in 0..10 {
        for i in 1..3 {
            let sent = next[i];
            publish_until_received(&a, &mut clients[i], &users[i], &mut next[i], &mut got[i], 1)
                .await;
            assert_eq!(next[i], sent + 1, "a message to a healthy shard was lost");
        }
        unready_seen |= b.get("/readyz").await.0 == 503;
        if round == 0 {
            assert!(unready_seen || killed.elapsed() > Duration::from_secs(1));
        }
    }
    assert!(unready_seen, "/readyz stayed 200 with a master down");
    let back =
        publish_until_received(&a, &mut clients[0], &users[0], &mut next[0], &mut got[0], 1).await;
    let recovered = killed.elapsed();
    println!(
        "master killed: delivery through its shard again after {:.2} s ({:.2} s of publishing)",
        recovered.as_secs_f64(),
        back.as_secs_f64()
    );
    // Its replica serves the slot now; the subscription was remade there.
    let channel = format!("{PREFIX}{{u:{}}}", users[0]);
    let new_master = cluster.master_of(&channel);
    assert_ne!(new_master, masters[0]);
    assert_eq!(cluster.shard_subscribers(new_master, &channel), 1);
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    for i in 0..3 {
        publish_until_received(&a, &mut clients[i], &users[i], &mut next[i], &mut got[i], 3).await;
        assert_once_in_order(&got[i]);
    }
    for c in &mut clients {
        c.expect_nothing_for(200).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_moves_keeps_its_subscribers_and_history_fills_the_gap() {
    let cluster = RedisCluster::start();
    let (masters, users, _) = spread(&cluster);
    let a = machine(&cluster, "a", 1000).await;
    let b = machine(&cluster, "b", 1000).await;
    let user = &users[0];
    let mut c = b.connect(user, &[]).await;
    assert_eq!(c.recv_json().await["type"], "connected");
    let channel = format!("{PREFIX}{{u:{user}}}");
    let slot = {
        let probe = masters[1];
        cluster
            .on::<i64>(probe, &["CLUSTER", "KEYSLOT", &channel])
            .unwrap() as u16
    };
    // Publish all along the move; what Redis accepted (202) must arrive once, in order.
    let publishing = {
        let (addr, user) = (a.addr, user.clone());
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            for n in 0..150u64 {
                let body = json!({"userId": user, "message": n}).to_string();
                if common::post_to(addr, "/message", &body).await.0 == 202 {
                    accepted.push(n);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            accepted
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let move_to = masters[1];
    tokio::task::block_in_place(|| cluster.move_slot(slot, move_to));
    let accepted = publishing.await.unwrap();
    assert!(
        accepted.len() > 100,
        "only {} of 150 accepted",
        accepted.len()
    );
    let mut got = Vec::new();
    while got.len() < accepted.len() {
        got.push(c.recv_message().await.as_u64().unwrap());
    }
    assert_eq!(got, accepted);
    c.expect_nothing_for(200).await;
    assert_eq!(cluster.shard_subscribers(move_to, &channel), 1);
    assert_eq!(cluster.shard_subscribers(masters[0], &channel), 0);
}

/// A subscribe sent where the map, behind a slot move nobody was told about, says its channel
/// lives: the old master answers -MOVED. That answer is the channel's alone — the link and its
/// other subscriptions stay — and `subscribed` waits until the map is read again and the
/// channel is subscribed on its new master, so what is published next arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_refused_with_moved_is_made_again_where_the_slot_went() {
    let cluster = RedisCluster::start();
    let masters = cluster.masters();
    let user = cluster.name_on(masters[0], "u", "user");
    let channel = cluster.name_on(masters[0], "c", "room");
    let a = machine(&cluster, "a", 0).await;
    let b = machine(&cluster, "b", 0).await;
    let mut c = b.connect(&user, &[&channel]).await;
    let name = format!("{PREFIX}{{c:{channel}}}");
    let slot = cluster
        .on::<i64>(masters[1], &["CLUSTER", "KEYSLOT", &name])
        .unwrap() as u16;
    // Nothing of b's is in that slot: no `sunsubscribe` tells b, whose map is up to 5 s old.
    tokio::task::block_in_place(|| cluster.move_slot(slot, masters[1]));
    c.subscribe(&channel).await;
    assert_eq!(cluster.shard_subscribers(masters[1], &name), 1);
    // a's map may be behind too: a publish that meets its refresh halfway is dropped (sent
    // again only while the map is stale, so never out of order); the next one arrives.
    let mut arrived = None;
    for n in 0..20 {
        a.publish("/publish", json!({"channel": channel, "message": n}))
            .await;
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(500), c.recv_message()).await {
            arrived = Some(m);
            break;
        }
    }
    assert!(
        arrived.is_some(),
        "nothing published after the move arrived"
    );
    a.publish("/message", json!({"userId": user, "message": "still here"}))
        .await;
    // A late channel message may come first.
    while c.recv_message().await != json!("still here") {}
    assert_eq!(b.metric("fanfare_bridge_reconnects_total").await, 0.0);
}

/// A master that freezes (its sockets open, nothing answered) holds up only its own slots:
/// messages through the other masters go on arriving, and when it is failed over or thaws,
/// delivery through its slots comes back, with nothing twice.
#[tokio::test]
async fn a_frozen_master_stops_only_its_own_slots() {
    let cluster = RedisCluster::start();
    let (masters, users, _) = spread(&cluster);
    let a = machine(&cluster, "a", 0).await;
    let b = machine(&cluster, "b", 0).await;
    let mut clients = Vec::new();
    for user in &users {
        clients.push(b.connect(user, &[]).await);
    }
    let (mut next, mut got) = (vec![0u64; 3], vec![Vec::new(), Vec::new(), Vec::new()]);
    cluster.freeze(masters[0], true);
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(4) {
        for i in 1..3 {
            let sent = next[i];
            publish_until_received(&a, &mut clients[i], &users[i], &mut next[i], &mut got[i], 1)
                .await;
            assert_eq!(
                next[i],
                sent + 1,
                "a message through a live master was lost"
            );
        }
    }
    cluster.freeze(masters[0], false);
    for i in 0..3 {
        publish_until_received(&a, &mut clients[i], &users[i], &mut next[i], &mut got[i], 3).await;
        assert_once_in_order(&got[i]);
    }
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
}

/// Presence on a cluster: a channel's presence keys live in its slot (one script keeps them
/// and publishes the events), and both machines see the same members and events.
#[tokio::test]
async fn presence_lives_in_the_channels_slot_and_machines_agree() {
    let cluster = RedisCluster::start();
    let a = machine(&cluster, "a", 0).await;
    let b = machine(&cluster, "b", 0).await;
    let token = |s: &TestServer, sub: &str| {
        s.token_with(&fanfare::auth::Claims {
            sub: sub.into(),
            channels: Some(vec!["room".into()]),
            presence: Some(vec!["room".into()]),
            ..Default::default()
        })
    };
    let mut watcher = TestClient::connect(a.addr, &token(&a, "w")).await;
    watcher
        .send_json(json!({"type": "subscribe", "channel": "room", "presence": true}))
        .await;
    assert_eq!(watcher.recv_json().await["type"], "subscribed");
    assert_eq!(watcher.recv_json().await["user"], "w");
    let mut x = TestClient::connect(b.addr, &token(&b, "x")).await;
    x.subscribe("room").await;
    assert_eq!(
        watcher.recv_json().await,
        json!({"type": "join", "channel": "room", "user": "x"})
    );
    for s in [&a, &b] {
        let (status, text) = s.get_with_key("/presence/count?channel=room").await;
        assert_eq!(status, 200, "{text}");
        let count: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (count["users"].clone(), count["connections"].clone()),
            (json!(2), json!(2))
        );
    }
    let master = cluster.master_of(&format!("{PREFIX}{{c:room}}"));
    for key in ["p", "q", "z", "w"] {
        let name = format!("{PREFIX}{key}:{{c:room}}");
        let exists: i64 = cluster.on(master, &["EXISTS", &name]).unwrap();
        assert_eq!(exists, 1, "{name} on the master of the channel's slot");
    }
    drop(x);
    assert_eq!(
        watcher.recv_json().await,
        json!({"type": "leave", "channel": "room", "user": "x"})
    );
}

/// A minimal webhook endpoint: answers 200 to every POST and keeps each body.
async fn webhook_endpoint() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0; 8192];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() < len {
                        continue;
                    }
                    let _ = tx.send(serde_json::from_str(&body[..len]).unwrap());
                    buf.clear();
                    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(ok.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn the_pusher_front_works_on_a_cluster_webhooks_sign_in_and_channels() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let cluster = RedisCluster::start();
    let (hook_url, mut hooks) = webhook_endpoint().await;
    let app = fanfare::pusher::App::new("1".into(), "key".into(), "secret".into());
    let machine = |node: &str| {
        let (url, node, hook_url) = (cluster.url(), node.to_string(), hook_url.clone());
        TestServer::start_with(move |c| {
            c.redis = Some(url);
            c.redis_prefix = PREFIX.into();
            c.node_id = Some(node);
            (c.pusher_app_id, c.pusher_key, c.pusher_secret) =
                (Some("1".into()), Some("key".into()), Some("secret".into()));
            c.pusher_webhooks = vec![hook_url];
        })
    };
    let (a, b) = (machine("a"), machine("b"));
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;

    let url = format!("ws://{}/app/key?protocol=7", a.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let established: Value = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        match m.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => break serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    };
    let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
    let socket = data["socket_id"].as_str().unwrap().to_string();
    let member = r#"{"user_id":"ann"}"#;
    let auth = app.hmac_hex(&format!("{socket}:presence-c:{member}"));
    let user_data = r#"{"id":"ann"}"#;
    let signin = app.hmac_hex(&format!("{socket}::user::{user_data}"));
    for frame in [
        json!({"event": "pusher:subscribe", "data": {"channel": "presence-c", "auth": format!("key:{auth}"), "channel_data": member}}),
        json!({"event": "pusher:signin", "data": {"auth": format!("key:{signin}"), "user_data": user_data}}),
    ] {
        ws.send(Message::text(frame.to_string())).await.unwrap();
    }

    // Webhooks from the presence script, on whichever master holds the channel's slot.
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while events.len() < 2 && Instant::now() < deadline {
        if let Ok(Some(body)) = tokio::time::timeout(Duration::from_secs(1), hooks.recv()).await {
            events.extend(body["events"].as_array().unwrap().iter().map(|e| {
                format!(
                    "{} {}",
                    e["name"].as_str().unwrap(),
                    e["user_id"].as_str().unwrap_or("")
                )
            }));
        }
    }
    assert_eq!(events, ["channel_occupied ", "member_added ann"]);

    // Asked of machine b: the fleet's channels, then ann's sockets terminated.
    let signed = |method: &str, path: &str, body: &str| {
        let md5 = fanfare::pusher::hex(&<md5::Md5 as md5::Digest>::digest(body.as_bytes()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let query = match body.is_empty() {
            true => format!("auth_key=key&auth_timestamp={now}&auth_version=1.0"),
            false => format!("auth_key=key&auth_timestamp={now}&auth_version=1.0&body_md5={md5}"),
        };
        let signature = app.hmac_hex(&format!("{method}\n{path}\n{query}"));
        format!("{path}?{query}&auth_signature={signature}")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = b.get(&signed("GET", "/apps/1/channels", "")).await;
        assert_eq!(status, 200, "{body}");
        if body.contains("presence-c") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never listed a's channel: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = signed("POST", "/apps/1/users/ann/terminate_connections", "{}");
    let (status, body) = b.post(&path, "{}").await;
    assert_eq!(status, 200, "{body}");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(Some(frame)) = m {
                return u16::from(frame.code);
            }
        }
        0
    });
    assert_eq!(closed.await.unwrap(), 4009);
}
