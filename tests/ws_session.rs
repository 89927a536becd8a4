//! A connection lives no longer than its token, unless refreshed; the backend can disconnect a
//! user and change their subscriptions (PROTOCOL.md section 8).

mod common;

use std::time::{Duration, Instant};

use common::{TestClient, TestServer};
use fanfare::auth::Claims;
use serde_json::json;

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(sub: &str, channels: &[&str], ttl: u64) -> Claims {
    Claims {
        sub: sub.into(),
        exp: Some(now() + ttl),
        channels: Some(channels.iter().map(|c| c.to_string()).collect()),
        ..Claims::default()
    }
}

async fn connect_with(s: &TestServer, claims: &Claims) -> TestClient {
    TestClient::connect(s.addr, &s.token_with(claims)).await
}

#[tokio::test]
async fn a_token_ends_its_connection_after_a_warning() {
    let s = TestServer::start();
    let c = claims("42", &[], 2);
    let started = Instant::now();
    let mut client = connect_with(&s, &c).await;
    // Less than 30 s left: the warning comes at once.
    assert_eq!(
        client.recv_json().await,
        json!({"type": "expiring", "exp": c.exp})
    );
    assert_eq!(client.recv_close().await, (4001, "token expired".into()));
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(s.metric("fanfare_token_expired_closes_total").await, 1.0);
}

#[tokio::test]
async fn a_refresh_in_time_keeps_the_connection_open() {
    let s = TestServer::start();
    let mut client = connect_with(&s, &claims("42", &[], 4)).await;
    assert_eq!(client.recv_json().await["type"], "expiring");
    let fresh = claims("42", &[], 600);
    client
        .send_json(json!({"type": "refresh", "token": s.token_with(&fresh)}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"type": "refreshed", "exp": fresh.exp})
    );
    tokio::time::sleep(Duration::from_millis(4500)).await;
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.recv_json().await, json!({"type": "pong"}));
    // A token without exp never expires.
    let forever = Claims { exp: None, ..fresh };
    client
        .send_json(json!({"type": "refresh", "token": s.token_with(&forever)}))
        .await;
    assert_eq!(client.recv_json().await, json!({"type": "refreshed"}));
    assert_eq!(
        s.metric("fanfare_refreshes_total{result=\"accepted\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_bad_refresh_is_refused_and_changes_nothing() {
    let s = TestServer::start();
    let mut client = connect_with(&s, &claims("42", &["news"], 4)).await;
    assert_eq!(client.recv_json().await["type"], "expiring");
    client.subscribe("news").await;
    let other_user = s.token_with(&claims("43", &["news"], 600));
    let forged = {
        let keys = fanfare::auth::TokenKeys::new("not the secret").unwrap();
        keys.issue(&claims("42", &["news"], 600)).unwrap()
    };
    for bad in [other_user, forged, "garbage".to_string()] {
        client
            .send_json(json!({"type": "refresh", "token": bad}))
            .await;
        let reply = client.recv_json().await;
        assert_eq!(reply["error"], "forbidden", "{reply}");
    }
    s.publish("/publish", json!({"channel": "news", "message": 1}))
        .await;
    assert_eq!(client.recv_message().await, json!(1));
    // The old token still ends the connection.
    assert_eq!(client.recv_close().await.0, 4001);
    assert_eq!(
        s.metric("fanfare_refreshes_total{result=\"refused\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn a_refresh_with_fewer_channels_unsubscribes_the_others_but_not_the_backends() {
    let s = TestServer::start();
    let mut client = connect_with(&s, &claims("42", &["a", "b"], 600)).await;
    client.subscribe("a").await;
    client.subscribe("b").await;
    s.publish("/subscribe", json!({"userId": "42", "channel": "c"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"type": "subscribed", "channel": "c"})
    );
    let fewer = claims("42", &["a"], 600);
    client
        .send_json(json!({"type": "refresh", "token": s.token_with(&fewer)}))
        .await;
    assert_eq!(client.recv_json().await["type"], "refreshed");
    assert_eq!(
        client.recv_json().await,
        json!({"type": "unsubscribed", "channel": "b"})
    );
    for (channel, n) in [("a", 1), ("b", 2), ("c", 3)] {
        s.publish("/publish", json!({"channel": channel, "message": n}))
            .await;
    }
    assert_eq!(client.recv_message().await, json!(1));
    assert_eq!(client.recv_message().await, json!(3));
    client.expect_nothing_for(100).await;
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_user_with_4003() {
    let s = TestServer::start();
    let mut a = s.connect_on(0, "42", &[]).await;
    let mut b = s.connect_on(1, "42", &[]).await;
    let mut other = s.connect("43", &[]).await;
    s.publish("/disconnect", json!({"userId": "42", "reason": "banned"}))
        .await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_close().await, (4003, "banned".into()));
    }
    s.publish("/message", json!({"userId": "43", "message": "fine"}))
        .await;
    assert_eq!(other.recv_message().await, json!("fine"));
    // Nobody to disconnect is no error.
    s.publish("/disconnect", json!({"userId": "nobody"})).await;
    assert_eq!(s.metric("fanfare_disconnect_closes_total").await, 2.0);
    // What is left is user 43's: connection, user entry, route.
    s.eventually("the user's connections to be gone", |s| {
        s.registry_entries() == 3
    })
    .await;
}

#[tokio::test]
async fn bad_control_bodies_get_400_naming_the_field() {
    let s = TestServer::start();
    let long = "x".repeat(121);
    for (path, body, field) in [
        ("/disconnect", json!({"reason": "x"}), "userId"),
        (
            "/disconnect",
            json!({"userId": "1", "reason": long}),
            "reason",
        ),
        ("/subscribe", json!({"userId": "1"}), "channel"),
        (
            "/unsubscribe",
            json!({"userId": "1", "channel": "a b"}),
            "channel",
        ),
        ("/subscribe", json!({"userId": 1, "channel": "a"}), "userId"),
    ] {
        let (status, text) = s.post(path, &body.to_string()).await;
        assert_eq!(status, 400, "{path} {body}");
        assert!(text.contains(field), "{path} {body}: {text}");
    }
}

#[tokio::test]
async fn the_backend_subscribes_and_unsubscribes_whatever_the_token_allows() {
    let s = TestServer::start_with(|c| c.max_subscriptions = 2);
    let mut a = s.connect_on(0, "42", &["mine"]).await;
    let mut b = s.connect_on(1, "42", &[]).await;
    s.publish("/subscribe", json!({"userId": "42", "channel": "vip"}))
        .await;
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.recv_json().await,
            json!({"type": "subscribed", "channel": "vip"})
        );
    }
    s.publish("/publish", json!({"channel": "vip", "message": 1}))
        .await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_message().await, json!(1));
    }
    // --max-subscriptions holds for the backend too.
    a.subscribe("mine").await;
    s.publish("/subscribe", json!({"userId": "42", "channel": "more"}))
        .await;
    assert_eq!(a.recv_json().await["error"], "forbidden");
    assert_eq!(
        b.recv_json().await,
        json!({"type": "subscribed", "channel": "more"})
    );
    s.publish("/unsubscribe", json!({"userId": "42", "channel": "vip"}))
        .await;
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.recv_json().await,
            json!({"type": "unsubscribed", "channel": "vip"})
        );
    }
    s.publish("/publish", json!({"channel": "vip", "message": 2}))
        .await;
    a.expect_nothing_for(100).await;
    b.expect_nothing_for(100).await;
}
