//! Pusher webhooks (PROTOCOL section 11): `channel_occupied`, `channel_vacated`,
//! `member_added`, `member_removed` and `client_event`, POSTed to each `--pusher-webhook` URL
//! as Pusher sends them (`{"time_ms":…,"events":[…]}`, signed with `X-Pusher-Key` and
//! `X-Pusher-Signature`, the hex HMAC-SHA256 of the body with the app secret).
//!
//! Each event is made once for the fleet where its cause is decided: presence (this process
//! alone, or the Redis script that changes a channel's counts, or the purge of a dead machine's
//! members), or the machine whose socket sent a client event. It is [`push`](Webhooks::push)ed
//! here, into this process's outbox, and goes from there into a [`Store`] the senders read with
//! a cursor per URL: this process's memory alone, the fleet's stream in Redis with `--redis`
//! (`bridge::webhooks`), which one machine at a time delivers. A batch that the endpoint does
//! not take (not 2xx, or no answer in [`POST_TIMEOUT`]) is sent again after a backoff of 1 s
//! doubling to [`MAX_BACKOFF`], in order, until it is taken or its events are older than
//! [`MAX_AGE`]; what is given up, or pushed out of a full outbox, is counted as dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::pusher::App;

/// Most events in one POST.
pub const MAX_BATCH: usize = 50;
/// Events kept for delivery in this process's outbox (and, per URL, in memory alone).
pub const MAX_PENDING: usize = 10_000;
/// An event not delivered this long after it happened is dropped.
pub const MAX_AGE: Duration = Duration::from_secs(15 * 60);
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often the senders look for new events (they are woken at once by events made here).
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// One event as Pusher's webhooks carry it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Occupied {
        channel: String,
    },
    Vacated {
        channel: String,
    },
    MemberAdded {
        channel: String,
        user: String,
    },
    MemberRemoved {
        channel: String,
        user: String,
    },
    Client {
        channel: String,
        event: String,
        /// As the client sent it: Pusher's webhook gives it as a string.
        data: Value,
        socket_id: String,
        user_id: Option<String>,
    },
}

impl Event {
    /// The event's JSON object, as the `events` array of a webhook holds it.
    pub fn json(&self) -> String {
        let v = match self {
            Event::Occupied { channel } => {
                serde_json::json!({"name": "channel_occupied", "channel": channel})
            }
            Event::Vacated { channel } => {
                serde_json::json!({"name": "channel_vacated", "channel": channel})
            }
            Event::MemberAdded { channel, user } => {
                serde_json::json!({"name": "member_added", "channel": channel, "user_id": user})
            }
            Event::MemberRemoved { channel, user } => {
                serde_json::json!({"name": "member_removed", "channel": channel, "user_id": user})
            }
            Event::Client {
                channel,
                event,
                data,
                socket_id,
                user_id,
            } => {
                let data = match data {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let mut v = serde_json::json!({
                    "name": "client_event", "channel": channel, "event": event,
                    "data": data, "socket_id": socket_id,
                });
                if let Some(user) = user_id {
                    v["user_id"] = Value::from(user.as_str());
                }
                v
            }
        };
        v.to_string()
    }
}

/// An event in a store: its place (increasing, per store), when it happened (ms since the
/// epoch) and its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: u64,
    pub at_ms: u64,
    pub json: Arc<str>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The webhooks of this process: where they go, what is waiting, what became of them.
#[derive(Debug)]
pub struct Webhooks {
    pub app: Arc<App>,
    pub urls: Vec<String>,
    /// Made here, not yet in the store.
    outbox: Mutex<VecDeque<(u64, Arc<str>)>>,
    /// An event was pushed.
    pub pushed: Notify,
    /// Events the endpoints took (counted once per URL).
    pub sent: AtomicU64,
    /// POSTs that failed (each retry counts).
    pub failures: AtomicU64,
    /// Events given up on: too old, or pushed out of a full outbox (once per URL).
    pub dropped: AtomicU64,
}

impl Webhooks {
    pub fn new(app: Arc<App>, urls: Vec<String>) -> Self {
        Webhooks {
            app,
            urls,
            outbox: Mutex::default(),
            pushed: Notify::new(),
            sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn outbox(&self) -> MutexGuard<'_, VecDeque<(u64, Arc<str>)>> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event for every URL; a full outbox drops its oldest.
    pub fn push(&self, event: &Event) {
        let mut outbox = self.outbox();
        if outbox.len() >= MAX_PENDING {
            outbox.pop_front();
            self.dropped.fetch_add(self.urls.len() as u64, Relaxed);
        }
        outbox.push_back((now_ms(), event.json().into()));
        drop(outbox);
        self.pushed.notify_one();
    }

    /// For the store: up to `max` events from the outbox, oldest first.
    pub fn take(&self, max: usize) -> Vec<(u64, Arc<str>)> {
        let mut outbox = self.outbox();
        let n = outbox.len().min(max);
        outbox.drain(..n).collect()
    }

    /// For the store: events it took but could not keep, back at the front, in order.
    pub fn put_back(&self, events: Vec<(u64, Arc<str>)>) {
        let mut outbox = self.outbox();
        for event in events.into_iter().rev() {
            outbox.push_front(event);
        }
        while outbox.len() > MAX_PENDING {
            outbox.pop_front();
            self.dropped.fetch_add(self.urls.len() as u64, Relaxed);
        }
    }

    /// `{"time_ms":…,"events":[…]}` and its signature.
    pub fn body(&self, entries: &[Entry]) -> (String, String) {
        let events: Vec<&str> = entries.iter().map(|e| &*e.json).collect();
        let body = format!(
            r#"{{"time_ms":{},"events":[{}]}}"#,
            now_ms(),
            events.join(",")
        );
        let signature = self.app.hmac_hex(&body);
        (body, signature)
    }
}

/// Where events wait for delivery, with a cursor per URL.
pub trait Store: Send {
    /// Whether this process delivers now (one at a time in a fleet); moves the outbox into
    /// the store first.
    fn lead(&mut self) -> impl Future<Output = bool> + Send;
    /// Up to `max` events after URL `url`'s cursor.
    fn read(
        &mut self,
        url: usize,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, String>> + Send;
    /// URL `url` has taken (or given up) everything up to `id`.
    fn advance(&mut self, url: usize, id: u64) -> impl Future<Output = Result<(), String>> + Send;
    /// At shutdown: what is still in the outbox goes into the store, and the lead is let go.
    /// True if this process should go on delivering for a while (no other will).
    fn finish(&mut self) -> impl Future<Output = bool> + Send;
}

/// The store of a process alone: its memory.
pub struct Memory {
    hooks: Arc<Webhooks>,
    entries: VecDeque<Entry>,
    next: u64,
    cursors: Vec<u64>,
}

impl Memory {
    pub fn new(hooks: Arc<Webhooks>) -> Self {
        let cursors = vec![0; hooks.urls.len()];
        Memory {
            hooks,
            entries: VecDeque::new(),
            next: 1,
            cursors,
        }
    }
}

impl Store for Memory {
    async fn lead(&mut self) -> bool {
        for (at_ms, json) in self.hooks.take(usize::MAX) {
            if self.entries.len() >= MAX_PENDING {
                let gone = self.entries.pop_front().map_or(0, |e| e.id);
                let behind = self.cursors.iter().filter(|c| **c < gone).count();
                self.hooks.dropped.fetch_add(behind as u64, Relaxed);
            }
            self.entries.push_back(Entry {
                id: self.next,
                at_ms,
                json,
            });
            self.next += 1;
        }
        true
    }

    async fn read(&mut self, url: usize, max: usize) -> Result<Vec<Entry>, String> {
        let after = self.cursors[url];
        Ok(self
            .entries
            .iter()
            .filter(|e| e.id > after)
            .take(max)
            .cloned()
            .collect())
    }

    async fn advance(&mut self, url: usize, id: u64) -> Result<(), String> {
        self.cursors[url] = id;
        let done = self.cursors.iter().copied().min().unwrap_or(id);
        while self.entries.front().is_some_and(|e| e.id <= done) {
            self.entries.pop_front();
        }
        Ok(())
    }

    async fn finish(&mut self) -> bool {
        self.lead().await
    }
}

/// One URL's sender: its POST in flight, or when it may try again.
#[derive(Default)]
struct Url {
    backoff: Option<Duration>,
    retry_at: Option<tokio::time::Instant>,
    busy: bool,
    /// At shutdown: it has nothing left to send, or it failed (no retry in the time left).
    done: bool,
}

type Posted = (usize, Vec<Entry>, Result<(), String>);

/// Delivers until `stop`, then for at most `grace` more while events are waiting.
pub async fn deliver<S: Store>(
    hooks: Arc<Webhooks>,
    mut store: S,
    stop: CancellationToken,
    grace: Duration,
) {
    let client = reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .user_agent(concat!("fanfare/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a TLS client can be built");
    let mut urls: Vec<Url> = hooks.urls.iter().map(|_| Url::default()).collect();
    let mut posts = futures_util::stream::FuturesUnordered::<
        std::pin::Pin<Box<dyn Future<Output = Posted> + Send>>,
    >::new();
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        use futures_util::StreamExt;
        tokio::select! {
            () = stop.cancelled(), if deadline.is_none() => {
                if !store.finish().await {
                    return;
                }
                deadline = Some(tokio::time::Instant::now() + grace);
                continue;
            }
            () = async { tokio::time::sleep_until(deadline.expect("set")).await }, if deadline.is_some() => return,
            Some((url, batch, result)) = posts.next(), if !posts.is_empty() => {
                let u = &mut urls[url];
                u.busy = false;
                match result {
                    Ok(()) => {
                        u.backoff = None;
                        hooks.sent.fetch_add(batch.len() as u64, Relaxed);
                        let last = batch.last().map_or(0, |e| e.id);
                        if let Err(why) = store.advance(url, last).await {
                            tracing::warn!("webhooks: cannot record what {} took: {why}", hooks.urls[url]);
                        }
                    }
                    Err(why) => {
                        hooks.failures.fetch_add(1, Relaxed);
                        let backoff = u.backoff.map_or(Duration::from_secs(1), |b| (b * 2).min(MAX_BACKOFF));
                        tracing::warn!(
                            "webhooks: {} did not take {} events ({why}); again in {} s",
                            hooks.urls[url], batch.len(), backoff.as_secs()
                        );
                        u.backoff = Some(backoff);
                        u.retry_at = Some(tokio::time::Instant::now() + backoff);
                        u.done = deadline.is_some();
                    }
                }
            }
            _ = poll.tick() => {}
            () = hooks.pushed.notified() => {}
        }
        let finishing = deadline.is_some();
        if finishing && posts.is_empty() && urls.iter().all(|u| u.done) {
            return;
        }
        if !finishing && !store.lead().await {
            continue;
        }
        let now = tokio::time::Instant::now();
        for (i, u) in urls.iter_mut().enumerate() {
            if u.busy || u.done || u.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            let batch = match store.read(i, MAX_BATCH).await {
                Ok(batch) => batch,
                Err(why) => {
                    tracing::warn!("webhooks: cannot read the events waiting: {why}");
                    break;
                }
            };
            let (old, batch) = fresh(batch);
            if let Some(last) = old {
                hooks.dropped.fetch_add(last.1, Relaxed);
                let _ = store.advance(i, last.0).await;
            }
            if batch.is_empty() {
                u.done = finishing && old.is_none();
                continue;
            }
            u.busy = true;
            u.retry_at = None;
            let (body, signature) = hooks.body(&batch);
            let request = client
                .post(&hooks.urls[i])
                .header("Content-Type", "application/json")
                .header("X-Pusher-Key", &hooks.app.key)
                .header("X-Pusher-Signature", signature)
                .body(body)
                .send();
            posts.push(Box::pin(async move {
                let result = match request.await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                (i, batch, result)
            }));
        }
    }
}

/// Splits off the events older than [`MAX_AGE`] at the head of a batch: the id of the last
/// one with how many, and the rest.
fn fresh(batch: Vec<Entry>) -> (Option<(u64, u64)>, Vec<Entry>) {
    let oldest = now_ms().saturating_sub(MAX_AGE.as_millis() as u64);
    let stale = batch.iter().take_while(|e| e.at_ms < oldest).count();
    let old = (stale > 0).then(|| (batch[stale - 1].id, stale as u64));
    (old, batch.into_iter().skip(stale).collect())
}

/// A process alone: delivers from memory on a thread of its own until `stop`; then, once the
/// workers have closed their connections (`drained`, whose last presence changes `flush`
/// makes into events), for a few seconds more.
pub fn spawn_alone(
    hooks: Arc<Webhooks>,
    drained: CancellationToken,
    flush: impl Fn() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fanfare-webhooks".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect(
                    "a tokio runtime can be built (fails only when the OS refuses an epoll fd)",
                );
            runtime.block_on(async move {
                let stop = CancellationToken::new();
                let deliver = deliver(
                    hooks.clone(),
                    Memory::new(hooks),
                    stop.clone(),
                    Duration::from_secs(3),
                );
                let last = async {
                    drained.cancelled().await;
                    flush();
                    stop.cancel();
                };
                tokio::join!(deliver, last);
            });
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(urls: usize) -> Arc<Webhooks> {
        let app = Arc::new(App::new("1".into(), "key".into(), "secret".into()));
        Arc::new(Webhooks::new(
            app,
            (0..urls).map(|i| format!("http://h/{i}")).collect(),
        ))
    }

    fn occupied(n: usize) -> Event {
        Event::Occupied {
            channel: format!("c{n}"),
        }
    }

    #[test]
    fn events_are_pushers() {
        assert_eq!(
            Event::MemberAdded {
                channel: "presence-a".into(),
                user: "7".into()
            }
            .json(),
            r#"{"channel":"presence-a","name":"member_added","user_id":"7"}"#
        );
        let client = Event::Client {
            channel: "private-a".into(),
            event: "client-x".into(),
            data: serde_json::json!({"n": 1}),
            socket_id: "1.2".into(),
            user_id: None,
        };
        let v: Value = serde_json::from_str(&client.json()).unwrap();
        assert_eq!(v["data"], r#"{"n":1}"#);
        assert_eq!(v["name"], "client_event");
        assert!(v.get("user_id").is_none());
    }

    #[test]
    fn a_body_is_signed_with_the_secret() {
        let h = hooks(1);
        let entry = Entry {
            id: 1,
            at_ms: 5,
            json: occupied(1).json().into(),
        };
        let (body, signature) = h.body(&[entry]);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["events"][0]["name"], "channel_occupied");
        assert!(v["time_ms"].as_u64().unwrap() > 0);
        assert_eq!(signature, h.app.hmac_hex(&body));
    }

    #[tokio::test]
    async fn memory_keeps_each_event_until_every_url_took_it() {
        let h = hooks(2);
        let mut m = Memory::new(h.clone());
        for n in 0..3 {
            h.push(&occupied(n));
        }
        assert!(m.lead().await);
        let a = m.read(0, 2).await.unwrap();
        assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
        m.advance(0, 2).await.unwrap();
        assert_eq!(m.read(0, 10).await.unwrap().len(), 1);
        // URL 1 took nothing yet: all three are kept for it.
        assert_eq!(m.read(1, 10).await.unwrap().len(), 3);
        m.advance(1, 3).await.unwrap();
        assert_eq!(m.entries.len(), 1);
        m.advance(0, 3).await.unwrap();
        assert!(m.entries.is_empty());
    }

    #[test]
    fn a_full_outbox_drops_its_oldest_and_counts_them() {
        let h = hooks(2);
        for n in 0..MAX_PENDING + 3 {
            h.push(&occupied(n));
        }
        assert_eq!(h.dropped.load(Relaxed), 6);
        let first = h.take(1);
        assert!(first[0].1.contains("\"c3\""));
    }

    #[test]
    fn events_past_their_age_are_split_off() {
        let now = now_ms();
        let e = |id, at_ms| Entry {
            id,
            at_ms,
            json: "{}".into(),
        };
        let old = now - MAX_AGE.as_millis() as u64 - 1;
        let (gone, rest) = fresh(vec![e(1, old), e(2, old), e(3, now)]);
        assert_eq!(gone, Some((2, 2)));
        assert_eq!(rest.len(), 1);
        assert_eq!(fresh(vec![e(4, now)]).0, None);
    }
}
