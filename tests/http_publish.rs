//! The publish API (PROTOCOL.md section 4): each call delivers, every bad input is refused
//! with its status and a JSON error, and a refused request delivers nothing.

mod common;

use common::{http, TestServer, API_KEY};
use serde_json::{json, Value};

fn error_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["error"].as_str().expect("error field").to_string()
}

#[tokio::test]
async fn every_call_delivers() {
    let s = TestServer::start();
    let mut a = s.connect_on(0, "a", &["news"]).await;
    let mut b = s.connect_on(1, "b", &["news"]).await;
    a.subscribe("news").await;

    let (status, body) = s.post("/message", r#"{"userId":"a","message":1}"#).await;
    assert_eq!((status, body.as_str()), (202, r#"{"ok":true}"#));
    assert_eq!(
        a.recv_json().await,
        json!({"type": "message", "message": 1})
    );

    s.publish("/publish", json!({"channel": "news", "message": 2}))
        .await;
    assert_eq!(
        a.recv_json().await,
        json!({"type": "message", "channel": "news", "message": 2})
    );

    s.publish("/broadcast", json!({"message": 3})).await;
    assert_eq!(a.recv_message().await, json!(3));
    assert_eq!(b.recv_message().await, json!(3));

    s.publish(
        "/batch",
        json!([
            {"userId": "b", "message": 4},
            {"channel": "news", "message": 5},
            {"userId": "a", "message": 6},
            {"userId": "b", "message": 7},
        ]),
    )
    .await;
    assert_eq!(a.recv_message().await, json!(5));
    assert_eq!(a.recv_message().await, json!(6));
    assert_eq!(b.recv_message().await, json!(4));
    assert_eq!(b.recv_message().await, json!(7));
    b.expect_nothing_for(100).await;
    assert_eq!(
        s.metric("fanfare_messages_accepted_total{kind=\"direct\"}")
            .await,
        4.0
    );
    assert_eq!(
        s.metric("fanfare_messages_accepted_total{kind=\"channel\"}")
            .await,
        2.0
    );
    assert_eq!(
        s.metric("fanfare_messages_accepted_total{kind=\"broadcast\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn api_key_is_required() {
    let s = TestServer::start();
    let body = br#"{"userId":"a","message":1}"#;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", API_KEY)],
    ] {
        let (status, text) = http(s.addr, "POST", "/message", &headers, body).await;
        assert_eq!(status, 401, "{headers:?}");
        assert!(error_of(&text).contains("API key"));
    }
}

#[tokio::test]
async fn bad_input_gets_400_and_delivers_nothing() {
    let s = TestServer::start();
    let mut a = s.connect("a", &["news"]).await;
    a.subscribe("news").await;
    let cases = [
        ("/message", "{not json"),
        ("/message", r#"{"message":1}"#),
        ("/message", r#"{"userId":42,"message":1}"#),
        ("/message", r#"{"userId":"a"}"#),
        ("/message", r#"{"userId":"","message":1}"#),
        ("/publish", r#"{"channel":"bad name","message":1}"#),
        ("/publish", r#"{"channel":"news"}"#),
        ("/broadcast", r#"[1]"#),
        ("/batch", r#"[["a", null, 1]]"#),
        ("/batch", r#"{"userId":"a","message":1}"#),
        (
            "/batch",
            r#"[{"userId":"a","message":1},{"channel":"news"}]"#,
        ),
        (
            "/batch",
            r#"[{"userId":"a","message":1},{"channel":"bad name","message":2}]"#,
        ),
        ("/batch", r#"[{"userId":"a","channel":"news","message":1}]"#),
    ];
    for (path, body) in cases {
        let (status, text) = s.post(path, body).await;
        assert_eq!(status, 400, "{path} {body}: {text}");
        assert!(!error_of(&text).is_empty());
    }
    let (_, text) = s
        .post(
            "/batch",
            r#"[{"userId":"a","message":1},{"channel":"bad name","message":2}]"#,
        )
        .await;
    assert!(error_of(&text).starts_with("item 1: channel"), "{text}");
    a.expect_nothing_for(200).await;
    assert_eq!(
        s.metric("fanfare_rejected_requests_total{status=\"400\"}")
            .await,
        cases.len() as f64 + 1.0
    );
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let s = TestServer::start_with(|c| c.max_message_bytes = 1000);
    let mut a = s.connect("a", &[]).await;
    let big = json!({"userId": "a", "message": "x".repeat(1000)}).to_string();
    let (status, text) = s.post("/message", &big).await;
    assert_eq!(status, 413);
    assert!(error_of(&text).contains("1000 bytes"));
    // Chunked, without a Content-Length: the limit holds as the body streams in.
    let mut req = format!(
        "POST /message HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {API_KEY}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, req.as_bytes())
        .await
        .unwrap();
    req.clear();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut req)
        .await
        .unwrap();
    assert!(req.starts_with("HTTP/1.1 413"), "{req}");
    s.post("/message", r#"{"userId":"a","message":"small"}"#)
        .await;
    assert_eq!(a.recv_message().await, json!("small"));
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let s = TestServer::start();
    let (status, text) = s.post("/nope", "{}").await;
    assert_eq!(status, 404);
    assert!(!error_of(&text).is_empty());
    let (status, text) = s.get("/message").await;
    assert_eq!(status, 405, "{text}");
    error_of(&text);
}

#[tokio::test]
async fn operations_endpoints() {
    let s = TestServer::start();
    assert_eq!(s.get("/healthz").await.0, 200);
    assert_eq!(s.get("/readyz").await.0, 200);
    let (status, page) = s.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("fanfare console"));
    let _c = s.connect("a", &[]).await;
    let (status, metrics) = s.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "fanfare_connections 1",
        "fanfare_messages_accepted_total{kind=\"direct\"}",
        "fanfare_frames_delivered_total",
        "fanfare_slow_consumer_closes_total",
        "fanfare_dropped_messages_total{reason=\"slow\"}",
        "fanfare_rejected_requests_total{status=\"401\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing in\n{metrics}");
    }
}

/// A broadcast item in a `/batch` (the contract has none) is refused, and the answer says where
/// broadcasts go.
#[tokio::test]
async fn a_broadcast_in_a_batch_is_refused_with_the_way_to_send_it() {
    let s = TestServer::start();
    let (status, body) = s.post("/batch", r#"[{"message": 1}]"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("item 0") && body.contains("/broadcast"),
        "{body}"
    );
}
