//! Token buckets for the limits a public endpoint needs (PROTOCOL section 13): client frames
//! per connection (`--client-rate`) and new connections per process (`--accept-rate`).

use std::time::{Duration, Instant};

/// How long a connection may stay over `--client-rate` before it is closed (1008).
pub const OVER_FOR: Duration = Duration::from_secs(10);

/// `per_second` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Bucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: Instant::now(),
        }
    }

    /// Adds what was earned since the last call; returns the tokens there are now.
    fn refill(&mut self) -> f64 {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        self.tokens
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        if self.refill() >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

/// One connection's client frames under `--client-rate N` (burst 2N), and since when it has
/// been over: from its first frame refused until it has saved a second's budget again (a
/// client sending faster than N a second never does, though some of its frames get through).
#[derive(Debug)]
pub struct ClientRate {
    bucket: Bucket,
    over_since: Option<Instant>,
}

/// What to do with a client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Take,
    /// Dropped, and the client told.
    Refuse,
    /// Over the rate for [`OVER_FOR`]: the connection is closed.
    Close,
}

impl ClientRate {
    pub fn new(per_second: u32) -> Self {
        ClientRate {
            bucket: Bucket::new(per_second, per_second.saturating_mul(2)),
            over_since: None,
        }
    }

    pub fn judge(&mut self) -> Verdict {
        if self.bucket.refill() >= self.bucket.per_second {
            self.over_since = None;
        }
        if self.bucket.take() {
            return Verdict::Take;
        }
        let since = *self.over_since.get_or_insert_with(Instant::now);
        match since.elapsed() >= OVER_FOR {
            true => Verdict::Close,
            false => Verdict::Refuse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let mut b = Bucket::new(1000, 4);
        assert!((0..4).all(|_| b.take()));
        assert!(!b.take());
        std::thread::sleep(Duration::from_millis(3));
        assert!(b.take(), "earned back at 1,000 a second");
    }

    #[test]
    fn a_client_over_its_rate_is_refused_until_it_saved_a_second_again() {
        let mut r = ClientRate::new(1);
        assert_eq!(r.judge(), Verdict::Take);
        assert_eq!(r.judge(), Verdict::Take);
        assert_eq!(r.judge(), Verdict::Refuse);
        assert!(r.over_since.is_some());
        // A frame let through now and then does not make it calm.
        r.bucket.tokens = 1.0;
        r.bucket.per_second = 2.0;
        assert_eq!(r.judge(), Verdict::Take);
        assert!(r.over_since.is_some());
        r.over_since = Some(Instant::now() - OVER_FOR);
        assert_eq!(r.judge(), Verdict::Close);
        // A second's budget saved: calm again.
        r.bucket.tokens = 2.0;
        assert_eq!(r.judge(), Verdict::Take);
        assert!(r.over_since.is_none());
    }
}
