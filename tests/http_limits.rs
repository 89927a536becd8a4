//! Limits at the door: a connection cap, time limits on slow requests, size caps on headers and
//! targets, each refused with its status and a JSON body, and counted.

mod common;

use std::time::{Duration, Instant};

use common::{TestClient, TestServer, API_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes; returns what it sent and how long that took.
async fn read_until_closed(s: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(common::PATIENCE, s.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).to_string(), started.elapsed())
}

#[tokio::test]
async fn upgrades_past_max_connections_get_503_until_one_leaves() {
    let s = TestServer::start_with(|c| c.max_connections = Some(2));
    let a = s.connect("a", &[]).await;
    let _b = s.connect("b", &[]).await;
    let token = s.token("c", &[]);
    let (status, body) = TestClient::try_connect(s.addr, &format!("/ws?token={token}"), &[])
        .await
        .err()
        .expect("a third connection is refused");
    assert_eq!(status, 503);
    assert!(body.contains("--max-connections"), "{body}");
    assert_eq!(
        s.metric("fanfare_rejected_requests_total{status=\"503\"}")
            .await,
        1.0
    );
    drop(a);
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        match TestClient::try_connect(s.addr, &format!("/ws?token={token}"), &[]).await {
            Ok(_) => break,
            Err((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("a freed slot is never given again: {e:?}"),
        }
    }
}

#[tokio::test]
async fn slow_requests_are_cut_after_the_request_timeout() {
    let s = TestServer::start_with(|c| c.request_timeout = 1);

    // Headers that never end.
    let mut slow_headers = TcpStream::connect(s.addr).await.unwrap();
    slow_headers
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A connection that never says anything.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    // A body that trickles in and stops.
    let mut slow_body = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /message HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 100\r\n\r\n{{\"userId\""
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();

    for conn in [&mut slow_headers, &mut idle] {
        let (_, took) = read_until_closed(conn).await;
        assert!(took < Duration::from_secs(3), "held for {took:?}");
    }
    let (resp, took) = read_until_closed(&mut slow_body).await;
    assert!(took < Duration::from_secs(3), "held for {took:?}");
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains(r#"{"error":"#), "{resp}");
    // The server still serves.
    assert_eq!(s.get("/healthz").await.0, 200);
    assert_eq!(
        s.metric("fanfare_rejected_requests_total{status=\"408\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn long_targets_and_many_headers_get_json_errors() {
    let s = TestServer::start();
    let long = format!("/healthz?{}", "x".repeat(9000));
    let (status, body) = common::http(s.addr, "GET", &long, &[], b"").await;
    assert_eq!(status, 414);
    assert!(body.contains("error"), "{body}");
    let names: Vec<String> = (0..120).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let (status, body) = common::http(s.addr, "GET", "/healthz", &headers, b"").await;
    assert_eq!(status, 431);
    assert!(body.contains("more than 100 headers"), "{body}");
    let big = "y".repeat(20_000);
    let (status, _) = common::http(s.addr, "GET", "/healthz", &[("x-big", &big)], b"").await;
    assert_eq!(status, 431);
    for (code, n) in [(414, 1.0), (431, 2.0)] {
        let name = format!("fanfare_rejected_requests_total{{status=\"{code}\"}}");
        assert_eq!(s.metric(&name).await, n);
    }
}

#[tokio::test]
async fn garbage_that_hyper_refuses_itself_is_counted() {
    let s = TestServer::start();
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let (resp, _) = read_until_closed(&mut raw).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let deadline = Instant::now() + common::PATIENCE;
    while s
        .metric("fanfare_rejected_requests_total{status=\"400\"}")
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "hyper's 400 is not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let s = TestServer::start();
    let mut c = s.connect("42", &[]).await;
    let auth = format!("bearer {API_KEY}");
    let body = br#"{"userId":"42","message":1}"#;
    let (status, _) = common::http(
        s.addr,
        "POST",
        "/message",
        &[("Authorization", &auth)],
        body,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(c.recv_message().await, serde_json::json!(1));
    let token = format!("BEARER {}", s.token("43", &[]));
    let mut d = TestClient::try_connect(s.addr, "/ws", &[("Authorization", &token)])
        .await
        .expect("a token under BEARER is accepted");
    d.send_json(serde_json::json!({"type": "ping"})).await;
    assert_eq!(d.recv_json().await["type"], "pong");
}
