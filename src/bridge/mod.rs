//! The Redis bridge: one per process, relaying messages between the machines of a fleet.
//!
//! - The **publisher** sends every message this process accepts to Redis, on the channel of its
//!   target, pipelined: whatever queued while one batch was in flight goes out as the next. It
//!   also holds this process's claim on its `--node-id` (a key with an expiry, refreshed every
//!   second): a second process with the same id goes unready and says so, loudly.
//! - The **subscriber** holds one Redis subscription per user and channel that has a local
//!   recipient (plus one for broadcasts), following the [`SubscriptionLog`], and hands what
//!   arrives to the local bus — without ever waiting for a worker: a worker whose inbox is full
//!   misses the message, and it is counted. A machine with no recipient for a message is sent
//!   nothing for it.
//!
//! Without history, Redis pub/sub is **at most once**: what is published while a machine is cut
//! off from Redis is lost for that machine. While a link is down, messages for other machines
//! are dropped and counted (never queued without bound, never waited for), local delivery goes
//! on, and the link reconnects with capped exponential backoff; the subscriber then restores
//! every subscription from the routing table. Both links ping Redis every second, so a link
//! that silently stops answering counts as down within [`RESPONSE_TIMEOUT`] + 1 s.
//!
//! With history (`--history-size`), topics are kept in Redis ([`history`]): a message is
//! appended and published by one script, which gives its offset; every machine, this one
//! included, delivers it as Redis relays it, and the subscriber fills any gap (a reconnect, a
//! dropped push) from the history before later messages (`catchup`). A publish Redis cannot
//! take is refused (503), not delivered here and lost elsewhere.
//!
//! The files, by layer:
//!
//! ```text
//! mod.rs (the handle the router holds) ─▶ publisher/ (one link per master: routing by slot,
//!     pipelining, answers; claim.rs: the node id; lineage.rs: history lineage, replica acks)
//!   subscriber.rs (one task: links, pings, the relay) ─▶ reconcile.rs (what each link holds,
//!     who waits for what: pure) and catchup.rs (gaps filled from history: pure)
//! features' commands and scripts: history.rs, presence.rs; their wire: wire.rs (payloads),
//! pubsub.rs (RESP), cluster.rs (the map of masters and slots)
//! the fleet's bookkeeping in one slot, on one connection (registry.rs): presence's registry
//!   of live processes, the fleet's channel list, and the webhooks' stream and lease
//!   (webhooks.rs, the fleet's [`crate::webhooks::Store`])
//! ```
//!
//! Redis is trusted (it is the fleet's own), yet what comes from it is checked: a payload over
//! `--max-message-bytes` or not valid JSON is dropped and counted, and the frame is rebuilt
//! here, so clients only ever get frames of the server's own shape. Without history the
//! accepting machine delivers locally at once; its own messages coming back from Redis are
//! recognised by the random instance id in their header and dropped, so nobody gets a copy
//! twice.

mod catchup;
pub mod cluster;
pub mod history;
mod lease;
pub mod presence;
mod publisher;
pub(crate) mod pubsub;
mod reconcile;
mod registry;
mod subscriber;
pub mod tls;
mod webhooks;
pub mod wire;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Delivery};
use crate::metrics::BridgeMetrics;
use crate::protocol::Since;
use crate::protocol::Topic;
use crate::protocol::{Control, Target, UserId};
use crate::subscriptions::SubscriptionLog;
use cluster::Deployment;
pub use publisher::{Acknowledged, HistorySettings};
use wire::Names;

/// Other machines, or the history in Redis, cannot be reached now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

/// What became of a message appended to its topic's history in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Kept and published, at this offset of this epoch.
    Taken(u64, Arc<str>),
    /// Redis answered with an error: not taken.
    Refused,
    /// A Redis Cluster refused it while it changes masters (`CLUSTERDOWN`, `TRYAGAIN`, ...):
    /// not taken, and nothing is lost; a retry within seconds goes through.
    Failover,
    /// Redis is at `maxmemory` and refuses writes (`-OOM`): not taken.
    OutOfMemory,
    /// Kept by the master, but fewer than `--history-ack-replicas` replicas confirmed it in
    /// time: not published by us; it may still be delivered (read from the history) or be
    /// lost with its master.
    Unconfirmed,
    /// The link broke (or Redis went silent) while it was on its way: it may have been taken.
    Unknown,
}

/// Longest wait for Redis to answer a command or accept a connection; past it the link is down.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often each link pings Redis (and the publisher renews the node id claim).
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a node id claim lasts without renewal: a process that died frees its id after this.
pub const CLAIM_TTL: Duration = Duration::from_secs(5);
/// Longest a starting process waits for Redis before it accepts connections (and serves
/// degraded, as in an outage).
pub const STARTUP_WAIT: Duration = RESPONSE_TIMEOUT;
/// Messages waiting for the publisher; past this they are dropped and counted.
const PUBLISH_QUEUE: usize = 16 * 1024;
/// Questions about the registry waiting at once (an admin API's; more are refused, 503).
const QUESTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --redis URL: {0}")]
    Url(String),
    #[error("Redis TLS: {0}")]
    Tls(String),
    #[error("--node-id must be 1 to {} bytes", wire::MAX_NODE_ID_BYTES)]
    NodeId,
    #[error("--redis-prefix {0}")]
    Prefix(String),
    #[error("cannot start the bridge thread: {0}")]
    Thread(std::io::Error),
}

/// Where the bridge connects and how it names things.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    pub url: String,
    pub prefix: String,
    pub node_id: String,
    /// Larger payloads from Redis are refused, like larger HTTP bodies.
    pub max_message_bytes: usize,
    /// With `--history-size`: topics have history, kept in Redis.
    pub history: Option<HistorySettings>,
    /// `--redis-ca`, `--redis-cert`, `--redis-key` (for a `rediss` URL).
    pub tls: tls::TlsFiles,
    /// `--idempotency-ttl` in milliseconds.
    pub once_ttl_ms: u64,
}

/// What the publisher link does for the rest of the process. A request whose sender is
/// dropped unanswered failed (Redis down, refused, or the link broke before its reply).
enum Request {
    /// PUBLISH; nobody waits for it.
    Publish { channel: String, payload: Bytes },
    /// The append script for a message of a topic with history: its offset.
    Append {
        topic: Topic,
        payload: Bytes,
        /// Its idempotency key: a repeat is answered as the first was, not appended.
        once: Option<crate::idempotency::Key>,
        /// What became of it. Dropped unanswered: unknown.
        reply: oneshot::Sender<Fate>,
    },
    /// The read script: where a topic stands, and what a `since` missed.
    Read {
        topic: Topic,
        since: Option<Since>,
        /// `since` is where this machine's relay of the topic stands (the catch-up's), not a
        /// client's: see [`history::READ`].
        relayed: bool,
        reply: oneshot::Sender<crate::history::Read>,
    },
    /// Extends the memory of a topic's position: it has a recipient here, however quiet.
    Touch(Topic),
    /// On a cluster: a request sent again to the master a `-MOVED` named (the map was behind);
    /// never redirected twice.
    Redirected(Box<Request>),
    /// Presence in Redis: writes of this process's members, purges, questions.
    Presence(presence::PresenceRequest),
}

impl Request {
    /// A request of the history scripts, which carry the lineage.
    fn is_history(&self) -> bool {
        match self {
            Request::Append { .. } | Request::Read { .. } => true,
            Request::Redirected(inner) => inner.is_history(),
            _ => false,
        }
    }

    fn is_publish(&self) -> bool {
        match self {
            Request::Publish { .. } => true,
            Request::Redirected(inner) => inner.is_publish(),
            _ => false,
        }
    }
}

/// The process's handle on the bridge; the router publishes through it.
pub struct Bridge {
    names: Names,
    /// Drawn at start; marks this process's messages so it can drop them when they come back.
    instance: u64,
    node_id: Arc<str>,
    /// To the publisher task; closed when the bridge stops.
    publish_tx: mpsc::Sender<Request>,
    /// Questions about the fleet's registry (its channels).
    ask_registry: mpsc::Sender<registry::Question>,
    /// Topics have history, in Redis.
    history: Option<HistorySettings>,
    /// On a Redis Cluster: a master that is down refuses only its own slots' messages.
    cluster: bool,
    log: Arc<SubscriptionLog>,
    metrics: Arc<BridgeMetrics>,
    /// `--idempotency-ttl` in milliseconds.
    once_ttl_ms: u64,
}

/// What the bridge thread runs, checked before the thread starts.
pub struct Prepared {
    bridge: Bridge,
    deployment: Deployment,
    publish_rx: mpsc::Receiver<Request>,
    questions: mpsc::Receiver<registry::Question>,
    max_message_bytes: usize,
    /// The URL without its password, for logs.
    where_: String,
}

impl Bridge {
    /// Checks the configuration; nothing runs yet (see [`Prepared::spawn`]), so a start that
    /// fails later leaves no thread behind.
    ///
    /// # Errors
    /// A `--redis` URL that does not parse, a node id that does not fit, a prefix that could
    /// overlap another fleet's.
    pub fn prepare(
        config: BridgeConfig,
        log: Arc<SubscriptionLog>,
        metrics: Arc<BridgeMetrics>,
    ) -> Result<Prepared, Error> {
        if config.node_id.is_empty() || config.node_id.len() > wire::MAX_NODE_ID_BYTES {
            return Err(Error::NodeId);
        }
        let mut deployment = Deployment::parse(&config.url).map_err(Error::Url)?;
        match (deployment.tls, config.tls.is_empty()) {
            (true, _) => {
                deployment = deployment.with_tls(tls::Tls::load(&config.tls).map_err(Error::Tls)?)
            }
            (false, false) => {
                return Err(Error::Tls(
                    "--redis-ca, --redis-cert and --redis-key need a rediss:// URL".into(),
                ))
            }
            (false, true) => {}
        }
        let names = Names::new(&config.prefix, deployment.cluster).map_err(Error::Prefix)?;
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (ask_registry, questions) = mpsc::channel(QUESTIONS);
        let bridge = Bridge {
            names,
            instance: rand::random(),
            node_id: config.node_id.as_str().into(),
            publish_tx,
            ask_registry,
            history: config.history,
            cluster: deployment.cluster,
            log,
            metrics,
            once_ttl_ms: config.once_ttl_ms,
        };
        Ok(Prepared {
            bridge,
            deployment,
            publish_rx,
            questions,
            max_message_bytes: config.max_message_bytes,
            where_: redact(&config.url),
        })
    }

    /// Queues `delivery` for the other machines. Never waits: while the publisher is down or
    /// behind, the message is dropped for them and counted.
    pub fn publish(&self, delivery: &Delivery) {
        if !self.cluster && !self.metrics.publish_up.load(Relaxed) {
            self.metrics.dropped.fetch_add(1, Relaxed);
            return;
        }
        let payload = delivery
            .frame
            .message_payload(&delivery.target)
            .expect("published frames are built by Frame::message");
        let channel = self.names.target(&delivery.target);
        self.send(
            channel,
            wire::encode(self.instance, wire::Body::Message(payload)),
        );
    }

    /// Queues the backend's word for `user` for the other machines, on the user's channel: only
    /// machines with a connection of that user hear it. Never waits. Unlike a message it is not
    /// dropped quietly: false if it could not be queued (Redis down or the queue full), so the
    /// caller can refuse it whole and the backend retry — a logout must not half happen. A
    /// subscribe to a channel with history carries where the channel stood (`since`). On a
    /// cluster, refused while any master is unreachable.
    pub fn control(&self, user: &UserId, control: &Control, since: Option<&Since>) -> bool {
        if !self.metrics.publish_up.load(Relaxed) {
            return false;
        }
        let channel = self.names.target(&Target::User(user.clone()));
        let body = control.encode();
        let body = match since {
            Some(s) => wire::Body::ControlFrom(
                wire::At {
                    offset: s.offset,
                    epoch: &s.epoch,
                },
                &body,
            ),
            None => wire::Body::Control(&body),
        };
        let payload = wire::encode(self.instance, body);
        self.publish_tx
            .try_send(Request::Publish { channel, payload })
            .is_ok()
    }

    /// Topics have history kept in Redis: their messages and the backend's controls reach this
    /// machine's clients when Redis relays them, in Redis's order.
    pub fn has_history(&self) -> bool {
        self.history.is_some()
    }

    /// Queues a message for its topic's history in Redis, which publishes it to every machine
    /// (this one included); the future says what became of it.
    ///
    /// # Errors
    /// Redis is unreachable or behind: not queued, not taken.
    pub fn append(
        &self,
        topic: Topic,
        payload: Bytes,
        once: Option<crate::idempotency::Key>,
    ) -> Result<impl std::future::Future<Output = Fate>, Unreachable> {
        let answer = self.ask(|reply| Request::Append {
            topic,
            payload,
            once,
            reply,
        })?;
        Ok(async move {
            match answer.await {
                Ok(fate) => fate,
                Err(Unreachable) => Fate::Unknown,
            }
        })
    }

    /// Where `topic` stands in Redis, and with `since` what was missed after it.
    ///
    /// # Errors
    /// Redis is unreachable, behind, or refused the read.
    pub async fn read(
        &self,
        topic: Topic,
        since: Option<Since>,
    ) -> Result<crate::history::Read, Unreachable> {
        self.ask(|reply| Request::Read {
            topic,
            since,
            relayed: false,
            reply,
        })?
        .await
    }

    /// A page of a channel's members across the fleet.
    ///
    /// # Errors
    /// Redis is unreachable or behind.
    pub async fn presence_page(
        &self,
        channel: crate::protocol::Channel,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<crate::presence::Page, Unreachable> {
        self.ask(|reply| {
            Request::Presence(presence::PresenceRequest::Page {
                channel,
                after,
                limit,
                reply,
            })
        })?
        .await
    }

    /// How many users and connections a channel has across the fleet.
    ///
    /// # Errors
    /// Redis is unreachable or behind.
    pub async fn presence_count(
        &self,
        channel: crate::protocol::Channel,
    ) -> Result<crate::presence::Count, Unreachable> {
        self.ask(|reply| Request::Presence(presence::PresenceRequest::Count { channel, reply }))?
            .await
    }

    /// Claims the idempotency key `key` of a publication without history to `target` for the
    /// fleet: true if it is new (publish it), false if it was claimed before (a repeat).
    ///
    /// # Errors
    /// Redis is unreachable: nothing is known, nothing must be published.
    pub async fn claim_once(
        &self,
        target: &Target,
        key: &crate::idempotency::Key,
    ) -> Result<bool, Unreachable> {
        let (reply, answer) = oneshot::channel();
        let name = self.names.target(target);
        let question = registry::Question::Once {
            key: self.names.once_in_registry(&name, key.as_str()),
            ttl_ms: self.once_ttl_ms,
            reply,
        };
        self.ask_registry
            .try_send(question)
            .map_err(|_| Unreachable)?;
        match tokio::time::timeout(RESPONSE_TIMEOUT * 2, answer).await {
            Ok(Ok(new)) => Ok(new),
            _ => Err(Unreachable),
        }
    }

    /// The channels with members anywhere in the fleet whose names start with `prefix`.
    pub async fn channels(
        &self,
        prefix: &str,
    ) -> Result<Vec<crate::protocol::Channel>, Unreachable> {
        let (reply, answer) = oneshot::channel();
        let question = registry::Question::Channels {
            prefix: prefix.to_string(),
            reply,
        };
        self.ask_registry
            .try_send(question)
            .map_err(|_| Unreachable)?;
        match tokio::time::timeout(RESPONSE_TIMEOUT * 2, answer).await {
            Ok(Ok(names)) => Ok(names
                .iter()
                .filter_map(|n| crate::protocol::Channel::new(n).ok())
                .collect()),
            _ => Err(Unreachable),
        }
    }

    /// Queues a request at once (so requests keep their order in Redis); the future answers.
    fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<impl std::future::Future<Output = Result<T, Unreachable>>, Unreachable> {
        // On a cluster the link to the topic's master answers: the others may be up.
        if !self.cluster && !self.metrics.publish_up.load(Relaxed) {
            return Err(Unreachable);
        }
        let (tx, rx) = oneshot::channel();
        self.publish_tx
            .try_send(request(tx))
            .map_err(|_| Unreachable)?;
        // The link answers or drops the request within its own timeout; this bound is for a
        // bridge that stopped.
        Ok(async move {
            match tokio::time::timeout(RESPONSE_TIMEOUT * 2, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                _ => Err(Unreachable),
            }
        })
    }

    fn send(&self, channel: String, payload: Bytes) {
        if self
            .publish_tx
            .try_send(Request::Publish { channel, payload })
            .is_err()
        {
            self.metrics.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Resolves once both links are up, or after [`STARTUP_WAIT`] if Redis does not answer
    /// by then. A starting process accepts nobody before (see `worker::run`): a client that
    /// comes back at once in a rolling restart is answered from Redis, not told that what it
    /// missed is lost. Polled: it runs once per worker, at startup.
    pub async fn started(&self) {
        let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
        while !self.metrics.is_up() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Why a message accepted now might not reach every machine, if it might not.
    pub fn not_ready(&self) -> Option<String> {
        if self.metrics.node_conflict.load(Relaxed) {
            return Some(format!(
                "another process holds --node-id {}; give each process its own",
                self.node_id
            ));
        }
        if self.metrics.out_of_memory.load(Relaxed) {
            return Some(
                "Redis is out of memory (maxmemory): it refuses history writes, so publishes to \
                 topics with history get 503 until it has room"
                    .to_string(),
            );
        }
        (!self.metrics.is_up()).then(|| match self.cluster {
            false => "Redis unreachable, messages reach this machine only".to_string(),
            true => "a Redis Cluster master is unreachable or a slot has none: messages through \
                     it reach this machine only"
                .to_string(),
        })
    }

    /// The log whose changes the subscriber applies.
    pub fn subscription_log(&self) -> &Arc<SubscriptionLog> {
        &self.log
    }
}

impl Prepared {
    /// Starts the bridge thread. An unreachable Redis is no error: the links retry until it
    /// answers, and `/readyz` says 503 meanwhile.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn spawn(
        self,
        bus: Bus,
        presence: Option<Arc<crate::presence::Presence>>,
        webhooks: Option<Arc<crate::webhooks::Webhooks>>,
        shutdown: CancellationToken,
    ) -> Result<(Bridge, JoinHandle<()>), Error> {
        let Prepared {
            bridge,
            deployment,
            publish_rx,
            questions,
            max_message_bytes,
            where_,
        } = self;
        let (seeds_tx, seeds) = mpsc::unbounded_channel();
        let (map_tx, map) = watch::channel(Arc::new(deployment.first_map()));
        let (redirects, redirected) = mpsc::unbounded_channel();
        let refresh = Arc::new(Notify::new());
        // The links outlive the presence keeper, whose last writes go through them.
        let presence_done = shutdown.clone();
        let shutdown_links = CancellationToken::new();
        let links = shutdown_links.clone();
        let registry = Arc::new(registry::Registry::new(
            deployment.clone(),
            map.clone(),
            bridge.names.clone(),
        ));
        let presence_keeper = presence.map(|presence| presence::Keeper {
            presence,
            requests: bridge.publish_tx.clone(),
            registry: registry.clone(),
            names: bridge.names.clone(),
            instance: bridge.instance,
            metrics: bridge.metrics.clone(),
            webhooks: webhooks.clone(),
            shutdown: shutdown.clone(),
        });
        // Delivers until the keeper's last changes are in (their events too).
        let webhooks = webhooks.map(|hooks| {
            let store = webhooks::Fleet::new(hooks.clone(), registry.clone(), bridge.instance);
            crate::webhooks::deliver(hooks, store, links.clone(), Duration::ZERO)
        });
        let shutdown = links;
        let shutdown_answers = shutdown.clone();
        let keeper = deployment.cluster.then(|| cluster::Keeper {
            deployment: deployment.clone(),
            map: map_tx,
            refresh: refresh.clone(),
            shutdown: shutdown.clone(),
        });
        let subscriber = subscriber::Subscriber {
            deployment: deployment.clone(),
            map: map.clone(),
            refresh: refresh.clone(),
            names: bridge.names.clone(),
            instance: bridge.instance,
            history: bridge.history.is_some(),
            requests: bridge.publish_tx.clone(),
            touch_every: bridge
                .history
                .map(|h| Duration::from_millis(h.ttl_ms.max(1000))),
            log: bridge.log.clone(),
            bus,
            max_message_bytes,
            metrics: bridge.metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let publisher = Arc::new(publisher::Publisher {
            deployment,
            map,
            refresh,
            names: bridge.names.clone(),
            history: bridge.history,
            max_message_bytes,
            seeds: seeds_tx,
            claim_key: bridge.names.node_claim(&bridge.node_id),
            node_id: bridge.node_id.clone(),
            instance: bridge.instance,
            metrics: bridge.metrics.clone(),
            shutdown,
            link_changed: Notify::new(),
            redirects,
            lineages: Default::default(),
            warned_replicas: Default::default(),
        });
        let node_id = bridge.node_id.clone();
        let thread = std::thread::Builder::new()
            .name("fanfare-bridge".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect(
                        "a tokio runtime can be built (fails only when the OS refuses an epoll fd)",
                    );
                runtime.block_on(async {
                    tracing::info!(%node_id, "bridge connecting to {where_}");
                    let keeper = async {
                        if let Some(keeper) = keeper {
                            keeper.run().await;
                        }
                    };
                    let presence = async {
                        match presence_keeper {
                            Some(keeper) => keeper.run().await,
                            None => presence_done.cancelled().await,
                        }
                        shutdown_links.cancel();
                    };
                    let webhooks = async {
                        if let Some(webhooks) = webhooks {
                            webhooks.await;
                        }
                    };
                    let answers = registry::answer(registry, questions, shutdown_answers);
                    tokio::join!(
                        publisher.run(publish_rx, redirected),
                        subscriber.run(seeds),
                        keeper,
                        presence,
                        webhooks,
                        answers
                    );
                });
            })
            .map_err(Error::Thread)?;
        Ok((bridge, thread))
    }
}

/// Why a link went down, for the log.
type LinkDown = String;

/// A Redis call that must answer within [`RESPONSE_TIMEOUT`]; a failure or silence is the link
/// going down, described for the log.
async fn within<T, E: std::fmt::Display>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, LinkDown> {
    match tokio::time::timeout(RESPONSE_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", RESPONSE_TIMEOUT.as_secs())),
    }
}

/// Capped exponential backoff between reconnection attempts, each drawn between half and all
/// of its step: a fleet that lost the same Redis does not reconnect to it in lockstep.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn next(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        step.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap_with_jitter() {
        let steps = [50, 100, 200, 400, 800, 1000, 1000];
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut b = Backoff::new();
            for step in steps {
                let d = b.next().as_secs_f64() * 1000.0;
                assert!(d >= step as f64 / 2.0 && d <= step as f64, "{d} for {step}");
            }
            b.reset();
            let first = b.next();
            assert!(first <= Backoff::FIRST);
            firsts.insert(first);
        }
        assert!(firsts.len() > 1, "drawn, not fixed");
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
