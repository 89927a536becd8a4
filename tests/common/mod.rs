//! A real server on free ports and real WebSocket clients, so each test is setup → act → assert.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use fanfare::auth::{claims, Claims, TokenKeys};
use fanfare::{Config, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod cluster;

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";
/// Longest a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Subscribes `c` to `channel`, resuming from `(offset, epoch)` if given; returns `subscribed`.
pub async fn subscribe_since(
    c: &mut TestClient,
    channel: &str,
    since: Option<(u64, &str)>,
) -> Value {
    let mut frame = serde_json::json!({"type": "subscribe", "channel": channel});
    if let Some((offset, epoch)) = since {
        frame["since"] = serde_json::json!({"offset": offset, "epoch": epoch});
    }
    c.send_json(frame).await;
    let reply = c.recv_json().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply
}

/// Publishes through the API and returns the offset the 202 gives.
pub async fn post_offset(s: &TestServer, path: &str, body: Value) -> u64 {
    let (status, text) = s.post(path, &body.to_string()).await;
    assert_eq!(status, 202, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset in {text}"))
}

pub struct TestServer {
    pub server: Server,
    pub addr: SocketAddr,
    keys: TokenKeys,
}

impl TestServer {
    /// Two workers, each with a private listener, on 127.0.0.1:0.
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::new();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.workers = Some(2);
        config.token_secret = Some(SECRET.into());
        config.api_key = Some(API_KEY.into());
        config.worker_listeners = true;
        tweak(&mut config);
        let server = Server::start(config).expect("server starts");
        TestServer {
            addr: server.local_addr(),
            server,
            keys: TokenKeys::new(SECRET).unwrap(),
        }
    }

    pub fn token(&self, sub: &str, channels: &[&str]) -> String {
        let channels =
            (!channels.is_empty()).then(|| channels.iter().map(|c| c.to_string()).collect());
        self.keys.issue(&claims(sub, channels, Some(600))).unwrap()
    }

    pub fn token_with(&self, claims: &Claims) -> String {
        self.keys.issue(claims).unwrap()
    }

    /// A client on the shared port (whichever worker the kernel picks).
    pub async fn connect(&self, sub: &str, channels: &[&str]) -> TestClient {
        TestClient::connect(self.addr, &self.token(sub, channels)).await
    }

    /// A client on worker `w`, through that worker's private listener.
    pub async fn connect_on(&self, w: usize, sub: &str, channels: &[&str]) -> TestClient {
        TestClient::connect(self.server.worker_addrs()[w], &self.token(sub, channels)).await
    }

    /// POST with the API key; returns status and body.
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        post_to(self.addr, path, body).await
    }

    /// POST that must be accepted.
    pub async fn publish(&self, path: &str, body: Value) {
        let (status, text) = self.post(path, &body.to_string()).await;
        assert_eq!(status, 202, "{path} {body}: {text}");
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, &[], b"").await
    }

    /// GET with the API key.
    pub async fn get_with_key(&self, path: &str) -> (u16, String) {
        let auth = format!("Bearer {API_KEY}");
        http(self.addr, "GET", path, &[("Authorization", &auth)], b"").await
    }

    /// The value of one metric line, e.g. `fanfare_connections` or `x{worker="1"}`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// Waits until `f` holds, at most [`PATIENCE`].
    pub async fn eventually(&self, what: &str, mut f: impl FnMut(&Server) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !f(&self.server) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A socket that completes the WebSocket upgrade and then does nothing at all: it never reads,
/// never answers a ping or a close frame. The 101 response is left unread in the socket.
pub async fn silent_client(addr: SocketAddr, token: &str) -> TcpStream {
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    raw.write_all(req.as_bytes()).await.expect("write upgrade");
    raw
}

/// POST with the API key to any listener (e.g. one worker's); returns status and body.
pub async fn post_to(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let auth = format!("Bearer {API_KEY}");
    http(
        addr,
        "POST",
        path,
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await
}

/// A minimal HTTP/1.1 client: one request per connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer (413) and close before reading the whole body.
    let _ = s.write_all(&bytes).await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A socket to `addr` whose receive buffer is tiny, so a server's writes back up quickly when
/// the client stops reading.
pub fn small_buffer_socket(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    TcpStream::from_std(socket.into()).unwrap()
}

pub struct TestClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl TestClient {
    pub async fn connect(addr: SocketAddr, token: &str) -> TestClient {
        Self::try_connect(addr, &format!("/ws?token={token}"), &[])
            .await
            .unwrap_or_else(|e| panic!("upgrade refused: {e:?}"))
    }

    /// A client whose socket receive buffer is tiny, so a server's writes back up quickly
    /// when it stops reading.
    pub async fn connect_small_buffer(addr: SocketAddr, token: &str) -> TestClient {
        let stream = small_buffer_socket(addr);
        let req = format!("ws://{addr}/ws?token={token}")
            .into_client_request()
            .unwrap();
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        TestClient { ws }
    }

    /// Upgrade with any path and extra headers; the error is the HTTP status and body.
    pub async fn try_connect(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<TestClient, (u16, String)> {
        let mut req = format!("ws://{addr}{path_and_query}")
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            req.headers_mut()
                .insert(*k, HeaderValue::from_str(v).unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(TestClient { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .unwrap_or_default();
                Err((resp.status().as_u16(), body))
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text frame as JSON (pings and pongs skipped).
    pub async fn recv_json(&mut self) -> Value {
        serde_json::from_str(&self.recv_text().await).unwrap()
    }

    /// The next text frame, as it came.
    pub async fn recv_text(&mut self) -> String {
        self.recv_text_within(PATIENCE).await
    }

    /// [`recv_json`](Self::recv_json), waiting up to `wait` (a failover, say).
    pub async fn recv_json_within(&mut self, wait: Duration) -> Value {
        serde_json::from_str(&self.recv_text_within(wait).await).unwrap()
    }

    async fn recv_text_within(&mut self, wait: Duration) -> String {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("read error");
            match msg {
                Message::Text(t) => return t.as_str().to_string(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The `message` of the next frame, which must be a message.
    pub async fn recv_message(&mut self) -> Value {
        let v = self.recv_json().await;
        assert_eq!(v["type"], "message", "{v}");
        v["message"].clone()
    }

    pub async fn subscribe(&mut self, channel: &str) {
        self.send_json(serde_json::json!({"type": "subscribe", "channel": channel}))
            .await;
        let reply = self.recv_json().await;
        assert_eq!(
            reply,
            serde_json::json!({"type": "subscribed", "channel": channel})
        );
    }

    /// Asserts that no text frame arrives for `ms` milliseconds.
    pub async fn expect_nothing_for(&mut self, ms: u64) {
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(until, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(other) => panic!("expected nothing, got {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub async fn recv_close(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => {}
                other => panic!("connection ended without a close frame: {other:?}"),
            }
        }
    }
}

/// A private `redis-server` on a free port, killed with the test. Never skips: without the
/// binary the test fails and says how to install it.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

/// Runs a command on the Redis (or sentinel) at `port` of this host, waiting at most a second
/// to connect.
pub fn redis_query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_connection_with_timeout(Duration::from_secs(1))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c)
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port for a Redis Cluster node: it and its cluster bus port (+10,000) free, both below the
/// kernel's ephemeral range (32768+), so no client socket of another test can take the bus port
/// between the check and the node's start.
pub fn cluster_port() -> u16 {
    loop {
        let port = rand::random_range(12_000..22_000u16);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::on_port(free_port())
    }

    /// Starts (or restarts) Redis on `port`; returns once it answers PING.
    pub fn on_port(port: u16) -> RedisServer {
        Self::bound(port, "127.0.0.1")
    }

    /// Redis listening on `port` of these space-separated addresses (loopback first).
    pub fn bound(port: u16, addrs: &str) -> RedisServer {
        Self::spawn(port, addrs, &["--save", "", "--appendonly", "no"])
    }

    /// Redis that keeps its data in `dir` (append-only file, written through): started again
    /// on the same port and directory after a kill, it has everything it acknowledged.
    pub fn persistent(port: u16, dir: &std::path::Path) -> RedisServer {
        let dir = dir.to_str().unwrap();
        let args = [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ];
        Self::spawn(port, "127.0.0.1", &[&args[..], &["--dir", dir]].concat())
    }

    /// Redis whose files (a replica's copy of its master's data, say) go to a directory of
    /// its own, never the working directory, where a later Redis would load them.
    pub fn apart(port: u16) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("fanfare-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = [
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ];
        Self::spawn(port, "127.0.0.1", &args)
    }

    /// Redis that keeps only what `SAVE` snapshots into `dir`: started again after a kill, it
    /// has the last snapshot, older than what it had acknowledged.
    pub fn snapshotting(port: u16, dir: &std::path::Path) -> RedisServer {
        let dir = dir.to_str().unwrap();
        let args = ["--save", "", "--appendonly", "no", "--dir", dir];
        Self::spawn(port, "127.0.0.1", &args)
    }

    /// A node of a Redis Cluster (not yet part of one): its cluster state lives in `dir`,
    /// and a master silent for 2 s is failed over.
    pub fn cluster_node(port: u16, dir: &std::path::Path) -> RedisServer {
        Self::cluster_node_with(port, dir, &[])
    }

    /// [`cluster_node`](Self::cluster_node) with more arguments.
    pub fn cluster_node_with(port: u16, dir: &std::path::Path, more: &[String]) -> RedisServer {
        let conf = dir.join(format!("nodes-{port}.conf"));
        let args = [
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
            "--cluster-config-file",
            conf.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
        ];
        let more: Vec<&str> = more.iter().map(String::as_str).collect();
        Self::spawn(port, "127.0.0.1", &[&args[..], &more].concat())
    }

    /// A Redis answering plain text on `port` (for the test's own checks) and TLS on
    /// `tls_port` with the certificate and key in `dir` (`redis.crt`, `redis.key`), trusting
    /// client certificates signed by `ca.crt` there, and asking for one if `clients`.
    pub fn with_tls(port: u16, tls_port: u16, dir: &std::path::Path, clients: bool) -> RedisServer {
        let file = |name: &str| dir.join(name).to_str().unwrap().to_string();
        let args = [
            "--tls-port".to_string(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            file("redis.crt"),
            "--tls-key-file".into(),
            file("redis.key"),
            "--tls-ca-cert-file".into(),
            file("ca.crt"),
            "--tls-auth-clients".into(),
            if clients { "yes" } else { "no" }.into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::spawn(port, "127.0.0.1", &args)
    }

    fn spawn(port: u16, addrs: &str, persistence: &[&str]) -> RedisServer {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(persistence)
            .args(["--protected-mode", "no", "--bind"])
            .args(addrs.split(' '))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install it with `apt-get install -y redis-server`")
            });
        let server = RedisServer {
            port,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + PATIENCE;
        while !server.answers() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn answers(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) Redis: it keeps its sockets but answers nothing.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("running");
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Subscribers of a Redis channel (PUBSUB NUMSUB).
    pub fn numsub(&self, channel: &str) -> i64 {
        let mut c = redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut c)
            .unwrap();
        n
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestServer {
    /// A server of a fleet: two workers, this Redis, this prefix and node id.
    pub fn in_fleet(redis: &RedisServer, prefix: &str, node: &str) -> TestServer {
        let (url, prefix, node) = (redis.url(), prefix.to_string(), node.to_string());
        TestServer::start_with(move |c| {
            c.redis = Some(url);
            c.redis_prefix = prefix;
            c.node_id = Some(node);
        })
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_readyz(&self, status: u16) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.get("/readyz").await.0 != status {
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never became {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `program args` in `dir` (a JavaScript suite under clients/); panics with its output
/// unless it succeeds.
pub fn run_in(dir: &std::path::Path, program: &str, args: &[&str], env: &[(&str, &str)]) {
    let out = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install Node.js 20 or later with npm")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
