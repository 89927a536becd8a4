//! Redis going away: local delivery goes on, /readyz says 503, remote messages are dropped and
//! counted, and when Redis is back the bridge restores every subscription by itself.

mod common;

use std::time::{Duration, Instant};

use common::{RedisServer, TestClient, TestServer};
use serde_json::json;

/// Publishes on `from` to `user` until `client` gets one; returns how long that took.
async fn until_delivered(from: &TestServer, user: &str, client: &mut TestClient) -> Duration {
    let started = Instant::now();
    for i in 0.. {
        from.publish("/message", json!({"userId": user, "message": {"probe": i}}))
            .await;
        if let Ok(v) = tokio::time::timeout(Duration::from_millis(50), client.recv_json()).await {
            assert_eq!(v["type"], "message");
            // Drain any probe still on its way.
            client.expect_nothing_for(150).await;
            return started.elapsed();
        }
        assert!(
            started.elapsed() < common::PATIENCE,
            "never delivered again"
        );
    }
    unreachable!()
}

#[tokio::test]
async fn redis_restart_is_survived_without_clients_reconnecting() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let a = TestServer::in_fleet(&redis, "faults:", "a");
    let b = TestServer::in_fleet(&redis, "faults:", "b");
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    let mut local = a.connect("local", &[]).await;
    let mut remote = b.connect("remote", &["news"]).await;
    remote.subscribe("news").await;

    redis.kill();
    a.wait_readyz(503).await;
    b.wait_readyz(503).await;
    // Local delivery never stops; what was meant for the other machine is dropped and counted.
    a.publish(
        "/message",
        json!({"userId": "local", "message": "still here"}),
    )
    .await;
    assert_eq!(local.recv_message().await, json!("still here"));
    a.publish("/message", json!({"userId": "remote", "message": "lost"}))
        .await;
    assert!(a.metric("fanfare_bridge_dropped_total").await >= 1.0);
    assert_eq!(a.metric("fanfare_bridge_up{link=\"publish\"}").await, 0.0);

    let redis = RedisServer::on_port(port);
    let took = until_delivered(&a, "remote", &mut remote).await;
    assert!(
        took < Duration::from_secs(2),
        "cross-machine delivery took {took:?} to resume"
    );
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    // Every subscription is back: the user's, the channel's, and broadcast.
    assert_eq!(redis.numsub("faults:u:remote"), 1);
    assert_eq!(redis.numsub("faults:c:news"), 1);
    assert_eq!(redis.numsub("faults:all"), 2);
    a.publish("/publish", json!({"channel": "news", "message": "back"}))
        .await;
    assert_eq!(remote.recv_message().await, json!("back"));
    assert!(b.metric("fanfare_bridge_reconnects_total").await >= 1.0);
}

#[tokio::test]
async fn redis_unreachable_at_start_is_retried() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = TestServer::start_with(|c| {
        c.redis = Some(url.clone());
        c.node_id = Some("a".into());
    });
    let b = TestServer::start_with(|c| {
        c.redis = Some(url);
        c.node_id = Some("b".into());
    });
    assert_eq!(a.get("/readyz").await.0, 503);
    assert_eq!(a.get("/healthz").await.0, 200);
    // Connecting while Redis is down does not wait for it.
    let mut on_a = a.connect("u", &["news"]).await;
    on_a.subscribe("news").await;
    a.publish("/publish", json!({"channel": "news", "message": 1}))
        .await;
    assert_eq!(on_a.recv_message().await, json!(1));

    let _redis = RedisServer::on_port(port);
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    b.publish("/publish", json!({"channel": "news", "message": 2}))
        .await;
    assert_eq!(on_a.recv_message().await, json!(2));
}
