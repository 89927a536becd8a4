//! Starts the workers of one process, and stops them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenKeys;
use crate::bridge::{Bridge, BridgeConfig};
use crate::bus::Bus;
use crate::config::Config;
use crate::error::StartError;
use crate::hub::{self, Hub, SharedHub};
use crate::interest::Interest;
use crate::listener;
use crate::metrics::{BridgeMetrics, Metrics};
use crate::protocol::WorkerId;
use crate::router::{LocalRouter, Router};
use crate::worker::{self, WorkerContext};

/// A running server: its workers' threads and the token that stops them.
pub struct Server {
    local_addr: SocketAddr,
    worker_addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    threads: Vec<JoinHandle<()>>,
    hubs: Vec<SharedHub>,
    interest: Arc<Interest>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Binds the listeners and starts the workers. Returns once every worker listens.
    ///
    /// # Errors
    /// The address cannot be bound, a secret is missing, or the token self-test fails.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let secret = config
            .token_secret
            .as_deref()
            .ok_or(StartError::MissingSecret("--token-secret"))?;
        let keys = Arc::new(TokenKeys::new(secret)?);
        let api_key: Arc<str> = config
            .api_key
            .as_deref()
            .ok_or(StartError::MissingSecret("--api-key"))?
            .into();
        let workers = config.workers();
        let listen_err = |addr| move |source| StartError::Listen { addr, source };
        let shared =
            listener::bind_shared(config.listen, workers).map_err(listen_err(config.listen))?;
        let local_addr = shared[0].local_addr().map_err(listen_err(config.listen))?;

        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let bridge_metrics = config
            .redis
            .as_ref()
            .map(|_| Arc::new(BridgeMetrics::default()));
        let metrics = Arc::new(Metrics::new(workers, bridge_metrics.clone()));
        let interest = Arc::new(match config.redis {
            Some(_) => Interest::with_remote(),
            None => Interest::default(),
        });
        let (bus, inboxes) = Bus::new(workers);
        let local = LocalRouter::new(interest.clone(), bus);
        let mut threads = Vec::with_capacity(workers + 1);
        let bridge = match (&config.redis, bridge_metrics) {
            (Some(url), Some(bridge_metrics)) => {
                let bridge_config = BridgeConfig {
                    url: url.clone(),
                    prefix: config.redis_prefix.clone(),
                    node_id: config.node_id(),
                };
                let (bridge, thread) = Bridge::start(
                    bridge_config,
                    interest.clone(),
                    local.clone(),
                    bridge_metrics,
                    shutdown.child_token(),
                )?;
                threads.push(thread);
                Some(bridge)
            }
            _ => None,
        };
        let router = Arc::new(Router::new(local, bridge, metrics.clone()));

        let mut hubs = Vec::with_capacity(workers);
        let mut worker_addrs = Vec::new();
        for (i, (listener, inbox_rx)) in shared.into_iter().zip(inboxes).enumerate() {
            let id = WorkerId(i as u8);
            let worker_metrics = metrics.workers[i].clone();
            let hub: SharedHub = Arc::new(std::sync::Mutex::new(Hub::new(
                id,
                interest.clone(),
                worker_metrics.clone(),
            )));
            let mut listeners = vec![listener];
            if config.worker_listeners {
                let private = listener::bind_private()
                    .map_err(listen_err(SocketAddr::from(([127, 0, 0, 1], 0))))?;
                worker_addrs.extend(private.local_addr().ok());
                listeners.push(private);
            }
            let ctx = Arc::new(WorkerContext {
                id,
                config: config.clone(),
                keys: keys.clone(),
                api_key: api_key.clone(),
                router: router.clone(),
                interest: interest.clone(),
                hub: hub.clone(),
                metrics: metrics.clone(),
                worker_metrics,
                shutdown: shutdown.child_token(),
                tracker: TaskTracker::new(),
                next_conn: Default::default(),
            });
            hubs.push(hub);
            let thread = std::thread::Builder::new()
                .name(format!("fanfare-worker-{i}"))
                .spawn(move || worker::run(ctx, listeners, inbox_rx))
                .map_err(StartError::Thread)?;
            threads.push(thread);
        }
        Ok(Server {
            local_addr,
            worker_addrs,
            shutdown,
            threads,
            hubs,
            interest,
            metrics,
        })
    }

    /// The address every worker listens on (with the real port when `--listen` said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Each worker's private listener, in worker order, when `worker_listeners` is set.
    pub fn worker_addrs(&self) -> &[SocketAddr] {
        &self.worker_addrs
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Entries left in every hub and in the interest table; 0 when no connection is open.
    pub fn registry_entries(&self) -> usize {
        let hubs: usize = self.hubs.iter().map(|h| hub::lock(h).entries()).sum();
        hubs + self.interest.len()
    }

    /// Starts a graceful shutdown: stop accepting, close every WebSocket with 1001.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the workers to finish, at most `limit`. Returns false if some did not.
    pub fn join(mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let threads = std::mem::take(&mut self.threads);
        for t in &threads {
            while !t.is_finished() {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for t in threads {
            let _ = t.join();
        }
        true
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
