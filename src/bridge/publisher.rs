//! The publishing link: one Redis connection, one pipeline in flight at a time. It also holds
//! this process's claim on its node id.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::mpsc;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{within, Backoff, LinkDown, Outgoing, CLAIM_TTL, PING_EVERY, RESPONSE_TIMEOUT};
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

pub(super) struct Publisher {
    pub client: redis::Client,
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
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(RESPONSE_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let connecting = within(
                self.client
                    .get_multiplexed_async_connection_with_config(&config),
            );
            let mut conn = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = connecting => match r {
                    Ok(conn) => conn,
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
        conn: &mut MultiplexedConnection,
        publish_rx: &mut mpsc::Receiver<Outgoing>,
        batch: &mut Vec<Outgoing>,
    ) -> Option<LinkDown> {
        let mut ping = interval(PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
                    let mut pipe = redis::pipe();
                    for out in batch.drain(..) {
                        pipe.publish(out.channel, &out.payload[..]).ignore();
                    }
                    match within(pipe.query_async::<()>(conn)).await {
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
    async fn claim(&self, conn: &mut MultiplexedConnection) -> Result<(), LinkDown> {
        let held: i64 = within(
            redis::cmd("EVAL")
                .arg(CLAIM)
                .arg(1)
                .arg(&self.claim_key)
                .arg(self.instance)
                .arg(CLAIM_TTL.as_millis() as u64)
                .query_async(conn),
        )
        .await?;
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

    async fn release(&self, conn: &mut MultiplexedConnection) {
        let mut release = redis::cmd("EVAL");
        release
            .arg(RELEASE)
            .arg(1)
            .arg(&self.claim_key)
            .arg(self.instance);
        let _ = tokio::time::timeout(Duration::from_millis(500), release.query_async::<i64>(conn))
            .await;
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
