//! Idempotency keys (PROTOCOL section 13): a publication sent again with the same
//! `idempotencyKey` to the same target within `--idempotency-ttl` is answered as the first was
//! and delivered nowhere, so a backend may retry whatever it is unsure of. A key names a
//! publication to one target (a user, a channel, or everyone), as Centrifugo's do per channel.
//!
//! Alone, this process remembers the keys ([`Remembered`]). In a fleet, Redis does, in the same
//! step as the publication: a topic with history's append script keeps the key beside the
//! message, so a retry after a `503` whose fate was unknown finds out whether the first was
//! taken; other publications claim their key first (see the bridge).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 64;

/// Most keys one process remembers alone; past it the oldest are forgotten before their time.
const MAX_REMEMBERED: usize = 100_000;

/// An `idempotencyKey`: 1 to [`MAX_KEY_BYTES`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key(Arc<str>);

impl Key {
    /// # Errors
    /// Empty, or longer than [`MAX_KEY_BYTES`].
    pub fn new(key: &str) -> Result<Key, String> {
        match key.len() {
            1..=MAX_KEY_BYTES => Ok(Key(key.into())),
            _ => Err(format!("idempotencyKey: 1 to {MAX_KEY_BYTES} bytes")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a publication was answered: its offset and epoch with history, nothing without.
pub type Answer = Option<(u64, Arc<str>)>;

/// What a key's claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Never seen (or forgotten): publish, then [`Remembered::answer`].
    New,
    /// Published before, answered so: publish nothing.
    Repeat(Answer),
    /// Its first publication is still on its way.
    InFlight,
}

/// The keys of this process's publications, each for the TTL (alone; a fleet keeps them in
/// Redis).
pub struct Remembered {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (target, key) → when it was claimed, and the answer (`None` while the first is on
    /// its way).
    answers: HashMap<(String, Key), (Instant, Option<Answer>)>,
    /// When each was claimed, oldest first: what expires, or is forgotten when full.
    order: VecDeque<(Instant, (String, Key))>,
}

impl Remembered {
    pub fn new(ttl: Duration) -> Self {
        Remembered {
            ttl,
            inner: Mutex::default(),
        }
    }

    /// Claims `key` for a publication to `target` (its wire name).
    pub fn claim(&self, target: &str, key: &Key) -> Claim {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some((at, _)) = inner.order.front() {
            if now.duration_since(*at) < self.ttl && inner.order.len() < MAX_REMEMBERED {
                break;
            }
            let (at, old) = inner.order.pop_front().expect("checked");
            // Only that claim: a key forgotten and claimed again since is a newer one.
            if inner
                .answers
                .get(&old)
                .is_some_and(|(claimed, _)| *claimed == at)
            {
                inner.answers.remove(&old);
            }
        }
        let id = (target.to_string(), key.clone());
        match inner.answers.get(&id) {
            Some((_, Some(answer))) => Claim::Repeat(answer.clone()),
            Some((_, None)) => Claim::InFlight,
            None => {
                inner.answers.insert(id.clone(), (now, None));
                inner.order.push_back((now, id));
                Claim::New
            }
        }
    }

    /// What the publication that claimed `key` was answered.
    pub fn answer(&self, target: &str, key: &Key, answer: Answer) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, slot)) = inner.answers.get_mut(&(target.to_string(), key.clone())) {
            *slot = Some(answer);
        }
    }

    /// Forgets a claim whose publication did not happen.
    pub fn forget(&self, target: &str, key: &Key) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.answers.remove(&(target.to_string(), key.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_answered_again_until_it_expires_per_target() {
        let r = Remembered::new(Duration::from_millis(50));
        let k = Key::new("order-7").unwrap();
        assert_eq!(r.claim("c:news", &k), Claim::New);
        assert_eq!(r.claim("c:news", &k), Claim::InFlight);
        assert_eq!(r.claim("c:other", &k), Claim::New, "another target");
        r.answer("c:news", &k, Some((4, "e".into())));
        assert_eq!(r.claim("c:news", &k), Claim::Repeat(Some((4, "e".into()))));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.claim("c:news", &k), Claim::New, "expired");
        r.forget("c:news", &k);
        assert_eq!(r.claim("c:news", &k), Claim::New, "forgotten");
        r.answer("c:news", &k, None);
        // The forgotten claim's expiry does not take the newer one with it.
        let r = Remembered::new(Duration::from_millis(50));
        assert_eq!(r.claim("c:a", &k), Claim::New);
        r.forget("c:a", &k);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(r.claim("c:a", &k), Claim::New);
        r.answer("c:a", &k, None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(r.claim("c:b", &k), Claim::New);
        assert_eq!(r.claim("c:a", &k), Claim::Repeat(None));
    }

    #[test]
    fn keys_are_1_to_64_bytes() {
        assert!(Key::new("").is_err());
        assert!(Key::new(&"k".repeat(65)).is_err());
        assert!(Key::new(&"k".repeat(64)).is_ok());
    }
}
