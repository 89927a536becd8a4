//! Server-Sent Events (PROTOCOL section 12): `/sse` carries the frames `/ws` would, each event
//! with an id that resumes every topic of the stream from `Last-Event-ID`, on any machine; the
//! same limits end it as they close a WebSocket.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{RedisServer, TestServer, PATIENCE};
use fanfare::auth::Claims;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One event as a browser's `EventSource` sees it.
#[derive(Debug, Default)]
struct Event {
    /// The `event:` field (`message` when absent).
    kind: Option<String>,
    /// The `id:` field, when the event has one.
    id: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// A client of `/sse` over a plain socket, reading the stream as the SSE spec says.
struct EventStream {
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    _write: tokio::net::tcp::OwnedWriteHalf,
    /// The response head's lines.
    head: Vec<String>,
    /// The last `id:` seen: what a browser would send back as `Last-Event-ID`.
    last_id: Option<String>,
    /// Comments seen (keep-alives).
    comments: usize,
}

impl EventStream {
    /// Opens `/sse?query`, with `Last-Event-ID` when given; the error is the status and body.
    async fn open(
        addr: SocketAddr,
        query: &str,
        last_id: Option<&str>,
    ) -> Result<EventStream, (u16, String)> {
        Self::open_on(TcpStream::connect(addr).await.unwrap(), query, last_id).await
    }

    async fn open_on(
        socket: TcpStream,
        query: &str,
        last_id: Option<&str>,
    ) -> Result<EventStream, (u16, String)> {
        let (read, mut write) = socket.into_split();
        let header = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let req = format!("GET /sse?{query} HTTP/1.1\r\nHost: x\r\n{header}\r\n");
        write.write_all(req.as_bytes()).await.unwrap();
        let mut read = BufReader::new(read);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            read.read_line(&mut line).await.unwrap();
            let line = line.trim_end().to_string();
            if line.is_empty() {
                break;
            }
            head.push(line);
        }
        let status: u16 = head[0].split(' ').nth(1).unwrap().parse().unwrap();
        if status != 200 {
            let length = head
                .iter()
                .find_map(|h| h.strip_prefix("content-length: "))
                .map_or(0, |l| l.parse().unwrap());
            let mut body = vec![0; length];
            read.read_exact(&mut body).await.unwrap();
            return Err((status, String::from_utf8(body).unwrap()));
        }
        Ok(EventStream {
            read,
            _write: write,
            head,
            last_id: last_id.map(str::to_string),
            comments: 0,
        })
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self) -> Option<Event> {
        tokio::time::timeout(PATIENCE, self.next_now())
            .await
            .expect("an event within the patience")
    }

    async fn next_now(&mut self) -> Option<Event> {
        let mut event = Event::default();
        let mut has_data = false;
        loop {
            let mut line = String::new();
            if self.read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if has_data {
                    if event.id.is_some() {
                        self.last_id = event.id.clone();
                    }
                    return Some(event);
                }
                event = Event::default();
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "data" => {
                    has_data = true;
                    event.data = value;
                }
                "id" => event.id = Some(value),
                "event" => event.kind = Some(value),
                "retry" => {}
                other => panic!("unknown field {other}"),
            }
        }
    }

    /// The next event's JSON.
    async fn json(&mut self) -> Value {
        self.next().await.expect("the stream goes on").json()
    }

    /// The next message's `message`, skipping nothing else.
    async fn message(&mut self) -> Value {
        let m = self.json().await;
        assert_eq!(m["type"], "message", "{m}");
        m["message"].clone()
    }
}

fn query(token: &str, channels: &[&str]) -> String {
    let mut q = format!("token={token}");
    for c in channels {
        q.push_str(&format!("&channel={c}"));
    }
    q
}

async fn history_server() -> TestServer {
    TestServer::start_with(|c| c.history_size = 100)
}

#[tokio::test]
async fn a_stream_carries_what_a_websocket_would_with_where_it_stands() {
    let s = history_server().await;
    let q = query(&s.token("42", &["news"]), &["news"]);
    let mut es = EventStream::open(s.addr, &q, None).await.unwrap();
    assert!(es
        .head
        .iter()
        .any(|h| h == "content-type: text/event-stream"));
    let connected = es.next().await.unwrap();
    assert_eq!(connected.json()["type"], "connected");
    let subscribed = es.json().await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["channel"], "news");
    s.publish("/publish", json!({"channel": "news", "message": {"n": 1}}))
        .await;
    s.publish("/message", json!({"userId": "42", "message": "direct"}))
        .await;
    assert_eq!(es.message().await, json!({"n": 1}));
    assert_eq!(es.message().await, json!("direct"));
    let epochs = (
        connected.json()["epoch"].clone(),
        subscribed["epoch"].clone(),
    );
    let (user, news) = (epochs.0.as_str().unwrap(), epochs.1.as_str().unwrap());
    assert_eq!(
        es.last_id.as_deref(),
        Some(&*format!("u1.{user} c1.{news}.news"))
    );
    // A message published pretty-printed is still one event of the same JSON.
    let (status, _) = s
        .post(
            "/publish",
            "{\"channel\": \"news\",\n \"message\": {\n\"a\": [1,\r\n2]}}",
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(es.message().await, json!({"a": [1, 2]}));
}

#[tokio::test]
async fn a_request_the_stream_cannot_serve_is_told_why() {
    let s = TestServer::start_with(|c| c.max_subscriptions = 2);
    let token = s.token("42", &["news"]);
    let refused = |q: String| async move { EventStream::open(s.addr, &q, None).await.err() };
    let (status, body) = refused(query(&token, &["other"])).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("token does not allow channel other"),
        "{body}"
    );
    let (status, _) = refused(query("bad", &[])).await.unwrap();
    assert_eq!(status, 401);
    let (status, body) = refused(query(&token, &["bad name"])).await.unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = refused(query(&token, &["news", "a", "b"])).await.unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, _) = common::post_to(s.addr, &format!("/sse?token={token}"), "").await;
    assert_eq!(status, 405);
    // The server still serves.
    let mut es = EventStream::open(s.addr, &query(&token, &["news"]), None)
        .await
        .unwrap();
    assert_eq!(es.json().await["type"], "subscribed");
}

#[tokio::test]
async fn last_event_id_resumes_every_topic_once_and_in_order() {
    let s = history_server().await;
    let q = query(&s.token("42", &["news", "sport"]), &["news", "sport"]);
    let mut es = EventStream::open(s.addr, &q, None).await.unwrap();
    for _ in 0..3 {
        es.next().await.unwrap();
    }
    s.publish("/publish", json!({"channel": "news", "message": 1}))
        .await;
    assert_eq!(es.message().await, json!(1));
    let id = es.last_id.clone().unwrap();
    drop(es);
    // Missed while away: on both channels and the user's own stream.
    for n in 2..=4 {
        s.publish("/publish", json!({"channel": "news", "message": n}))
            .await;
        s.publish("/publish", json!({"channel": "sport", "message": n}))
            .await;
        s.publish("/message", json!({"userId": "42", "message": n}))
            .await;
    }
    let mut es = EventStream::open(s.addr, &q, Some(&id)).await.unwrap();
    let connected = es.json().await;
    assert_eq!(connected["recovered"], true, "{connected}");
    for n in 2..=4 {
        assert_eq!(es.message().await, json!(n));
    }
    for channel in ["news", "sport"] {
        let subscribed = es.json().await;
        assert_eq!(subscribed["channel"], channel);
        assert_eq!(subscribed["recovered"], true, "{subscribed}");
        for n in 2..=4 {
            let m = es.json().await;
            assert_eq!((&m["channel"], &m["message"]), (&json!(channel), &json!(n)));
        }
    }
    s.publish("/publish", json!({"channel": "news", "message": 5}))
        .await;
    assert_eq!(es.message().await, json!(5));

    // The id just read resumes with nothing missed, and nothing twice.
    let id = es.last_id.clone().unwrap();
    drop(es);
    let mut es = EventStream::open(s.addr, &q, Some(&id)).await.unwrap();
    assert_eq!(es.json().await["recovered"], true);
    assert_eq!(es.json().await["recovered"], true);
    assert_eq!(es.json().await["recovered"], true);
    s.publish("/publish", json!({"channel": "sport", "message": 6}))
        .await;
    assert_eq!(es.message().await, json!(6));

    // An id this server did not write recovers nothing, and says so.
    let mut es = EventStream::open(s.addr, &q, Some("garbage"))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(es.json().await["recovered"], false);
    }
}

#[tokio::test]
async fn a_gap_older_than_history_is_not_recovered() {
    let s = TestServer::start_with(|c| c.history_size = 3);
    let q = query(&s.token("42", &["news"]), &["news"]);
    let mut es = EventStream::open(s.addr, &q, None).await.unwrap();
    es.next().await.unwrap();
    es.next().await.unwrap();
    let id = es.last_id.clone().unwrap();
    drop(es);
    for n in 1..=10 {
        s.publish("/publish", json!({"channel": "news", "message": n}))
            .await;
    }
    let mut es = EventStream::open(s.addr, &q, Some(&id)).await.unwrap();
    assert_eq!(
        es.json().await["recovered"],
        true,
        "no direct message missed"
    );
    let subscribed = es.json().await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["offset"], 10);
    s.publish("/publish", json!({"channel": "news", "message": 11}))
        .await;
    assert_eq!(es.message().await, json!(11));
}

/// A stream read on one machine resumes on another; a machine shut down in the middle of a
/// stream of 200 messages closes it with 1012 and its client resumes on the machine that
/// replaces it: every message once, in order.
#[tokio::test]
async fn a_stream_resumes_on_another_machine_and_across_a_restart() {
    let redis = RedisServer::start();
    let machine = |node: &str| {
        let (url, node) = (redis.url(), node.to_string());
        async move {
            let s = TestServer::start_with(move |c| {
                c.redis = Some(url);
                c.node_id = Some(node);
                c.history_size = 500;
                c.shutdown_timeout = 3;
            });
            s.wait_readyz(200).await;
            s
        }
    };
    let mut a = machine("a").await;
    let b = machine("b").await;
    let q = query(&a.token("42", &["news"]), &["news"]);
    let mut es = EventStream::open(a.addr, &q, None).await.unwrap();
    es.next().await.unwrap();
    es.next().await.unwrap();
    let mut seen = Vec::new();
    let publish = |n: i64, on: SocketAddr| async move {
        let body = json!({"channel": "news", "message": n}).to_string();
        let (status, text) = common::post_to(on, "/publish", &body).await;
        assert_eq!(status, 202, "{text}");
    };
    for n in 0..60 {
        publish(n, if n % 2 == 0 { a.addr } else { b.addr }).await;
        seen.push(es.message().await);
    }
    // The connection drops; the browser comes back to the other machine.
    let id = es.last_id.clone();
    drop(es);
    for n in 60..80 {
        publish(n, b.addr).await;
    }
    let mut es = EventStream::open(b.addr, &q, id.as_deref()).await.unwrap();
    assert_eq!(es.json().await["recovered"], true);
    assert_eq!(es.json().await["recovered"], true);
    for _ in 60..80 {
        seen.push(es.message().await);
    }
    // Back on the first machine, which is then shut down mid-stream.
    let id = es.last_id.clone();
    drop(es);
    let mut es = EventStream::open(a.addr, &q, id.as_deref()).await.unwrap();
    assert_eq!(es.json().await["recovered"], true);
    assert_eq!(es.json().await["recovered"], true);
    for n in 80..120 {
        publish(n, b.addr).await;
        seen.push(es.message().await);
    }
    a.server.shutdown();
    let close = loop {
        let event = es.next().await.expect("a close event before the end");
        if event.kind.as_deref() == Some("close") {
            break event.json();
        }
        seen.push(event.json()["message"].clone());
    };
    assert_eq!(close["code"], 1012, "{close}");
    assert!(
        es.next().await.is_none(),
        "the stream ends after its close event"
    );
    let id = es.last_id.clone();
    let published = seen.len() as i64;
    for n in published..150 {
        publish(n, b.addr).await;
    }
    a = machine("a2").await;
    let mut es = EventStream::open(a.addr, &q, id.as_deref()).await.unwrap();
    assert_eq!(es.json().await["recovered"], true);
    assert_eq!(es.json().await["recovered"], true);
    for n in 150..200 {
        publish(n, if n % 2 == 0 { a.addr } else { b.addr }).await;
    }
    while seen.len() < 200 {
        seen.push(es.message().await);
    }
    let expected: Vec<Value> = (0..200).map(|n| json!(n)).collect();
    assert_eq!(seen, expected);
}

/// The limits of a WebSocket end a stream the same way: a close event with the code a socket
/// would get, then the end of the stream.
async fn closed_with(es: &mut EventStream) -> Value {
    loop {
        let event = es.next().await.expect("a close event before the end");
        if event.kind.as_deref() == Some("close") {
            assert!(es.next().await.is_none(), "the stream ends after its close");
            return event.json();
        }
    }
}

#[tokio::test]
async fn expiry_and_the_backends_disconnect_end_the_stream() {
    let s = TestServer::start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let short = s.token_with(&Claims {
        sub: "42".into(),
        exp: Some(now + 2),
        channels: None,
        presence: None,
        info: None,
    });
    let mut es = EventStream::open(s.addr, &query(&short, &[]), None)
        .await
        .unwrap();
    assert_eq!(es.json().await["type"], "expiring");
    assert_eq!(closed_with(&mut es).await["code"], 4001);

    let q = query(&s.token("7", &[]), &[]);
    let mut es = EventStream::open(s.addr, &q, None).await.unwrap();
    s.publish("/disconnect", json!({"userId": "7", "reason": "banned"}))
        .await;
    let close = closed_with(&mut es).await;
    assert_eq!(
        (close["code"].as_u64(), close["reason"].as_str()),
        (Some(4003), Some("banned"))
    );
    s.eventually("the streams unregistered", |s| s.registry_entries() == 0)
        .await;
}

#[tokio::test]
async fn the_backend_subscribes_a_stream_and_presence_is_seen_where_the_token_shows_it() {
    let s = TestServer::start();
    let listener = s.token_with(&Claims {
        sub: "42".into(),
        exp: None,
        channels: Some(vec!["room".into(), "news".into()]),
        presence: Some(vec!["room".into()]),
        info: None,
    });
    let mut es = EventStream::open(s.addr, &query(&listener, &["room"]), None)
        .await
        .unwrap();
    assert_eq!(es.json().await["type"], "subscribed");
    assert_eq!(
        es.json().await["type"],
        "join",
        "its own join, as a watcher"
    );
    let mut other = s.connect("9", &["room"]).await;
    other
        .send_json(json!({"type": "subscribe", "channel": "room"}))
        .await;
    let join = es.json().await;
    assert_eq!(
        (&join["type"], &join["user"]),
        (&json!("join"), &json!("9"))
    );
    s.publish("/subscribe", json!({"userId": "42", "channel": "news"}))
        .await;
    assert_eq!(es.json().await["channel"], "news");
    s.publish("/publish", json!({"channel": "news", "message": "added"}))
        .await;
    assert_eq!(es.message().await, json!("added"));
}

#[tokio::test]
async fn a_stream_gets_keepalives_and_is_never_timed_out_for_its_silence() {
    let s = TestServer::start_with(|c| c.ping_interval = 1);
    let mut es = EventStream::open(s.addr, &query(&s.token("42", &[]), &[]), None)
        .await
        .unwrap();
    // Past twice the ping interval, a silent WebSocket would have been closed.
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    s.publish("/message", json!({"userId": "42", "message": "still here"}))
        .await;
    assert_eq!(es.message().await, json!("still here"));
    assert!(es.comments >= 2, "{} keep-alive comments", es.comments);
}

#[tokio::test]
async fn a_slow_reader_is_cut_like_a_slow_websocket_and_others_keep_receiving() {
    let s = TestServer::start_with(|c| {
        c.queue_limit = 16;
        c.max_message_bytes = 1 << 20;
    });
    let socket = common::small_buffer_socket(s.addr);
    let q = query(&s.token("slow", &[]), &[]);
    let _slow = EventStream::open_on(socket, &q, None).await.unwrap();
    let mut fast = EventStream::open(s.addr, &query(&s.token("fast", &[]), &[]), None)
        .await
        .unwrap();
    let pad = "x".repeat(32 << 10);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut n = 0;
    while s.metric("fanfare_slow_consumer_closes_total").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "never cut");
        for user in ["slow", "fast"] {
            s.publish(
                "/message",
                json!({"userId": user, "message": {"n": n, "pad": pad}}),
            )
            .await;
        }
        assert_eq!(fast.message().await["n"], n);
        n += 1;
    }
    while s.metric("fanfare_connections").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow stream stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.publish("/message", json!({"userId": "fast", "message": "after"}))
        .await;
    assert_eq!(fast.message().await, json!("after"));
}

#[tokio::test]
async fn a_stream_counts_against_max_connections_and_gives_its_place_back() {
    let s = TestServer::start_with(|c| {
        c.max_connections = Some(1);
        c.allowed_origins = vec!["https://app.example".into()];
    });
    let q = query(&s.token("42", &[]), &[]);
    let mut es = EventStream::open(s.addr, &q, None).await.unwrap();
    let (status, _) = EventStream::open(s.addr, &q, None).await.err().unwrap();
    assert_eq!(status, 503);
    drop(es.read);
    drop(es._write);
    s.eventually("the place given back", |s| s.registry_entries() == 0)
        .await;
    // A browser's cross-origin EventSource: an allowed origin is echoed, another refused.
    let cors =
        |origin: &str| format!("GET /sse?{q} HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\r\n");
    let head = raw_head(s.addr, &cors("https://app.example")).await;
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    let head = raw_head(s.addr, &cors("https://evil.example")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    s.eventually("the place given back again", |s| s.registry_entries() == 0)
        .await;
    es = EventStream::open(s.addr, &q, None).await.unwrap();
    assert!(es.head[0].starts_with("HTTP/1.1 200"));
}

/// The response head a raw request gets.
async fn raw_head(addr: SocketAddr, request: &str) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut read = BufReader::new(socket);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        if read.read_line(&mut head).await.unwrap() == 0 {
            break;
        }
    }
    head
}

/// The README's `curl -N` line, against a server like the tour's, prints what the README shows.
#[tokio::test]
async fn the_readmes_curl_line_works_as_shown() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl -N "))
        .expect("the README shows curl -N");
    let s = TestServer::start();
    let token = s.token("42", &["news"]);
    let command = line
        .replace("127.0.0.1:8080", &s.addr.to_string())
        .replace("PASTE_TOKEN", &token);
    let mut curl = tokio::process::Command::new("sh")
        .args(["-c", &format!("exec {command}")])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("sh runs");
    let mut out = BufReader::new(curl.stdout.take().unwrap());
    let mut lines: Vec<String> = Vec::new();
    // Reads curl's output up to a line with `until`; curl ending first (not installed, or
    // refused) fails the test.
    let mut read_until = async |until: &str| {
        let mut line = String::new();
        while !line.contains(until) {
            line.clear();
            let read = tokio::time::timeout(PATIENCE, out.read_line(&mut line)).await;
            let n = read.expect("curl prints within the patience").unwrap();
            assert!(n > 0, "curl ended after {lines:?}: is curl installed?");
            lines.push(line.trim_end().to_string());
        }
    };
    read_until("subscribed").await;
    s.publish(
        "/message",
        json!({"userId": "42", "message": {"hello": "world"}}),
    )
    .await;
    s.publish("/publish", json!({"channel": "news", "message": "extra!"}))
        .await;
    read_until("extra!").await;
    let shown: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.trim().starts_with("curl -N "))
        .skip(3)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(str::trim)
        .collect();
    let retry = |l: &str| l.starts_with("retry: ");
    assert!(shown.iter().any(|l| retry(l)) && lines.iter().any(|l| retry(l)));
    let events = |ls: &[&str]| -> Vec<String> {
        ls.iter()
            .filter(|l| l.starts_with("data: "))
            .map(|l| l.to_string())
            .collect()
    };
    let got: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(events(&got), events(&shown), "{lines:?}");
}

/// A channel the id does not name had not opened on the stream before: it starts afresh (no
/// `recovered`), while the channels the id names resume. Without history no event has an id.
#[tokio::test]
async fn a_channel_the_id_does_not_name_starts_afresh_and_without_history_there_are_no_ids() {
    let s = history_server().await;
    let token = s.token("42", &["news", "sport"]);
    let mut es = EventStream::open(s.addr, &query(&token, &["news"]), None)
        .await
        .unwrap();
    es.next().await.unwrap();
    es.next().await.unwrap();
    let id = es.last_id.clone().unwrap();
    let both = query(&token, &["news", "sport"]);
    let mut es = EventStream::open(s.addr, &both, Some(&id)).await.unwrap();
    assert_eq!(es.json().await["recovered"], true);
    assert_eq!(es.json().await["recovered"], true);
    let sport = es.json().await;
    assert_eq!(sport["channel"], "sport");
    assert_eq!(sport.get("recovered"), None, "{sport}");

    let plain = TestServer::start();
    let q = query(&plain.token("42", &["news"]), &["news"]);
    let mut es = EventStream::open(plain.addr, &q, None).await.unwrap();
    assert_eq!(es.next().await.unwrap().id, None);
    plain
        .publish("/publish", json!({"channel": "news", "message": 1}))
        .await;
    assert_eq!(es.next().await.unwrap().id, None);
}

/// What an event stream refuses, before it takes a place: a body (it would be lost with hyper's
/// buffers), more channels than an id can name, a forbidden channel even when the server is
/// full; and an id for its most channels is read beside a browser's other headers.
#[tokio::test]
async fn an_event_streams_own_limits() {
    let s = TestServer::start_with(|c| {
        c.history_size = 10;
        c.max_connections = Some(1);
    });
    let names: Vec<String> = (0..32)
        .map(|i| format!("{i:02}{}", "x".repeat(150)))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let token = s.token("42", &["*"]);
    let many = query(&token, &refs);
    let mut es = EventStream::open(s.addr, &many, None).await.unwrap();
    for _ in 0..33 {
        es.next().await.unwrap();
    }
    let id = es.last_id.clone().unwrap();
    assert!(id.len() > 5_000, "{}", id.len());
    // The server is full: a forbidden channel is still told it is forbidden.
    let narrow = s.token("42", &["0*"]);
    let (status, body) = EventStream::open(s.addr, &query(&narrow, &["secret"]), None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 403, "{body}");
    drop(es);
    s.eventually("the place given back", |s| s.registry_entries() == 0)
        .await;
    // The id comes back beside 12 KB of cookies: more than the headers' budget with it.
    let cookie = format!("Cookie: c={}\r\n", "y".repeat(12_000));
    let request =
        format!("GET /sse?{many} HTTP/1.1\r\nHost: x\r\n{cookie}Last-Event-ID: {id}\r\n\r\n");
    let head = raw_head(s.addr, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.eventually("the place given back again", |s| s.registry_entries() == 0)
        .await;
    let mut more = refs.clone();
    more.push("one-more");
    let (status, body) = EventStream::open(s.addr, &query(&token, &more), None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let with_body =
        format!("GET /sse?token={token} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    let head = raw_head(s.addr, &with_body).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}
