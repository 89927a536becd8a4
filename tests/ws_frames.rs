//! What a client may send, and what it gets back (PROTOCOL.md section 3).

mod common;

use std::time::Duration;

use common::TestServer;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn subscribe_is_checked_against_the_token() {
    let s = TestServer::start();
    let mut c = s.connect("42", &["news", "room:*"]).await;
    c.subscribe("news").await;
    c.subscribe("room:7").await;
    c.send_json(json!({"type": "subscribe", "channel": "sports"}))
        .await;
    let reply = c.recv_json().await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["error"], "forbidden");
    s.publish("/publish", json!({"channel": "sports", "message": 0}))
        .await;
    let body = r#"{"channel":"room:7","message":{"big":123456789012345678901234567890}}"#;
    assert_eq!(s.post("/publish", body).await.0, 202);
    let v = c.recv_json().await;
    assert_eq!(v["channel"], "room:7");
    assert_eq!(v["type"], "message");
    c.expect_nothing_for(100).await;
}

#[tokio::test]
async fn payload_text_is_passed_through_unchanged() {
    let s = TestServer::start();
    let mut c = s.connect("42", &[]).await;
    let body =
        r#"{"userId":"42","message":{"n":123456789012345678901234567890.5e-3,"s":"é\u00e9"}}"#;
    assert_eq!(s.post("/message", body).await.0, 202);
    let frame =
        match tokio::time::timeout(common::PATIENCE, futures_util::StreamExt::next(&mut c.ws))
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => t.to_string(),
            other => panic!("{other:?}"),
        };
    assert_eq!(
        frame,
        r#"{"type":"message","message":{"n":123456789012345678901234567890.5e-3,"s":"é\u00e9"}}"#
    );
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let s = TestServer::start_with(|c| c.max_subscriptions = 3);
    let mut c = s.connect("42", &["*"]).await;
    for ch in ["a", "b", "c", "a"] {
        c.subscribe(ch).await;
    }
    c.send_json(json!({"type": "subscribe", "channel": "d"}))
        .await;
    let reply = c.recv_json().await;
    assert_eq!(reply["error"], "forbidden");
    assert!(
        reply["detail"].as_str().unwrap().contains("at most 3"),
        "{reply}"
    );
    c.send_json(json!({"type": "unsubscribe", "channel": "a"}))
        .await;
    assert_eq!(c.recv_json().await["type"], "unsubscribed");
    c.subscribe("d").await;
}

#[tokio::test]
async fn no_channels_claim_means_no_channel() {
    let s = TestServer::start();
    let mut c = s.connect("42", &[]).await;
    c.send_json(json!({"type": "subscribe", "channel": "news"}))
        .await;
    assert_eq!(c.recv_json().await["error"], "forbidden");
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let s = TestServer::start();
    let mut c = s.connect("42", &["news"]).await;
    c.subscribe("news").await;
    c.send_json(json!({"type": "unsubscribe", "channel": "news"}))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"type": "unsubscribed", "channel": "news"})
    );
    s.publish("/publish", json!({"channel": "news", "message": 1}))
        .await;
    c.expect_nothing_for(200).await;
}

#[tokio::test]
async fn bad_frames_get_bad_request_and_the_connection_stays() {
    let s = TestServer::start();
    let mut c = s.connect("42", &["*"]).await;
    for bad in [
        "not json".to_string(),
        json!({"type": "dance"}).to_string(),
        json!({"type": "subscribe"}).to_string(),
        json!({"type": "subscribe", "channel": "has space"}).to_string(),
        json!({"type": "subscribe", "channel": "x".repeat(201)}).to_string(),
        json!([1, 2]).to_string(),
    ] {
        c.ws.send(Message::text(bad.clone())).await.unwrap();
        let reply = c.recv_json().await;
        assert_eq!(reply["type"], "error", "{bad}");
        assert_eq!(reply["error"], "bad_request", "{bad}");
        assert!(reply["detail"].is_string());
    }
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.recv_json().await, json!({"type": "pong"}));
    c.subscribe(&"x".repeat(200)).await;
}

#[tokio::test]
async fn binary_frame_closes_1003() {
    let s = TestServer::start();
    let mut c = s.connect("42", &[]).await;
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(c.recv_close().await.0, 1003);
}

#[tokio::test]
async fn oversize_frame_closes_1009_and_others_are_untouched() {
    let s = TestServer::start_with(|c| c.max_message_bytes = 1024);
    let mut other = s.connect("other", &[]).await;
    let mut c = s.connect("42", &[]).await;
    let big = json!({"type": "ping", "pad": "x".repeat(2000)}).to_string();
    c.ws.send(Message::text(big)).await.unwrap();
    assert_eq!(c.recv_close().await.0, 1009);
    s.publish("/message", json!({"userId": "other", "message": 1}))
        .await;
    assert_eq!(other.recv_message().await, json!(1));
}

#[tokio::test]
async fn server_pings_and_closes_a_silent_client() {
    let s = TestServer::start_with(|c| c.ping_interval = 1);
    // A raw socket that completes the handshake, then never answers anything.
    let token = s.token("silent", &[]);
    // Before the upgrade: the server's clock for this client starts after it.
    let started = tokio::time::Instant::now();
    let mut raw = common::silent_client(s.addr, &token).await;
    // A client that reads (tungstenite answers pings as it reads) stays open meanwhile.
    let mut live = s.connect("live", &[]).await;
    let live = tokio::spawn(async move {
        live.expect_nothing_for(3000).await;
        live
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = tokio::time::timeout(
            Duration::from_secs(6),
            tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
        )
        .await
        .expect("server never closed the silent client")
        .unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        // 0x88: close frame; its payload starts with the code.
        if let Some(i) = seen.windows(2).position(|w| w[0] == 0x88 && w[1] >= 2) {
            if seen.len() >= i + 4 {
                assert_eq!(u16::from_be_bytes([seen[i + 2], seen[i + 3]]), 1001);
                break;
            }
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed too early"
    );
    assert!(seen.contains(&0x89), "no ping was sent");
    assert_eq!(s.metric("fanfare_ping_timeouts_total").await, 1.0);
    let mut live = live.await.unwrap();
    live.send_json(json!({"type": "ping"})).await;
    assert_eq!(live.recv_json().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let s = TestServer::start();
    let mut c = s.connect("42", &[]).await;
    c.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The close handshake completes: the server's close frame comes back with our code.
    assert_eq!(c.recv_close().await.0, 1000);
    s.eventually("the connection to be unregistered", |s| {
        s.registry_entries() == 0
    })
    .await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let s = TestServer::start();
    let mut c = s.connect("42", &[]).await;
    let bad = Frame::message(vec![b'"', 0xFF, 0xFE, b'"'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(bad)).await.unwrap();
    assert_eq!(c.recv_close().await.0, 1007);
}

/// Reads raw bytes until a close frame (0x88) has fully arrived; returns everything read.
async fn read_until_close(raw: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(
            common::PATIENCE,
            tokio::io::AsyncReadExt::read(raw, &mut buf),
        )
        .await
        .expect("no close frame")
        .unwrap();
        assert!(n > 0, "closed without a close frame");
        seen.extend_from_slice(&buf[..n]);
        if let Some(i) = seen.windows(2).position(|w| w[0] == 0x88) {
            if seen.len() >= i + 2 + usize::from(seen[i + 1] & 0x7F) {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn the_server_sends_one_close_frame_and_nothing_after_it() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start();
    let token = s.token("42", &[]);
    let mut raw = common::silent_client(s.addr, &token).await;
    s.eventually("the upgrade", |s| s.registry_entries() > 0)
        .await;
    s.publish("/disconnect", json!({"userId": "42", "reason": "bye"}))
        .await;
    read_until_close(&mut raw).await;
    // Echo the close (masked, as a client must), then flood pings while the server closes.
    let mut out = vec![0x88, 0x82, 0, 0, 0, 0, 0x0F, 0xA3];
    for _ in 0..200 {
        out.extend_from_slice(&[0x89, 0x80, 0, 0, 0, 0]);
    }
    raw.write_all(&out).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        common::PATIENCE,
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut rest),
    )
    .await;
    assert!(
        rest.is_empty(),
        "after its close frame the server sent {} more bytes: {:02x?}",
        rest.len(),
        &rest[..rest.len().min(16)]
    );
}

#[tokio::test]
async fn a_client_that_vanishes_is_no_client_error() {
    let s = TestServer::start();
    let c = s.connect("42", &[]).await;
    drop(c);
    s.eventually("the connection to go", |s| s.registry_entries() == 0)
        .await;
    assert_eq!(s.metric("fanfare_client_errors_total").await, 0.0);
}
