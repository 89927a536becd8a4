//! A client that stops reading is cut with 1008 once its queue is over --queue-limit; nobody
//! else waits for it.

mod common;

use std::time::Duration;

use common::{TestClient, TestServer};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const MESSAGES: usize = 240;
const BATCH: usize = 16;

#[tokio::test]
async fn slow_consumer_is_cut_and_others_keep_receiving() {
    let s = TestServer::start_with(|c| {
        c.queue_limit = 2 * BATCH as u32;
        c.max_message_bytes = 4 << 20;
    });
    let mut slow =
        TestClient::connect_small_buffer(s.server.worker_addrs()[0], &s.token("slow", &[])).await;
    let mut fast = s.connect_on(1, "fast", &[]).await;
    let reader = tokio::spawn(async move {
        for i in 0..MESSAGES {
            assert_eq!(fast.recv_message().await["n"], json!(i));
        }
        fast
    });

    // 240 messages of 64 KiB to each user: far more than the socket buffers hold.
    let pad = "x".repeat(64 << 10);
    let publisher = {
        let addr = s.addr;
        tokio::spawn(async move {
            for start in (0..MESSAGES).step_by(BATCH) {
                let items: Vec<Value> = (start..start + BATCH)
                    .flat_map(|n| {
                        let m = json!({"n": n, "pad": pad});
                        [
                            json!({"userId": "slow", "message": m}),
                            json!({"userId": "fast", "message": m}),
                        ]
                    })
                    .collect();
                let auth = format!("Bearer {}", common::API_KEY);
                let body = serde_json::to_vec(&items).unwrap();
                let (status, text) =
                    common::http(addr, "POST", "/batch", &[("Authorization", &auth)], &body).await;
                assert_eq!(status, 202, "{text}");
            }
        })
    };

    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while s.metric("fanfare_slow_consumer_closes_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow consumer never cut"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What was queued before the cut arrives in order, then the close frame.
    let mut next = 0;
    let (code, reason) = loop {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        match tokio::time::timeout(common::PATIENCE, slow.ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["message"]["n"], json!(next));
                next += 1;
            }
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            other => panic!("expected messages then a close frame, got {other:?}"),
        }
    };
    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    assert!(
        next < MESSAGES,
        "the slow client got everything: nothing was slow"
    );

    publisher.await.unwrap();
    let mut fast = reader.await.unwrap();
    fast.send_json(json!({"type": "ping"})).await;
    assert_eq!(fast.recv_json().await, json!({"type": "pong"}));
    // Counted when the cut connection has finished closing.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while s
        .metric("fanfare_dropped_messages_total{reason=\"slow\"}")
        .await
        < 1.0
    {
        assert!(tokio::time::Instant::now() < deadline, "drops not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.metric("fanfare_connections").await, 1.0);
}

#[tokio::test]
async fn a_client_that_floods_pings_and_never_reads_is_cut() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::start_with(|c| c.queue_limit = 64);
    let client =
        TestClient::connect_small_buffer(s.server.worker_addrs()[0], &s.token("flood", &[])).await;
    let mut other = s.connect_on(0, "other", &[]).await;
    // Never read: each ping's pong waits behind a full socket, until the limit cuts it.
    let (mut sink, _stream) = futures_util::StreamExt::split(client.ws);
    let payload = vec![7u8; 125];
    let mut sent = 0u64;
    while s.metric("fanfare_slow_consumer_closes_total").await < 1.0 {
        for _ in 0..500 {
            if sink
                .send(Message::Ping(payload.clone().into()))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        assert!(
            sent < 400_000,
            "a ping flood that is never read is never cut"
        );
    }
    s.publish(
        "/message",
        json!({"userId": "other", "message": "still here"}),
    )
    .await;
    assert_eq!(other.recv_message().await, json!("still here"));
}

#[tokio::test]
async fn a_client_that_reads_is_never_cut_for_a_burst() {
    let s = TestServer::start_with(|c| c.queue_limit = 16);
    let mut c = s.connect_on(0, "reader", &[]).await;
    // Four pipelined /batch calls of 250 items each, all for one connection, while it reads.
    let mut posts = Vec::new();
    for start in (0..1000).step_by(250) {
        let items: Vec<Value> = (start..start + 250)
            .map(|n| json!({"userId": "reader", "message": n}))
            .collect();
        let addr = s.addr;
        posts.push(tokio::spawn(async move {
            let auth = format!("Bearer {}", common::API_KEY);
            let body = serde_json::to_vec(&items).unwrap();
            common::http(addr, "POST", "/batch", &[("Authorization", &auth)], &body).await
        }));
    }
    let mut got = Vec::new();
    for _ in 0..1000 {
        got.push(c.recv_message().await.as_u64().unwrap());
    }
    for p in posts {
        assert_eq!(p.await.unwrap().0, 202);
    }
    got.sort_unstable();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    assert_eq!(s.metric("fanfare_slow_consumer_closes_total").await, 0.0);
}

/// A client that never reads and loops `unsubscribe` + `subscribe` from offset 0 on a channel
/// with a large history (here kept in Redis): each replay used to add room above the limits,
/// so the queue held every copy (hundreds of MB). A topic's replay now replaces the room of its
/// previous one: the client is cut within a few rounds.
#[tokio::test]
async fn a_client_that_resubscribes_without_reading_is_cut_not_grown() {
    let redis = common::RedisServer::start();
    let url = redis.url();
    let s = TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.history_size = 50;
        c.max_message_bytes = 64 << 10;
    });
    s.wait_readyz(200).await;
    let pad = "x".repeat(32 << 10);
    for n in 0..50 {
        s.publish(
            "/publish",
            json!({"channel": "big", "message": {"n": n, "pad": pad}}),
        )
        .await;
    }
    let mut slow =
        TestClient::connect_small_buffer(s.server.worker_addrs()[0], &s.token("u", &["big"])).await;
    let mut epoch = None;
    for round in 0..40 {
        if s.metric("fanfare_slow_consumer_closes_total").await >= 1.0 {
            println!("cut after {round} rounds of 50 x 32 KiB replays");
            return;
        }
        if epoch.is_none() {
            // The first answer tells the epoch; after that the client never reads again.
            slow.send_json(json!({"type": "subscribe", "channel": "big"}))
                .await;
            let reply = loop {
                let m = slow.recv_json().await;
                if m["type"] == "subscribed" {
                    break m;
                }
            };
            epoch = Some(reply["epoch"].clone());
        } else {
            let since = json!({"offset": 0, "epoch": epoch});
            let frame = json!({"type": "subscribe", "channel": "big", "since": since});
            if slow
                .ws
                .send(Message::text(frame.to_string()))
                .await
                .is_err()
            {
                break;
            }
        }
        let unsubscribe = json!({"type": "unsubscribe", "channel": "big"});
        if slow
            .ws
            .send(Message::text(unsubscribe.to_string()))
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while s.metric("fanfare_slow_consumer_closes_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a client holding 40 replays was never cut"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
