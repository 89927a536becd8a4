//! A client that stops reading is cut with 1008 once its queue is over --queue-limit; nobody
//! else waits for it.

mod common;

use std::time::Duration;

use common::{TestClient, TestServer};
use serde_json::{json, Value};

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
    assert!(
        s.metric("fanfare_dropped_messages_total{reason=\"slow\"}")
            .await
            >= 1.0
    );
    assert_eq!(s.metric("fanfare_connections").await, 1.0);
}
