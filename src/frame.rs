//! The transport's framing: a server → client WebSocket frame, built once and shared.
//!
//! What a message says is [`crate::protocol`]'s; this is how it travels. A frame holds its
//! header and payload in one allocation, unmasked as a server sends it, so one publication is
//! one buffer that every recipient's socket is written from. Another framing of the same text
//! (compressed, or another transport's) is built from [`Frame::payload`].

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

/// One server → client WebSocket frame, encoded once (header and payload) and shared by every
/// recipient: each gets a refcount bump, and the bytes go to the socket as they are. A text
/// frame also carries the cells of its other forms, each made by the first recipient that
/// needs it and shared by all.
#[derive(Clone, Debug)]
pub struct Frame(Bytes, Option<Arc<Forms>>);

/// The other forms of one text frame.
#[derive(Debug, Default)]
struct Forms {
    /// Compressed (permessage-deflate).
    deflated: OnceLock<Option<Bytes>>,
    /// A message as a delta against its topic's previous message.
    delta: OnceLock<Option<Frame>>,
    /// As a server-sent event: `data: <payload>\n\n`.
    event: OnceLock<Bytes>,
}

/// What a frame is, for a transport that frames messages its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Ping,
    Close,
    Other,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Frame {}

/// Opcodes of the frames a server sends.
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

impl Frame {
    /// A text frame whose payload is `parts` back to back.
    pub fn text_parts(parts: &[&str]) -> Self {
        let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        Frame::text_bytes(&parts)
    }

    /// [`text_parts`](Self::text_parts) of parts that are UTF-8 text already checked.
    pub fn text_bytes(parts: &[&[u8]]) -> Self {
        Frame::encode(OP_TEXT, parts)
    }

    /// A WebSocket ping, sent by the server every ping interval.
    pub fn ping() -> Self {
        Frame::encode(OP_PING, &[])
    }

    /// A close frame with its code and reason (at most 123 bytes, as a control frame allows).
    pub fn close(code: u16, reason: &str) -> Self {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Frame::encode(OP_CLOSE, &[&code.to_be_bytes(), &reason.as_bytes()[..end]])
    }

    /// One final (FIN) frame of `opcode` whose payload is `parts` back to back: one allocation.
    fn encode(opcode: u8, parts: &[&[u8]]) -> Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut buf = BytesMut::with_capacity(header_len(len) + len);
        buf.put_u8(0x80 | opcode);
        match len {
            0..=125 => buf.put_u8(len as u8),
            126..=0xFFFF => {
                buf.put_u8(126);
                buf.put_u16(len as u16);
            }
            _ => {
                buf.put_u8(127);
                buf.put_u64(len as u64);
            }
        }
        for p in parts {
            buf.put_slice(p);
        }
        let deflated = (opcode == OP_TEXT).then(Arc::default);
        Frame(buf.freeze(), deflated)
    }

    /// A copy with a reference count of its own. A worker fanning one frame out to thousands
    /// of connections counts references on this one instead of the bus's, whose count the
    /// other workers' cores touch too.
    pub fn local_copy(&self) -> Frame {
        Frame(Bytes::copy_from_slice(&self.0), self.1.clone())
    }

    /// The compressed frame (RSV1), made once for every recipient; `None` for a frame that
    /// compression does not make smaller, or that is not text.
    pub fn deflated(&self) -> Option<&Bytes> {
        let forms = self.1.as_ref()?;
        forms
            .deflated
            .get_or_init(|| crate::deflate::compress(self.payload()))
            .as_ref()
    }

    /// This message as a delta, made by `make` for the first recipient that asks and shared by
    /// all: every caller must make the same one (against the same previous message). `None`
    /// for a frame with no delta form.
    pub fn delta(&self, make: impl FnOnce() -> Option<Frame>) -> Option<&Frame> {
        self.1.as_ref()?.delta.get_or_init(make).as_ref()
    }

    /// What the frame is.
    pub fn kind(&self) -> Kind {
        match self.0.first().map(|b| b & 0x0F) {
            Some(OP_TEXT) => Kind::Text,
            Some(OP_PING) => Kind::Ping,
            Some(OP_CLOSE) => Kind::Close,
            _ => Kind::Other,
        }
    }

    /// A text frame as a server-sent event (`data: <payload>`, then the blank line that ends
    /// it), made once for every recipient; `None` for a frame that is not text. A line break
    /// in the JSON can only be whitespace between its tokens (a string holds it escaped), so
    /// it becomes a space: the event stays one `data:` line and means the same JSON.
    pub fn event(&self) -> Option<&Bytes> {
        let make = || {
            let payload = self.payload();
            let mut event = BytesMut::with_capacity(payload.len() + 8);
            event.put_slice(b"data: ");
            event.put_slice(payload);
            for b in &mut event[6..] {
                if matches!(*b, b'\r' | b'\n') {
                    *b = b' ';
                }
            }
            event.put_slice(b"\n\n");
            event.freeze()
        };
        Some(self.1.as_ref()?.event.get_or_init(make))
    }

    /// The whole frame as it goes on the wire.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The payload: the JSON text of a text frame.
    pub fn payload(&self) -> &[u8] {
        let len = self.0.len();
        let header = match self.0.get(1).map(|b| b & 0x7F) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        &self.0[header.min(len)..]
    }

    /// The text of a text frame (every text frame is built from `&str`, valid UTF-8).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }
}

fn header_len(payload: usize) -> usize {
    match payload {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_fit_each_payload_length_and_the_payload_reads_back() {
        for len in [0usize, 125, 126, 0xFFFF, 0x10000] {
            let text = "x".repeat(len);
            let f = Frame::text_parts(&[&text]);
            assert_eq!(f.bytes().len(), header_len(len) + len);
            assert_eq!(f.bytes()[0], 0x81);
            assert_eq!(f.as_str(), text);
        }
        let close = Frame::close(1000, &"é".repeat(100));
        assert_eq!(close.bytes()[1] as usize, close.payload().len());
        assert!(close.payload().len() <= 125, "a control frame's limit");
    }

    #[test]
    fn an_event_is_one_data_line_of_the_same_json() {
        let f = Frame::text_parts(&["{\"a\":\r\n [1,\n2]}"]);
        assert_eq!(&f.event().unwrap()[..], b"data: {\"a\":   [1, 2]}\n\n");
        assert_eq!(f.kind(), Kind::Text);
        assert_eq!(Frame::ping().event(), None);
        assert_eq!(Frame::close(1000, "").kind(), Kind::Close);
    }
}
