//! Fossil deltas (PROTOCOL section 10): a channel message sent as the change from the message
//! before it, to the subscriptions that asked (`"delta":"fossil"`). A delta is made once per
//! publication, against the previous publication, by the first recipient that can take it, and
//! shared by all (see [`Frame::delta`]); it is the JSON text of message N−1 turned into the
//! JSON text of message N, as a JSON string.

use crate::bus::Delivery;
use crate::protocol::{Frame, Target};

/// Whether `prev` is the message just before `next` in the same epoch of the same channel.
pub fn follows(prev: &Delivery, next: &Delivery) -> bool {
    match (&next.target, &prev.position, &next.position) {
        (Target::Channel(_), Some(p), Some(q)) => {
            prev.target == next.target && p.generation == q.generation && p.offset + 1 == q.offset
        }
        _ => false,
    }
}

/// `next` as a delta against `prev` (see [`follows`]): `None` when `prev` is not its base, or
/// the delta frame would not be smaller than the whole one.
pub fn between(prev: &Delivery, next: &Delivery) -> Option<Frame> {
    let (Target::Channel(channel), Some(q)) = (&next.target, &next.position) else {
        return None;
    };
    if !follows(prev, next) {
        return None;
    }
    let before = prev.frame.message_payload(&prev.target)?;
    let after = next.frame.message_payload(&next.target)?;
    let delta = fossil_delta::delta(after, before);
    if delta.len() >= after.len() {
        return None;
    }
    // A delta's literal runs may split a character: only one that is text can be a string.
    let text = std::str::from_utf8(&delta).ok()?;
    let quoted = serde_json::to_string(text).ok()?;
    let frame = Frame::message_delta(channel, q.offset, &quoted);
    (frame.payload().len() < next.frame.payload().len()).then_some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Position;
    use crate::protocol::Channel;

    fn message(channel: &str, generation: u64, offset: u64, payload: &str) -> Delivery {
        let target = Target::Channel(Channel::new(channel).unwrap());
        Delivery {
            frame: Frame::message_at(&target, payload.as_bytes(), offset),
            target,
            position: Some(Position {
                epoch: "e".into(),
                generation,
                offset,
            }),
        }
    }

    fn document(price: u32) -> String {
        let rows: Vec<String> = (0..40)
            .map(|i| format!(r#"{{"id":{i},"name":"row {i}","ok":true}}"#))
            .collect();
        format!(r#"{{"price":{price},"rows":[{}]}}"#, rows.join(","))
    }

    #[test]
    fn a_delta_turns_the_previous_message_into_this_one() {
        let (a, b) = (document(100), document(101));
        let frame = between(&message("c", 1, 4, &a), &message("c", 1, 5, &b)).unwrap();
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["offset"], 5);
        assert_eq!(v["delta"], true);
        let delta = v["message"].as_str().unwrap();
        assert!(delta.len() < 40, "{delta}");
        let applied = fossil_delta::apply(a.as_bytes(), delta.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(applied).unwrap(), b);
    }

    #[test]
    fn only_the_message_just_before_in_the_same_epoch_and_channel_is_a_base() {
        let (a, b) = (document(1), document(2));
        let next = message("c", 1, 5, &b);
        assert!(between(&message("c", 1, 3, &a), &next).is_none());
        assert!(between(&message("c", 2, 4, &a), &next).is_none());
        assert!(between(&message("d", 1, 4, &a), &next).is_none());
    }

    #[test]
    fn a_delta_that_is_not_smaller_is_not_made() {
        let prev = message("c", 1, 1, r#"{"a":"xxxxxxxxxxxxxxxx"}"#);
        let next = message("c", 1, 2, r#"[1,2,3]"#);
        assert!(between(&prev, &next).is_none());
    }
}
