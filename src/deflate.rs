//! permessage-deflate (RFC 7692, PROTOCOL section 10), compressed once per publication.
//!
//! The server always agrees to `server_no_context_takeover` and `client_no_context_takeover`:
//! every message is compressed on its own, so the compressed frame of a publication is the same
//! for every recipient that negotiated deflate ([`Frame::deflated`](crate::frame::Frame), built
//! by the first one to need it and shared by the rest), and a connection keeps no compression
//! state. One compressor and one inflater per thread do the work, reset for each message.
//!
//! A `server_max_window_bits` of N is honoured without another compression: a message of at
//! most 2^N bytes can refer back no further than 2^N, so its shared frame fits that window;
//! a longer one goes to that connection uncompressed.
//!
//! Client frames with RSV1 are inflated before tungstenite (which knows no extension) reads
//! them: [`Inflating`] turns a compressed message into one plain frame, its inflated size held
//! to `--max-message-bytes` (beyond, the connection closes with 1009 having inflated no more).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, ReadBuf};

/// What a connection agreed to: the longest message its shared compressed frame may carry
/// (2^`server_max_window_bits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    pub max_payload: usize,
    window_bits: Option<u8>,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` answer.
    pub fn header(&self) -> String {
        let mut h = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            .to_string();
        if let Some(bits) = self.window_bits {
            h.push_str(&format!("; server_max_window_bits={bits}"));
        }
        h
    }
}

/// The first permessage-deflate offer of `Sec-WebSocket-Extensions` values that can be
/// agreed to, if any.
pub fn negotiate<'a>(offers: impl Iterator<Item = &'a str>) -> Option<Agreed> {
    offers
        .flat_map(|v| v.split(','))
        .find_map(|offer| agree(offer.trim()))
}

fn agree(offer: &str) -> Option<Agreed> {
    let mut params = offer.split(';').map(str::trim);
    if params.next()? != "permessage-deflate" {
        return None;
    }
    let mut window_bits = None;
    let mut seen = Vec::new();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        // RFC 7692 §7: an offer with a parameter twice, or one unknown, is declined.
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits" | "server_max_window_bits", Some(v)) => {
                let bits: u8 = v.parse().ok().filter(|b| (8..=15).contains(b))?;
                if name == "server_max_window_bits" {
                    window_bits = Some(bits);
                }
            }
            _ => return None,
        }
    }
    let max_payload = match window_bits {
        Some(bits) if bits < 15 => 1 << bits,
        _ => usize::MAX,
    };
    Some(Agreed {
        max_payload,
        window_bits,
    })
}

thread_local! {
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// zlib's level: see BENCHMARKS.md "Compression" for why.
pub const LEVEL: u32 = 1;

/// Messages compressed in this process (one per publication that a deflate recipient got,
/// however many there were).
pub static COMPRESSED: AtomicU64 = AtomicU64::new(0);

/// The text frame `payload` compressed (RSV1 set), or `None` if that is not smaller.
pub fn compress(payload: &[u8]) -> Option<Bytes> {
    COMPRESSED.fetch_add(1, Relaxed);
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    COMPRESSOR.with_borrow_mut(|c| {
        c.reset();
        let mut input = payload;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = c.total_in();
            c.compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflate of a buffer does not fail");
            input = &input[(c.total_in() - before) as usize..];
            // Done once everything went in and the flush did not fill the output.
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
    });
    // RFC 7692 §7.2.1: the sync flush's empty stored block (00 00 ff ff) is left off.
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    if out.len() >= payload.len() {
        return None;
    }
    let mut frame = BytesMut::with_capacity(out.len() + 10);
    frame.put_u8(0x80 | 0x40 | 0x1);
    match out.len() {
        0..=125 => frame.put_u8(out.len() as u8),
        126..=0xFFFF => {
            frame.put_u8(126);
            frame.put_u16(out.len() as u16);
        }
        len => {
            frame.put_u8(127);
            frame.put_u64(len as u64);
        }
    }
    frame.put_slice(&out);
    Some(frame.freeze())
}

/// Inflates one message's compressed payload, at most `limit` bytes of it.
///
/// # Errors
/// Not deflate, or more than `limit` bytes inflated (then no more than `limit` + a block were).
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    // RFC 7692 §7.2.2: the sender left off the sync flush's tail; it goes back on.
    let data = [compressed, &[0, 0, 0xff, 0xff]].concat();
    INFLATER.with_borrow_mut(|d| {
        d.reset(false);
        let mut out = Vec::with_capacity((data.len() * 4).clamp(64, limit + 1));
        let mut input = &data[..];
        loop {
            if out.len() == out.capacity() {
                // Grows by doubling, never past the limit and one byte.
                let room = out.len().min(limit + 1 - out.len()).max(1);
                out.reserve_exact(room);
            }
            let before = d.total_in();
            let status = d
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            let consumed = (d.total_in() - before) as usize;
            input = &input[consumed..];
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let stalled = consumed == 0 && out.len() < out.capacity();
            match status {
                Status::StreamEnd => return Ok(out),
                _ if input.is_empty() && out.len() < out.capacity() => return Ok(out),
                Status::BufError if stalled => return Err(InflateError::Invalid),
                _ => {}
            }
        }
    })
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("a compressed message does not inflate")]
    Invalid,
    #[error("a compressed message inflates past --max-message-bytes")]
    TooBig,
}

impl From<InflateError> for io::Error {
    fn from(e: InflateError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Client → server bytes with compressed messages made plain, for tungstenite, which reads
/// the result: frames without RSV1 pass through as they are; a message whose first frame has
/// RSV1 is gathered (its control frames pass on meanwhile), inflated, and given as one final
/// masked frame with a zero mask. Holds nothing between messages.
#[derive(Default)]
pub struct Inflating {
    /// Read from the socket, not yet parsed.
    raw: Vec<u8>,
    /// For tungstenite, not yet taken.
    ready: Vec<u8>,
    taken: usize,
    /// The compressed message being gathered: its opcode and payload so far.
    message: Option<(u8, Vec<u8>)>,
    /// On a client's side (`fanfare bench`): frames given on are unmasked, as a server's.
    client: bool,
}

impl Inflating {
    /// For a client reading a server's frames (unmasked).
    pub fn for_client() -> Self {
        Inflating {
            client: true,
            ..Inflating::default()
        }
    }

    /// Takes bytes read from the socket; parses what whole frames they complete.
    ///
    /// # Errors
    /// An [`InflateError`]: a compressed message that does not inflate (1007), or inflates or
    /// gathers past `limit` (1009).
    pub fn feed(&mut self, bytes: &[u8], limit: usize) -> io::Result<()> {
        self.raw.extend_from_slice(bytes);
        let mut at = 0;
        while let Some((header, len)) = parse_header(&self.raw[at..]) {
            let Some(end) = (at + header)
                .checked_add(len)
                .filter(|e| *e <= self.raw.len())
            else {
                if len > limit + 16 {
                    return Err(InflateError::TooBig.into());
                }
                break;
            };
            let b0 = self.raw[at];
            let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0F);
            let is_control = opcode & 0x8 != 0;
            let gathering = self.message.is_some();
            // A frame of a compressed message: its first (RSV1), or a continuation of it.
            let compressed = !is_control && (rsv1 || (gathering && opcode == 0));
            if !compressed {
                self.ready.extend_from_slice(&self.raw[at..end]);
            } else {
                let mut payload = self.raw[at + header..end].to_vec();
                unmask(&self.raw[at..at + header], &mut payload);
                let (_, gathered) = self.message.get_or_insert_with(|| (opcode, Vec::new()));
                if gathered.len() + payload.len() > limit {
                    return Err(InflateError::TooBig.into());
                }
                gathered.extend_from_slice(&payload);
                if fin {
                    let (op, compressed) = self.message.take().expect("gathering");
                    let plain = inflate(&compressed, limit)?;
                    write_plain(&mut self.ready, op, &plain, !self.client);
                }
            }
            at = end;
        }
        self.raw.drain(..at);
        if self.raw.is_empty() {
            self.raw = Vec::new();
        }
        Ok(())
    }

    /// Bytes for tungstenite, as many as fit `buf`.
    pub fn take(&mut self, buf: &mut [u8]) -> usize {
        let n = (self.ready.len() - self.taken).min(buf.len());
        buf[..n].copy_from_slice(&self.ready[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.ready.len() {
            // Idle again: nothing kept.
            self.ready = Vec::new();
            self.taken = 0;
        }
        n
    }

    pub fn has_ready(&self) -> bool {
        self.taken < self.ready.len()
    }

    /// `AsyncRead::poll_read` through this: fills `buf` with what `socket` sent, compressed
    /// messages made plain (each read from the socket is told to `seen`, in bytes), at most
    /// `limit` bytes inflated per message.
    pub fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        socket: &mut R,
        limit: usize,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        mut seen: impl FnMut(usize),
    ) -> Poll<io::Result<()>> {
        loop {
            if self.has_ready() {
                let n = self.take(buf.initialize_unfilled());
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            // On the stack for this call only: a connection keeps no read buffer of its own here.
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut *socket).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            seen(read.filled().len());
            self.feed(read.filled(), limit)?;
        }
    }
}

/// A client frame's header length and payload length, once its header has arrived.
fn parse_header(b: &[u8]) -> Option<(usize, usize)> {
    let b1 = *b.get(1)?;
    let masked = b1 & 0x80 != 0;
    let mask = if masked { 4 } else { 0 };
    match b1 & 0x7F {
        126 => {
            let len = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize;
            (b.len() >= 4 + mask).then_some((4 + mask, len))
        }
        127 => {
            let len = u64::from_be_bytes(b.get(2..10)?.try_into().ok()?);
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            (b.len() >= 10 + mask).then_some((10 + mask, len))
        }
        n => (b.len() >= 2 + mask).then_some((2 + mask, n as usize)),
    }
}

fn unmask(header: &[u8], payload: &mut [u8]) {
    if header[1] & 0x80 == 0 {
        return;
    }
    let key: [u8; 4] = header[header.len() - 4..].try_into().expect("4 bytes");
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// One final frame of `opcode`; a client's is `masked` with a zero key (so the payload is as
/// it is).
fn write_plain(out: &mut Vec<u8>, opcode: u8, payload: &[u8], masked: bool) {
    let mask = if masked { 0x80 } else { 0 };
    out.push(0x80 | opcode);
    match payload.len() {
        0..=125 => out.push(mask | payload.len() as u8),
        126..=0xFFFF => {
            out.push(mask | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        len => {
            out.push(mask | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&[0; 4]);
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1, 2, 3, 4];
        let mut f = vec![first, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    fn raw_deflate(text: &[u8]) -> Vec<u8> {
        let frame = compress(text).expect("smaller");
        let header = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        frame[header..].to_vec()
    }

    #[test]
    fn offers_are_agreed_as_rfc_7692_says() {
        let ok = negotiate(["permessage-deflate; client_max_window_bits"].into_iter()).unwrap();
        assert_eq!(ok.max_payload, usize::MAX);
        assert_eq!(
            ok.header(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let small = negotiate(["permessage-deflate; server_max_window_bits=10"].into_iter());
        assert_eq!(small.unwrap().max_payload, 1024);
        assert!(small
            .unwrap()
            .header()
            .ends_with("server_max_window_bits=10"));
        assert_eq!(negotiate(["x-webkit-deflate-frame"].into_iter()), None);
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=20"].into_iter()),
            None
        );
        assert_eq!(negotiate(["permessage-deflate; unknown"].into_iter()), None);
        // The first acceptable of several offers.
        let second = negotiate(
            ["permessage-deflate; bogus, permessage-deflate; server_no_context_takeover"]
                .into_iter(),
        );
        assert!(second.is_some());
    }

    #[test]
    fn a_compressed_frame_inflates_back_and_only_when_smaller() {
        let text = br#"{"type":"message","message":"hello hello hello hello hello hello"}"#;
        let frame = compress(text).unwrap();
        assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
        assert_eq!(inflate(&frame[2..], 1 << 20).unwrap(), text);
        assert_eq!(compress(b"ab"), None);
    }

    #[test]
    fn compressed_client_messages_become_plain_frames_and_others_pass() {
        let text = b"{\"type\":\"ping\",\"pad\":\"aaaaaaaaaaaaaaaaaaaaaaaa\"}";
        let deflated = raw_deflate(text);
        let mut input = client_frame(0x81, b"plain");
        input.extend(client_frame(0xC1, &deflated));
        input.extend(client_frame(0x89, b"")); // a ping
        let mut inf = Inflating::default();
        // Fed a byte at a time: frames complete across reads.
        for b in &input {
            inf.feed(std::slice::from_ref(b), 1 << 20).unwrap();
        }
        let mut out = vec![0; 1024];
        let n = inf.take(&mut out);
        let out = &out[..n];
        let plain = client_frame(0x81, b"plain");
        assert_eq!(&out[..plain.len()], &plain[..]);
        let rest = &out[plain.len()..];
        assert_eq!(rest[0], 0x81);
        assert_eq!(rest[1] & 0x7F, text.len() as u8);
        assert_eq!(&rest[6..6 + text.len()], text);
        assert_eq!(&rest[6 + text.len()..][..2], &[0x89, 0x80]);
        assert!(!inf.has_ready());
    }

    #[test]
    fn a_fragmented_compressed_message_is_gathered() {
        let text = "fragment ".repeat(20);
        let deflated = raw_deflate(text.as_bytes());
        let (a, b) = deflated.split_at(deflated.len() / 2);
        let mut input = client_frame(0x41, a); // RSV1, text, not final
        input.extend(client_frame(0x89, b"")); // a ping between
        input.extend(client_frame(0x80, b)); // final continuation
        let mut inf = Inflating::default();
        inf.feed(&input, 1 << 20).unwrap();
        let mut out = vec![0; 1024];
        let n = inf.take(&mut out);
        assert_eq!(&out[..2], &[0x89, 0x80], "the ping first");
        assert_eq!(&out[6..8], &[0x81, 0x80 | 126]);
        assert_eq!(&out[8..10], &(text.len() as u16).to_be_bytes());
        assert_eq!(&out[14..n], text.as_bytes());
    }

    #[test]
    fn a_bomb_is_cut_at_the_limit() {
        let zeros = vec![b'0'; 1 << 20];
        let deflated = raw_deflate(&zeros);
        assert!(
            deflated.len() < 0xFFFF,
            "fits one 16-bit frame: {}",
            deflated.len()
        );
        assert_eq!(inflate(&deflated, 64 * 1024), Err(InflateError::TooBig));
        let mut inf = Inflating::default();
        let mut frame = vec![0xC1, 0x80 | 126];
        frame.extend_from_slice(&(deflated.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&deflated);
        let err = inf.feed(&frame, 64 * 1024).unwrap_err();
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<InflateError>());
        assert_eq!(inner, Some(&InflateError::TooBig));
    }
}
