//! `fanfare bench` against a real server: every scenario delivers everything exactly once, and
//! the `--json` line is well formed. Correctness only; no timing is asserted.

mod common;

use std::process::Command;

use common::{RedisServer, TestServer, API_KEY, SECRET};
use serde_json::Value;

fn bench(targets: &[&TestServer], args: &[&str]) -> (bool, Value) {
    let list: Vec<String> = targets.iter().map(|t| t.addr.to_string()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .args([
            "bench",
            "--target",
            &list.join(","),
            "--token-secret",
            SECRET,
            "--api-key",
            API_KEY,
        ])
        .args(["--json", "--drain", "10"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "last line is not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

fn assert_clean(v: &Value, expected: u64) {
    assert_eq!(v["expected"], expected, "{v}");
    assert_eq!(v["received"], expected, "{v}");
    for key in [
        "lost",
        "duplicated",
        "reordered",
        "connect_errors",
        "publish_errors",
    ] {
        assert_eq!(v[key], 0, "{key} in {v}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_ms"][key].as_f64().unwrap() > 0.0, "{key} in {v}");
    }
    assert!(v["deliveries_per_second"].as_f64().unwrap() > 0.0);
    // A number, never negative (a tiny run may measure 0: CPU time comes in 10 ms ticks).
    assert!(
        v["bench_cpu_us_per_delivery"].as_f64().unwrap() >= 0.0,
        "{v}"
    );
}

#[test]
fn every_scenario_delivers_everything_once() {
    let s = TestServer::start();
    for (scenario, extra, expected) in [
        ("direct", vec![], 300),
        ("batch", vec!["--batch-size", "7"], 301),
        ("channel", vec!["--channels", "4"], 300 * 10),
        ("broadcast", vec![], 300 * 40),
    ] {
        let mut args = vec![
            "--scenario",
            scenario,
            "--connections",
            "40",
            "--messages",
            "300",
        ];
        args.extend(extra);
        let (ok, v) = bench(&[&s], &args);
        assert!(ok, "{scenario}: {v}");
        assert_eq!(v["scenario"], scenario);
        assert_clean(&v, expected);
    }
}

#[test]
fn open_loop_over_two_receiver_processes_and_source_addresses() {
    let s = TestServer::start();
    let (ok, v) = bench(
        &[&s],
        &[
            "--connections",
            "60",
            "--processes",
            "2",
            "--source-addrs",
            "3",
            "--messages",
            "600",
            "--rate",
            "2000",
        ],
    );
    assert!(ok, "{v}");
    assert_clean(&v, 600);
}

#[tokio::test]
async fn a_fleet_through_redis() {
    let redis = RedisServer::start();
    let a = TestServer::in_fleet(&redis, "bench:", "a");
    let b = TestServer::in_fleet(&redis, "bench:", "b");
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    // Connection g goes to target g % 2 and channel g % 4: channels 1 and 3 live on b alone,
    // so b gets their messages through Redis, and only theirs.
    let (ok, v) = bench(
        &[&a, &b],
        &[
            "--scenario",
            "channel",
            "--channels",
            "4",
            "--connections",
            "40",
            "--messages",
            "200",
        ],
    );
    assert!(ok, "{v}");
    assert_clean(&v, 200 * 10);
    assert_eq!(b.metric("fanfare_bridge_received_total").await, 100.0);
}

#[tokio::test]
async fn the_bench_runs_against_a_server_with_history() {
    let s = TestServer::start_with(|c| c.history_size = 100);
    let (ok, v) = bench(
        &[&s],
        &[
            "--scenario",
            "channel",
            "--connections",
            "20",
            "--channels",
            "4",
            "--messages",
            "40",
        ],
    );
    assert!(ok, "{v}");
    assert_clean(&v, 200);
}

/// 40 connections, a quarter dropped and resumed every second for 2 s while 400 msg/s are
/// published, direct and channel: nothing lost, repeated or left unrecovered.
fn churn_resumes_everything(targets: &[&TestServer]) {
    for scenario in ["direct", "channel"] {
        let (ok, v) = bench(
            targets,
            &[
                "--scenario",
                scenario,
                "--connections",
                "40",
                "--channels",
                "4",
                "--rate",
                "400",
                "--duration",
                "2",
                "--churn",
                "25",
            ],
        );
        assert!(ok, "{scenario}: {v}");
        assert_clean(&v, v["expected"].as_u64().unwrap());
        assert!(v["reconnects"].as_u64().unwrap() >= 10, "{scenario}: {v}");
        assert_eq!(v["unrecovered"], 0, "{scenario}: {v}");
        assert!(
            v["resume_ms"]["max"].as_f64().unwrap() > 0.0,
            "{scenario}: {v}"
        );
    }
}

#[tokio::test]
async fn connections_that_churn_resume_without_loss_or_repeat() {
    churn_resumes_everything(&[&TestServer::start_with(|c| c.history_size = 1000)]);
}

#[tokio::test]
async fn connections_that_churn_resume_on_the_other_machine_of_a_fleet() {
    let redis = RedisServer::start();
    let fleet: Vec<TestServer> = ["a", "b"]
        .iter()
        .map(|node| {
            let (url, node) = (redis.url(), node.to_string());
            TestServer::start_with(move |c| {
                c.redis = Some(url);
                c.redis_prefix = "churn:".into();
                c.node_id = Some(node);
                c.history_size = 1000;
            })
        })
        .collect();
    for s in &fleet {
        s.wait_readyz(200).await;
    }
    churn_resumes_everything(&[&fleet[0], &fleet[1]]);
}

#[tokio::test]
async fn connections_with_expiring_tokens_refresh_and_stay() {
    let s = TestServer::start();
    let (ok, v) = bench(
        &[&s],
        &[
            "--connections",
            "40",
            "--rate",
            "100",
            "--duration",
            "3",
            "--token-ttl",
            "31",
        ],
    );
    assert!(ok, "{v}");
    assert_clean(&v, v["expected"].as_u64().unwrap());
    assert!(v["refreshes"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(s.metric("fanfare_token_expired_closes_total").await, 0.0);
}

/// `--protocol pusher`: the same run against the Pusher front, through `/app/{key}` and the
/// signed `/apps/{id}/events`, with the same loss and duplicate accounting.
#[tokio::test]
async fn the_bench_speaks_pusher() {
    let s = TestServer::start_with(|c| {
        c.pusher_app_id = Some("77".into());
        c.pusher_key = Some("bench-key".into());
        c.pusher_secret = Some("bench-secret".into());
    });
    let run = |secret: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fanfare"))
            .args([
                "bench",
                "--protocol",
                "pusher",
                "--target",
                &s.addr.to_string(),
            ])
            .args([
                "--app-id",
                "77",
                "--api-key",
                "bench-key",
                "--secret",
                secret,
            ])
            .args(["--scenario", "channel", "--channels", "3", "--json"])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), v)
    };
    let (ok, v) = run(
        "bench-secret",
        &["--connections", "60", "--messages", "300", "--drain", "10"],
    );
    assert!(ok, "{v}");
    // 300 messages over 3 channels of 20 subscribers each.
    assert_clean(&v, 300 * 20);
    let (_, v) = run(
        "wrong",
        &["--connections", "6", "--messages", "30", "--drain", "1"],
    );
    assert_eq!(
        v["publish_errors"], 30,
        "a wrong secret is refused, each request: {v}"
    );
}

#[test]
fn the_bench_offers_deflate_and_counts_the_bytes_on_the_wire() {
    let s = TestServer::start();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--scenario",
            "broadcast",
            "--connections",
            "50",
            "--messages",
            "40",
            "--payload-bytes",
            "2000",
        ];
        args.extend_from_slice(extra);
        let (ok, v) = bench(&[&s], &args);
        assert!(ok, "{v}");
        assert_clean(&v, 50 * 40);
        v["wire_bytes_per_delivery"].as_f64().unwrap()
    };
    let plain = run(&[]);
    let deflated = run(&["--compression"]);
    assert!(plain > 2000.0, "the payload and its frame: {plain}");
    assert!(deflated < plain * 0.5, "compressed: {deflated} of {plain}");
}

#[test]
fn the_bench_asks_for_deltas_and_rebuilds_every_message() {
    let s = TestServer::start_with(|c| c.history_size = 100);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--scenario",
            "channel",
            "--connections",
            "20",
            "--channels",
            "2",
            "--messages",
            "40",
            "--payload-bytes",
            "2000",
        ];
        args.extend_from_slice(extra);
        let (ok, v) = bench(&[&s], &args);
        assert!(ok, "{v}");
        // Each message checked against the plan: a delta rebuilt wrong would be lost.
        assert_clean(&v, 10 * 40);
        v["wire_bytes_per_delivery"].as_f64().unwrap()
    };
    let plain = run(&[]);
    let deltas = run(&["--delta"]);
    assert!(deltas < plain * 0.5, "deltas: {deltas} of {plain}");
    let chat = run(&["--delta", "--payload", "chat"]);
    // A chat line shares little with the one before: most come whole.
    assert!(chat > plain * 0.8, "chat lines: {chat} of {plain}");
}

/// A `fanfare serve` process of a fleet on `port`, with history and a short drain.
fn serve(redis: &RedisServer, port: u16) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workers",
            "1",
        ])
        .args(["--token-secret", SECRET, "--api-key", API_KEY])
        .args(["--redis", &redis.url(), "--redis-prefix", "roll:"])
        .args(["--node-id", &format!("n{port}"), "--history-size", "1000"])
        .args(["--shutdown-timeout", "4"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "serve on {port}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// Three servers, each restarted in turn (SIGTERM: its connections closed with 1012 over the
/// drain) while the bench publishes with keys to all three and brings back what is closed:
/// nothing lost or repeated.
#[test]
fn a_rolling_restart_of_three_servers_loses_and_repeats_nothing() {
    let redis = RedisServer::start();
    let ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let mut servers: Vec<_> = ports.iter().map(|&p| serve(&redis, p)).collect();
    let targets: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let targets = targets.join(",");
    let bench = {
        let targets = targets.clone();
        std::thread::spawn(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_fanfare"))
                .args(["bench", "--target", &targets, "--publish-to", &targets])
                .args(["--token-secret", SECRET, "--api-key", API_KEY, "--json"])
                .args([
                    "--scenario",
                    "channel",
                    "--connections",
                    "300",
                    "--channels",
                    "10",
                ])
                .args([
                    "--duration",
                    "14",
                    "--rate",
                    "50",
                    "--reconnect-within",
                    "1",
                ])
                .args(["--drain", "10"])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            serde_json::from_str::<Value>(stdout.lines().last().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{e}: {stdout}"))
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    for (i, &port) in ports.iter().enumerate() {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(servers[i].id() as i32, libc::SIGTERM) },
            0
        );
        servers[i].wait().unwrap();
        servers[i] = serve(&redis, port);
    }
    let v = bench.join().unwrap();
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    assert_eq!(v["received"], v["expected"], "{v}");
    for key in [
        "lost",
        "duplicated",
        "reordered",
        "unrecovered",
        "publish_errors",
    ] {
        assert_eq!(v[key], 0, "{key} in {v}");
    }
    assert!(
        v["reconnects"].as_u64().unwrap() >= 300,
        "every connection came back: {v}"
    );
}
