//! Deltas (PROTOCOL section 10): a subscription that asks (`"delta":"fossil"`) on a channel
//! with history gets each message as a fossil delta against the one before when that is
//! smaller, whole after `subscribed`, a resume or a gap; a plain subscriber beside it gets the
//! same messages whole; alone and across a fleet through Redis.

mod common;

use common::{post_offset, RedisServer, TestClient, TestServer};
use serde_json::{json, Value};

/// A 2 KB document of which each message changes a few fields.
fn document(n: u64) -> Value {
    let rows: Vec<Value> = (0..30)
        .map(
            |i| json!({"id": i, "name": format!("instrument {i}"), "open": true, "price": 100 + i}),
        )
        .collect();
    json!({"seq": n, "price": 1000 + n, "updated": format!("12:00:{n:02}"), "rows": rows})
}

/// The text of a message frame's `message`, as it came (the base of the next delta).
fn raw_message(frame: &str) -> &str {
    let at = frame.find(r#""message":"#).expect("a message frame") + 10;
    &frame[at..frame.len() - 1]
}

/// A client that applies deltas as the JavaScript client does: the text of each message.
struct Applier {
    client: TestClient,
    last: Option<String>,
    deltas: usize,
}

impl Applier {
    async fn next(&mut self) -> (u64, String) {
        let frame = self.client.recv_text().await;
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "message", "{frame}");
        let text = if v["delta"] == true {
            self.deltas += 1;
            let base = self.last.as_ref().expect("a delta has a base");
            let delta = v["message"].as_str().unwrap();
            String::from_utf8(fossil_delta::apply(base, delta).expect("applies")).unwrap()
        } else {
            raw_message(&frame).to_string()
        };
        self.last = Some(text.clone());
        (v["offset"].as_u64().unwrap(), text)
    }
}

async fn subscribe(
    s: &TestServer,
    user: &str,
    delta: bool,
    since: Option<(u64, &str)>,
) -> (TestClient, Value) {
    let mut c = s.connect(user, &["doc"]).await;
    let hello = c.recv_json().await;
    assert_eq!(hello["type"], "connected", "{hello}");
    let mut frame = json!({"type": "subscribe", "channel": "doc"});
    if delta {
        frame["delta"] = json!("fossil");
    }
    if let Some((offset, epoch)) = since {
        frame["since"] = json!({"offset": offset, "epoch": epoch});
    }
    c.send_json(frame).await;
    let reply = c.recv_json().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    (c, reply)
}

fn with_history(c: &mut fanfare::Config) {
    c.history_size = 100;
}

#[tokio::test]
async fn a_delta_subscriber_rebuilds_every_message_a_plain_one_gets_whole() {
    let s = TestServer::start_with(with_history);
    let (c, reply) = subscribe(&s, "a", true, None).await;
    assert_eq!(reply["delta"], "fossil", "{reply}");
    let (mut plain, reply) = subscribe(&s, "b", false, None).await;
    assert!(reply.get("delta").is_none(), "{reply}");
    let epoch = reply["epoch"].as_str().unwrap().to_string();
    let mut a = Applier {
        client: c,
        last: None,
        deltas: 0,
    };
    for n in 1..=6 {
        post_offset(
            &s,
            "/publish",
            json!({"channel": "doc", "message": document(n)}),
        )
        .await;
        let whole = plain.recv_text().await;
        assert!(!whole.contains(r#""delta""#), "{whole}");
        let (offset, text) = a.next().await;
        assert_eq!(offset, n);
        assert_eq!(text, raw_message(&whole), "message {n} rebuilt exactly");
    }
    assert_eq!(a.deltas, 5, "all but the first after subscribed");
    // A message whose delta is not smaller comes whole.
    post_offset(
        &s,
        "/publish",
        json!({"channel": "doc", "message": [1, 2, 3]}),
    )
    .await;
    assert_eq!(a.next().await, (7, "[1,2,3]".to_string()));
    assert_eq!(a.deltas, 5);
    // A resume: what it missed comes whole, then deltas go on.
    drop(a);
    for n in 8..=9 {
        post_offset(
            &s,
            "/publish",
            json!({"channel": "doc", "message": document(n)}),
        )
        .await;
    }
    let (c, reply) = subscribe(&s, "a", true, Some((7, &epoch))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let mut a = Applier {
        client: c,
        last: None,
        deltas: 0,
    };
    assert_eq!(a.next().await.0, 8);
    assert_eq!(a.next().await.0, 9);
    assert_eq!(a.deltas, 0, "a replay comes whole");
    for n in 10..=12 {
        post_offset(
            &s,
            "/publish",
            json!({"channel": "doc", "message": document(n)}),
        )
        .await;
        let (offset, text) = a.next().await;
        assert_eq!((offset, text), (n, document(n).to_string()));
    }
    // 10 came whole too: nobody here took deltas when 9 went out, so nobody kept it as a base.
    assert_eq!(a.deltas, 2);
}

#[tokio::test]
async fn without_history_a_delta_subscription_gets_whole_messages() {
    let s = TestServer::start();
    let mut c = s.connect("a", &["doc"]).await;
    c.send_json(json!({"type": "subscribe", "channel": "doc", "delta": "fossil"}))
        .await;
    let reply = c.recv_json().await;
    assert_eq!(reply, json!({"type": "subscribed", "channel": "doc"}));
    for n in 1..=3 {
        s.publish(
            "/publish",
            json!({"channel": "doc", "message": document(n)}),
        )
        .await;
        let frame = c.recv_text().await;
        assert!(!frame.contains(r#""delta""#), "{frame}");
    }
    c.send_json(json!({"type": "subscribe", "channel": "x", "delta": "xdelta"}))
        .await;
    let error = c.recv_json().await;
    assert_eq!(error["error"], "bad_request", "{error}");
}

#[tokio::test]
async fn deltas_reach_a_subscriber_on_another_machine_of_the_fleet() {
    let redis = RedisServer::start();
    let machine = |node: &str| {
        let (url, node) = (redis.url(), node.to_string());
        TestServer::start_with(move |c| {
            c.redis = Some(url);
            c.redis_prefix = "dl:".into();
            c.node_id = Some(node);
            c.history_size = 100;
        })
    };
    let (a, b) = (machine("a"), machine("b"));
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    let (c, _) = subscribe(&a, "u", true, None).await;
    let mut d = Applier {
        client: c,
        last: None,
        deltas: 0,
    };
    for n in 1..=4 {
        post_offset(
            &b,
            "/publish",
            json!({"channel": "doc", "message": document(n)}),
        )
        .await;
        assert_eq!(d.next().await, (n, document(n).to_string()));
    }
    assert_eq!(d.deltas, 3);
}
