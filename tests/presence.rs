//! Presence on one machine: who is subscribed to a channel, with connection counts and public
//! info, `join`/`leave` once per user and in order with the channel's messages, the claims that
//! allow it, and the backend's API.

mod common;

use common::{http, TestClient, TestServer, API_KEY};
use fanfare::auth::Claims;
use serde_json::{json, Value};

/// A token for `sub` allowing `room*` and its presence, with `info` if given.
fn member_token(s: &TestServer, sub: &str, info: Option<Value>) -> String {
    s.token_with(&Claims {
        sub: sub.into(),
        channels: Some(vec!["room*".into()]),
        presence: Some(vec!["room*".into()]),
        info: info.map(|i| serde_json::value::to_raw_value(&i).unwrap()),
        ..Claims::default()
    })
}

async fn member(s: &TestServer, sub: &str, info: Option<Value>, watch: bool) -> TestClient {
    let mut c = TestClient::connect(s.addr, &member_token(s, sub, info)).await;
    c.send_json(json!({"type": "subscribe", "channel": "room", "presence": watch}))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"type": "subscribed", "channel": "room"})
    );
    c
}

async fn ask(c: &mut TestClient, frame: Value) -> Value {
    c.send_json(frame).await;
    c.recv_json().await
}

async fn api(s: &TestServer, method: &str, path: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {API_KEY}");
    let (status, text) = http(
        s.addr,
        method,
        path,
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn members_counts_and_events_with_a_user_on_two_connections() {
    let s = TestServer::start();
    let mut watcher = member(&s, "w", None, true).await;
    assert_eq!(
        watcher.recv_json().await,
        json!({"type": "join", "channel": "room", "user": "w"})
    );
    let ann = Some(json!({"name": "Ann"}));
    let mut a1 = member(&s, "a", ann.clone(), false).await;
    let a2 = member(&s, "a", ann.clone(), false).await;
    assert_eq!(
        watcher.recv_json().await,
        json!({"type": "join", "channel": "room", "user": "a", "info": {"name": "Ann"}})
    );
    assert_eq!(
        ask(
            &mut a1,
            json!({"type": "presence_count", "channel": "room"})
        )
        .await,
        json!({"type": "presence_count", "channel": "room", "users": 2, "connections": 3})
    );
    assert_eq!(
        ask(&mut watcher, json!({"type": "presence", "channel": "room"})).await,
        json!({"type": "presence", "channel": "room", "next": null, "members": [
            {"user": "a", "connections": 2, "info": {"name": "Ann"}},
            {"user": "w", "connections": 1},
        ]})
    );
    // Events keep their place among the channel's messages.
    s.publish("/publish", json!({"channel": "room", "message": 1}))
        .await;
    for mut a in [a1, a2] {
        a.send_json(json!({"type": "unsubscribe", "channel": "room"}))
            .await;
        // Message 1 may reach it before its unsubscribe is read, or not at all.
        while a.recv_json().await["type"] != "unsubscribed" {}
    }
    s.publish("/publish", json!({"channel": "room", "message": 2}))
        .await;
    assert_eq!(watcher.recv_message().await, json!(1));
    assert_eq!(
        watcher.recv_json().await,
        json!({"type": "leave", "channel": "room", "user": "a", "info": {"name": "Ann"}})
    );
    assert_eq!(watcher.recv_message().await, json!(2));
    watcher.expect_nothing_for(100).await;
    let (status, count) = api(&s, "GET", "/presence/count?channel=room", "").await;
    assert_eq!(status, 200);
    assert_eq!(count["users"], 1);
    assert_eq!(count["connections"], 1);
}

#[tokio::test]
async fn presence_needs_its_claim_a_subscription_and_small_info() {
    let s = TestServer::start();
    // `channels` without `presence`.
    let mut c = s.connect("u", &["room"]).await;
    let reply = ask(
        &mut c,
        json!({"type": "subscribe", "channel": "room", "presence": true}),
    )
    .await;
    assert_eq!(reply["error"], "forbidden", "{reply}");
    c.subscribe("room").await;
    let reply = ask(&mut c, json!({"type": "presence", "channel": "room"})).await;
    assert_eq!(reply["error"], "forbidden", "{reply}");
    // The claim, but not subscribed.
    let mut d = TestClient::connect(s.addr, &member_token(&s, "d", None)).await;
    let reply = ask(&mut d, json!({"type": "presence_count", "channel": "room"})).await;
    assert_eq!(reply["error"], "forbidden", "{reply}");
    assert!(
        reply["detail"].as_str().unwrap().contains("subscribe"),
        "{reply}"
    );
    // `info` over 512 bytes: the token is refused.
    let big = member_token(&s, "big", Some(json!({"bio": "x".repeat(600)})));
    let refused = TestClient::try_connect(s.addr, &format!("/ws?token={big}"), &[]).await;
    let (status, body) = refused.err().expect("refused");
    assert_eq!(status, 401);
    assert!(body.contains("info"), "{body}");
    // Everyone else was served all along.
    s.publish("/publish", json!({"channel": "room", "message": "still"}))
        .await;
    assert_eq!(c.recv_message().await, json!("still"));
}

#[tokio::test]
async fn the_backend_reads_members_a_page_at_a_time_and_many_counts_at_once() {
    let s = TestServer::start();
    let mut clients = Vec::new();
    for i in 0..25 {
        clients.push(member(&s, &format!("u{i:02}"), None, false).await);
    }
    let (status, page) = api(&s, "GET", "/presence?channel=room&limit=10", "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["members"].as_array().unwrap().len(), 10);
    assert_eq!(page["next"], "u09");
    let (_, last) = api(&s, "GET", "/presence?channel=room&limit=20&after=u09", "").await;
    assert_eq!(last["members"].as_array().unwrap().len(), 15);
    assert_eq!(last["members"][0]["user"], "u10");
    assert_eq!(last["next"], Value::Null);
    let body = json!({"channels": ["room", "room2"]}).to_string();
    let (status, counts) = api(&s, "POST", "/presence/counts", &body).await;
    assert_eq!(status, 200, "{counts}");
    assert_eq!(
        counts,
        json!({"counts": {"room": {"users": 25, "connections": 25}, "room2": {"users": 0, "connections": 0}}})
    );
    assert_eq!(api(&s, "GET", "/presence?channel=a%20b", "").await.0, 400);
    assert_eq!(
        api(&s, "GET", "/presence?channel=room&limit=0", "").await.0,
        400
    );
    let (status, _) = http(s.addr, "GET", "/presence?channel=room", &[], b"").await;
    assert_eq!(status, 401);
}

/// Without Redis too, a storm of subscribes and unsubscribes makes the events that stand, a
/// batch at a time (it used to make two per pair for every watcher: 55,800 for 27,900 pairs),
/// and what changed before a message is said before it.
#[tokio::test]
async fn a_storm_of_joins_and_leaves_makes_few_events() {
    let s = TestServer::start();
    let mut watcher = member(&s, "w", None, true).await;
    assert_eq!(watcher.recv_json().await["type"], "join");
    let mut storm = TestClient::connect(s.addr, &member_token(&s, "storm", None)).await;
    const PAIRS: usize = 500;
    for _ in 0..PAIRS {
        storm
            .send_json(json!({"type": "subscribe", "channel": "room"}))
            .await;
        storm
            .send_json(json!({"type": "unsubscribe", "channel": "room"}))
            .await;
    }
    for _ in 0..PAIRS {
        assert_eq!(storm.recv_json().await["type"], "subscribed");
        assert_eq!(storm.recv_json().await["type"], "unsubscribed");
    }
    s.publish("/publish", json!({"channel": "room", "message": "after"}))
        .await;
    let mut events = 0;
    loop {
        let m = watcher.recv_json().await;
        if m["type"] == "message" {
            break;
        }
        assert_eq!(m["user"], "storm", "{m}");
        events += 1;
    }
    // Each join comes with its leave: pairs, and far fewer than the 1,000 changes.
    assert_eq!(events % 2, 0, "{events} events");
    assert!(events <= 100, "{events} events for {PAIRS} pairs");
    println!("{events} events for {PAIRS} subscribe/unsubscribe pairs");
}
