//! The upgrade is refused with 401 (token) or 403 (origin) and a JSON body, before any upgrade.

mod common;

use common::{TestClient, TestServer};
use fanfare::auth::Claims;
use serde_json::{json, Value};

async fn refused(s: &TestServer, path: &str, headers: &[(&'static str, &str)]) -> (u16, Value) {
    match TestClient::try_connect(s.addr, path, headers).await {
        Ok(_) => panic!("upgrade to {path} was accepted"),
        Err((status, body)) => (
            status,
            serde_json::from_str(&body).expect("JSON error body"),
        ),
    }
}

#[tokio::test]
async fn bad_tokens_get_401_with_json() {
    let s = TestServer::start();
    let (status, body) = refused(&s, "/ws", &[]).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("missing token"),
        "{body}"
    );

    let (status, _) = refused(&s, "/ws?token=garbage", &[]).await;
    assert_eq!(status, 401);

    let other = fanfare::auth::TokenKeys::new("another-secret").unwrap();
    let forged = other
        .issue(&fanfare::auth::claims("42", None, None))
        .unwrap();
    let (status, _) = refused(&s, &format!("/ws?token={forged}"), &[]).await;
    assert_eq!(status, 401);

    let expired = s.token_with(&Claims {
        sub: "42".into(),
        exp: Some(1000),
        ..Claims::default()
    });
    let (status, body) = refused(&s, &format!("/ws?token={expired}"), &[]).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("xpired"), "{body}");

    let no_sub = s.token_with(&Claims {
        sub: String::new(),
        exp: None,
        ..Claims::default()
    });
    assert_eq!(
        refused(&s, &format!("/ws?token={no_sub}"), &[]).await.0,
        401
    );

    // alg "none": header {"alg":"none","typ":"JWT"}, claims {"sub":"42"}, no signature.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI0MiJ9.";
    assert_eq!(refused(&s, &format!("/ws?token={none}"), &[]).await.0, 401);
    assert_eq!(
        s.metric("fanfare_rejected_requests_total{status=\"401\"}")
            .await,
        6.0
    );
}

#[tokio::test]
async fn token_without_sub_claim_is_refused() {
    let s = TestServer::start();
    // Signed with the right secret, but the claims are {"exp": far future} only.
    let keys = jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes());
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"exp": 4102444800u64}),
        &keys,
    )
    .unwrap();
    assert_eq!(refused(&s, &format!("/ws?token={t}"), &[]).await.0, 401);
    // Another HMAC algorithm with the right secret is refused too.
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &json!({"sub": "42"}),
        &keys,
    )
    .unwrap();
    assert_eq!(refused(&s, &format!("/ws?token={hs384}"), &[]).await.0, 401);
}

#[tokio::test]
async fn bearer_header_works_like_the_query() {
    let s = TestServer::start();
    let auth = format!("Bearer {}", s.token("42", &[]));
    let mut c = TestClient::try_connect(s.addr, "/ws", &[("authorization", &auth)])
        .await
        .unwrap();
    s.publish("/message", json!({"userId": "42", "message": "hi"}))
        .await;
    assert_eq!(c.recv_message().await, json!("hi"));
}

#[tokio::test]
async fn origin_allow_list_gives_403() {
    let s = TestServer::start_with(|c| c.allowed_origins = vec!["https://app.example".into()]);
    let path = format!("/ws?token={}", s.token("42", &[]));
    let (status, body) = refused(&s, &path, &[("origin", "https://evil.example")]).await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("origin"));
    TestClient::try_connect(s.addr, &path, &[("origin", "https://app.example")])
        .await
        .expect("allowed origin");
    // Programs send no Origin; the token decides.
    TestClient::try_connect(s.addr, &path, &[])
        .await
        .expect("no origin");
}

#[tokio::test]
async fn plain_get_of_ws_is_not_an_upgrade() {
    let s = TestServer::start();
    let (status, body) = s.get("/ws").await;
    assert_eq!(status, 400);
    assert!(body.contains("WebSocket upgrade"), "{body}");
}

/// An `exp` no clock reaches (2^63 and beyond) used to be accepted and then panic the
/// connection's task: it is refused at the door, and the server goes on serving.
#[tokio::test]
async fn an_exp_past_any_clock_gets_401_not_a_panic() {
    let s = TestServer::start();
    for exp in [1u64 << 63, u64::MAX] {
        let token = s.token_with(&Claims {
            sub: "42".into(),
            exp: Some(exp),
            ..Claims::default()
        });
        let (status, body) = refused(&s, &format!("/ws?token={token}"), &[]).await;
        assert_eq!(status, 401, "{body}");
        assert!(body["error"].as_str().unwrap().contains("exp"), "{body}");
    }
    let mut fine = s.connect("42", &[]).await;
    fine.send_json(json!({"type": "ping"})).await;
    assert_eq!(fine.recv_json().await["type"], "pong");
}
