//! The limits a public endpoint needs (PROTOCOL section 13): `--client-rate` drops what a
//! connection sends too fast and tells it, then closes it (1008) if it stays too fast;
//! `--accept-rate` answers new connections beyond it 503 with Retry-After. Everyone else is
//! served on.

mod common;

use std::time::{Duration, Instant};

use common::{TestClient, TestServer};
use serde_json::json;

#[tokio::test]
async fn a_client_over_its_rate_is_told_and_later_heard_again() {
    let s = TestServer::start_with(|c| c.client_rate = 5);
    let mut c = s.connect("u", &["news"]).await;
    // Burst 10: ten pings answered, the next ones dropped with `rate_limited`.
    for _ in 0..15 {
        c.send_json(json!({"type": "ping"})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..15 {
        let v = c.recv_json().await;
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if v["error"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    assert!((10..=11).contains(&pongs), "{pongs} pongs");
    assert_eq!(pongs + limited, 15);
    // A moment later it has budget again, and its subscription works as ever.
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.subscribe("news").await;
    s.publish("/publish", json!({"channel": "news", "message": 1}))
        .await;
    assert_eq!(c.recv_message().await, 1);
}

#[tokio::test]
async fn a_client_that_stays_over_its_rate_is_closed_with_1008() {
    let s = TestServer::start_with(|c| c.client_rate = 2);
    let mut flooder = s.connect("f", &[]).await;
    let mut calm = s.connect("c", &["news"]).await;
    calm.subscribe("news").await;
    let started = Instant::now();
    let (code, _) = loop {
        flooder.send_json(json!({"type": "ping"})).await;
        // Read what came back (pongs, rate_limited) until the close.
        match tokio::time::timeout(Duration::from_millis(50), flooder.recv_close()).await {
            Ok(close) => break close,
            Err(_) => assert!(started.elapsed() < Duration::from_secs(20), "never closed"),
        }
    };
    assert_eq!(code, 1008);
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "closed only after 10 s over"
    );
    s.publish("/publish", json!({"channel": "news", "message": "still"}))
        .await;
    assert_eq!(calm.recv_message().await, "still");
}

#[tokio::test]
async fn new_connections_beyond_the_accept_rate_get_503_with_retry_after() {
    let s = TestServer::start_with(|c| c.accept_rate = 5);
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..20 {
        let token = s.token(&format!("u{i}"), &[]);
        match TestClient::try_connect(s.addr, &format!("/ws?token={token}"), &[]).await {
            Ok(c) => admitted.push(c),
            Err((status, body)) => {
                assert_eq!(status, 503, "{body}");
                assert!(body.contains("--accept-rate"), "{body}");
                refused += 1;
            }
        }
    }
    assert!(
        admitted.len() >= 5 && refused >= 10,
        "{} admitted",
        admitted.len()
    );
    let (status, headers) = retry_after(&s).await;
    assert_eq!((status, headers.as_deref()), (503, Some("1")));
    // A second later it admits again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = s.token("late", &[]);
    assert!(
        TestClient::try_connect(s.addr, &format!("/ws?token={token}"), &[])
            .await
            .is_ok()
    );
}

/// The status and `Retry-After` of an upgrade asked for now.
async fn retry_after(s: &TestServer) -> (u16, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = s.token("r", &[]);
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let req = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    raw.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = raw.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = head[9..12].parse().unwrap();
    let retry = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: ").map(str::to_string));
    (status, retry)
}
