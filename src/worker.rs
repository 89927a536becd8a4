//! One worker: an OS thread with its own single-threaded tokio runtime, its own listener on the
//! shared port, its own hub, and its bus task. A connection lives and dies on the worker that
//! accepted it.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::bus::Inbox;
use crate::context::WorkerContext;
use crate::http;
use crate::hub::{self, SharedHub};
use crate::metrics::WorkerMetrics;

/// Deliveries the bus task hands to the hub under one lock.
const BUS_BATCH: usize = 64;

/// Runs the worker on the current thread until shutdown and the drain are done.
pub fn run(ctx: Arc<WorkerContext>, listeners: Vec<std::net::TcpListener>, inbox_rx: Inbox) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built (fails only when the OS refuses an epoll fd)");
    let drain = ctx.drain.clone();
    runtime.block_on(async move {
        tokio::spawn(bus_task(
            inbox_rx,
            ctx.hub.clone(),
            ctx.worker_metrics.clone(),
        ));
        let presence = ctx.shared.router.presence().clone();
        if ctx.id.0 == 0 && !presence.is_fleet() {
            // A process alone sends the `join`/`leave` of what changed, a batch at a time.
            let shutdown = ctx.shutdown.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(crate::presence::EVENTS_EVERY);
                while shutdown.run_until_cancelled(every.tick()).await.is_some() {
                    presence.flush_events();
                }
            });
        }
        // Until Redis answers (bounded), connections wait in the listen backlog.
        let started = ctx.shared.router.started();
        if ctx.shutdown.run_until_cancelled(started).await.is_some() {
            for listener in listeners {
                match TcpListener::from_std(listener) {
                    Ok(l) => {
                        tokio::spawn(accept_loop(l, ctx.clone()));
                    }
                    Err(e) => tracing::error!(worker = ctx.id.0, "cannot register listener: {e}"),
                }
            }
        }
        ctx.shutdown.cancelled().await;
        crate::hub::lock(&ctx.hub).drain();
        ctx.tracker.close();
        let drain = ctx.shared.config.shutdown_timeout();
        if tokio::time::timeout(drain, ctx.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                worker = ctx.id.0,
                open = ctx.tracker.len(),
                "shutdown timeout: dropping connections still open"
            );
        }
    });
    drain.finished();
}

/// Hands every delivery from this worker's inbox to its hub, a batch per lock (and per flush of
/// each connection it touches).
async fn bus_task(mut inbox_rx: Inbox, hub: SharedHub, metrics: Arc<WorkerMetrics>) {
    let mut batch = Vec::with_capacity(BUS_BATCH);
    while inbox_rx.recv_many(&mut batch, BUS_BATCH).await > 0 {
        metrics
            .bus_received
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        hub::lock(&hub).deliver_batch(&batch);
        batch.clear();
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<WorkerContext>) {
    let routes = http::routes::routes(ctx.clone());
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                ctx.tracker
                    .spawn(http::serve_connection(stream, ctx.clone(), routes.clone()));
            }
            Err(e) => {
                // Out of descriptors or memory: wait a little for connections to close.
                tracing::warn!(worker = ctx.id.0, "accept failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
