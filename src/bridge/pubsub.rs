//! The bridge's own RESP2 connections: commands out; pushes in (the subscriber) or integer
//! replies in (the publisher's pipelines).
//!
//! Why not redis-rs's pub/sub: it reads the socket into an unbounded channel, so a relay that
//! falls behind grows this process's memory without limit, and it parses every push into
//! generic values. This reader reads only when the relay asks for the next push, at most
//! [`READ_CHUNK`] at a time, so a backlog stays in Redis — whose `client-output-buffer-limit
//! pubsub` cuts a subscriber that falls too far behind — and a message's channel and payload
//! are handed out as slices of the read buffer, without a copy.

use std::io;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::Tls;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// What Redis sends a subscriber.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// A message published on a channel we subscribe to (`message`, or `smessage` for a shard
    /// channel).
    Message(Message),
    /// One channel of a (S)SUBSCRIBE took effect (one per channel named).
    Subscribed,
    /// One channel of an (S)UNSUBSCRIBE took effect — or, for a shard channel nobody asked to
    /// leave, Redis took it away: its slot moved to another node.
    Unsubscribed { channel: Bytes },
    /// The answer to a PING.
    Pong,
    /// A message larger than the limit, skipped without being held.
    Oversize,
    /// An error reply to a command (on a cluster, `-MOVED` to a SSUBSCRIBE whose slot moved).
    Refused(String),
}

/// A message as read: its frame, and where its channel and payload lie in it. One reference
/// to the read buffer, taken and dropped once, where a `Bytes` for each part took three (and
/// their counts, on the buffer's one counter, were ~8 % of the bridge's CPU).
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    frame: BytesMut,
    channel: (usize, usize),
    payload: (usize, usize),
}

impl Message {
    pub fn channel(&self) -> &[u8] {
        &self.frame[self.channel.0..self.channel.1]
    }

    pub fn payload(&self) -> &[u8] {
        &self.frame[self.payload.0..self.payload.1]
    }
}

/// Reads pushes; the other half of [`connect`].
pub struct Reader {
    read: Box<dyn AsyncRead + Send + Unpin>,
    buf: BytesMut,
    /// Longest bulk string held; a longer message is skipped as it streams by.
    max_bulk: usize,
    /// Bytes of an oversize message still to skip.
    skip: usize,
}

/// Sends commands; the other half of [`connect`].
pub struct Writer {
    write: Box<dyn AsyncWrite + Send + Unpin>,
}

/// Connects to the Redis of `info` (TCP, through `tls` for a `rediss` address),
/// authenticates if it has credentials, and returns the two halves.
///
/// # Errors
/// The address is not TCP (Unix sockets are not supported here), a TLS address comes without
/// `tls`, the connection or its TLS handshake fails, or Redis refuses the credentials.
pub async fn connect(
    info: &ConnectionInfo,
    tls: Option<&Tls>,
    max_bulk: usize,
) -> Result<(Reader, Writer), String> {
    let (host, port, secure) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => (host.as_str(), *port, false),
        ConnectionAddr::TcpTls { host, port, .. } => (host.as_str(), *port, true),
        other => return Err(format!("{other:?}: only TCP is supported")),
    };
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    type Halves = (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    );
    let (read, write): Halves = match (secure, tls) {
        (false, _) => {
            let (read, write) = stream.into_split();
            (Box::new(read), Box::new(write))
        }
        (true, Some(tls)) => {
            let (read, write) = tokio::io::split(tls.connect(host, stream).await?);
            (Box::new(read), Box::new(write))
        }
        (true, None) => return Err("a rediss:// address without TLS settings".into()),
    };
    let mut reader = Reader {
        read,
        buf: BytesMut::with_capacity(READ_CHUNK),
        max_bulk,
        skip: 0,
    };
    let mut writer = Writer { write };
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        let mut auth: Vec<&[u8]> = vec![b"AUTH"];
        auth.extend(settings.username().map(str::as_bytes));
        auth.push(password.as_bytes());
        writer.command(&auth).await.map_err(|e| e.to_string())?;
        reader.simple_reply().await?;
    }
    // The URL's database holds the keys (the node id claim); channels ignore it.
    if settings.db() != 0 {
        let db = settings.db().to_string();
        writer
            .command(&[b"SELECT", db.as_bytes()])
            .await
            .map_err(|e| e.to_string())?;
        reader.simple_reply().await?;
    }
    Ok((reader, writer))
}

/// The value of `name` in the text `INFO` answers (`name:value` lines).
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Appends one command, a RESP array of bulk strings, to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut number = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(number.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(number.format(a.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

impl Writer {
    /// Sends one command.
    pub async fn command(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        encode(&mut out, args);
        self.write.write_all(&out).await
    }

    /// Sends commands already encoded with [`encode`], back to back (a pipeline).
    pub async fn raw(&mut self, encoded: &[u8]) -> io::Result<()> {
        self.write.write_all(encoded).await
    }
}

impl Reader {
    /// The next push. Cancel-safe: what was read stays in the buffer for the next call.
    ///
    /// # Errors
    /// The connection closed or broke, or Redis sent something a subscriber does not expect.
    pub async fn next(&mut self) -> Result<Push, String> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`Reader::next`] as a poll, for a task that reads several links at once.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Push, String>> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len());
                self.buf.advance(n);
                self.skip -= n;
                if self.skip == 0 {
                    return Poll::Ready(Ok(Push::Oversize));
                }
            } else if let Some(push) = self.parse()? {
                return Poll::Ready(Ok(push));
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// Resolves when the connection closes or breaks, for a connection with no command in
    /// flight: anything Redis sends then is unexpected, and ends the link too. Cancel-safe.
    pub async fn closed(&mut self) -> String {
        match self.fill().await {
            Ok(()) => "Redis sent something nobody asked for".into(),
            Err(why) => why,
        }
    }

    async fn fill(&mut self) -> Result<(), String> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.buf.reserve(READ_CHUNK);
        let read = std::pin::Pin::new(&mut self.read);
        Poll::Ready(
            match ready!(tokio_util::io::poll_read_buf(read, cx, &mut self.buf)) {
                Ok(0) => Err("connection closed".into()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// The integer reply of a command (PUBLISH, EVAL of the claim scripts).
    ///
    /// # Errors
    /// The connection broke, Redis answered with an error, or the reply is not an integer.
    pub async fn integer(&mut self) -> Result<i64, String> {
        loop {
            if let Some(end) = find_crlf(&self.buf, 0) {
                let line = self.buf.split_to(end + 2);
                let text = std::str::from_utf8(&line[1..end]).unwrap_or("?");
                return match line.first() {
                    Some(b':') => text.parse().map_err(|_| format!("not a number: {text:?}")),
                    Some(b'-') => Err(format!("Redis: {text}")),
                    _ => Err(format!(
                        "unexpected reply {:?}",
                        String::from_utf8_lossy(&line)
                    )),
                };
            }
            self.fill().await?;
        }
    }

    /// The reply of a command on a connection that does not subscribe: a Redis error is a
    /// reply like any other (the command failed, the link is fine).
    ///
    /// # Errors
    /// The connection broke, or the reply is of a shape the bridge never asks for (nested
    /// arrays), or over `max` bytes.
    pub async fn reply(&mut self, max: usize) -> Result<Reply, String> {
        loop {
            if let Some((len, shape)) = reply_frame(&self.buf, max)? {
                // Most replies are a PUBLISH's count: nothing of them is kept, so the buffer
                // is not split for them (a split shares it, with a reference count to keep).
                return Ok(match shape {
                    ReplyShape::Integer(n) => {
                        self.buf.advance(len);
                        Reply::Integer(n)
                    }
                    ReplyShape::Status => {
                        self.buf.advance(len);
                        Reply::Status
                    }
                    ReplyShape::Error((a, b)) => {
                        let frame = self.buf.split_to(len);
                        Reply::Error(String::from_utf8_lossy(&frame[a..b]).into_owned())
                    }
                    ReplyShape::Bulks(parts) => {
                        let frame = self.buf.split_to(len).freeze();
                        let bulk = |p: Option<(usize, usize)>| p.map(|(a, b)| frame.slice(a..b));
                        Reply::Bulks(parts.into_iter().map(bulk).collect())
                    }
                });
            }
            self.fill().await?;
        }
    }

    /// The `+OK` of a command sent before subscribing.
    async fn simple_reply(&mut self) -> Result<(), String> {
        loop {
            if let Some(end) = find_crlf(&self.buf, 0) {
                let line = self.buf.split_to(end + 2);
                return match line.first() {
                    Some(b'+') => Ok(()),
                    _ => Err(String::from_utf8_lossy(&line[1..end]).into_owned()),
                };
            }
            self.fill().await?;
        }
    }

    /// One push from the buffer if it holds a whole one.
    fn parse(&mut self) -> Result<Option<Push>, String> {
        let Some((len, shape)) = frame(&self.buf, self.max_bulk)? else {
            return Ok(None);
        };
        if shape == Shape::Oversize {
            self.skip = len;
            return Ok(None);
        }
        let mut frame = self.buf.split_to(len);
        Ok(Some(match shape {
            Shape::Message { channel, payload } => Push::Message(Message {
                frame,
                channel,
                payload,
            }),
            Shape::Subscribed => Push::Subscribed,
            Shape::Unsubscribed { channel } => Push::Unsubscribed {
                channel: frame.freeze().slice(channel.0..channel.1),
            },
            Shape::Pong => Push::Pong,
            Shape::Oversize => unreachable!("skipped above"),
            Shape::Error => {
                frame.advance(1);
                let text = String::from_utf8_lossy(&frame[..frame.len() - 2]);
                Push::Refused(text.into_owned())
            }
        }))
    }
}

/// A reply to a command: what the publisher's commands answer. A single bulk string is a
/// one-element `Bulks`; a null is `None`.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Integer(i64),
    Status,
    Error(String),
    Bulks(Vec<Option<Bytes>>),
}

#[derive(Debug, PartialEq, Eq)]
enum ReplyShape {
    Integer(i64),
    Status,
    Error((usize, usize)),
    Bulks(Vec<Option<(usize, usize)>>),
}

/// A bulk string at `at`: its byte range (`None` for a null) and where the next element
/// starts; `None` while it has not all arrived.
#[allow(clippy::type_complexity)]
fn bulk(buf: &[u8], at: usize) -> Result<Option<(Option<(usize, usize)>, usize)>, String> {
    let Some((len, start)) = number(buf, at + 1)? else {
        return Ok(None);
    };
    if len < 0 {
        return Ok(Some((None, start)));
    }
    let end = start + len as usize;
    Ok((buf.len() >= end + 2).then_some((Some((start, end)), end + 2)))
}

/// The length and shape of the whole reply at the start of `buf`, or `None` if it has not all
/// arrived.
fn reply_frame(buf: &[u8], max: usize) -> Result<Option<(usize, ReplyShape)>, String> {
    let Some(first) = buf.first() else {
        return Ok(None);
    };
    let line = |shape: fn((usize, usize)) -> ReplyShape| {
        Ok(find_crlf(buf, 1).map(|end| (end + 2, shape((1, end)))))
    };
    match first {
        b'+' => line(|_| ReplyShape::Status),
        b'-' => line(ReplyShape::Error),
        b':' => Ok(number(buf, 1)?.map(|(n, next)| (next, ReplyShape::Integer(n)))),
        b'$' => Ok(bulk(buf, 0)?.map(|(part, next)| (next, ReplyShape::Bulks(vec![part])))),
        b'*' => {
            let Some((count, mut at)) = number(buf, 1)? else {
                return Ok(None);
            };
            let mut parts = Vec::with_capacity(count.clamp(0, 1024) as usize);
            for _ in 0..count.max(0) {
                if at > max {
                    return Err(format!("a reply over {max} bytes"));
                }
                match buf.get(at) {
                    None => return Ok(None),
                    Some(b'$') => {
                        let Some((part, next)) = bulk(buf, at)? else {
                            return Ok(None);
                        };
                        parts.push(part);
                        at = next;
                    }
                    Some(other) => {
                        return Err(format!(
                            "unexpected RESP type {:?} in a reply",
                            *other as char
                        ))
                    }
                }
            }
            Ok(Some((at, ReplyShape::Bulks(parts))))
        }
        other => Err(format!("unexpected RESP type {:?}", *other as char)),
    }
}

/// What a whole push in the buffer is, with the byte ranges of a message's parts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Message {
        channel: (usize, usize),
        payload: (usize, usize),
    },
    Subscribed,
    Unsubscribed {
        channel: (usize, usize),
    },
    Pong,
    Error,
    /// A message whose payload is over the limit: its whole length, to skip.
    Oversize,
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

/// A decimal number running from `at` to the next CRLF; returns it and where the next line
/// starts. `None` while the line is incomplete.
fn number(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, String> {
    let Some(end) = find_crlf(buf, at) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[at..end]).map_err(|_| "not a number".to_string())?;
    let n = text
        .parse()
        .map_err(|_| format!("not a number: {text:?}"))?;
    Ok(Some((n, end + 2)))
}

/// The length and shape of the whole push at the start of `buf`, or `None` if it has not all
/// arrived. A subscriber is sent arrays of bulk strings and integers, `-errors`, and — while it
/// holds no subscription — a plain `+PONG`.
pub(crate) fn frame(buf: &[u8], max_bulk: usize) -> Result<Option<(usize, Shape)>, String> {
    let Some(first) = buf.first() else {
        return Ok(None);
    };
    match first {
        b'-' => Ok(find_crlf(buf, 1).map(|end| (end + 2, Shape::Error))),
        b'+' => match find_crlf(buf, 1) {
            None => Ok(None),
            Some(end) if &buf[1..end] == b"PONG" => Ok(Some((end + 2, Shape::Pong))),
            Some(end) => Err(format!(
                "unexpected reply {:?}",
                String::from_utf8_lossy(&buf[..end])
            )),
        },
        b'*' => {
            let Some((count, mut at)) = number(buf, 1)? else {
                return Ok(None);
            };
            if !(1..=4).contains(&count) {
                return Err(format!("unexpected push of {count} elements"));
            }
            let mut parts: Vec<(usize, usize)> = Vec::with_capacity(count as usize);
            for _ in 0..count {
                match buf.get(at) {
                    None => return Ok(None),
                    Some(b'$') => {
                        let Some((len, start)) = number(buf, at + 1)? else {
                            return Ok(None);
                        };
                        let len = usize::try_from(len).map_err(|_| "null bulk string")?;
                        // Only a message's payload may be large: skip it, whole, as it comes.
                        if len > max_bulk {
                            let is_payload = parts.len() == 2
                                && count == 3
                                && matches!(&buf[parts[0].0..parts[0].1], b"message" | b"smessage");
                            return match is_payload {
                                true => Ok(Some((start + len + 2, Shape::Oversize))),
                                false => Err(format!("a {len}-byte field is over the limit")),
                            };
                        }
                        if buf.len() < start + len + 2 {
                            return Ok(None);
                        }
                        parts.push((start, start + len));
                        at = start + len + 2;
                    }
                    Some(b':') => {
                        let Some((_, next)) = number(buf, at + 1)? else {
                            return Ok(None);
                        };
                        parts.push((at, at));
                        at = next;
                    }
                    Some(other) => {
                        return Err(format!("unexpected RESP type {:?}", *other as char))
                    }
                }
            }
            let kind = &buf[parts[0].0..parts[0].1];
            let shape = match (kind, parts.len()) {
                (b"message" | b"smessage", 3) => Shape::Message {
                    channel: parts[1],
                    payload: parts[2],
                },
                (b"subscribe" | b"ssubscribe", 3) => Shape::Subscribed,
                (b"unsubscribe" | b"sunsubscribe", 3) => Shape::Unsubscribed { channel: parts[1] },
                (b"pong", _) => Shape::Pong,
                _ => {
                    let kind = String::from_utf8_lossy(kind);
                    return Err(format!("unexpected push {kind:?}"));
                }
            };
            Ok(Some((at, shape)))
        }
        other => Err(format!("unexpected RESP type {:?}", *other as char)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_recognised_only_when_whole() {
        let cases: [(&[u8], ReplyShape); 5] = [
            (b":42\r\n", ReplyShape::Integer(42)),
            (b"+OK\r\n", ReplyShape::Status),
            (b"-NOSCRIPT x\r\n", ReplyShape::Error((1, 11))),
            (b"$3\r\nabc\r\n", ReplyShape::Bulks(vec![Some((4, 7))])),
            (
                b"*3\r\n$1\r\na\r\n$-1\r\n$0\r\n\r\n",
                ReplyShape::Bulks(vec![Some((8, 9)), None, Some((20, 20))]),
            ),
        ];
        for (bytes, shape) in cases {
            assert_eq!(reply_frame(bytes, 100), Ok(Some((bytes.len(), shape))));
            for cut in 0..bytes.len() {
                assert_eq!(reply_frame(&bytes[..cut], 100), Ok(None), "{cut}");
            }
        }
        assert!(reply_frame(b"*1\r\n*1\r\n:1\r\n", 100).is_err());
        assert!(reply_frame(b"*2\r\n$3\r\nabc\r\n$1\r\na\r\n", 5).is_err());
    }

    #[test]
    fn pushes_are_recognised_only_when_whole() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$4\r\nfz:a\r\n$5\r\nhello\r\n";
        for cut in 0..msg.len() {
            assert_eq!(frame(&msg[..cut], 100), Ok(None), "{cut}");
        }
        let (len, shape) = frame(msg, 100).unwrap().unwrap();
        assert_eq!(len, msg.len());
        let Shape::Message { channel, payload } = shape else {
            panic!("{shape:?}");
        };
        assert_eq!(&msg[channel.0..channel.1], b"fz:a");
        assert_eq!(&msg[payload.0..payload.1], b"hello");
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n";
        assert_eq!(frame(sub, 100), Ok(Some((sub.len(), Shape::Subscribed))));
        let smsg = b"*3\r\n$8\r\nsmessage\r\n$1\r\na\r\n$2\r\nhi\r\n";
        assert!(matches!(
            frame(smsg, 100),
            Ok(Some((_, Shape::Message { .. })))
        ));
        let gone = b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n";
        let channel = (27, 28);
        assert_eq!(&gone[channel.0..channel.1], b"a");
        assert_eq!(
            frame(gone, 100),
            Ok(Some((gone.len(), Shape::Unsubscribed { channel })))
        );
        let bare = b"+PONG\r\n";
        assert_eq!(frame(bare, 100), Ok(Some((bare.len(), Shape::Pong))));
        let pong = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        assert_eq!(frame(pong, 100), Ok(Some((pong.len(), Shape::Pong))));
        let err = b"-ERR nope\r\n";
        assert_eq!(frame(err, 100), Ok(Some((err.len(), Shape::Error))));
    }

    #[test]
    fn anything_else_is_a_broken_link() {
        let oversize = b"*3\r\n$7\r\nmessage\r\n$4\r\nfz:a\r\n$500\r\n";
        assert_eq!(
            frame(oversize, 100),
            Ok(Some((oversize.len() + 502, Shape::Oversize)))
        );
        assert!(frame(b"*3\r\n$7\r\nmessage\r\n$400\r\n", 100).is_err());
        assert!(frame(b"*9\r\n", 100).is_err());
        assert!(frame(b"+OK\r\n", 100).is_err());
        let big = b"*3\r\n$8\r\nsmessage\r\n$1\r\na\r\n$500\r\n";
        assert_eq!(
            frame(big, 100),
            Ok(Some((big.len() + 502, Shape::Oversize)))
        );
        assert!(frame(b"*1\r\n$5\r\nhello\r\n", 100).is_err());
        assert!(frame(b"*2\r\n$-1\r\n", 100).is_err());
        assert!(frame(b"*x\r\n", 100).is_err());
    }

    #[test]
    fn commands_are_encoded_as_resp_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"PUBLISH", b"fz:a", b"hi"]);
        encode(&mut out, &[b"PING"]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nfz:a\r\n$2\r\nhi\r\n*1\r\n$4\r\nPING\r\n"
        );
    }

    #[tokio::test]
    async fn integer_replies_and_errors_are_read_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b":2\r\n:0\r\n-ERR wrong type\r\n+OK\r\n")
                .await
                .unwrap();
            s
        });
        let info: ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(format!("redis://127.0.0.1:{port}"))
                .unwrap();
        let (mut reader, _writer) = connect(&info, None, 0).await.unwrap();
        assert_eq!(reader.integer().await, Ok(2));
        assert_eq!(reader.integer().await, Ok(0));
        assert_eq!(reader.integer().await, Err("Redis: ERR wrong type".into()));
        assert!(reader.integer().await.is_err(), "+OK is not an integer");
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn reads_what_a_real_redis_sends() {
        // A fake Redis: it answers nothing, just sends a burst of pushes in odd-sized pieces.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            all.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
            let big = "b".repeat(5000);
            all.extend_from_slice(
                format!("*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5000\r\n{big}\r\n").as_bytes(),
            );
            for i in 0..100 {
                let p = format!("payload {i}");
                all.extend_from_slice(
                    format!("*3\r\n$7\r\nmessage\r\n$1\r\na\r\n${}\r\n{p}\r\n", p.len()).as_bytes(),
                );
            }
            for piece in all.chunks(7) {
                s.write_all(piece).await.unwrap();
            }
            s
        });
        let info: ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(format!("redis://127.0.0.1:{port}"))
                .unwrap();
        let (mut reader, _writer) = connect(&info, None, 1024).await.unwrap();
        assert_eq!(reader.next().await.unwrap(), Push::Subscribed);
        assert_eq!(reader.next().await.unwrap(), Push::Oversize);
        for i in 0..100 {
            let Push::Message(message) = reader.next().await.unwrap() else {
                panic!("a message");
            };
            assert_eq!(message.channel(), b"a");
            assert_eq!(message.payload(), format!("payload {i}").as_bytes());
        }
        drop(server.await.unwrap());
        assert!(reader.next().await.is_err());
    }
}
