//! History and recovery on one machine (PROTOCOL.md section 7): a client that comes back gets
//! every message it missed, in order, exactly once — or `recovered: false`, never a silent gap.

mod common;

use common::{post_offset, subscribe_since, TestClient, TestServer};
use serde_json::{json, Value};

fn with_history(size: u32) -> TestServer {
    TestServer::start_with(|c| c.history_size = size)
}

/// A client of `user` subscribed to `channel` from now; returns it and the channel's epoch.
async fn subscribed(s: &TestServer, user: &str, channel: &str) -> (TestClient, String) {
    let mut c = s.connect(user, &[channel]).await;
    assert_eq!(c.recv_json().await["type"], "connected");
    let reply = subscribe_since(&mut c, channel, None).await;
    let epoch = reply["epoch"].as_str().unwrap().to_string();
    (c, epoch)
}

#[tokio::test]
async fn a_channel_resumes_with_exactly_what_it_missed() {
    let s = with_history(200);
    let mut c = s.connect("42", &["news"]).await;
    assert_eq!(c.recv_json().await["type"], "connected");
    let first = subscribe_since(&mut c, "news", None).await;
    assert_eq!(first["offset"], 0);
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for n in 1..=3u64 {
        let body = json!({"channel": "news", "message": n});
        assert_eq!(post_offset(&s, "/publish", body).await, n);
        let m = c.recv_json().await;
        assert_eq!((m["offset"].as_u64(), &m["message"]), (Some(n), &json!(n)));
    }
    drop(c);
    for n in 4..=103u64 {
        post_offset(&s, "/publish", json!({"channel": "news", "message": n})).await;
    }
    let mut back = s.connect("42", &["news"]).await;
    back.recv_json().await;
    let reply = subscribe_since(&mut back, "news", Some((3, &epoch))).await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "channel": "news", "recovered": true, "offset": 103, "epoch": epoch})
    );
    for n in 4..=103u64 {
        let m = back.recv_json().await;
        assert_eq!(
            (m["offset"].as_u64(), &m["message"]),
            (Some(n), &json!(n)),
            "{m}"
        );
    }
    post_offset(
        &s,
        "/publish",
        json!({"channel": "news", "message": "live"}),
    )
    .await;
    assert_eq!(back.recv_json().await["offset"], 104);
    back.expect_nothing_for(100).await;
}

#[tokio::test]
async fn a_gap_the_history_cannot_fill_is_said_so() {
    let s = with_history(10);
    let (c, epoch) = subscribed(&s, "42", "news").await;
    drop(c);
    for n in 1..=50 {
        post_offset(&s, "/publish", json!({"channel": "news", "message": n})).await;
    }
    let mut back = s.connect("42", &["news"]).await;
    back.recv_json().await;
    // Only the last 10 are kept: from 0 the gap is 50.
    let reply = subscribe_since(&mut back, "news", Some((0, &epoch))).await;
    assert_eq!(
        (reply["recovered"].as_bool(), reply["offset"].as_u64()),
        (Some(false), Some(50))
    );
    post_offset(
        &s,
        "/publish",
        json!({"channel": "news", "message": "live"}),
    )
    .await;
    assert_eq!(back.recv_json().await["offset"], 51);
    let mut fresh = s.connect("43", &["news"]).await;
    fresh.recv_json().await;
    let wrong = subscribe_since(&mut fresh, "news", Some((45, "not-the-epoch"))).await;
    assert_eq!(wrong["recovered"], false);
    assert_eq!(wrong["offset"], 51);
}

#[tokio::test]
async fn direct_messages_resume_on_connect() {
    let s = with_history(100);
    let mut c = s.connect("42", &[]).await;
    let connected = c.recv_json().await;
    assert_eq!(
        (connected["type"].as_str(), connected["offset"].as_u64()),
        (Some("connected"), Some(0))
    );
    let epoch = connected["epoch"].as_str().unwrap().to_string();
    assert_eq!(
        post_offset(&s, "/message", json!({"userId": "42", "message": "a"})).await,
        1
    );
    assert_eq!(
        c.recv_json().await,
        json!({"type": "message", "offset": 1, "message": "a"})
    );
    drop(c);
    for n in 2..=5 {
        post_offset(&s, "/message", json!({"userId": "42", "message": n})).await;
    }
    let token = s.token("42", &[]);
    let path = format!("/ws?token={token}&since=1&epoch={epoch}");
    let mut back = TestClient::try_connect(s.addr, &path, &[]).await.unwrap();
    assert_eq!(
        back.recv_json().await,
        json!({"type": "connected", "recovered": true, "offset": 5, "epoch": epoch})
    );
    for n in 2..=5u64 {
        assert_eq!(back.recv_json().await["offset"], n);
    }
    let path = format!("/ws?token={token}&since=1");
    let mut no_epoch = TestClient::try_connect(s.addr, &path, &[]).await.unwrap();
    let reply = no_epoch.recv_json().await;
    assert_eq!(
        (reply["recovered"].as_bool(), reply["offset"].as_u64()),
        (Some(false), Some(5))
    );
}

#[tokio::test]
async fn a_batch_answers_with_its_offsets_and_broadcasts_have_none() {
    let s = with_history(100);
    let (status, body) = s
        .post(
            "/batch",
            &json!([
                {"channel": "a", "message": 1},
                {"userId": "u", "message": 2},
                {"channel": "a", "message": 3}
            ])
            .to_string(),
        )
        .await;
    assert_eq!(status, 202);
    let body = serde_json::from_str::<Value>(&body).unwrap();
    assert_eq!(body["offsets"], json!([1, 1, 2]), "{body}");
    let epochs = body["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3, "{body}");
    assert_eq!(epochs[0], epochs[2], "one channel, one epoch: {body}");
    let (_, body) = s
        .post("/broadcast", &json!({"message": 1}).to_string())
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"ok": true})
    );
}

#[tokio::test]
async fn resubscribing_while_messages_flow_misses_nothing_and_repeats_nothing() {
    const N: u64 = 600;
    let s = with_history(1000);
    // A steady subscriber on the same worker keeps the channel routed there, so messages are
    // on their way to the worker whenever the other client subscribes again.
    let mut steady = s.connect_on(0, "7", &["live"]).await;
    steady.recv_json().await;
    subscribe_since(&mut steady, "live", None).await;
    let addr = s.addr;
    let publisher = tokio::spawn(async move {
        for n in 1..=N {
            let body = json!({"channel": "live", "message": n}).to_string();
            let (status, _) = common::post_to(addr, "/publish", &body).await;
            assert_eq!(status, 202);
        }
    });
    let mut seen: Vec<u64> = Vec::new();
    let mut resume: Option<(u64, String)> = None;
    let mut rounds = 0;
    while seen.last().copied() != Some(N) {
        rounds += 1;
        assert!(rounds < 1000, "never caught up");
        let mut c = s.connect_on(0, "42", &["live"]).await;
        c.recv_json().await;
        let since = resume.as_ref().map(|(o, e)| (*o, e.as_str()));
        let reply = subscribe_since(&mut c, "live", since).await;
        if resume.is_some() {
            assert_eq!(reply["recovered"], true, "{reply}");
        }
        let epoch = reply["epoch"].as_str().unwrap().to_string();
        // Read a few, then drop the connection mid-stream.
        for _ in 0..25 {
            if seen.last().copied() == Some(N) {
                break;
            }
            let m = c.recv_json().await;
            seen.push(m["offset"].as_u64().unwrap());
        }
        resume = seen.last().map(|o| (*o, epoch));
    }
    publisher.await.unwrap();
    for n in 1..=N {
        assert_eq!(steady.recv_json().await["offset"], n);
    }
    let first = seen[0];
    let expected: Vec<u64> = (first..=N).collect();
    assert_eq!(seen, expected, "a gap or a repeat at a seam");
    assert!(rounds > 3);
}

#[tokio::test]
async fn a_backend_subscribe_misses_nothing_published_right_after_it() {
    let s = with_history(100);
    for round in 0..10 {
        let channel = format!("vip{round}");
        // The channel is already routed to worker 0, so messages race the subscribe there.
        let mut steady = s.connect_on(0, "steady", &[&channel]).await;
        steady.recv_json().await;
        subscribe_since(&mut steady, &channel, None).await;
        let mut c = s.connect_on(0, "42", &[]).await;
        c.recv_json().await;
        s.publish("/subscribe", json!({"userId": "42", "channel": channel}))
            .await;
        s.publish(
            "/publish",
            json!({"channel": channel, "message": "welcome"}),
        )
        .await;
        let subscribed = c.recv_json().await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        assert_eq!(subscribed["recovered"], json!(null), "{subscribed}");
        let m = c.recv_json().await;
        assert_eq!(m["message"], "welcome", "round {round}: {m}");
        assert_eq!(m["offset"], 1);
        c.expect_nothing_for(50).await;
    }
}

#[tokio::test]
async fn a_subscribe_on_a_running_subscription_is_refused_not_ignored() {
    let s = with_history(100);
    let (mut c, epoch) = subscribed(&s, "42", "news").await;
    c.send_json(
        json!({"type": "subscribe", "channel": "news", "since": {"offset": 0, "epoch": epoch}}),
    )
    .await;
    let reply = c.recv_json().await;
    assert_eq!(
        (reply["type"].as_str(), reply["error"].as_str()),
        (Some("error"), Some("bad_request")),
        "{reply}"
    );
}

#[tokio::test]
async fn a_large_replay_never_cuts_a_client_that_reads() {
    let s = TestServer::start_with(|c| {
        c.history_size = 1000;
        c.queue_limit = 8;
        c.queue_bytes = 16 * 1024;
    });
    let (c, epoch) = subscribed(&s, "42", "big").await;
    drop(c);
    // 16 MB: more than the kernel's buffers take at once.
    let pad = "x".repeat(16 * 1024);
    for n in 1..=1000 {
        s.publish(
            "/publish",
            json!({"channel": "big", "message": {"n": n, "pad": pad}}),
        )
        .await;
    }
    let mut back = s.connect("42", &["big"]).await;
    back.recv_json().await;
    let reply = subscribe_since(&mut back, "big", Some((0, &epoch))).await;
    assert_eq!(reply["recovered"], true);
    for n in 1..=1000u64 {
        assert_eq!(back.recv_json().await["offset"], n);
    }
    assert_eq!(s.metric("fanfare_slow_consumer_closes_total").await, 0.0);
}

#[tokio::test]
async fn a_large_direct_replay_at_connect_never_cuts_a_client_that_reads() {
    let s = TestServer::start_with(|c| {
        c.history_size = 1000;
        c.queue_limit = 8;
        c.queue_bytes = 16 * 1024;
    });
    let mut c = s.connect("42", &[]).await;
    let epoch = c.recv_json().await["epoch"].as_str().unwrap().to_string();
    drop(c);
    // 16 MB: more than the kernel's buffers take at once.
    let pad = "x".repeat(16 * 1024);
    for n in 1..=1000 {
        s.publish(
            "/message",
            json!({"userId": "42", "message": {"n": n, "pad": pad}}),
        )
        .await;
    }
    // A small receive buffer: the replay cannot all sit in the kernel, most of it waits.
    let resume = format!("{}&since=0&epoch={epoch}", s.token("42", &[]));
    let mut back = TestClient::connect_small_buffer(s.addr, &resume).await;
    assert_eq!(back.recv_json().await["recovered"], true);
    for n in 1..=1000u64 {
        assert_eq!(back.recv_json().await["offset"], n);
    }
    assert_eq!(s.metric("fanfare_slow_consumer_closes_total").await, 0.0);
}

/// A 202 says the epoch its offset belongs to, as `subscribed` does.
#[tokio::test]
async fn a_202_names_the_epoch_of_its_offset() {
    let s = with_history(10);
    let (_c, epoch) = subscribed(&s, "1", "news").await;
    let (status, text) = s
        .post(
            "/publish",
            &json!({"channel": "news", "message": 1}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body, json!({"ok": true, "offset": 1, "epoch": epoch}));
}

/// `?since=` is read like any query value (percent-decoded) and is decimal digits only: `%30`
/// is 0, `+0` (a space and a 0) is no offset, so it cannot resume.
#[tokio::test]
async fn a_since_in_the_query_is_decoded_and_strict() {
    let s = with_history(10);
    let mut first = s.connect("7", &[]).await;
    let hello = first.recv_json().await;
    let epoch = hello["epoch"].as_str().unwrap().to_string();
    let resume = |offset: &str| {
        format!(
            "/ws?token={}&since={offset}&epoch={epoch}",
            s.token("7", &[])
        )
    };
    for (offset, recovered) in [("%30", true), ("0", true), ("+0", false), ("0x0", false)] {
        let mut c = TestClient::try_connect(s.addr, &resume(offset), &[])
            .await
            .unwrap();
        let hello = c.recv_json().await;
        assert_eq!(hello["recovered"], recovered, "since={offset}: {hello}");
    }
}

/// One caller publishing to many topics cannot grow the history past --history-max-bytes: the
/// oldest messages go (counted), and a resume that needed them is `recovered: false`.
#[tokio::test]
async fn the_history_stays_under_its_byte_cap_and_says_what_it_dropped() {
    const CAP: u64 = 200_000;
    let s = TestServer::start_with(|c| {
        c.history_size = 100;
        c.history_max_bytes = Some(CAP);
        c.max_message_bytes = 1 << 20;
    });
    let (mut first, epoch) = subscribed(&s, "1", "t0").await;
    drop(first.ws.close(None).await);
    let pad = "x".repeat(1000);
    for round in 0..10 {
        let batch: Vec<Value> = (0..100)
            .map(|t| json!({"channel": format!("t{t}"), "message": {"round": round, "pad": pad}}))
            .collect();
        let (status, body) = s.post("/batch", &json!(batch).to_string()).await;
        assert_eq!(status, 202, "{body}");
    }
    let kept = s.metric("fanfare_history_bytes").await;
    assert!(kept <= CAP as f64, "{kept} bytes kept");
    assert!(s.metric("fanfare_history_evicted_total").await > 0.0);
    let mut back = s.connect("1", &["t0"]).await;
    assert_eq!(back.recv_json().await["type"], "connected");
    let reply = subscribe_since(&mut back, "t0", Some((0, &epoch))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["offset"], 10, "{reply}");
}
