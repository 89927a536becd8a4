//! Server-Sent Events as a transport (PROTOCOL section 12): each frame a WebSocket would carry
//! is one event, `data:` the same JSON, and events that move the stream carry an `id:` that
//! says where it stands on every topic, so the `Last-Event-ID` a browser sends when it
//! reconnects resumes all of them, on any machine.
//!
//! The `data:` form of a message is made once per publication and shared ([`Frame::event`]);
//! only the `id:` line is the connection's own. The id is read from the frames themselves, as
//! a client reads them: `connected`/`subscribed` give a topic's epoch and offset, each message
//! of a topic with history its next offset, `unsubscribed` ends a channel.
//!
//! The id: topics separated by spaces, the user's own stream `u<offset>.<epoch>`, each channel
//! `c<offset>.<epoch>.<name>` (epochs are hex, names have no space); a topic whose position
//! the server could not say (Redis unreachable) is `u` or `c.<name>`. On a resume a topic with
//! a position resumes from it, one without is not recovered (`recovered:false` where it has
//! history), and one the id does not name starts afresh: its stream had not opened yet.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use crate::frame::{Frame, Kind};
use crate::protocol::{Channel, Since};

/// Where one topic stands for this client: it has everything up to `offset` of `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mark {
    offset: u64,
    epoch: Box<str>,
}

impl Mark {
    fn of(since: &Since) -> Mark {
        Mark {
            offset: since.offset,
            epoch: since.epoch.as_str().into(),
        }
    }
}

/// One connection's position on each of its topics, as its events told it: absent until the
/// topic opened, then a mark, or `None` while the server could not say where it stands.
#[derive(Debug)]
pub struct Positions {
    /// Off on a server without history: no topic can resume, so no event carries an id.
    ids: bool,
    /// The user's own stream (direct messages).
    direct: Option<Option<Mark>>,
    /// Each open channel, in the order they were subscribed.
    channels: Vec<(Channel, Option<Mark>)>,
}

/// Where a reconnecting client stood, from its `Last-Event-ID`: each topic as a resume point
/// (`None`: a fresh start; `Some(None)`: not recovered; else where it resumes from).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resume {
    pub direct: Option<Option<Since>>,
    channels: Vec<(Channel, Option<Since>)>,
}

impl Resume {
    /// Reads an id this module wrote; `None` for one it did not (every topic then starts as
    /// not recovered).
    pub fn parse(id: &str) -> Option<Resume> {
        let mut resume = Resume::default();
        for part in id.split(' ').filter(|p| !p.is_empty()) {
            let (kind, rest) = part.split_at_checked(1)?;
            let (since, name) = match (kind, rest) {
                ("u", "") => (None, None),
                ("c", rest) if rest.starts_with('.') => (None, Some(&rest[1..])),
                ("u" | "c", rest) => {
                    let (offset, rest) = rest.split_once('.')?;
                    let offset = Some(offset)
                        .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))?
                        .parse()
                        .ok()?;
                    let (epoch, name) = match kind {
                        "u" => (rest, None),
                        _ => rest.split_once('.').map(|(e, n)| (e, Some(n)))?,
                    };
                    if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return None;
                    }
                    let epoch = epoch.to_string();
                    (Some(Since { offset, epoch }), name)
                }
                _ => return None,
            };
            match name {
                None if kind == "u" => resume.direct = Some(since),
                None => return None,
                Some(name) => {
                    let channel = Channel::new(name).ok()?;
                    // A channel named twice resumes from its first place.
                    if resume.channels.iter().all(|(c, _)| *c != channel) {
                        resume.channels.push((channel, since));
                    }
                }
            }
        }
        Some(resume)
    }

    /// Where every topic stands when the client's id could not be read: nowhere known.
    pub fn unknown(channels: &[Channel]) -> Resume {
        Resume {
            direct: Some(None),
            channels: channels.iter().map(|c| (c.clone(), None)).collect(),
        }
    }

    /// Forgets the channels not among `channels` (the stream's own, from its URL).
    pub fn keep(&mut self, channels: &[Channel]) {
        self.channels.retain(|(c, _)| channels.contains(c));
    }

    /// Where `channel` resumes from.
    pub fn channel(&self, channel: &Channel) -> Option<Option<Since>> {
        self.channels
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, s)| s.clone())
    }
}

impl Default for Positions {
    /// A new stream.
    fn default() -> Positions {
        Positions::resuming(&Resume::default())
    }
}

impl Positions {
    /// A stream on a server without history.
    pub fn without_ids() -> Positions {
        Positions {
            ids: false,
            ..Positions::default()
        }
    }

    /// A stream resuming from `resume`: its topics stand where the client stood until the
    /// frames say otherwise. A recovered topic's `connected`/`subscribed` gives where the
    /// topic stands *after* the missed messages that follow it, so the stream moves only with
    /// each of them: an id never promises what has not been sent.
    pub fn resuming(resume: &Resume) -> Positions {
        Positions {
            ids: true,
            direct: resume.direct.as_ref().map(|s| s.as_ref().map(Mark::of)),
            channels: resume
                .channels
                .iter()
                .map(|(c, s)| (c.clone(), s.as_ref().map(Mark::of)))
                .collect(),
        }
    }

    /// The bytes of `frame` as an event: text as a `data:` event (with an `id:` first when it
    /// moves the stream), a ping as a keep-alive comment, a close as a `close` event whose data
    /// has the code and reason a WebSocket would have been closed with.
    pub fn event(&mut self, frame: &Frame) -> Bytes {
        match frame.kind() {
            Kind::Text => {
                let Some(data) = frame.event() else {
                    return Bytes::new();
                };
                if !self.ids || !self.moved_by(frame.payload()) {
                    return data.clone();
                }
                let id = self.id();
                let mut event = BytesMut::with_capacity(id.len() + 5 + data.len());
                event.put_slice(b"id: ");
                event.put_slice(id.as_bytes());
                event.put_u8(b'\n');
                event.put_slice(data);
                event.freeze()
            }
            Kind::Ping => Bytes::from_static(b":\n\n"),
            Kind::Close => {
                let payload = frame.payload();
                let code = payload
                    .get(..2)
                    .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                let data = serde_json::json!({ "code": code, "reason": reason });
                Bytes::from(format!("event: close\ndata: {data}\n\n"))
            }
            Kind::Other => Bytes::from_static(b":\n\n"),
        }
    }

    /// The id of where the stream stands now.
    fn id(&self) -> String {
        use std::fmt::Write;
        let mut id = String::new();
        match &self.direct {
            Some(Some(m)) => {
                let _ = write!(id, "u{}.{}", m.offset, m.epoch);
            }
            Some(None) => id.push('u'),
            None => {}
        }
        for (channel, m) in &self.channels {
            if !id.is_empty() {
                id.push(' ');
            }
            let _ = match m {
                Some(m) => write!(id, "c{}.{}.{}", m.offset, m.epoch, channel.as_str()),
                None => write!(id, "c.{}", channel.as_str()),
            };
        }
        id
    }

    /// Takes in what a frame says of the stream's position; whether it moved it.
    fn moved_by(&mut self, payload: &[u8]) -> bool {
        if let Some(rest) = payload.strip_prefix(br#"{"type":"message","#) {
            return self.message(rest);
        }
        let opening = [
            br#"{"type":"connected""#.as_slice(),
            br#"{"type":"subscribed""#,
            br#"{"type":"unsubscribed""#,
        ];
        if !opening.iter().any(|p| payload.starts_with(p)) {
            return false;
        }
        #[derive(Deserialize)]
        struct Opening<'a> {
            r#type: &'a str,
            channel: Option<&'a str>,
            offset: Option<u64>,
            epoch: Option<&'a str>,
            recovered: Option<bool>,
        }
        let Ok(o) = serde_json::from_slice::<Opening>(payload) else {
            return false;
        };
        let mark = o.offset.zip(o.epoch).map(|(offset, epoch)| Mark {
            offset,
            epoch: epoch.into(),
        });
        let channel = o.channel.and_then(|c| Channel::new(c).ok());
        // Recovered: the missed messages follow, each moving the stream.
        let had = |m: Option<&Mark>| {
            o.recovered == Some(true)
                && m.zip(mark.as_ref())
                    .is_some_and(|(m, new)| m.epoch == new.epoch)
        };
        match (o.r#type, channel) {
            ("connected", _) if had(self.direct.as_ref().and_then(Option::as_ref)) => false,
            ("connected", _) => {
                let moved = self.direct.as_ref() != Some(&mark);
                self.direct = Some(mark);
                moved
            }
            ("subscribed", Some(c)) if had(self.mark(&c)) => false,
            ("subscribed", Some(c)) => self.set(c, mark),
            ("unsubscribed", Some(c)) => self.forget(&c),
            _ => false,
        }
    }

    /// A message: moves its topic's offset when it has one (a topic with history).
    fn message(&mut self, rest: &[u8]) -> bool {
        let (mark, rest) = match rest.strip_prefix(br#""channel":""#) {
            Some(rest) => {
                let Some(end) = rest.iter().position(|&b| b == b'"') else {
                    return false;
                };
                let name = &rest[..end];
                let Some((_, Some(mark))) = self
                    .channels
                    .iter_mut()
                    .find(|(c, _)| c.as_str().as_bytes() == name)
                else {
                    return false;
                };
                (mark, rest[end..].strip_prefix(b"\",").unwrap_or_default())
            }
            None => match &mut self.direct {
                Some(Some(mark)) => (mark, rest),
                _ => return false,
            },
        };
        let Some(digits) = rest.strip_prefix(br#""offset":"#) else {
            return false;
        };
        let end = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        let offset = std::str::from_utf8(&digits[..end])
            .ok()
            .and_then(|d| d.parse().ok());
        match offset {
            Some(offset) if offset != mark.offset => {
                mark.offset = offset;
                true
            }
            _ => false,
        }
    }

    fn mark(&self, channel: &Channel) -> Option<&Mark> {
        self.channels
            .iter()
            .find(|(c, _)| c == channel)
            .and_then(|(_, m)| m.as_ref())
    }

    /// Sets where `channel` stands (`None`: open, its position unknown); whether that moved
    /// the stream.
    fn set(&mut self, channel: Channel, mark: Option<Mark>) -> bool {
        match self.channels.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, m)) if *m == mark => false,
            Some((_, m)) => {
                *m = mark;
                true
            }
            None => {
                self.channels.push((channel, mark));
                true
            }
        }
    }

    /// `channel` ended; whether that moved the stream.
    fn forget(&mut self, channel: &Channel) -> bool {
        let before = self.channels.len();
        self.channels.retain(|(c, _)| c != channel);
        self.channels.len() != before
    }
}

/// The response head of an event stream, written on the socket before its first event, and the
/// `retry:` hint: a reconnect delay of its own for each stream (1 to 3 s), so a server's
/// clients do not all come back in the same instant. `origin`: echoed for a browser's
/// cross-origin `EventSource` (it passed the origin check).
pub fn head(origin: Option<&str>) -> Bytes {
    let cors = origin.map_or(String::new(), |o| {
        format!("access-control-allow-origin: {o}\r\nvary: origin\r\n")
    });
    let retry = rand::random_range(1000..=3000);
    Bytes::from(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\nconnection: close\r\n{cors}\r\nretry: {retry}\n\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Target;

    fn text(events: &mut Positions, frame: &Frame) -> String {
        String::from_utf8(events.event(frame).to_vec()).unwrap()
    }

    #[test]
    fn each_event_that_moves_the_stream_carries_where_every_topic_stands() {
        let mut p = Positions::default();
        let news = Channel::new("news.a:b").unwrap();
        let user = Target::User(crate::protocol::UserId::new("u").unwrap());
        assert_eq!(
            text(&mut p, &Frame::connected("e1", 4, None)),
            "id: u4.e1\ndata: {\"type\":\"connected\",\"offset\":4,\"epoch\":\"e1\"}\n\n"
        );
        let subscribed = text(&mut p, &Frame::subscribed_at(&news, "f2", 9, Some(true)));
        assert!(subscribed.starts_with("id: u4.e1 c9.f2.news.a:b\ndata: {"));
        let direct = text(&mut p, &Frame::message_at(&user, b"{}", 5));
        assert!(direct.starts_with("id: u5.e1 c9.f2.news.a:b\n"), "{direct}");
        let on_news = Target::Channel(news.clone());
        let message = text(&mut p, &Frame::message_at(&on_news, b"[1]", 10));
        assert!(message.starts_with("id: u5.e1 c10.f2.news.a:b\ndata: {\"type\":\"message\""));
        // What does not move the stream keeps the browser's last id.
        assert!(text(&mut p, &Frame::pong()).starts_with("data: "));
        let plain = Channel::new("plain").unwrap();
        let unpositioned = text(&mut p, &Frame::subscribed(&plain));
        assert!(unpositioned.starts_with("id: u5.e1 c10.f2.news.a:b c.plain\n"));
        let raw = serde_json::value::RawValue::from_string("1".into()).unwrap();
        assert!(text(&mut p, &Frame::channel(&plain, &raw)).starts_with("data: "));
        assert!(text(&mut p, &Frame::message_at(&on_news, b"[1]", 10)).starts_with("data: "));
        let unsubscribed = text(&mut p, &Frame::unsubscribed(&news));
        assert!(unsubscribed.starts_with("id: u5.e1 c.plain\n"));
        // A server without history sends no ids: there is nothing to resume.
        let mut none = Positions::without_ids();
        assert!(text(&mut none, &Frame::subscribed(&plain)).starts_with("data: "));
        assert_eq!(text(&mut p, &Frame::ping()), ":\n\n");
        assert_eq!(
            text(&mut p, &Frame::close(4001, "token expired")),
            "event: close\ndata: {\"code\":4001,\"reason\":\"token expired\"}\n\n"
        );
    }

    #[test]
    fn an_id_reads_back_as_where_each_topic_resumes() {
        let mut p = Positions::default();
        let news = Channel::new("news.a:b").unwrap();
        p.event(&Frame::connected("e1", 4, None));
        p.event(&Frame::subscribed_at(&news, "f2", 9, None));
        let resume = Resume::parse(&p.id()).unwrap();
        let e1 = Since {
            offset: 4,
            epoch: "e1".into(),
        };
        assert_eq!(resume.direct, Some(Some(e1)));
        assert_eq!(resume.channel(&news).unwrap().unwrap().offset, 9);
        assert_eq!(resume.channel(&Channel::new("other").unwrap()), None);
        assert_eq!(Resume::parse(""), Some(Resume::default()));
        // Resumed: recovered openings do not move the stream, each missed message does.
        let mut p = Positions::resuming(&resume);
        let recovered = Frame::subscribed_at(&news, "f2", 11, Some(true));
        assert!(text(&mut p, &recovered).starts_with("data: "));
        let on_news = Target::Channel(news.clone());
        let missed = text(&mut p, &Frame::message_at(&on_news, b"1", 10));
        assert!(
            missed.starts_with(
                "id: u4.e1 c10.f2.news.a:b
"
            ),
            "{missed}"
        );
        let lost = text(&mut p, &Frame::connected("e9", 0, Some(false)));
        assert!(
            lost.starts_with(
                "id: u0.e9 c10.f2.news.a:b
"
            ),
            "{lost}"
        );
        for bad in [
            "x1.e",
            "u.e",
            "u1",
            "u1.",
            "c1.e",
            "c1.e.bad name",
            "u+1.e",
            "u1.e\"x",
        ] {
            assert_eq!(Resume::parse(bad), None, "{bad}");
        }
    }
}
