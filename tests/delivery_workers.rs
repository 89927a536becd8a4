//! Delivery across the workers of one process: exactly once, in order, only where needed.

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn user_on_two_workers_gets_each_message_once_on_each() {
    let s = TestServer::start();
    let mut a = s.connect_on(0, "42", &[]).await;
    let mut b = s.connect_on(1, "42", &[]).await;
    for i in 0..3 {
        s.publish("/message", json!({"userId": "42", "message": {"n": i}}))
            .await;
    }
    for c in [&mut a, &mut b] {
        for i in 0..3 {
            assert_eq!(c.recv_message().await, json!({"n": i}));
        }
        c.expect_nothing_for(200).await;
    }
}

#[tokio::test]
async fn thousand_messages_arrive_in_order_from_both_workers() {
    let s = TestServer::start_with(|c| c.queue_limit = 4096);
    let mut a = s.connect_on(0, "7", &[]).await;
    let mut b = s.connect_on(1, "7", &[]).await;
    // Alternate the accepting worker, through each worker's own listener.
    for i in 0..1000 {
        let body = json!({"userId": "7", "message": i}).to_string();
        let worker = s.server.worker_addrs()[i % 2];
        assert_eq!(common::post_to(worker, "/message", &body).await.0, 202);
    }
    for c in [&mut a, &mut b] {
        for i in 0..1000 {
            assert_eq!(c.recv_message().await, json!(i));
        }
    }
}

#[tokio::test]
async fn message_reaches_only_workers_with_a_recipient() {
    let s = TestServer::start();
    let mut a = s.connect_on(0, "alice", &["news"]).await;
    a.subscribe("news").await;
    let before = s.metric("fanfare_bus_received_total{worker=\"1\"}").await;
    s.publish("/message", json!({"userId": "alice", "message": 1}))
        .await;
    s.publish("/publish", json!({"channel": "news", "message": 2}))
        .await;
    s.publish("/message", json!({"userId": "nobody", "message": 3}))
        .await;
    assert_eq!(a.recv_message().await, json!(1));
    assert_eq!(a.recv_message().await, json!(2));
    assert_eq!(
        s.metric("fanfare_bus_received_total{worker=\"0\"}").await,
        2.0
    );
    assert_eq!(
        s.metric("fanfare_bus_received_total{worker=\"1\"}").await,
        before
    );
    // A broadcast goes to every worker.
    s.publish("/broadcast", json!({"message": 4})).await;
    assert_eq!(a.recv_message().await, json!(4));
    let w1 = || s.metric("fanfare_bus_received_total{worker=\"1\"}");
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while w1().await != before + 1.0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn closing_one_connection_leaves_the_others() {
    let s = TestServer::start();
    let a = s.connect_on(0, "u", &[]).await;
    let mut b = s.connect_on(1, "u", &[]).await;
    drop(a);
    s.eventually("a to unregister", |srv| {
        srv.metrics().workers[0]
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;
    s.publish("/message", json!({"userId": "u", "message": "still here"}))
        .await;
    assert_eq!(b.recv_message().await, json!("still here"));
}

#[tokio::test]
async fn registry_is_empty_after_many_connect_disconnect_cycles() {
    let s = TestServer::start();
    for round in 0..20 {
        let mut clients = Vec::new();
        for i in 0..10 {
            let user = format!("u{}", i % 4);
            let mut c = s.connect_on(i % 2, &user, &["room:*"]).await;
            c.subscribe(&format!("room:{}", i % 3)).await;
            c.subscribe("room:all").await;
            clients.push(c);
        }
        if round % 2 == 0 {
            for c in &mut clients {
                c.ws.close(None).await.unwrap();
            }
        }
        drop(clients);
    }
    s.eventually("every registry entry to go", |srv| {
        srv.registry_entries() == 0
    })
    .await;
    assert_eq!(s.metric("fanfare_connections").await, 0.0);
}

#[tokio::test]
async fn upgrade_completed_means_ready() {
    let s = TestServer::start();
    for i in 0..50 {
        let user = format!("fresh{i}");
        let mut c = s.connect(&user, &[]).await;
        s.publish("/message", json!({"userId": user, "message": i}))
            .await;
        assert_eq!(c.recv_message().await, json!(i));
    }
}
