//! The floor under broadcast on this machine: what it costs one process to `write` a 60-byte
//! WebSocket frame to each of N connected loopback sockets in turn, with another process
//! draining them (edge-triggered epoll through tokio, as `fanfare bench`'s receivers do). On
//! loopback the writer's `write` also runs the receiver's TCP input, so the cost per frame
//! depends on how many frames go out per write: `--frames-per-write K` writes K frames at once.
//!
//!     cargo bench --bench write_floor -- --connections 10000 --rounds 100 --rate 5
//!     cargo bench --bench write_floor -- --connections 10000 --rounds 50 --frames-per-write 8
//!
//! `--rate R` spaces the rounds (one frame, or K, to every socket) R per second, like `fanfare
//! bench --rate R` spaces broadcasts; without it the rounds go back to back (closed loop). It
//! prints the writer's CPU per write and per frame (user + system, the whole process): compare
//! with `fanfare bench`'s server CPU per delivery and its frames per write, in the same run.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A text frame as fanfare sends it: 2-byte header, 58 bytes of JSON-ish payload.
const FRAME_LEN: usize = 60;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("drain") {
        let addr: SocketAddr = args[2].parse().expect("drain ADDR N BYTES");
        drain(addr, args[3].parse().unwrap(), args[4].parse().unwrap());
        return;
    }
    let opt = |name: &str| -> Option<f64> {
        let i = args.iter().position(|a| a == name)?;
        Some(args.get(i + 1)?.parse().expect("a number"))
    };
    let connections = opt("--connections").unwrap_or(10_000.0) as usize;
    let rounds = opt("--rounds").unwrap_or(100.0) as usize;
    let per_write = opt("--frames-per-write").unwrap_or(1.0) as usize;
    let rate = opt("--rate");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bytes = (connections * rounds * per_write * FRAME_LEN) as u64;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["drain", &addr.to_string()])
        .args([connections.to_string(), bytes.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sockets = Vec::with_capacity(connections);
    while sockets.len() < connections {
        let (s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        sockets.push(s);
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let mut frame = [b'x'; FRAME_LEN];
    frame[0] = 0x81;
    frame[1] = (FRAME_LEN - 2) as u8;
    let buf = frame.repeat(per_write);
    let cpu_before = process_cpu();
    let start = Instant::now();
    for round in 0..rounds {
        for s in &mut sockets {
            s.write_all(&buf).unwrap();
        }
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64((round + 1) as f64 / rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    let cpu = process_cpu() - cpu_before;
    let elapsed = start.elapsed().as_secs_f64();
    let drained = lines.next().unwrap().unwrap();
    child.wait().unwrap();
    let writes = (connections * rounds) as f64;
    println!(
        "write floor: {connections} sockets, {rounds} rounds, {per_write} frame(s) of {FRAME_LEN} B per write, {}",
        match rate {
            Some(r) => format!("{r} rounds/s"),
            None => "closed loop".into(),
        }
    );
    println!(
        "writer CPU {cpu:.3} s over {elapsed:.2} s: {:.2} µs per write, {:.2} µs per frame ({:.0} frames per CPU-second); {drained}",
        cpu * 1e6 / writes,
        cpu * 1e6 / (writes * per_write as f64),
        writes * per_write as f64 / cpu
    );
}

/// CPU seconds (user + system) of this whole process so far.
fn process_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// The receiving process: connects `n` sockets, says `ready`, reads until `bytes` arrived in
/// all, then prints its own CPU.
fn drain(addr: SocketAddr, n: usize, bytes: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            streams.push(tokio::net::TcpStream::from_std(s).unwrap());
        }
        println!("ready");
        std::io::stdout().flush().unwrap();
        let cpu_before = process_cpu();
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        for s in streams {
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = 0u64;
                loop {
                    s.readable().await.unwrap();
                    match s.try_read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => got += k as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                    if got >= bytes / n as u64 {
                        break;
                    }
                }
                let _ = done_tx.send(got);
            });
        }
        drop(done_tx);
        let mut total = 0;
        while let Some(got) = done.recv().await {
            total += got;
        }
        assert_eq!(total, bytes);
        println!("drainer CPU {:.3} s", process_cpu() - cpu_before);
    });
}
