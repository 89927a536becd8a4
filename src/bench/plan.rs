//! What a run sends and who should receive it: the arithmetic every process of a run shares.
//!
//! Message `s` (a global sequence number) goes to user `s % C` (direct, batch), to channel
//! `s % K` (channel), or to everyone (broadcast). Connection `g` is user `bench<g>` and, in the
//! channel scenario, subscribes to channel `bench:<g % K>`. So each connection knows how many
//! messages it must get, and in which order, from the total alone.

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// One message per user, through POST /message
    Direct,
    /// Direct messages through POST /batch, B per request
    Batch,
    /// Fan-out: K channels, C/K subscribers each, through POST /publish
    Channel,
    /// Every message to every connection, through POST /broadcast
    Broadcast,
}

/// What each message's padding is like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PayloadKind {
    /// A dashboard's document (sensor rows) of which each message changes a few values
    Document,
    /// Chat lines: each message's text is new
    Chat,
}

/// The padding of each message: `bytes` of text of one kind.
#[derive(Clone, Copy, Debug)]
pub struct Padding {
    pub kind: PayloadKind,
    pub bytes: usize,
}

impl Padding {
    /// The padding of message `seq`.
    pub fn of(&self, seq: u64) -> String {
        let mut pad = String::with_capacity(self.bytes + 40);
        let mut i: u64 = 0;
        while pad.len() < self.bytes {
            match self.kind {
                PayloadKind::Document => {
                    let state = if i % 7 == 3 { "alert" } else { "ok" };
                    // One row in 32 changes with each message.
                    let moved = if i % 32 == seq % 32 { seq % 100 } else { 0 };
                    let value = ((i * 37 + moved) % 1000) as f64 / 10.0;
                    pad.push_str(&format!("sensor-{i:03} {state} {value:.1} C; "));
                }
                PayloadKind::Chat => {
                    let n = seq
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .rotate_left(i as u32 * 7);
                    pad.push_str(WORDS[(n % WORDS.len() as u64) as usize]);
                    pad.push(' ');
                }
            }
            i += 1;
        }
        pad.truncate(self.bytes);
        pad
    }
}

const WORDS: [&str; 16] = [
    "hello", "anyone", "seen", "the", "release", "notes", "yet", "deploy", "looks", "fine",
    "lunch", "at", "noon", "thanks", "shipping", "today",
];

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub scenario: Scenario,
    pub connections: u64,
    pub channels: u64,
    pub batch: u64,
    /// The servers speak the Pusher protocol: channels are `bench-<n>` (Pusher's names have
    /// no `:`), published as the event `bench` through `POST /apps/{id}/events`.
    pub pusher: bool,
    /// Each message carries an idempotency key (`s<seq>`), so a failed request may be sent
    /// again to another server without delivering anything twice.
    pub keyed: bool,
}

impl Plan {
    pub fn user(g: u64) -> String {
        format!("bench{g}")
    }

    pub fn channel_of(&self, g: u64) -> Option<String> {
        (self.scenario == Scenario::Channel).then(|| self.channel(g % self.channels))
    }

    fn channel(&self, n: u64) -> String {
        match self.pusher {
            true => format!("bench-{n}"),
            false => format!("bench:{n}"),
        }
    }

    /// Messages per HTTP request.
    pub fn per_request(&self) -> u64 {
        match self.scenario {
            Scenario::Batch => self.batch,
            _ => 1,
        }
    }

    /// Messages connection `g` must receive when `published` messages (0..published) went out.
    pub fn expected(&self, g: u64, published: u64) -> u64 {
        let share = |n: u64, i: u64| published / n + u64::from(i < published % n);
        match self.scenario {
            Scenario::Direct | Scenario::Batch => share(self.connections, g),
            Scenario::Channel => share(self.channels, g % self.channels),
            Scenario::Broadcast => published,
        }
    }

    /// Path and body of the request carrying messages `first..first + per_request()`, sent by
    /// publishing connection `publisher` at `sent_at_ns`.
    pub fn request(
        &self,
        first: u64,
        publisher: usize,
        sent_at_ns: u64,
        pad: &Padding,
    ) -> (&'static str, String) {
        let message = |s: u64| {
            let pad = pad.of(s);
            format!(r#"{{"seq":{s},"p":{publisher},"t":{sent_at_ns},"pad":"{pad}"}}"#)
        };
        let key = |s: u64| match self.keyed {
            true => format!(r#","idempotencyKey":"s{s}""#),
            false => String::new(),
        };
        let to_user = |s: u64| {
            format!(
                r#"{{"userId":"{}","message":{}{}}}"#,
                Self::user(s % self.connections),
                message(s),
                key(s)
            )
        };
        match self.scenario {
            Scenario::Direct => ("/message", to_user(first)),
            Scenario::Batch => {
                let items: Vec<String> = (first..first + self.batch).map(to_user).collect();
                ("/batch", format!("[{}]", items.join(",")))
            }
            Scenario::Channel if self.pusher => (
                "/events",
                serde_json::json!({
                    "name": "bench",
                    "channel": self.channel(first % self.channels),
                    "data": message(first),
                })
                .to_string(),
            ),
            Scenario::Channel => (
                "/publish",
                format!(
                    r#"{{"channel":"{}","message":{}{}}}"#,
                    self.channel(first % self.channels),
                    message(first),
                    key(first)
                ),
            ),
            Scenario::Broadcast => (
                "/broadcast",
                format!(r#"{{"message":{}{}}}"#, message(first), key(first)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(scenario: Scenario) -> Plan {
        Plan {
            scenario,
            connections: 10,
            channels: 3,
            batch: 4,
            pusher: false,
            keyed: true,
        }
    }

    #[test]
    fn expectations_add_up() {
        for (scenario, per_message) in [
            (Scenario::Direct, 1),
            (Scenario::Batch, 1),
            (Scenario::Channel, 10 / 3),
            (Scenario::Broadcast, 10),
        ] {
            let p = plan(scenario);
            let total: u64 = (0..10).map(|g| p.expected(g, 99)).sum();
            if scenario == Scenario::Channel {
                // 4 + 3 + 3 subscribers on channels 0, 1, 2; 33 messages each.
                assert_eq!(total, 33 * 10);
            } else {
                assert_eq!(total, 99 * per_message, "{scenario:?}");
            }
        }
    }

    #[test]
    fn requests_are_valid_json() {
        for s in [
            Scenario::Direct,
            Scenario::Batch,
            Scenario::Channel,
            Scenario::Broadcast,
        ] {
            for kind in [PayloadKind::Document, PayloadKind::Chat] {
                let pad = Padding { kind, bytes: 300 };
                let (_, body) = plan(s).request(8, 2, 123, &pad);
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert!(body.contains(r#""seq":8"#), "{v}");
            }
        }
    }

    #[test]
    fn a_document_changes_a_little_per_message_and_a_chat_line_all_over() {
        let same = |kind, a, b| {
            let pad = Padding { kind, bytes: 2000 };
            let (a, b) = (pad.of(a), pad.of(b));
            assert_eq!(a.len(), 2000);
            a.bytes().zip(b.bytes()).filter(|(x, y)| x == y).count()
        };
        assert!(same(PayloadKind::Document, 1, 2) > 1900);
        assert!(same(PayloadKind::Chat, 1, 2) < 1000);
    }
}
