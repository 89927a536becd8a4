//! The fleet's webhooks in Redis ([`crate::webhooks::Store`]): every machine adds the events
//! it made to one stream (ids `<n>-0`, n rising by one, so a cursor is a number and a gap
//! says how many were trimmed away), and the machine holding the lease delivers them, a
//! cursor per URL kept in Redis, so each event is sent once for the fleet and a machine's
//! death hands the delivery to another within [`LEASE`]. All in the registry's slot, on its
//! connection.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::lease;
use super::registry::Registry;
use crate::webhooks::{Entry, Store, Webhooks};

/// How long the deliverer's lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the lease is renewed, or asked for.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// Events the stream keeps (about: trimmed lazily).
const MAX_LEN: u64 = 100_000;
/// Most events moved from the outbox per call.
const PER_ADD: usize = 500;

/// The number of the stream's last event (0 if none).
const TOP: &str = "
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local n = 0
if #top > 0 then n = tonumber(string.match(top[1][1], '^(%d+)')) end
";

fn add_script() -> String {
    // KEYS: stream. ARGV: max length, then (time, JSON) of each event.
    format!(
        "{TOP}for i = 2, #ARGV, 2 do\n  n = n + 1\n  \
         redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], string.format('%d-0', n), 't', ARGV[i], 'e', ARGV[i+1])\n\
         end\nreturn n"
    )
}

fn read_script() -> String {
    // KEYS: stream. ARGV: after, count. Returns the last number, then (n, time, JSON) of each
    // event after `after`.
    format!(
        "{TOP}local out = {{tostring(n)}}\nlocal after = tonumber(ARGV[1])\n\
         if n <= after then return out end\n\
         local rows = redis.call('XRANGE', KEYS[1], string.format('%d-0', after + 1), '+', 'COUNT', tonumber(ARGV[2]))\n\
         for _, row in ipairs(rows) do\n  local f = {{}}\n  \
         for i = 1, #row[2], 2 do f[row[2][i]] = row[2][i + 1] end\n  \
         out[#out + 1] = string.match(row[1], '^(%d+)')\n  out[#out + 1] = f['t'] or '0'\n  out[#out + 1] = f['e'] or '{{}}'\n\
         end\nreturn out"
    )
}

/// KEYS: stream, then each URL's cursor. Sets the cursors not set yet to the stream's end.
fn start_script() -> String {
    format!("{TOP}for i = 2, #KEYS do redis.call('SET', KEYS[i], n, 'NX') end\nreturn n")
}

const ADVANCE: &str = "
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1";

pub struct Fleet {
    hooks: Arc<Webhooks>,
    registry: Arc<Registry>,
    me: String,
    stream: String,
    lease: String,
    /// Each URL's cursor key.
    cursor_keys: Vec<String>,
    /// Each URL's cursor, read when the lease was taken.
    cursors: Vec<u64>,
    started: bool,
    leading: bool,
    renew_at: tokio::time::Instant,
    scripts: Scripts,
}

/// Each script made once (its SHA1 computed once).
struct Scripts {
    add: redis::Script,
    read: redis::Script,
    start: redis::Script,
    lease: redis::Script,
    advance: redis::Script,
    release: redis::Script,
}

impl Fleet {
    pub fn new(hooks: Arc<Webhooks>, registry: Arc<Registry>, instance: u64) -> Self {
        let stream = registry.names.webhooks();
        let cursor_keys = hooks
            .urls
            .iter()
            .map(|url| {
                let digest = Sha256::digest(url.as_bytes());
                format!("{stream}:at:{}", crate::pusher::hex(&digest[..8]))
            })
            .collect();
        Fleet {
            cursors: vec![0; hooks.urls.len()],
            hooks,
            registry,
            me: format!("{instance:x}"),
            lease: format!("{stream}:lease"),
            stream,
            cursor_keys,
            started: false,
            leading: false,
            renew_at: tokio::time::Instant::now(),
            scripts: Scripts {
                add: redis::Script::new(&add_script()),
                read: redis::Script::new(&read_script()),
                start: redis::Script::new(&start_script()),
                lease: redis::Script::new(lease::TAKE),
                advance: redis::Script::new(ADVANCE),
                release: redis::Script::new(lease::GIVE_BACK),
            },
        }
    }

    /// Result of a call on the registry's connection, which is made again after a failure.
    async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut conn = self.registry.conn().await?;
        let call = invocation.invoke_async(&mut conn);
        let result = match tokio::time::timeout(super::RESPONSE_TIMEOUT, call).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer".into()),
        };
        if result.is_err() {
            self.registry.lost();
        }
        result
    }

    /// Moves the outbox into the stream; what cannot be moved now is put back.
    async fn move_outbox(&mut self) -> Result<(), String> {
        loop {
            let events = self.hooks.take(PER_ADD);
            if events.is_empty() {
                return Ok(());
            }
            let mut add = self.scripts.add.prepare_invoke();
            add.key(&self.stream).arg(MAX_LEN);
            for (at, json) in &events {
                add.arg(*at).arg(&**json);
            }
            if let Err(why) = self.call::<u64>(add).await {
                self.hooks.put_back(events);
                return Err(why);
            }
        }
    }

    async fn start(&mut self) -> Result<(), String> {
        let mut start = self.scripts.start.prepare_invoke();
        start.key(&self.stream);
        for key in &self.cursor_keys {
            start.key(key);
        }
        self.call::<u64>(start).await?;
        self.started = true;
        Ok(())
    }

    /// Takes or renews the lease; reads the cursors when it was just taken.
    async fn renew(&mut self) -> Result<bool, String> {
        let mut lease = self.scripts.lease.prepare_invoke();
        lease
            .key(&self.lease)
            .arg(&self.me)
            .arg(LEASE.as_millis() as u64);
        let held = self.call::<u64>(lease).await? == 1;
        if held && !self.leading {
            let mut conn = self.registry.conn().await?;
            let mut get = redis::cmd("MGET");
            get.arg(&self.cursor_keys);
            let call = get.query_async::<Vec<Option<u64>>>(&mut conn);
            let cursors = tokio::time::timeout(super::RESPONSE_TIMEOUT, call)
                .await
                .map_err(|_| "no answer".to_string())?
                .map_err(|e| e.to_string())?;
            self.cursors = cursors.into_iter().map(Option::unwrap_or_default).collect();
            tracing::info!("webhooks: this machine delivers the fleet's webhooks now");
        }
        Ok(held)
    }
}

impl Store for Fleet {
    async fn lead(&mut self) -> bool {
        let done = async {
            if !self.started {
                self.start().await?;
            }
            self.move_outbox().await?;
            if tokio::time::Instant::now() >= self.renew_at {
                self.leading = self.renew().await?;
                self.renew_at = tokio::time::Instant::now() + RENEW_EVERY;
            }
            Ok::<_, String>(())
        };
        if let Err(why) = done.await {
            tracing::warn!("webhooks: Redis: {why}");
            // Another machine may take the lease meanwhile: stop delivering until renewed.
            self.leading = false;
        }
        self.leading
    }

    async fn read(&mut self, url: usize, max: usize) -> Result<Vec<Entry>, String> {
        let after = self.cursors[url];
        let mut read = self.scripts.read.prepare_invoke();
        read.key(&self.stream).arg(after).arg(max);
        let reply: Vec<String> = self.call(read).await?;
        let mut parts = reply.into_iter();
        let last: u64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        if last < after {
            // The stream is younger than the cursor (Redis lost it): start again from its end.
            self.cursors[url] = last;
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        while let (Some(id), Some(at), Some(json)) = (parts.next(), parts.next(), parts.next()) {
            entries.push(Entry {
                id: id.parse().map_err(|_| format!("stream id {id}"))?,
                at_ms: at.parse().unwrap_or(0),
                json: json.into(),
            });
        }
        if let Some(first) = entries.first() {
            let trimmed = first.id.saturating_sub(after + 1);
            self.hooks.dropped.fetch_add(trimmed, Relaxed);
        }
        Ok(entries)
    }

    async fn advance(&mut self, url: usize, id: u64) -> Result<(), String> {
        self.cursors[url] = id;
        let mut advance = self.scripts.advance.prepare_invoke();
        advance
            .key(&self.lease)
            .key(&self.cursor_keys[url])
            .arg(&self.me)
            .arg(id);
        if self.call::<u64>(advance).await? == 0 {
            self.leading = false;
            return Err("another machine took the lease".into());
        }
        Ok(())
    }

    async fn finish(&mut self) -> bool {
        let done = async {
            self.move_outbox().await?;
            let mut release = self.scripts.release.prepare_invoke();
            release.key(&self.lease).arg(&self.me);
            self.call::<u64>(release).await
        };
        if let Err(why) = tokio::time::timeout(super::RESPONSE_TIMEOUT, done)
            .await
            .unwrap_or_else(|_| Err("no answer".into()))
        {
            let left = self.hooks.take(usize::MAX).len() * self.hooks.urls.len();
            self.hooks.dropped.fetch_add(left as u64, Relaxed);
            tracing::warn!("webhooks: {left} events not handed to the fleet at shutdown: {why}");
        }
        false
    }
}
