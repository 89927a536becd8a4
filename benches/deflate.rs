//! What permessage-deflate costs and saves per message, by zlib level and payload kind: the
//! compressed frame's size against the plain frame's, and the time to compress one (once per
//! publication, whatever the number of recipients). `cargo bench --bench deflate`.

use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress};
use serde_json::json;

/// A 2 KB JSON document of the kind a dashboard streams: 30 rows, a few fields changing.
fn document(n: u64) -> String {
    let rows: Vec<_> = (0..30)
        .map(|i| json!({"id": format!("sensor-{i:03}"), "label": "temperature probe", "state": if (i + n) % 7 == 0 {"alert"} else {"ok"}, "value": ((i * 37 + n * 11) % 1000) as f64 / 10.0, "unit": "celsius"}))
        .collect();
    frame_text(
        &json!({"type": "message", "channel": "dashboard:plant-7", "offset": n, "message": {"updated": 1_700_000_000 + n, "rows": rows}}),
    )
}

/// A ~200 B chat message: short words, a user, a time.
fn chat(n: u64) -> String {
    const WORDS: [&str; 16] = [
        "see", "you", "at", "the", "standup", "tomorrow", "ok", "thanks", "shipping", "now",
        "deploy", "looks", "good", "ping", "me", "later",
    ];
    let text: Vec<&str> = (0..12)
        .map(|i| WORDS[((n * 7 + i * 13) % 16) as usize])
        .collect();
    frame_text(
        &json!({"type": "message", "channel": "room:42", "offset": n, "message": {"user": format!("user-{}", n % 50), "text": text.join(" "), "ts": 1_700_000_000_000u64 + n}}),
    )
}

fn frame_text(v: &serde_json::Value) -> String {
    v.to_string()
}

fn compressed_len(c: &mut Compress, payload: &[u8], out: &mut Vec<u8>) -> usize {
    c.reset();
    out.clear();
    c.compress_vec(payload, out, FlushCompress::Sync).unwrap();
    out.len() - 4
}

fn header(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

fn main() {
    println!("kind      level  plain B  deflated B  ratio  µs/compress (median of 5)");
    for (kind, make) in [("document", document as fn(u64) -> String), ("chat", chat)] {
        let payloads: Vec<String> = (0..500).map(make).collect();
        let plain: usize = payloads.iter().map(|p| p.len() + header(p.len())).sum();
        for level in [1, 3, 6, 9] {
            let mut c = Compress::new(Compression::new(level), false);
            let mut out = Vec::with_capacity(8192);
            let mut sizes = 0;
            for p in &payloads {
                let n = compressed_len(&mut c, p.as_bytes(), &mut out);
                // As the server sends it: compressed only when smaller.
                sizes += (n + header(n)).min(p.len() + header(p.len()));
            }
            let mut rounds = Vec::new();
            for _ in 0..5 {
                let start = Instant::now();
                for p in &payloads {
                    compressed_len(&mut c, p.as_bytes(), &mut out);
                }
                rounds.push(start.elapsed().as_secs_f64() * 1e6 / payloads.len() as f64);
            }
            rounds.sort_by(f64::total_cmp);
            println!(
                "{kind:9} {level:5}  {:7}  {:10}  {:4.0} %  {:.1}",
                plain / payloads.len(),
                sizes / payloads.len(),
                100.0 * sizes as f64 / plain as f64,
                rounds[2]
            );
        }
    }
    // The server's own path (level fanfare::deflate::LEVEL, thread-local compressor).
    let doc = document(1);
    let start = Instant::now();
    for _ in 0..2000 {
        fanfare::deflate::compress(doc.as_bytes());
    }
    println!(
        "fanfare::deflate::compress (level {}) of the document: {:.1} µs",
        fanfare::deflate::LEVEL,
        start.elapsed().as_secs_f64() * 1e6 / 2000.0
    );
}
