//! The publishing link: one Redis connection, one pipeline in flight at a time.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::mpsc;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{within, Backoff, Down, Outgoing, PING_EVERY, RESPONSE_TIMEOUT};
use crate::metrics::BridgeMetrics;

/// Most messages in one pipeline.
const BATCH: usize = 1024;

pub(super) async fn run(
    client: redis::Client,
    mut publish_rx: mpsc::Receiver<Outgoing>,
    metrics: Arc<BridgeMetrics>,
    shutdown: CancellationToken,
    where_: &str,
) {
    let mut backoff = Backoff::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut connected_before = false;
    loop {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let connecting = within(client.get_multiplexed_async_connection_with_config(&config));
        let mut conn = tokio::select! {
            () = shutdown.cancelled() => return,
            r = connecting => match r {
                Ok(conn) => conn,
                Err(why) => {
                    tracing::error!("bridge: cannot connect the publisher to {where_}: {why}; retrying");
                    drop_while_waiting(&mut publish_rx, backoff.next(), &metrics, &shutdown).await;
                    continue;
                }
            },
        };
        if connected_before {
            metrics.reconnects.fetch_add(1, Relaxed);
        }
        connected_before = true;
        backoff.reset();
        metrics.publish_up.store(true, Relaxed);
        tracing::info!("bridge: publisher connected to {where_}");
        let why = serve(&mut conn, &mut publish_rx, &mut batch, &metrics, &shutdown).await;
        metrics.publish_up.store(false, Relaxed);
        match why {
            None => return,
            Some(why) => tracing::warn!("bridge: publisher lost {where_}: {why}; reconnecting"),
        }
    }
}

/// Publishes until the link fails (returns why) or the process stops (returns `None`).
async fn serve(
    conn: &mut MultiplexedConnection,
    publish_rx: &mut mpsc::Receiver<Outgoing>,
    batch: &mut Vec<Outgoing>,
    metrics: &BridgeMetrics,
    shutdown: &CancellationToken,
) -> Option<Down> {
    let mut ping = interval(PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return None,
            n = publish_rx.recv_many(batch, BATCH) => {
                if n == 0 {
                    return None;
                }
                let mut pipe = redis::pipe();
                for out in batch.drain(..) {
                    pipe.publish(out.channel, &out.payload[..]).ignore();
                }
                match within(pipe.query_async::<()>(conn)).await {
                    Ok(()) => {
                        metrics.published.fetch_add(n as u64, Relaxed);
                        ping.reset();
                    }
                    Err(why) => {
                        metrics.dropped.fetch_add(n as u64, Relaxed);
                        return Some(why);
                    }
                }
            }
            _ = ping.tick() => {
                if let Err(why) = within(redis::cmd("PING").query_async::<()>(conn)).await {
                    return Some(why);
                }
            }
        }
    }
}

/// While disconnected: wait `delay`, dropping (and counting) what is published meanwhile so
/// nobody waits and nothing piles up.
async fn drop_while_waiting(
    publish_rx: &mut mpsc::Receiver<Outgoing>,
    delay: Duration,
    metrics: &BridgeMetrics,
    shutdown: &CancellationToken,
) {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    let mut dropped = Vec::new();
    loop {
        tokio::select! {
            () = &mut sleep => return,
            () = shutdown.cancelled() => return,
            n = publish_rx.recv_many(&mut dropped, BATCH) => {
                if n == 0 {
                    return;
                }
                metrics.dropped.fetch_add(n as u64, Relaxed);
                dropped.clear();
            }
        }
    }
}
