//! Opens N idle authenticated WebSocket connections to a server and reports its RSS growth.
//!
//! cargo run --release --example idle_connections -- <addr> <server-pid> <token-secret> <count>

use std::time::Duration;

use fanfare::auth::{claims, TokenKeys};

fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server pid");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, pid, secret, count] = &args[..] else {
        eprintln!("usage: idle_connections <addr> <server-pid> <token-secret> <count>");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("count");
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let keys = TokenKeys::new(secret).expect("secret");
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let token = keys
            .issue(&claims(&format!("idle{i}"), None, None))
            .unwrap();
        let url = format!("ws://{addr}/ws?token={token}");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        conns.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / count as f64;
    println!("connections={count} rss_before_kib={before} rss_after_kib={after} bytes_per_connection={per:.0}");
}
