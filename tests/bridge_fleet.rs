//! Several servers sharing one Redis act as one: every recipient on every machine gets each
//! message exactly once, in order, and a machine gets nothing it has no recipient for.

mod common;

use common::{RedisServer, TestServer};
use serde_json::json;

async fn fleet(redis: &RedisServer) -> (TestServer, TestServer) {
    let a = TestServer::in_fleet(redis, "fleet:", "a");
    let b = TestServer::in_fleet(redis, "fleet:", "b");
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    (a, b)
}

#[tokio::test]
async fn every_call_reaches_the_other_machine() {
    let redis = RedisServer::start();
    let (a, b) = fleet(&redis).await;
    let mut on_b = b.connect("u", &["news"]).await;
    on_b.subscribe("news").await;
    let mut on_a = a.connect("v", &[]).await;

    a.publish("/message", json!({"userId": "u", "message": 1}))
        .await;
    a.publish("/publish", json!({"channel": "news", "message": 2}))
        .await;
    a.publish("/broadcast", json!({"message": 3})).await;
    a.publish("/batch", json!([{"userId": "u", "message": 4}, {"channel": "news", "message": 5}, {"userId": "v", "message": 6}]))
        .await;
    assert_eq!(
        on_b.recv_json().await,
        json!({"type": "message", "message": 1})
    );
    assert_eq!(
        on_b.recv_json().await,
        json!({"type": "message", "channel": "news", "message": 2})
    );
    for n in 3..=5 {
        assert_eq!(on_b.recv_message().await, json!(n));
    }
    assert_eq!(on_a.recv_message().await, json!(3));
    assert_eq!(on_a.recv_message().await, json!(6));
    on_b.expect_nothing_for(200).await;
    on_a.expect_nothing_for(100).await;
}

#[tokio::test]
async fn user_on_two_machines_and_two_workers_gets_one_copy_each() {
    let redis = RedisServer::start();
    let (a, b) = fleet(&redis).await;
    let mut clients = vec![
        a.connect_on(0, "u", &[]).await,
        a.connect_on(1, "u", &[]).await,
        b.connect_on(0, "u", &[]).await,
        b.connect_on(1, "u", &[]).await,
    ];
    a.publish("/message", json!({"userId": "u", "message": "from a"}))
        .await;
    b.publish("/message", json!({"userId": "u", "message": "from b"}))
        .await;
    for c in &mut clients {
        let mut got = vec![c.recv_message().await, c.recv_message().await];
        got.sort_by_key(|v| v.to_string());
        assert_eq!(got, vec![json!("from a"), json!("from b")]);
    }
    for c in &mut clients {
        c.expect_nothing_for(100).await;
    }
}

#[tokio::test]
async fn thousand_messages_from_one_machine_arrive_in_order_on_another() {
    let redis = RedisServer::start();
    let (a, b) = fleet(&redis).await;
    let mut c = b.connect("u", &[]).await;
    for i in 0..1000 {
        a.publish("/message", json!({"userId": "u", "message": i}))
            .await;
    }
    for i in 0..1000 {
        assert_eq!(c.recv_message().await, json!(i));
    }
}

#[tokio::test]
async fn a_machine_gets_nothing_it_has_no_recipient_for() {
    let redis = RedisServer::start();
    let (a, b) = fleet(&redis).await;
    let mut on_a = a.connect("only-on-a", &["room:*"]).await;
    on_a.subscribe("room:a").await;
    assert_eq!(redis.numsub("fleet:u:only-on-a"), 1);
    assert_eq!(redis.numsub("fleet:c:room:a"), 1);
    assert_eq!(redis.numsub("fleet:u:nobody"), 0);
    assert_eq!(redis.numsub("fleet:all"), 2);

    b.publish("/message", json!({"userId": "only-on-a", "message": 1}))
        .await;
    b.publish("/publish", json!({"channel": "room:a", "message": 2}))
        .await;
    a.publish("/message", json!({"userId": "only-on-a", "message": 3}))
        .await;
    // Order holds per accepting machine only: b's two may come after a's own.
    let mut got = Vec::new();
    for _ in 1..=3 {
        got.push(on_a.recv_message().await.as_u64().unwrap());
    }
    got.sort();
    assert_eq!(got, [1, 2, 3]);
    assert_eq!(b.metric("fanfare_bridge_received_total").await, 0.0);
    assert_eq!(a.metric("fanfare_bridge_received_total").await, 2.0);

    // The last local recipient leaving ends the subscription.
    drop(on_a);
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while redis.numsub("fleet:u:only-on-a") + redis.numsub("fleet:c:room:a") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "subscriptions were not dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(a.metric("fanfare_bridge_subscriptions").await, 1.0);
}

#[tokio::test]
async fn two_prefixes_on_one_redis_do_not_see_each_other() {
    let redis = RedisServer::start();
    let a = TestServer::in_fleet(&redis, "one:", "a");
    let b = TestServer::in_fleet(&redis, "two:", "b");
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    let mut on_b = b.connect("u", &["news"]).await;
    on_b.subscribe("news").await;
    a.publish("/message", json!({"userId": "u", "message": 1}))
        .await;
    a.publish("/publish", json!({"channel": "news", "message": 2}))
        .await;
    a.publish("/broadcast", json!({"message": 3})).await;
    on_b.expect_nothing_for(300).await;
    assert_eq!(b.metric("fanfare_bridge_received_total").await, 0.0);
    // Same prefix, other node: it does arrive.
    let c = TestServer::in_fleet(&redis, "two:", "c");
    c.wait_readyz(200).await;
    c.publish("/message", json!({"userId": "u", "message": 4}))
        .await;
    assert_eq!(on_b.recv_message().await, json!(4));
}

#[tokio::test]
async fn a_bad_redis_url_stops_the_start() {
    let mut config = fanfare::Config::new();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.token_secret = Some("s".into());
    config.api_key = Some("k".into());
    config.redis = Some("http://nope".into());
    let err = fanfare::Server::start(config)
        .err()
        .expect("start must fail");
    assert!(err.to_string().contains("--redis"), "{err}");
}

#[tokio::test]
async fn a_burst_from_redis_does_not_cut_a_client_that_reads() {
    let redis = RedisServer::start();
    let a = TestServer::in_fleet(&redis, "burst:", "a");
    let b = TestServer::start_with(|c| {
        c.redis = Some(redis.url());
        c.redis_prefix = "burst:".into();
        c.node_id = Some("b".into());
        c.queue_limit = 16;
    });
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    let mut on_b = b.connect("u", &[]).await;
    let reader = tokio::spawn(async move {
        for n in 0..500 {
            assert_eq!(on_b.recv_message().await, json!(n));
        }
    });
    for n in 0..500 {
        a.publish("/message", json!({"userId": "u", "message": n}))
            .await;
    }
    reader.await.unwrap();
    assert_eq!(b.metric("fanfare_slow_consumer_closes_total").await, 0.0);
}

#[tokio::test]
async fn two_processes_with_one_node_id_are_told_and_still_deliver() {
    let redis = RedisServer::start();
    let first = TestServer::in_fleet(&redis, "twins:", "same");
    first.wait_readyz(200).await;
    let second = TestServer::in_fleet(&redis, "twins:", "same");
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let (status, why) = second.get("/readyz").await;
        if why.contains("--node-id same") {
            assert_eq!(status, 503);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never told: {why}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(second.metric("fanfare_bridge_node_id_conflict").await, 1.0);
    // Echoes are told apart by instance, not by node id: nothing is lost between them.
    let mut on_first = first.connect("u", &[]).await;
    let mut on_second = second.connect("v", &[]).await;
    first
        .publish("/message", json!({"userId": "v", "message": 1}))
        .await;
    second
        .publish("/message", json!({"userId": "u", "message": 2}))
        .await;
    assert_eq!(on_second.recv_message().await, json!(1));
    assert_eq!(on_first.recv_message().await, json!(2));
    // When the first goes, its claim goes with it and the second is ready.
    drop(on_first);
    first.server.shutdown();
    assert!(first.server.join(std::time::Duration::from_secs(5)));
    second.wait_readyz(200).await;
    assert_eq!(second.metric("fanfare_bridge_node_id_conflict").await, 0.0);
}

#[test]
fn a_redis_url_the_bridge_cannot_use_stops_the_start() {
    let mut config = fanfare::Config::new();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.token_secret = Some("s".into());
    config.api_key = Some("k".into());
    config.redis = Some("redis+unix:///tmp/redis.sock".into());
    let err = fanfare::Server::start(config).err().expect("refused");
    assert!(err.to_string().contains("over TCP"), "{err}");
}

#[tokio::test]
async fn a_prefix_that_could_overlap_another_fleet_stops_the_start() {
    let mut config = fanfare::Config::new();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.token_secret = Some("s".into());
    config.api_key = Some("k".into());
    config.redis = Some("redis://127.0.0.1:1".into());
    config.redis_prefix = "fanfare:u:".into();
    let err = fanfare::Server::start(config).err().expect("refused");
    assert!(err.to_string().contains("fanfare:u:"), "{err}");
}

#[tokio::test]
async fn the_backends_controls_reach_only_the_machines_with_the_user() {
    let redis = RedisServer::start();
    let (a, b) = fleet(&redis).await;
    let c = TestServer::in_fleet(&redis, "fleet:", "c");
    c.wait_readyz(200).await;
    let mut on_a = a.connect("42", &[]).await;
    let mut on_b = b.connect("42", &[]).await;
    let _elsewhere = c.connect("43", &[]).await;
    // Only A and B subscribe to the user's channel, so only they hear the controls.
    assert_eq!(redis.numsub("fleet:u:42"), 2);
    a.publish("/subscribe", json!({"userId": "42", "channel": "vip"}))
        .await;
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(
            client.recv_json().await,
            json!({"type": "subscribed", "channel": "vip"})
        );
    }
    b.publish("/publish", json!({"channel": "vip", "message": 1}))
        .await;
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.recv_message().await, json!(1));
    }
    a.publish("/unsubscribe", json!({"userId": "42", "channel": "vip"}))
        .await;
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.recv_json().await["type"], "unsubscribed");
    }
    a.publish("/disconnect", json!({"userId": "42", "reason": "logout"}))
        .await;
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.recv_close().await, (4003, "logout".into()));
    }
    assert_eq!(c.metric("fanfare_bridge_received_total").await, 0.0);
}

#[tokio::test]
async fn the_urls_database_holds_the_node_claim_and_credentials_are_used() {
    let redis = RedisServer::start();
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("sesame")
        .query(&mut admin)
        .unwrap();
    let url = format!("redis://:sesame@127.0.0.1:{}/3", redis.port);
    let (a_url, b_url) = (url.clone(), url.clone());
    let a = TestServer::start_with(move |c| {
        c.redis = Some(a_url);
        c.redis_prefix = "db:".into();
        c.node_id = Some("a".into());
    });
    let b = TestServer::start_with(move |c| {
        c.redis = Some(b_url);
        c.redis_prefix = "db:".into();
        c.node_id = Some("b".into());
    });
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    let mut on_b = b.connect("u", &[]).await;
    a.publish("/message", json!({"userId": "u", "message": 1}))
        .await;
    assert_eq!(on_b.recv_message().await, json!(1));
    let mut db3 = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let claim: Option<String> = redis::cmd("GET").arg("db:n:a").query(&mut db3).unwrap();
    assert!(claim.is_some(), "the claim is in database 3");
}
