//! The history's lineage and replica acknowledgements, as the publishing links carry them.
//!
//! Each history script checks a topic against the data its master writes in (the lineage:
//! `master_replid` and what it continues, read from `INFO`), so a failover onto a replica that
//! lacks acknowledged writes starts new epochs instead of giving offsets twice
//! ([`super::super::history`]). With `--history-ack-replicas`, appends and reads wait for the
//! pipeline's `WAIT` before they are published and answered.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::super::cluster::Node;
use super::super::history::Lineage;
use super::super::pubsub::{self, Reply};
use super::super::wire;
use super::super::{within, Fate, LinkDown, Request};
use super::{moved_to, Acknowledged, Conn, Publisher};
use crate::metrics::ShardMetrics;
use crate::protocol::Topic;

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
