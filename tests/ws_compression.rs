//! permessage-deflate (PROTOCOL section 10) from a client with a deflate decoder of its own:
//! what it negotiates, that one publication's compressed frame reaches every deflate client
//! and the same text reaches a plain one, small frames going plain, a compressed client frame,
//! a decompression bomb cut at the limit, and `--compression off`.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::TestServer;
use flate2::{Decompress, FlushDecompress};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket client that offers `offer` and reads frames itself.
struct Raw {
    socket: TcpStream,
    buf: Vec<u8>,
    /// What the server answered in `Sec-WebSocket-Extensions`.
    agreed: Option<String>,
}

struct Received {
    rsv1: bool,
    opcode: u8,
    /// Inflated when RSV1 is set.
    payload: Vec<u8>,
}

impl Raw {
    async fn connect(s: &TestServer, user: &str, channels: &[&str], offer: Option<&str>) -> Raw {
        let token = s.token(user, channels);
        let mut socket = TcpStream::connect(s.addr).await.unwrap();
        let ext = offer.map_or(String::new(), |o| {
            format!("Sec-WebSocket-Extensions: {o}\r\n")
        });
        let req = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{ext}\r\n"
        );
        socket.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Raw {
            socket,
            buf: Vec::new(),
            agreed: None,
        };
        let end = loop {
            if let Some(at) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.agreed = head.lines().find_map(|l| {
            l.strip_prefix("sec-websocket-extensions: ")
                .map(str::to_string)
        });
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), self.socket.read(&mut chunk))
            .await
            .expect("data in time")
            .unwrap();
        assert!(n > 0, "the server closed the socket");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn frame(&mut self) -> Received {
        loop {
            if self.buf.len() >= 2 {
                let (header, len) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
                    }
                    127 if self.buf.len() >= 10 => (
                        10,
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n as usize),
                };
                if header != usize::MAX && self.buf.len() >= header + len {
                    let b0 = self.buf[0];
                    let payload: Vec<u8> = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    let rsv1 = b0 & 0x40 != 0;
                    let payload = if rsv1 { inflate(&payload) } else { payload };
                    return Received {
                        rsv1,
                        opcode: b0 & 0x0F,
                        payload,
                    };
                }
            }
            self.fill().await;
        }
    }

    /// The next text frame, as JSON (pings skipped).
    async fn json(&mut self) -> (bool, Value) {
        loop {
            let f = self.frame().await;
            if f.opcode == 1 {
                return (f.rsv1, serde_json::from_slice(&f.payload).unwrap());
            }
            assert_ne!(
                f.opcode,
                8,
                "closed: {:?}",
                String::from_utf8_lossy(&f.payload)
            );
        }
    }

    async fn send(&mut self, first: u8, payload: &[u8]) {
        let key = [7u8, 1, 9, 3];
        let mut f = vec![first];
        match payload.len() {
            0..=125 => f.push(0x80 | payload.len() as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.socket.write_all(&f).await.unwrap();
    }
}

/// The client's own decoder: raw deflate, the `00 00 ff ff` tail put back.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(payload.len() * 8 + 1024);
    let data = [payload, &[0, 0, 0xff, 0xff]].concat();
    d.decompress_vec(&data, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// Raw deflate of `text` as a client compresses it (its own compressor, not the server's):
/// sync-flushed, the `00 00 ff ff` tail left off (RFC 7692 §7.2.1).
fn deflate(text: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text).unwrap();
    e.flush().unwrap();
    let mut out = e.get_ref().clone();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

const OFFER: &str = "permessage-deflate; client_max_window_bits";

fn document(n: usize) -> Value {
    json!({"id": n, "title": "a document of some size", "rows": (0..40).map(|i| json!({"row": i, "state": "unchanged", "value": i * 7})).collect::<Vec<_>>()})
}

#[tokio::test]
async fn one_compressed_frame_per_publication_reaches_every_deflate_client() {
    let s = TestServer::start();
    let mut deflaters = Vec::new();
    for i in 0..3 {
        let mut c = Raw::connect(&s, &format!("d{i}"), &["docs"], Some(OFFER)).await;
        assert_eq!(
            c.agreed.as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        c.send(0x81, br#"{"type":"subscribe","channel":"docs"}"#)
            .await;
        assert_eq!(c.json().await.1["type"], "subscribed");
        deflaters.push(c);
    }
    let mut plain = Raw::connect(&s, "p", &["docs"], None).await;
    assert_eq!(plain.agreed, None);
    plain
        .send(0x81, br#"{"type":"subscribe","channel":"docs"}"#)
        .await;
    plain.json().await;

    let before = s.metric("fanfare_deflate_compressions_total").await;
    let doc = document(1);
    s.publish("/publish", json!({"channel": "docs", "message": doc}))
        .await;
    let (rsv1, plain_text) = {
        let f = plain.frame().await;
        (f.rsv1, f.payload)
    };
    assert!(
        !rsv1,
        "a client that did not offer deflate gets plain frames"
    );
    for c in &mut deflaters {
        let f = c.frame().await;
        assert!(f.rsv1, "compressed");
        assert_eq!(f.payload, plain_text, "the same text, byte for byte");
    }
    let after = s.metric("fanfare_deflate_compressions_total").await;
    assert_eq!(after - before, 1.0, "compressed once for three recipients");

    // Below --compression-min-bytes: plain, RSV1 clear, to everyone.
    s.publish("/publish", json!({"channel": "docs", "message": {"n": 1}}))
        .await;
    for c in &mut deflaters {
        let (rsv1, m) = c.json().await;
        assert!(!rsv1);
        assert_eq!(m["message"]["n"], 1);
    }
}

#[tokio::test]
async fn a_compressed_client_frame_works_and_a_bomb_is_cut_at_the_limit() {
    let s = TestServer::start_with(|c| c.max_message_bytes = 64 * 1024);
    let mut c = Raw::connect(&s, "u", &["room"], Some(OFFER)).await;
    let subscribe =
        br#"{"type":"subscribe","channel":"room","padding":"                                   "}"#;
    c.send(0xC1, &deflate(subscribe)).await;
    assert_eq!(c.json().await.1["type"], "subscribed");

    // 10 MB of zeros is ~10 KB compressed: inflated no further than the 64 KiB limit.
    let bomb = deflate(&vec![b'0'; 10 << 20]);
    assert!(bomb.len() < 65535);
    let mut b = Raw::connect(&s, "bomber", &[], Some(OFFER)).await;
    b.send(0xC1, &bomb).await;
    let close = loop {
        let f = b.frame().await;
        if f.opcode == 8 {
            break f;
        }
    };
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        1009
    );
    // Everyone else is served on.
    s.publish(
        "/publish",
        json!({"channel": "room", "message": "still here"}),
    )
    .await;
    assert_eq!(c.json().await.1["message"], "still here");
}

#[tokio::test]
async fn a_small_window_gets_only_what_fits_it_compressed() {
    let s = TestServer::start();
    let offer = "permessage-deflate; server_max_window_bits=9";
    let mut c = Raw::connect(&s, "w", &["docs"], Some(offer)).await;
    assert!(c
        .agreed
        .as_deref()
        .unwrap()
        .ends_with("server_max_window_bits=9"));
    c.send(0x81, br#"{"type":"subscribe","channel":"docs"}"#)
        .await;
    c.json().await;
    // Over 2^9 bytes: plain for this client.
    s.publish(
        "/publish",
        json!({"channel": "docs", "message": document(2)}),
    )
    .await;
    let (rsv1, m) = c.json().await;
    assert!(!rsv1);
    assert_eq!(m["message"]["id"], 2);
    // Between --compression-min-bytes (256) and 512: compressed.
    let short = "x".repeat(300);
    s.publish("/publish", json!({"channel": "docs", "message": short}))
        .await;
    let (rsv1, m) = c.json().await;
    assert!(rsv1);
    assert_eq!(m["message"], short);
}

#[tokio::test]
async fn compression_off_answers_no_extension() {
    let s = TestServer::start_with(|c| c.compression = false);
    let mut c = Raw::connect(&s, "u", &["docs"], Some(OFFER)).await;
    assert_eq!(c.agreed, None);
    c.send(0x81, br#"{"type":"subscribe","channel":"docs"}"#)
        .await;
    c.json().await;
    s.publish(
        "/publish",
        json!({"channel": "docs", "message": document(3)}),
    )
    .await;
    assert!(!c.json().await.0);
}
