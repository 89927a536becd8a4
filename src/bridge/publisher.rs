//! The publishing link: one Redis connection of our own ([`pubsub`]), one pipeline in flight
//! at a time: a batch of PUBLISH commands written at once, then their integer replies read
//! back (redis-rs parsed each reply into a generic value, which cost the bridge more than
//! Redis spends serving it). It also holds this process's claim on its node id.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::pubsub::{self, Reader, Writer};
use super::{within, Backoff, LinkDown, Outgoing, CLAIM_TTL, PING_EVERY};
use crate::metrics::BridgeMetrics;

/// Most messages in one pipeline.
const BATCH: usize = 1024;

/// Takes or renews the claim if it is free or ours; 1 if we hold it now, 0 if another does.
const CLAIM: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0";

/// Gives the claim back at shutdown, if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// A connection of the publisher: commands out, integer replies in.
struct Conn {
    reader: Reader,
    writer: Writer,
}

pub(super) struct Publisher {
    pub connection: redis::ConnectionInfo,
    /// `<prefix>n:<node id>`, holding the instance id of the process that uses the node id.
    pub claim_key: String,
    pub node_id: Arc<str>,
    pub instance: u64,
    pub metrics: Arc<BridgeMetrics>,
    pub shutdown: CancellationToken,
}

impl Publisher {
    pub async fn run(&self, mut publish_rx: mpsc::Receiver<Outgoing>, where_: &str) {
        let mut backoff = Backoff::new();
        let mut batch = Vec::with_capacity(BATCH);
        let mut connected_before = false;
        loop {
            // Replies are integers; no bulk string is ever read here.
            let connecting = within(pubsub::connect(&self.connection, 0));
            let mut conn = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = connecting => match r {
                    Ok((reader, writer)) => Conn { reader, writer },
                    Err(why) => {
                        tracing::error!("bridge: cannot connect the publisher to {where_}: {why}; retrying");
                        self.drop_while_waiting(&mut publish_rx, backoff.next()).await;
                        continue;
                    }
                },
            };
            if let Err(why) = self.claim(&mut conn).await {
                tracing::warn!("bridge: publisher lost {where_}: {why}; reconnecting");
                self.drop_while_waiting(&mut publish_rx, backoff.next())
                    .await;
                continue;
            }
            if connected_before {
                self.metrics.reconnects.fetch_add(1, Relaxed);
            }
            connected_before = true;
            backoff.reset();
            self.metrics.publish_up.store(true, Relaxed);
            tracing::info!("bridge: publisher connected to {where_}");
            let why = self.serve(&mut conn, &mut publish_rx, &mut batch).await;
            self.metrics.publish_up.store(false, Relaxed);
            match why {
                None => {
                    self.release(&mut conn).await;
                    return;
                }
                Some(why) => tracing::warn!("bridge: publisher lost {where_}: {why}; reconnecting"),
            }
        }
    }

    /// Publishes until the link fails (returns why) or the process stops (returns `None`).
    async fn serve(
        &self,
        conn: &mut Conn,
        publish_rx: &mut mpsc::Receiver<Outgoing>,
        batch: &mut Vec<Outgoing>,
    ) -> Option<LinkDown> {
        let mut ping = interval(PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pipeline = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                // Before the queue: under steady load the queue is always ready, and the claim
                // must still be renewed (it is also the link's ping).
                _ = ping.tick() => {
                    if let Err(why) = self.claim(conn).await {
                        return Some(why);
                    }
                }
                n = publish_rx.recv_many(batch, BATCH) => {
                    if n == 0 {
                        return None;
                    }
                    pipeline.clear();
                    for out in batch.drain(..) {
                        pubsub::encode(&mut pipeline, &[b"PUBLISH", out.channel.as_bytes(), &out.payload]);
                    }
                    match within(conn.pipeline(&pipeline, n)).await {
                        Ok(()) => self.metrics.published.fetch_add(n as u64, Relaxed),
                        Err(why) => {
                            self.metrics.dropped.fetch_add(n as u64, Relaxed);
                            return Some(why);
                        }
                    };
                }
            }
        }
    }

    /// Takes or renews the node id claim; a claim held by another process is a conflict, said
    /// loudly once and shown by `/readyz` until it is resolved.
    async fn claim(&self, conn: &mut Conn) -> Result<(), LinkDown> {
        let instance = self.instance.to_string();
        let ttl = (CLAIM_TTL.as_millis() as u64).to_string();
        let args: [&[u8]; 6] = [
            b"EVAL",
            CLAIM.as_bytes(),
            b"1",
            self.claim_key.as_bytes(),
            instance.as_bytes(),
            ttl.as_bytes(),
        ];
        let held = within(conn.call(&args)).await?;
        let conflict = held == 0;
        let was = self.metrics.node_conflict.swap(conflict, Relaxed);
        if conflict && !was {
            tracing::error!(
                "bridge: another process already uses --node-id {}: this one is unready until \
                 that one stops (each process of a fleet needs its own id)",
                self.node_id
            );
        } else if was && !conflict {
            tracing::info!("bridge: --node-id {} is ours now", self.node_id);
        }
        Ok(())
    }

    async fn release(&self, conn: &mut Conn) {
        let instance = self.instance.to_string();
        let args: [&[u8]; 5] = [
            b"EVAL",
            RELEASE.as_bytes(),
            b"1",
            self.claim_key.as_bytes(),
            instance.as_bytes(),
        ];
        let _ = tokio::time::timeout(Duration::from_millis(500), conn.call(&args)).await;
    }

    /// While disconnected: wait `delay`, dropping (and counting) what is published meanwhile so
    /// nobody waits and nothing piles up.
    async fn drop_while_waiting(&self, publish_rx: &mut mpsc::Receiver<Outgoing>, delay: Duration) {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        let mut dropped = Vec::new();
        loop {
            tokio::select! {
                () = &mut sleep => return,
                () = self.shutdown.cancelled() => return,
                n = publish_rx.recv_many(&mut dropped, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    self.metrics.dropped.fetch_add(n as u64, Relaxed);
                    dropped.clear();
                }
            }
        }
    }
}

impl Conn {
    /// One command and its integer reply.
    async fn call(&mut self, args: &[&[u8]]) -> Result<i64, String> {
        self.writer.command(args).await.map_err(|e| e.to_string())?;
        self.reader.integer().await
    }

    /// Commands already encoded, written at once, and their `n` integer replies read back.
    async fn pipeline(&mut self, encoded: &[u8], n: usize) -> Result<(), String> {
        self.writer.raw(encoded).await.map_err(|e| e.to_string())?;
        for _ in 0..n {
            self.reader.integer().await?;
        }
        Ok(())
    }
}
