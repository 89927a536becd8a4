//! The real binary: SIGTERM closes every WebSocket with 1012, spread over the drain, and exits 0
//! in time; a server
//! started without secrets prints generated ones; `fanfare token` mints a usable token.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestClient;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_fanfare");

/// Starts `fanfare serve` on a free port; returns it, its address and its stderr lines so far.
fn spawn_server(args: &[&str]) -> (Child, SocketAddr, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .args(args)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fanfare");
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stderr);
    let addr = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "server exited early: {lines:?}"
        );
        lines.push(line.clone());
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, addr, lines)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn token(secret: &str, sub: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "token",
            "--secret",
            secret,
            "--sub",
            sub,
            "--channels",
            "news,room:*",
            "--ttl",
            "60",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1012_spread_over_the_drain_and_exits_0() {
    let (mut child, addr, _) = spawn_server(&[
        "--token-secret",
        "s",
        "--api-key",
        "k",
        "--shutdown-timeout",
        "5",
    ]);
    let t = token("s", "42");
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(TestClient::connect(addr, &t).await);
    }
    clients[0].subscribe("room:1").await;
    let started = Instant::now();
    signal(&child, libc::SIGTERM);
    // Every client reads from now on (a lazy iterator would start each one only after the
    // one before had its close, and time it late).
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let close = c.recv_close().await;
                (close, Instant::now())
            })
        })
        .collect();
    let mut at = Vec::new();
    for close in closes {
        let (close, when) = close.await.unwrap();
        assert_eq!(close, (1012, "server restarting".into()));
        at.push(when - started);
    }
    at.sort();
    // Spread over 2.5 s (--shutdown-timeout 5 less the close handshake's 2 s and a margin), not
    // all at once (20 moments drawn over 2.5 s span ~2.3 s; the bound leaves room for a test
    // process the machine stalls).
    assert!(
        at[19] - at[0] > Duration::from_millis(400),
        "closes at {at:?}"
    );
    assert!(at[19] < Duration::from_millis(4000), "closes at {at:?}");
    let status = wait_exit(&mut child, Duration::from_secs(6));
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn sigint_with_a_client_that_never_closes_exits_within_the_timeout() {
    let (mut child, addr, _) = spawn_server(&[
        "--token-secret",
        "s",
        "--api-key",
        "k",
        "--shutdown-timeout",
        "1",
    ]);
    // A raw upgrade that never reads nor answers the close frame.
    let _silent = common::silent_client(addr, &token("s", "1")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&child, libc::SIGINT);
    let status = wait_exit(&mut child, Duration::from_secs(3));
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn generated_secrets_are_printed_with_a_working_example() {
    let (mut child, addr, lines) = spawn_server(&[]);
    let banner = lines.join("");
    let secret = banner
        .split("--token-secret ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let key = banner
        .split("--api-key ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(banner.contains("curl -X POST"), "{banner}");
    let example = banner
        .split("ws://")
        .nth(1)
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap();
    let example = example.split_whitespace().next().unwrap();
    let mut c = TestClient::connect(addr, example).await;
    let mut mine = TestClient::connect(addr, &token(secret, "42")).await;
    let auth = format!("Bearer {key}");
    let body = json!({"userId": "42", "message": "hello"}).to_string();
    let (status, _) = common::http(
        addr,
        "POST",
        "/message",
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(c.recv_message().await, json!("hello"));
    assert_eq!(mine.recv_message().await, json!("hello"));
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(12)).success());
}

#[test]
fn environment_variables_configure_the_server() {
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("FANFARE_LISTEN", "127.0.0.1:0")
        .env("FANFARE_WORKERS", "1")
        .env("FANFARE_TOKEN_SECRET", "env-secret")
        .env("FANFARE_API_KEY", "env-key")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("listening on 127.0.0.1:"), "{line}");
    assert!(line.contains("workers=1"), "{line}");
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(12)).success());
}

#[test]
fn a_second_server_on_the_same_port_is_refused() {
    let (mut first, addr, _) = spawn_server(&["--token-secret", "s", "--api-key", "k"]);
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--token-secret",
            "s",
            "--api-key",
            "k",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    signal(&first, libc::SIGTERM);
    assert!(wait_exit(&mut first, Duration::from_secs(12)).success());
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_failed_start_leaves_no_thread_and_frees_the_port() {
    let port = common::free_port();
    let before = threads();
    let mut config = fanfare::Config::new();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.workers = Some(2);
    config.token_secret = Some("s".into());
    config.api_key = Some("k".into());
    config.redis = Some("redis://127.0.0.1:1".into());
    config.redis_prefix = "no-colon".into();
    assert!(fanfare::Server::start(config).is_err());
    assert_eq!(threads(), before);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
}

#[tokio::test]
async fn frames_a_closing_connection_could_not_send_are_counted() {
    let s = common::TestServer::start_with(|c| {
        c.queue_limit = 100_000;
        c.queue_bytes = 1 << 30;
        c.shutdown_timeout = 5;
    });
    let _stuck = common::TestClient::connect_small_buffer(
        s.server.worker_addrs()[0],
        &s.token("stuck", &[]),
    )
    .await;
    let pad = "x".repeat(32 * 1024);
    for n in 0..200 {
        s.publish(
            "/message",
            json!({"userId": "stuck", "message": {"n": n, "pad": pad}}),
        )
        .await;
    }
    s.server.shutdown();
    // The client never reads: its close frame cannot go out either, and after the close
    // timeout every frame still queued is counted. Its close comes within 2.5 s of the
    // shutdown (the spread over the drain).
    let deadline = tokio::time::Instant::now() + common::PATIENCE + Duration::from_secs(4);
    loop {
        let text = s.server.metrics().render();
        let dropped: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("fanfare_dropped_messages_total{reason=\"closed\"} "))
            .unwrap()
            .parse()
            .unwrap();
        if dropped > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "unsent frames not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
