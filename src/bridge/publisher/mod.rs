//! The publishing links: one Redis connection of our own ([`pubsub`]) per master, each with one
//! pipeline in flight at a time: a batch of commands written at once, then their replies read
//! back in order (redis-rs parsed each reply into a generic value, which cost the bridge more
//! than Redis spends serving it). Commands: PUBLISH (SPUBLISH on a cluster), and with history
//! the append and read scripts, whose callers wait for their answer.
//!
//! This file is the link (routing by slot, connecting, pipelining, answers); each feature that
//! rides on it beyond publishing has its file: the node id claim (`claim`), the history's
//! requests, lineage and replica acknowledgements (`history_requests`); the scripts themselves are in
//! [`super::history`] and [`super::presence`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::cluster::{self, Deployment, Node, Topology};

use super::history::{Lineage, APPEND, READ};
use super::presence::{Scripts, COUNT, PAGE};
use super::pubsub::{self, Reader, Reply, Writer};
use super::wire::Names;
use super::Fate;
use super::{within, Backoff, LinkDown, Request, PING_EVERY, PUBLISH_QUEUE, RESPONSE_TIMEOUT};
use crate::history::Position;
use crate::metrics::{BridgeMetrics, ShardMetrics};
use crate::protocol::Topic;
use history_requests::{Held, LineageArgs};

mod claim;
mod history_requests;

/// Most messages in one pipeline.
const BATCH: usize = 1024;

/// Most appends in one call of the append script, which holds Redis for all of them (64: about
/// half a millisecond of Redis's CPU).
const APPENDS_PER_CALL: usize = 64;

/// A connection of the publisher: commands out, replies in.
struct Conn {
    reader: Reader,
    writer: Writer,
    /// SHA1 of the append and read scripts, loaded on this connection's Redis.
    append: String,
    read: String,
    presence: Scripts,
    /// The data this master writes in, with history; the scripts check each topic against it.
    lineage: Lineage,
    /// An answer said the master may have changed: read the lineage again before using it.
    lineage_stale: bool,
}

/// Replies that say the master is changing (a failover, a slot move, a restart): what was
/// refused is not taken, and the lineage must be read again.
fn master_changing(error: &str) -> bool {
    const KINDS: [&str; 8] = [
        "MOVED",
        "ASK",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "MASTERDOWN",
        "LOADING",
        "READONLY",
        "NOSCRIPT",
    ];
    KINDS.iter().any(|k| error.starts_with(k))
}

/// How topics with history are kept in Redis.
#[derive(Clone, Copy, Debug)]
pub struct HistorySettings {
    /// `--history-size`: messages kept per topic (about: the stream is trimmed lazily).
    pub size: u32,
    /// `--history-ttl` in milliseconds.
    pub ttl_ms: u64,
    /// `--history-ack-replicas`: a message is answered and published only once replicas hold it.
    pub ack: Option<Acknowledged>,
    /// `--idempotency-ttl` in milliseconds: how long an append's key is kept.
    pub once_ttl_ms: u64,
}

/// How many replicas must hold a history write before it counts, and how long to wait for them.
#[derive(Clone, Copy, Debug)]
pub struct Acknowledged {
    pub replicas: u32,
    pub timeout_ms: u64,
}

pub(super) struct Publisher {
    pub deployment: Deployment,
    /// Which master serves each slot; one link per master follows it.
    pub map: watch::Receiver<Arc<Topology>>,
    /// Asks for the map to be read again (a link failed, Redis said `-MOVED`).
    pub refresh: Arc<Notify>,
    pub names: Names,
    pub history: Option<HistorySettings>,
    pub max_message_bytes: usize,
    /// Positions read for connections, for the subscriber: where its relay of a topic starts.
    pub seeds: mpsc::UnboundedSender<(Topic, Position)>,
    /// `<prefix>n:<node id>`, holding the instance id of the process that uses the node id.
    pub claim_key: String,
    pub node_id: Arc<str>,
    pub instance: u64,
    pub metrics: Arc<BridgeMetrics>,
    pub shutdown: CancellationToken,
    /// A link went up or down (on a cluster, where readiness is every link's).
    pub link_changed: Notify,
    /// Requests a master answered with `-MOVED`, for the router to send where it said.
    pub redirects: mpsc::UnboundedSender<(Request, Node)>,
    /// The lineage of each master whose link is up, kept by the links (with history).
    pub lineages: std::sync::Mutex<HashMap<Node, String>>,
    /// A master with more replicas than `--history-ack-replicas` was said in the log.
    pub warned_replicas: std::sync::atomic::AtomicBool,
}

/// A running link to one master, as the router of a cluster sees it.
struct LinkHandle {
    queue: mpsc::Sender<Request>,
    shard: Arc<ShardMetrics>,
    /// Stops the link (its master left the map); dropped with the handle.
    _stop: tokio_util::sync::DropGuard,
}

impl Publisher {
    /// Publishes until shutdown. One server: one link reads the queue. A cluster: each master
    /// has a link with a queue of its own, and requests are routed by the slot of their topic,
    /// so a master that fails or stalls holds up only its own messages.
    pub async fn run(
        self: Arc<Self>,
        publish_rx: mpsc::Receiver<Request>,
        redirected: mpsc::UnboundedReceiver<(Request, Node)>,
    ) {
        if !self.deployment.cluster {
            let node = self.map.borrow().masters[0].clone();
            let shard = self.metrics.shard(&node.to_string());
            let stop = self.shutdown.clone();
            self.link(node, publish_rx, shard, stop).await;
            return;
        }
        let mut links = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        self.route(publish_rx, redirected, &mut links, &mut tasks)
            .await;
        drop(links);
        while tasks.join_next().await.is_some() {}
    }

    async fn route(
        self: &Arc<Self>,
        mut publish_rx: mpsc::Receiver<Request>,
        mut redirected: mpsc::UnboundedReceiver<(Request, Node)>,
        links: &mut HashMap<Node, LinkHandle>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        let mut map_rx = self.map.clone();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let map = map_rx.borrow_and_update().clone();
            links.retain(|node, _| map.masters.contains(node));
            for node in &map.masters {
                if links.contains_key(node) {
                    continue;
                }
                let (queue, rx) = mpsc::channel(PUBLISH_QUEUE);
                let shard = self.metrics.shard(&node.to_string());
                let stop = self.shutdown.child_token();
                let link = self
                    .clone()
                    .link(node.clone(), rx, shard.clone(), stop.clone());
                tasks.spawn(link);
                let _stop = stop.drop_guard();
                links.insert(
                    node.clone(),
                    LinkHandle {
                        queue,
                        shard,
                        _stop,
                    },
                );
            }
            self.metrics
                .keep_shards(|n| map.masters.iter().any(|m| m.to_string() == n));
            loop {
                let all_up = links.values().all(|l| l.shard.publish_up.load(Relaxed));
                self.metrics
                    .publish_up
                    .store(map.complete() && all_up, Relaxed);
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return,
                    _ = map_rx.changed() => break,
                    () = self.link_changed.notified() => {}
                    // Sent again only while the map still says the old master: once it names the
                    // new one, newer requests for the slot may already have gone there, and
                    // this one would arrive after them (out of order): it is refused instead.
                    Some((request, node)) = redirected.recv() => {
                        let stale = map.node_of(&self.slot_name(&request)) != Some(&node);
                        match links.get(&node).filter(|_| stale) {
                            Some(link) => {
                                if let Err(e) = link.queue.try_send(request) {
                                    self.refuse(e.into_inner());
                                }
                            }
                            None => self.refuse(request),
                        }
                    }
                    n = publish_rx.recv_many(&mut batch, BATCH) => {
                        if n == 0 {
                            return;
                        }
                        for request in batch.drain(..) {
                            let link = map.node_of(&self.slot_name(&request)).and_then(|n| links.get(n));
                            match link {
                                Some(link) => {
                                    if let Err(e) = link.queue.try_send(request) {
                                        self.refuse(e.into_inner());
                                    }
                                }
                                None => self.refuse(request),
                            }
                        }
                    }
                }
            }
        }
    }

    /// The name whose slot decides which master takes `request`.
    fn slot_name(&self, request: &Request) -> String {
        match request {
            Request::Publish { channel, .. } => channel.clone(),
            Request::Append { topic, .. } | Request::Read { topic, .. } | Request::Touch(topic) => {
                self.names.topic(topic)
            }
            Request::Redirected(inner) => self.slot_name(inner),
            Request::Presence(p) => self.names.topic(&Topic::Channel(p.channel().clone())),
        }
    }

    /// A request that never went out: a message is dropped and counted, an append not taken,
    /// a read unanswered.
    fn refuse(&self, request: Request) {
        self.refuse_as(request, Fate::Refused);
    }

    /// [`refuse`](Self::refuse), an append answered with `fate`.
    fn refuse_as(&self, request: Request, fate: Fate) {
        match request {
            Request::Publish { .. } => {
                self.metrics.dropped.fetch_add(1, Relaxed);
            }
            Request::Append { reply, .. } => {
                let _ = reply.send(fate);
            }
            Request::Read { .. } | Request::Touch(_) | Request::Presence(_) => {}
            Request::Redirected(inner) => self.refuse_as(*inner, fate),
        }
    }

    fn set_up(&self, shard: &ShardMetrics, up: bool) {
        shard.publish_up.store(up, Relaxed);
        match self.deployment.cluster {
            false => self.metrics.publish_up.store(up, Relaxed),
            true => self.link_changed.notify_one(),
        }
    }

    /// One master's link: connects (with backoff), then publishes what its queue holds until
    /// `stop`; what is still queued then is refused (counted, answered).
    async fn link(
        self: Arc<Self>,
        node: Node,
        mut publish_rx: mpsc::Receiver<Request>,
        shard: Arc<ShardMetrics>,
        stop: CancellationToken,
    ) {
        self.link_until_stopped(&node, &mut publish_rx, &shard, &stop)
            .await;
        publish_rx.close();
        while let Ok(request) = publish_rx.try_recv() {
            self.refuse(request);
        }
    }

    async fn link_until_stopped(
        &self,
        node: &Node,
        publish_rx: &mut mpsc::Receiver<Request>,
        shard: &ShardMetrics,
        stop: &CancellationToken,
    ) {
        let mut backoff = Backoff::new();
        let mut batch = Vec::with_capacity(BATCH);
        let mut connected_before = false;
        loop {
            // Replies are integers; no bulk string is ever read here.
            let connecting = within(self.deployment.open(node, 0));
            let mut conn = tokio::select! {
                () = stop.cancelled() => return,
                r = connecting => match r {
                    Ok((reader, writer)) => match Conn::new(reader, writer, self.history.is_some()).await {
                        Ok(conn) => conn,
                        Err(why) => {
                            tracing::error!("bridge: cannot load the history scripts on {node}: {why}; retrying");
                            self.drop_while_waiting(publish_rx, backoff.next(), stop).await;
                            continue;
                        }
                    },
                    Err(why) => {
                        tracing::error!("bridge: cannot connect the publisher to {node}: {why}; retrying");
                        self.refresh.notify_one();
                        self.drop_while_waiting(publish_rx, backoff.next(), stop).await;
                        continue;
                    }
                },
            };
            if let Err(why) = self.keep_alive(&mut conn, node).await {
                self.set_lineage(node, None);
                tracing::warn!("bridge: publisher lost {node}: {why}; reconnecting");
                self.drop_while_waiting(publish_rx, backoff.next(), stop)
                    .await;
                continue;
            }
            if connected_before {
                self.metrics.reconnects.fetch_add(1, Relaxed);
            }
            connected_before = true;
            backoff.reset();
            self.set_lineage(node, self.history.map(|_| &conn.lineage));
            self.set_up(shard, true);
            tracing::info!("bridge: publisher connected to {node}");
            let why = self
                .serve(&mut conn, node, shard, publish_rx, &mut batch, stop)
                .await;
            self.set_lineage(node, None);
            self.set_up(shard, false);
            match why {
                None => {
                    if self.holds_claim(node) {
                        self.release(&mut conn).await;
                    }
                    return;
                }
                Some(why) => {
                    tracing::warn!("bridge: publisher lost {node}: {why}; reconnecting");
                    self.refresh.notify_one();
                }
            }
        }
    }

    /// Publishes until the link fails (returns why) or it is stopped (returns `None`).
    async fn serve(
        &self,
        conn: &mut Conn,
        node: &Node,
        shard: &ShardMetrics,
        publish_rx: &mut mpsc::Receiver<Request>,
        batch: &mut Vec<Request>,
        stop: &CancellationToken,
    ) -> Option<LinkDown> {
        let mut ping = interval(PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut pipeline, mut calls) = (Vec::new(), Vec::new());
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return None,
                // Idle, a closed connection is noticed at once, not at the next ping: while it
                // looks up, /readyz would say 200 and history publishes fail.
                why = conn.reader.closed() => return Some(why),
                // Before the queue: under steady load the queue is always ready, and the claim
                // must still be renewed (it is also the link's ping).
                _ = ping.tick() => {
                    if let Err(why) = self.keep_alive(conn, node).await {
                        return Some(why);
                    }
                }
                n = publish_rx.recv_many(batch, BATCH) => {
                    if n == 0 {
                        return None;
                    }
                    let history = batch.iter().any(Request::is_history);
                    if history {
                        if let Err(why) = self.check_lineage(conn, node, batch).await {
                            return Some(why);
                        }
                    }
                    pipeline.clear();
                    // The scripts' lineage arguments, the same for the whole batch.
                    let lineage = match history {
                        true => self.lineage_args(conn, node),
                        false => LineageArgs::default(),
                    };
                    calls.clear();
                    self.encode_batch(conn, batch, &lineage, &mut pipeline, &mut calls);
                    let ack = self.ack().filter(|_| history && !batch.is_empty());
                    if let Some(ack) = ack {
                        let (n, ms) = (ack.replicas.to_string(), ack.timeout_ms.to_string());
                        pubsub::encode(&mut pipeline, &[b"WAIT", n.as_bytes(), ms.as_bytes()]);
                    }
                    let publishes = batch.iter().filter(|r| r.is_publish()).count();
                    let mut answered = 0;
                    let limit = RESPONSE_TIMEOUT + Duration::from_millis(ack.map_or(0, |a| a.timeout_ms));
                    let sent = self.pipeline(conn, shard, &pipeline, &calls, batch, ack, &mut answered);
                    let failed = match tokio::time::timeout(limit, sent).await {
                        Ok(Ok(())) => None,
                        Ok(Err(why)) => Some(why),
                        Err(_) => Some(format!("no answer within {} ms", limit.as_millis())),
                    };
                    if let Some(why) = failed {
                        // Whoever waits for an answer is told by its dropped sender.
                        batch.clear();
                        self.metrics.dropped.fetch_add((publishes - answered) as u64, Relaxed);
                        return Some(why);
                    }
                }
            }
        }
    }

    /// Encodes a pipeline's requests, each run of appends as one call of the append script;
    /// `calls` says which requests each reply will answer. `lineage` is what the history
    /// scripts are told of the data they write in ([`APPEND`]): this master's lineage,
    /// whether acknowledged mode is on, the replication ids of the other masters this process
    /// is connected to now (`,id,id,`: a topic's hash written in one of them came by a slot
    /// move, whole), and whether an append may leave a continuation ticket.
    fn encode_batch(
        &self,
        conn: &Conn,
        batch: &[Request],
        lineage: &LineageArgs,
        out: &mut Vec<u8>,
        calls: &mut Vec<Call>,
    ) {
        let mut at = 0;
        while at < batch.len() {
            let run = self.appends_at(&batch[at..]);
            if run > 0 {
                self.encode_appends(conn, &batch[at..at + run], lineage, out);
                calls.push(Call::Appends(run));
                at += run;
            } else {
                calls.push(self.encode(conn, &batch[at], lineage, out));
                at += 1;
            }
        }
    }

    /// How many requests at the start of `requests` one call of the append script takes:
    /// appends in a row, at most [`APPENDS_PER_CALL`], and on a cluster of one slot (a script's
    /// keys must share one).
    fn appends_at(&self, requests: &[Request]) -> usize {
        let slot = |request: &Request| match request {
            Request::Append { topic, .. } => match self.deployment.cluster {
                true => Some(cluster::slot(self.names.topic(topic).as_bytes())),
                false => Some(0),
            },
            _ => None,
        };
        let Some(first) = requests.first().and_then(slot) else {
            return 0;
        };
        requests
            .iter()
            .take(APPENDS_PER_CALL)
            .take_while(|r| slot(r) == Some(first))
            .count()
    }

    /// `PUBLISH`, or on a cluster `SPUBLISH` (a shard channel, in its topic's slot).
    pub(super) fn publish_verb(&self) -> &'static [u8] {
        match self.deployment.cluster {
            false => b"PUBLISH",
            true => b"SPUBLISH",
        }
    }

    /// Encodes one request; returns what its reply answers.
    fn encode(
        &self,
        conn: &Conn,
        request: &Request,
        lineage: &LineageArgs,
        out: &mut Vec<u8>,
    ) -> Call {
        let publish = self.publish_verb();
        match request {
            Request::Redirected(inner) => return self.encode(conn, inner, lineage, out),
            Request::Presence(p) => {
                p.encode(&self.names, self.instance, publish, &conn.presence, out);
            }
            Request::Publish { channel, payload } => {
                pubsub::encode(out, &[publish, channel.as_bytes(), payload]);
            }
            Request::Append { .. } => {
                self.encode_appends(conn, std::slice::from_ref(request), lineage, out);
                return Call::Appends(1);
            }
            Request::Read { .. } | Request::Touch(_) => {
                self.encode_history(conn, request, lineage, out);
            }
        }
        Call::One
    }

    /// Writes the encoded `batch` and answers each request from its reply (`calls` says which
    /// requests each reply answers). A Redis error fails its requests only, except a missing
    /// script (Redis restarted under us): then the link is remade, which loads them again. With
    /// `ack`, the pipeline ends with a `WAIT`, and what the history requests found counts only
    /// once replicas hold it too: the appends are published then (by us: the script did not),
    /// the reads answered.
    #[allow(clippy::too_many_arguments)]
    async fn pipeline(
        &self,
        conn: &mut Conn,
        shard: &ShardMetrics,
        encoded: &[u8],
        calls: &[Call],
        batch: &mut Vec<Request>,
        ack: Option<Acknowledged>,
        answered: &mut usize,
    ) -> Result<(), String> {
        conn.writer.raw(encoded).await.map_err(|e| e.to_string())?;
        let max_reply = self.max_reply();
        let mut held = Held::default();
        let mut requests = batch.drain(..);
        for call in calls {
            let reply = conn.reader.reply(max_reply).await?;
            match *call {
                Call::One => {
                    if let Some(request) = requests.next() {
                        *answered += usize::from(request.is_publish());
                        self.answer(conn, shard, request, reply, ack, &mut held)?;
                    }
                }
                Call::Appends(n) => {
                    for (request, reply) in requests.by_ref().take(n).zip(each_append(reply, n)) {
                        self.answer(conn, shard, request, reply, ack, &mut held)?;
                    }
                }
            }
        }
        drop(requests);
        match ack {
            Some(ack) => self.release_held(conn, shard, held, ack).await,
            None => Ok(()),
        }
    }

    /// Answers one request from its reply.
    fn answer(
        &self,
        conn: &mut Conn,
        shard: &ShardMetrics,
        request: Request,
        reply: Reply,
        ack: Option<Acknowledged>,
        held: &mut Held,
    ) -> Result<(), String> {
        let (request, redirected) = match request {
            Request::Redirected(inner) => (*inner, true),
            request => (request, false),
        };
        if let Reply::Error(e) = &reply {
            if e.starts_with("NOSCRIPT") {
                return Err(format!("Redis: {e}"));
            }
            if master_changing(e) {
                conn.lineage_stale = true;
            }
            // A slot moved or its master failed: the map is read again; a request sent to
            // the wrong master goes, once, to the one it names; any other fails.
            if e.starts_with("MOVED") || e.starts_with("ASK") || e.starts_with("CLUSTERDOWN") {
                self.refresh.notify_one();
            }
            if let Some(node) = moved_to(e).filter(|_| !redirected && self.deployment.cluster) {
                if let Err(e) = self
                    .redirects
                    .send((Request::Redirected(Box::new(request)), node))
                {
                    self.refuse(e.0 .0);
                }
                return Ok(());
            }
            tracing::warn!("bridge: Redis refused a command: {e}");
        }
        match (request, reply) {
            (Request::Publish { .. }, Reply::Integer(_)) => {
                self.metrics.published.fetch_add(1, Relaxed);
                shard.published.fetch_add(1, Relaxed);
            }
            (Request::Publish { .. }, _) => {
                self.metrics.dropped.fetch_add(1, Relaxed);
            }
            (request @ (Request::Append { .. } | Request::Read { .. }), reply) => {
                self.answer_history(request, reply, shard, ack, held);
            }
            (Request::Presence(p), Reply::Bulks(parts)) => p.answer(&parts),
            (Request::Presence(p), Reply::Integer(_)) => p.done(),
            // Refused or malformed: the dropped sender tells the caller.
            (Request::Presence(_) | Request::Touch(_) | Request::Redirected(_), _) => {}
        }
        Ok(())
    }

    /// The largest reply read back: a read of a whole history.
    fn max_reply(&self) -> usize {
        let size = self.history.map_or(0, |h| h.size as usize);
        let history = (size + 4).saturating_mul(self.max_message_bytes + 64);
        history.max(super::presence::MAX_PAGE_REPLY)
    }

    /// Renews the claim on the link that holds it, pings on the others.
    /// With history, reads the lineage again too: a master that changed under an open link
    /// (a replica promoted while connected) is noticed within a second, before it matters.
    async fn keep_alive(&self, conn: &mut Conn, node: &Node) -> Result<(), LinkDown> {
        if self.history.is_some() {
            within(conn.read_lineage()).await?;
            self.set_lineage(node, Some(&conn.lineage));
            if self.metrics.out_of_memory.load(Relaxed) && within(conn.has_room()).await? {
                self.metrics.out_of_memory.store(false, Relaxed);
            }
        }
        if self.holds_claim(node) {
            return self.claim(conn).await;
        }
        conn.writer
            .command(&[b"PING"])
            .await
            .map_err(|e| e.to_string())?;
        match within(conn.reader.reply(64)).await? {
            Reply::Status => Ok(()),
            other => Err(format!("PING answered {other:?}")),
        }
    }

    /// While disconnected: wait `delay`, refusing what is queued meanwhile so nobody waits and
    /// nothing piles up.
    async fn drop_while_waiting(
        &self,
        publish_rx: &mut mpsc::Receiver<Request>,
        delay: Duration,
        stop: &CancellationToken,
    ) {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        let mut dropped = Vec::new();
        loop {
            tokio::select! {
                () = &mut sleep => return,
                () = stop.cancelled() => return,
                n = publish_rx.recv_many(&mut dropped, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    dropped.drain(..).for_each(|r| self.refuse(r));
                }
            }
        }
    }
}

/// What one command of a pipeline answers: one request, or a run of appends.
#[derive(Clone, Copy, Debug)]
enum Call {
    One,
    Appends(usize),
}

/// The reply of one call of the append script, as `n` replies of its appends: an answer
/// starting with a letter is the error Redis gave that message; an error for the whole call is
/// each one's; a reply of another shape is malformed for all.
fn each_append(reply: Reply, n: usize) -> Vec<Reply> {
    match reply {
        Reply::Bulks(parts) if parts.len() == n => parts
            .into_iter()
            .map(|part| match part {
                Some(text) if !text.first().is_some_and(u8::is_ascii_digit) => {
                    Reply::Error(String::from_utf8_lossy(&text).into_owned())
                }
                part => Reply::Bulks(vec![part]),
            })
            .collect(),
        Reply::Error(e) => (0..n).map(|_| Reply::Error(e.clone())).collect(),
        _ => (0..n).map(|_| Reply::Bulks(Vec::new())).collect(),
    }
}

/// The master a `-MOVED <slot> <host>:<port>` names.
fn moved_to(error: &str) -> Option<Node> {
    let (host, port) = error
        .strip_prefix("MOVED ")?
        .split_whitespace()
        .nth(1)?
        .rsplit_once(':')?;
    Some(Node {
        host: host.to_string(),
        port: port.parse().ok()?,
    })
}

impl Conn {
    /// Loads the history scripts (always: they are small, and a Redis that restarted has
    /// forgotten them), and with history reads the lineage: without it no topic can be
    /// checked, so a Redis that hides `INFO` cannot keep history.
    async fn new(mut reader: Reader, mut writer: Writer, history: bool) -> Result<Self, String> {
        let mut sha = Vec::new();
        let (write, purge) = (
            super::presence::write_script(),
            super::presence::purge_script(),
        );
        let scripts = [APPEND, READ, &write, &purge, PAGE, COUNT];
        for script in scripts {
            writer
                .command(&[b"SCRIPT", b"LOAD", script.as_bytes()])
                .await
                .map_err(|e| e.to_string())?;
            match within(reader.reply(1024)).await? {
                Reply::Bulks(parts) => match parts.first() {
                    Some(Some(hash)) => sha.push(String::from_utf8_lossy(hash).into_owned()),
                    _ => return Err("SCRIPT LOAD answered no hash".into()),
                },
                other => return Err(format!("SCRIPT LOAD answered {other:?}")),
            }
        }
        let [append, read, write, purge, page, count] =
            <[String; 6]>::try_from(sha).expect("every script loaded");
        let mut conn = Conn {
            reader,
            writer,
            append,
            read,
            presence: Scripts {
                write,
                purge,
                page,
                count,
            },
            lineage: Lineage::default(),
            lineage_stale: true,
        };
        if history {
            within(conn.read_lineage())
                .await
                .map_err(|e| format!("cannot read INFO, which history needs: {e}"))?;
        }
        Ok(conn)
    }

    /// Whether Redis is under its `maxmemory` (or has none) now, from `INFO memory`.
    async fn has_room(&mut self) -> Result<bool, String> {
        self.writer
            .command(&[b"INFO", b"memory"])
            .await
            .map_err(|e| e.to_string())?;
        let text = match self.reader.reply(64 * 1024).await? {
            Reply::Bulks(parts) => parts.first().cloned().flatten().unwrap_or_default(),
            other => return Err(format!("INFO answered {other:?}")),
        };
        let text = String::from_utf8_lossy(&text);
        let field = |name: &str| -> Option<u64> { pubsub::info_field(&text, name)?.parse().ok() };
        Ok(match (field("used_memory"), field("maxmemory")) {
            (_, Some(0)) => true,
            (Some(used), Some(max)) => used < max,
            _ => true,
        })
    }

    /// One command and its integer reply.
    async fn call(&mut self, args: &[&[u8]]) -> Result<i64, String> {
        self.writer.command(args).await.map_err(|e| e.to_string())?;
        self.reader.integer().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_reply_names_its_master() {
        let node = moved_to("MOVED 2578 127.0.0.1:40975").unwrap();
        assert_eq!(node.to_string(), "127.0.0.1:40975");
        assert_eq!(moved_to("ASK 2578 127.0.0.1:40975"), None);
        assert_eq!(moved_to("MOVED 2578 nowhere"), None);
    }
}
