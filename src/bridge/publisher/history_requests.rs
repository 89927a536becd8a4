//! History on the publishing links: the append, read and touch requests encoded and answered,
//! the lineage they carry, and replica acknowledgements.
//!
//! Each history script checks a topic against the data its master writes in (the lineage:
//! `master_replid` and what it continues, read from `INFO`), so a failover onto a replica that
//! lacks acknowledged writes starts new epochs instead of giving offsets twice
//! ([`super::super::history`]). With `--history-ack-replicas`, appends and reads wait for the
//! pipeline's `WAIT` before they are published and answered.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::super::cluster::Node;
use super::super::history::{self, Lineage};
use super::super::pubsub::{self, Reply};
use super::super::wire;
use super::super::{within, Fate, LinkDown, Request};
use super::{master_changing, moved_to, Acknowledged, Conn, HistorySettings, Publisher};
use crate::metrics::ShardMetrics;
use crate::protocol::{random_hex, Topic};

/// The lineage arguments of the history scripts for one batch (see [`Publisher::lineage_args`]):
/// the five `position` takes, then the append's continuation flag.
#[derive(Default)]
pub(super) struct LineageArgs(pub(super) [String; 6]);

/// History requests waiting for the `WAIT` at the end of their pipeline (acknowledged mode).
#[derive(Default)]
pub(super) struct Held {
    pub(super) appends: Vec<HeldAppend>,
    pub(super) reads: Vec<(
        Topic,
        crate::history::Read,
        tokio::sync::oneshot::Sender<crate::history::Read>,
    )>,
}

/// An append the master took, to be published and answered once replicas hold it.
pub(super) struct HeldAppend {
    pub(super) topic: Topic,
    pub(super) payload: bytes::Bytes,
    pub(super) offset: u64,
    pub(super) epoch: Arc<str>,
    pub(super) reply: tokio::sync::oneshot::Sender<Fate>,
}

impl Publisher {
    /// History requests come only with history; a plain PUBLISH (the hot path) makes none of
    /// their arguments.
    fn settings(&self) -> HistorySettings {
        self.history.unwrap_or(HistorySettings {
            size: 0,
            ttl_ms: 0,
            ack: None,
            once_ttl_ms: 0,
        })
    }

    /// Encodes a run of appends as one call of the append script ([`history::APPEND`]), whose
    /// reply answers each in order.
    pub(super) fn encode_appends(
        &self,
        conn: &Conn,
        appends: &[Request],
        lineage: &LineageArgs,
        out: &mut Vec<u8>,
    ) {
        let settings = self.settings();
        let mut keys = Vec::with_capacity(appends.len() * 2);
        let mut messages: Vec<(String, &[u8], &[u8])> = Vec::with_capacity(appends.len());
        for request in appends {
            let Request::Append {
                topic,
                payload,
                once,
                ..
            } = request
            else {
                continue;
            };
            let (position, stream) = self.names.history(topic);
            keys.push(position);
            keys.push(stream);
            let count: &[u8] = match once {
                Some(key) => {
                    keys.push(self.names.once_in_topic(topic, key.as_str()));
                    b"3"
                }
                None => b"2",
            };
            messages.push((self.names.topic(topic), payload, count));
        }
        let (size, ttl) = (settings.size.to_string(), settings.ttl_ms.to_string());
        let (once_ttl, key_count) = (settings.once_ttl_ms.to_string(), keys.len().to_string());
        let new_epoch = random_hex(6);
        let header = wire::positioned_header(self.instance);
        let publish: &[u8] = if self.ack().is_some() {
            b""
        } else {
            self.publish_verb()
        };
        let l = &lineage.0;
        let mut args: Vec<&[u8]> = Vec::with_capacity(15 + keys.len() + messages.len() * 3);
        args.extend_from_slice(&[b"EVALSHA", conn.append.as_bytes(), key_count.as_bytes()]);
        args.extend(keys.iter().map(String::as_bytes));
        args.extend_from_slice(&[
            new_epoch.as_bytes(),
            size.as_bytes(),
            ttl.as_bytes(),
            publish,
            l[0].as_bytes(),
            l[1].as_bytes(),
            l[2].as_bytes(),
            l[3].as_bytes(),
            l[4].as_bytes(),
            l[5].as_bytes(),
            once_ttl.as_bytes(),
            &header,
        ]);
        for (channel, payload, count) in &messages {
            args.extend_from_slice(&[channel.as_bytes(), payload, count]);
        }
        pubsub::encode(out, &args);
    }

    /// Encodes a history request other than an append (read, touch). What the history scripts
    /// are told of the data they write in is `lineage`.
    pub(super) fn encode_history(
        &self,
        conn: &Conn,
        request: &Request,
        lineage: &LineageArgs,
        out: &mut Vec<u8>,
    ) {
        let settings = self.settings();
        match request {
            Request::Touch(topic) => {
                let (position, _) = self.names.history(topic);
                // A tenth more, as a read and an append keep it (see `history`).
                let ttl = settings.ttl_ms;
                let memory = (ttl * history::POSITION_MEMORY + ttl / 10).to_string();
                pubsub::encode(out, &[b"PEXPIRE", position.as_bytes(), memory.as_bytes()]);
            }
            Request::Read {
                topic,
                since,
                relayed,
                ..
            } => {
                let (position, stream) = self.names.history(topic);
                let offset = since.as_ref().map(|s| s.offset.to_string());
                let (ttl, new_epoch) = (settings.ttl_ms.to_string(), random_hex(6));
                let l = &lineage.0;
                let args: [&[u8]; 15] = [
                    b"EVALSHA",
                    conn.read.as_bytes(),
                    b"2",
                    position.as_bytes(),
                    stream.as_bytes(),
                    offset.as_deref().unwrap_or("").as_bytes(),
                    since.as_ref().map_or("", |s| s.epoch.as_str()).as_bytes(),
                    new_epoch.as_bytes(),
                    ttl.as_bytes(),
                    if *relayed { b"1" } else { b"0" },
                    l[0].as_bytes(),
                    l[1].as_bytes(),
                    l[2].as_bytes(),
                    l[3].as_bytes(),
                    l[4].as_bytes(),
                ];
                pubsub::encode(out, &args);
            }
            _ => {}
        }
    }

    /// Answers a history request from its reply: an append's offset (held for the `WAIT` in
    /// acknowledged mode), or why it was not taken; a read's finding (held likewise).
    pub(super) fn answer_history(
        &self,
        request: Request,
        reply: Reply,
        shard: &ShardMetrics,
        ack: Option<Acknowledged>,
        held: &mut Held,
    ) {
        match (request, reply) {
            (
                Request::Append {
                    topic,
                    payload,
                    reply,
                    ..
                },
                Reply::Bulks(parts),
            ) => {
                let text = parts
                    .first()
                    .and_then(|p| std::str::from_utf8(p.as_deref()?).ok());
                // `<offset> <epoch>`; for a key's repeat (nothing appended) ` again`, after ` p`
                // if the first was published by the script.
                let (text, again) = match text.and_then(|t| t.strip_suffix(" again")) {
                    Some(first) => (Some(first), true),
                    None => (text, false),
                };
                let (text, published) = match text.and_then(|t| t.strip_suffix(" p")) {
                    Some(first) => (Some(first), true),
                    None => (text, false),
                };
                let taken = text.and_then(|text| {
                    let (offset, epoch) = text.split_once(' ')?;
                    let offset: u64 = offset.parse().ok()?;
                    wire::is_epoch(epoch).then(|| (offset, Arc::<str>::from(epoch)))
                });
                // A repeat the script did not publish (acknowledged mode) waits and is published
                // like a new append: its first may never have been confirmed.
                if let (true, true, Some((offset, epoch))) = (again, published, &taken) {
                    let _ = reply.send(Fate::Taken(*offset, epoch.clone()));
                    return;
                }
                match (taken, ack) {
                    // Acknowledged mode: published and answered once replicas hold it.
                    (Some((offset, epoch)), Some(_)) => held.appends.push(HeldAppend {
                        topic,
                        payload,
                        offset,
                        epoch,
                        reply,
                    }),
                    (Some((offset, epoch)), None) => {
                        self.metrics.out_of_memory.store(false, Relaxed);
                        self.metrics.published.fetch_add(1, Relaxed);
                        shard.published.fetch_add(1, Relaxed);
                        let _ = reply.send(Fate::Taken(offset, epoch));
                    }
                    (None, _) => {
                        self.metrics.malformed.fetch_add(1, Relaxed);
                    }
                }
            }
            (Request::Append { reply: tx, .. }, Reply::Error(e)) => {
                let fate = if master_changing(&e) {
                    Fate::Failover
                } else if e.starts_with("OOM") {
                    self.metrics.out_of_memory.store(true, Relaxed);
                    Fate::OutOfMemory
                } else {
                    Fate::Refused
                };
                let _ = tx.send(fate);
            }
            (
                Request::Read {
                    topic,
                    since,
                    reply: tx,
                    ..
                },
                Reply::Bulks(parts),
            ) => {
                let target = topic.target();
                let max = self.max_message_bytes;
                match history::parse_read(&parts, &target, since.as_ref(), max) {
                    Some(read) if ack.is_some() => held.reads.push((topic, read, tx)),
                    Some(read) => {
                        let _ = self.seeds.send((topic, read.position.clone()));
                        let _ = tx.send(read);
                    }
                    None => {
                        self.metrics.malformed.fetch_add(1, Relaxed);
                    }
                }
            }
            // Refused or malformed: the dropped sender tells the caller.
            _ => {}
        }
    }

    pub(super) fn lineage_args(&self, conn: &Conn, node: &Node) -> LineageArgs {
        let mut others = String::from(",");
        {
            let live = self.lineages.lock().unwrap_or_else(|e| e.into_inner());
            for (_, replid) in live.iter().filter(|(n, _)| *n != node) {
                others.push_str(replid);
                others.push(',');
            }
        }
        let l = &conn.lineage;
        let flag = |on: bool| if on { "1" } else { "" }.to_string();
        LineageArgs([
            l.replid.clone(),
            l.predecessor.clone().unwrap_or_default(),
            l.started_ms.to_string(),
            flag(self.ack().is_some()),
            others,
            flag(self.all_replicas_confirm(conn)),
        ])
    }

    /// Records the lineage of `node`'s link (`None`: down, or no master now).
    pub(super) fn set_lineage(&self, node: &Node, lineage: Option<&Lineage>) {
        let mut live = self.lineages.lock().unwrap_or_else(|e| e.into_inner());
        match lineage.filter(|l| l.master) {
            Some(l) => live.insert(node.clone(), l.replid.clone()),
            None => live.remove(node),
        };
    }

    /// `--history-ack-replicas`, when on.
    pub(super) fn ack(&self) -> Option<Acknowledged> {
        self.history.and_then(|h| h.ack)
    }

    /// Before history requests go out: the lineage they carry is this master's now. A Redis
    /// that is no master would not run them: a cluster's node answers `-MOVED` (they follow it,
    /// and the map is read again); a single Redis's replica refuses them here (retry).
    pub(super) async fn check_lineage(
        &self,
        conn: &mut Conn,
        node: &Node,
        batch: &mut Vec<Request>,
    ) -> Result<(), LinkDown> {
        if conn.lineage_stale || !conn.lineage.master {
            if let Err(why) = within(conn.read_lineage()).await {
                batch.drain(..).for_each(|r| self.refuse(r));
                return Err(why);
            }
            self.set_lineage(node, Some(&conn.lineage));
        }
        if !conn.lineage.master {
            // A lineage read from a replica is its master's: a script sent with it could run
            // after a promotion and be taken for that master's. None is sent; the cluster's
            // map is read again, a single Redis's link is remade (a proxy may lead elsewhere).
            self.refresh.notify_one();
            let (history, rest): (Vec<_>, Vec<_>) = batch.drain(..).partition(Request::is_history);
            history
                .into_iter()
                .for_each(|r| self.refuse_as(r, Fate::Failover));
            *batch = rest;
            if !self.deployment.cluster {
                batch.drain(..).for_each(|r| self.refuse(r));
                return Err(format!("{node} is a replica now"));
            }
        }
        Ok(())
    }

    /// Whether every replica of this link's master must confirm its writes (acknowledged mode
    /// waiting for at least as many as it has): only then may a promoted replica continue a
    /// topic's epoch (see [`history::APPEND`]). Said once when it stops being so.
    pub(super) fn all_replicas_confirm(&self, conn: &Conn) -> bool {
        let Some(ack) = self.ack() else {
            return false;
        };
        let all = conn.lineage.replicas <= ack.replicas;
        if !all && !self.warned_replicas.swap(true, Relaxed) {
            tracing::warn!(
                "bridge: a master has {} replicas, more than --history-ack-replicas {}: a \
                 failover starts new epochs (clients reload), since the promoted replica may not \
                 be one that confirmed",
                conn.lineage.replicas,
                ack.replicas
            );
        }
        all
    }

    /// Reads the `WAIT` that ended an acknowledged pipeline. Confirmed: the appends are
    /// published (in their order) and answered, the reads answered. Not confirmed: the appends
    /// are unconfirmed (kept by the master only), the reads unanswered: what they found may
    /// not outlive the master, so no client may be given it.
    pub(super) async fn release_held(
        &self,
        conn: &mut Conn,
        shard: &ShardMetrics,
        held: Held,
        ack: Acknowledged,
    ) -> Result<(), String> {
        let confirmed = match conn.reader.reply(64).await? {
            Reply::Integer(n) => n >= i64::from(ack.replicas),
            Reply::Error(e) => {
                tracing::warn!("bridge: Redis refused WAIT: {e}");
                false
            }
            other => return Err(format!("WAIT answered {other:?}")),
        };
        if !confirmed {
            self.metrics
                .unconfirmed
                .fetch_add(held.appends.len() as u64, Relaxed);
            for append in held.appends {
                let _ = append.reply.send(Fate::Unconfirmed);
            }
            return Ok(());
        }
        for (topic, read, tx) in held.reads {
            let _ = self.seeds.send((topic, read.position.clone()));
            let _ = tx.send(read);
        }
        if held.appends.is_empty() {
            return Ok(());
        }
        let publish: &[u8] = match self.deployment.cluster {
            false => b"PUBLISH",
            true => b"SPUBLISH",
        };
        // What the append script would have published: the message at its place.
        let messages: Vec<_> = held
            .appends
            .iter()
            .map(|a| {
                let at = wire::At {
                    offset: a.offset,
                    epoch: &a.epoch,
                };
                (
                    self.names.topic(&a.topic),
                    wire::encode(self.instance, wire::Body::Positioned(at, &a.payload)),
                )
            })
            .collect();
        let mut out = Vec::new();
        for (channel, message) in &messages {
            pubsub::encode(&mut out, &[publish, channel.as_bytes(), message]);
        }
        conn.writer.raw(&out).await.map_err(|e| e.to_string())?;
        self.metrics.out_of_memory.store(false, Relaxed);
        for (a, (channel, payload)) in held.appends.into_iter().zip(messages) {
            // Taken whatever PUBLISH answers: the message is kept where replicas hold it. A
            // slot that moved meanwhile gets it where it went; otherwise a machine that missed
            // it reads it at the topic's next message, a client at its resume.
            if let Reply::Error(e) = conn.reader.reply(64).await? {
                tracing::warn!("bridge: Redis refused a PUBLISH: {e}");
                if let Some(node) = moved_to(&e).filter(|_| self.deployment.cluster) {
                    let publish = Request::Publish { channel, payload };
                    let _ = self
                        .redirects
                        .send((Request::Redirected(Box::new(publish)), node));
                }
            }
            self.metrics.published.fetch_add(1, Relaxed);
            shard.published.fetch_add(1, Relaxed);
            let _ = a.reply.send(Fate::Taken(a.offset, a.epoch));
        }
        Ok(())
    }
}

impl Conn {
    /// `INFO server` and `INFO replication`: which data this Redis holds now.
    pub(super) async fn read_lineage(&mut self) -> Result<(), String> {
        let mut out = Vec::new();
        pubsub::encode(&mut out, &[b"INFO", b"server"]);
        pubsub::encode(&mut out, &[b"INFO", b"replication"]);
        self.writer.raw(&out).await.map_err(|e| e.to_string())?;
        let mut text = String::new();
        for _ in 0..2 {
            match self.reader.reply(64 * 1024).await? {
                Reply::Bulks(parts) => {
                    let part = parts.first().cloned().flatten().unwrap_or_default();
                    text.push_str(&String::from_utf8_lossy(&part));
                }
                other => return Err(format!("INFO answered {other:?}")),
            }
        }
        self.lineage = Lineage::parse(&text).ok_or("INFO gave no replication id")?;
        self.lineage_stale = false;
        Ok(())
    }
}
