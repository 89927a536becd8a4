//! Idempotency keys (PROTOCOL section 13): a publish sent again with the same
//! `idempotencyKey` to the same target within `--idempotency-ttl` is answered as the first was
//! (same offset) and delivered nowhere — alone, and across a fleet through Redis, with and
//! without history; a batch's repeats among new items; a bad key is 400.

mod common;

use common::{RedisServer, TestClient, TestServer};
use serde_json::{json, Value};

async fn post(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = s.post(path, &body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn subscriber(s: &TestServer, user: &str, channel: &str) -> TestClient {
    let mut c = s.connect(user, &[channel]).await;
    c.send_json(json!({"type": "subscribe", "channel": channel}))
        .await;
    // With history, `connected` comes first.
    while c.recv_json().await["type"] != "subscribed" {}
    c
}

fn machine(redis: Option<&RedisServer>, node: &str, history: u32) -> TestServer {
    let url = redis.map(RedisServer::url);
    let node = node.to_string();
    TestServer::start_with(move |c| {
        c.redis = url;
        c.redis_prefix = "idem:".into();
        c.node_id = Some(node);
        c.history_size = history;
    })
}

/// Publishes `n` to `news` with `key` on `s`; returns the answer.
async fn publish(s: &TestServer, n: u64, key: &str) -> Value {
    let body = json!({"channel": "news", "message": n, "idempotencyKey": key});
    let (status, answer) = post(s, "/publish", body).await;
    assert_eq!(status, 202, "{answer}");
    answer
}

#[tokio::test]
async fn alone_a_repeat_is_answered_as_the_first_and_delivered_nowhere() {
    for history in [100, 0] {
        let s = machine(None, "a", history);
        let mut c = subscriber(&s, "u", "news").await;
        let first = publish(&s, 1, "order-1").await;
        assert_eq!(publish(&s, 1, "order-1").await, first);
        let other = publish(&s, 2, "order-2").await;
        if history > 0 {
            assert_eq!((&first["offset"], &other["offset"]), (&json!(1), &json!(2)));
        }
        // The same key to another target is another publication.
        let (status, _) = post(
            &s,
            "/message",
            json!({"userId": "u", "message": 3, "idempotencyKey": "order-1"}),
        )
        .await;
        assert_eq!(status, 202);
        assert_eq!(c.recv_message().await, json!(1));
        assert_eq!(c.recv_message().await, json!(2));
        assert_eq!(c.recv_message().await, json!(3));
        c.expect_nothing_for(200).await;
    }
}

#[tokio::test]
async fn a_batch_answers_its_repeats_as_before_and_publishes_the_rest() {
    let s = machine(None, "a", 100);
    let mut c = subscriber(&s, "u", "news").await;
    publish(&s, 1, "k1").await;
    let batch = json!([
        {"channel": "news", "message": 1, "idempotencyKey": "k1"},
        {"channel": "news", "message": 2, "idempotencyKey": "k2"},
        {"channel": "news", "message": 3},
    ]);
    let (status, answer) = post(&s, "/batch", batch.clone()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["offsets"], json!([1, 2, 3]));
    for n in 1..=3 {
        assert_eq!(c.recv_message().await, json!(n));
    }
    // The same key twice in one batch: the second is a repeat still on its way.
    let twice = json!([
        {"channel": "news", "message": 4, "idempotencyKey": "k4"},
        {"channel": "news", "message": 4, "idempotencyKey": "k4"},
    ]);
    let (status, answer) = post(&s, "/batch", twice).await;
    assert_eq!(status, 409, "{answer}");
    c.expect_nothing_for(200).await;
    // Nothing of that batch was published, and its keys are free again.
    let (status, answer) = post(
        &s,
        "/publish",
        json!({"channel": "news", "message": 4, "idempotencyKey": "k4"}),
    )
    .await;
    assert_eq!((status, &answer["offset"]), (202, &json!(4)));
    for bad in [json!(""), json!("k".repeat(65)), json!(7)] {
        let (status, answer) = post(
            &s,
            "/publish",
            json!({"channel": "news", "message": 1, "idempotencyKey": bad}),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
    }
}

#[tokio::test]
async fn across_a_fleet_a_repeat_through_another_machine_is_delivered_nowhere() {
    let redis = RedisServer::start();
    for history in [100, 0] {
        let (a, b) = (
            machine(Some(&redis), "a", history),
            machine(Some(&redis), "b", history),
        );
        a.wait_readyz(200).await;
        b.wait_readyz(200).await;
        let key = format!("fleet-{history}");
        let mut c = subscriber(&b, "u", "news").await;
        let first = publish(&a, 1, &key).await;
        // A retry through the other machine (its first answer lost on the way, say).
        assert_eq!(publish(&b, 1, &key).await, first);
        let (status, _) = post(
            &b,
            "/broadcast",
            json!({"message": "all", "idempotencyKey": key}),
        )
        .await;
        assert_eq!(status, 202);
        let (status, _) = post(
            &a,
            "/broadcast",
            json!({"message": "all", "idempotencyKey": key}),
        )
        .await;
        assert_eq!(status, 202);
        assert_eq!(c.recv_message().await, json!(1));
        assert_eq!(c.recv_message().await, json!("all"));
        c.expect_nothing_for(300).await;
        if history > 0 {
            assert_eq!(first["offset"], 1, "{first}");
        }
    }
}

#[tokio::test]
async fn a_keyed_publish_redis_could_not_take_is_delivered_once_when_retried() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let a = machine(Some(&redis), "a", 100);
    a.wait_readyz(200).await;
    let mut c = subscriber(&a, "u", "news").await;
    redis.kill();
    a.wait_readyz(503).await;
    let body = json!({"channel": "news", "message": "x", "idempotencyKey": "retry-me"});
    let (status, answer) = post(&a, "/publish", body.clone()).await;
    assert_eq!(status, 503, "{answer}");
    let _redis = RedisServer::on_port(port);
    a.wait_readyz(200).await;
    for _ in 0..3 {
        let (status, answer) = post(&a, "/publish", body.clone()).await;
        assert_eq!(status, 202, "{answer}");
    }
    loop {
        let frame = c.recv_json().await;
        if frame["type"] == "message" {
            assert_eq!(frame["message"], "x");
            break;
        }
    }
    c.expect_nothing_for(300).await;
}
