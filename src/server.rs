//! Starts the workers of one process, and stops them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenKeys;
use crate::bridge::{Acknowledged, Bridge, BridgeConfig, HistorySettings};
use crate::bus::Bus;
use crate::config::Config;
use crate::context::{Drain, Shared, WorkerContext};
use crate::error::StartError;
use crate::history::History;
use crate::hub::{self, Hub, SharedHub};
use crate::listener;
use crate::metrics::{BridgeMetrics, Metrics};
use crate::protocol::WorkerId;
use crate::router::Router;
use crate::routes::Routes;
use crate::subscriptions::SubscriptionLog;
use crate::worker;

/// A running server: its workers' threads and the token that stops them.
pub struct Server {
    local_addr: SocketAddr,
    worker_addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    threads: Vec<JoinHandle<()>>,
    hubs: Vec<SharedHub>,
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Binds the listeners and starts the workers. Returns once every worker listens. Every
    /// check that can fail runs before the first thread starts, and a thread that cannot be
    /// started stops the ones before it: a failed start leaves nothing running.
    ///
    /// # Errors
    /// The address cannot be bound, a secret is missing, the token self-test fails, the Redis
    /// settings are invalid, or a thread cannot be started.
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
        if config.history_ack_replicas > 0 && (config.redis.is_none() || config.history_size == 0) {
            return Err(StartError::AckWithoutRedisHistory);
        }
        let pusher = match (
            &config.pusher_app_id,
            &config.pusher_key,
            &config.pusher_secret,
        ) {
            (Some(id), Some(key), Some(secret))
                if !id.is_empty() && !key.is_empty() && !secret.is_empty() =>
            {
                Some(Arc::new(crate::pusher::App::new(
                    id.clone(),
                    key.clone(),
                    secret.clone(),
                )))
            }
            (None, None, None) => None,
            _ => return Err(StartError::PusherPartial),
        };
        let webhooks = webhooks(&config, pusher.as_ref())?;
        let workers = config.workers();
        let bridge_metrics = config
            .redis
            .as_ref()
            .map(|_| Arc::new(BridgeMetrics::default()));
        let log = config
            .redis
            .as_ref()
            .map(|_| Arc::new(SubscriptionLog::default()));
        let prepared = match (&config.redis, &bridge_metrics, &log) {
            (Some(url), Some(metrics), Some(log)) => Some(Bridge::prepare(
                BridgeConfig {
                    url: url.clone(),
                    prefix: config.redis_prefix.clone(),
                    node_id: config.node_id(),
                    max_message_bytes: config.max_message_bytes,
                    once_ttl_ms: config.idempotency_ttl * 1000,
                    tls: crate::bridge::tls::TlsFiles {
                        ca: config.redis_ca.clone(),
                        cert: config.redis_cert.clone(),
                        key: config.redis_key.clone(),
                    },
                    history: (config.history_size > 0).then(|| HistorySettings {
                        size: config.history_size,
                        ttl_ms: config.history_ttl().as_millis() as u64,
                        once_ttl_ms: config.idempotency_ttl * 1000,
                        ack: (config.history_ack_replicas > 0).then_some(Acknowledged {
                            replicas: config.history_ack_replicas,
                            timeout_ms: config.history_ack_timeout,
                        }),
                    }),
                },
                log.clone(),
                metrics.clone(),
            )?),
            _ => None,
        };
        let listen_err = |addr| move |source| StartError::Listen { addr, source };
        let on_port =
            listener::bind_shared(config.listen, workers).map_err(listen_err(config.listen))?;
        let local_addr = on_port[0].local_addr().map_err(listen_err(config.listen))?;
        let mut private = Vec::new();
        if config.worker_listeners {
            for _ in 0..workers {
                let l = listener::bind_private()
                    .map_err(listen_err(SocketAddr::from(([127, 0, 0, 1], 0))))?;
                private.push(l);
            }
        }
        let worker_addrs = private.iter().filter_map(|l| l.local_addr().ok()).collect();

        let config = Arc::new(config);
        let routes = Arc::new(Routes::new(workers, log));
        // With Redis, the history is kept there (see the bridge); here only without.
        let history = (config.history_size > 0 && config.redis.is_none()).then(|| {
            Arc::new(
                History::new(
                    config.history_size as usize,
                    config.history_ttl(),
                    routes.clone(),
                )
                .with_max_bytes(config.history_max_bytes()),
            )
        });
        let metrics = Arc::new(
            Metrics::new(workers, bridge_metrics, history.clone()).with_webhooks(webhooks.clone()),
        );
        let (bus, inboxes) = Bus::new(routes.clone(), workers);
        let connection_slots = Arc::new(Semaphore::new(
            config.max_connections().min(Semaphore::MAX_PERMITS),
        ));
        let drain = Arc::new(Drain::new(workers));
        let mut started = Started {
            shutdown: CancellationToken::new(),
            threads: Vec::with_capacity(workers + 1),
            bridge_stop: drain.done.clone(),
        };
        let presence = Arc::new(match (prepared.is_some(), &webhooks) {
            (true, _) => crate::presence::Presence::new(bus.clone()).fleet(),
            (false, Some(hooks)) => {
                crate::presence::Presence::new(bus.clone()).with_webhooks(hooks.clone())
            }
            (false, None) => crate::presence::Presence::new(bus.clone()),
        });
        if let (false, Some(hooks)) = (presence.is_fleet(), &webhooks) {
            // Alone: the last leaves, once the workers have closed their connections, are
            // delivered too.
            let last = presence.clone();
            let thread =
                crate::webhooks::spawn_alone(hooks.clone(), drain.done.clone(), move || {
                    last.flush_events()
                })
                .map_err(StartError::Thread)?;
            started.threads.push(thread);
        }
        let bridge = match prepared {
            Some(prepared) => {
                // Stops once the workers have drained (see `Drain`), not with them.
                let (bridge, thread) = prepared.spawn(
                    bus.clone(),
                    Some(presence.clone()),
                    webhooks.clone(),
                    drain.done.clone(),
                )?;
                started.threads.push(thread);
                Some(bridge)
            }
            None => None,
        };
        let router = Arc::new(
            Router::new(
                bus,
                bridge,
                history.clone(),
                presence.clone(),
                metrics.clone(),
            )
            .with_idempotency_ttl(Duration::from_secs(config.idempotency_ttl)),
        );
        let shared = Arc::new(Shared {
            config: config.clone(),
            keys,
            api_key,
            router,
            metrics: metrics.clone(),
            connection_slots,
            pusher,
            webhooks,
            accept: (config.accept_rate > 0).then(|| {
                std::sync::Mutex::new(crate::rate::Bucket::new(
                    config.accept_rate,
                    config.accept_rate,
                ))
            }),
        });

        let mut hubs = Vec::with_capacity(workers);
        let mut private = private.into_iter();
        for (i, (listener, inbox_rx)) in on_port.into_iter().zip(inboxes).enumerate() {
            let id = WorkerId(i as u8);
            let worker_metrics = metrics.workers[i].clone();
            let hub = Hub::new(
                id,
                routes.clone(),
                config.max_subscriptions as usize,
                worker_metrics.clone(),
            );
            let hub = match config.history_size > 0 {
                true => hub.with_history(),
                false => hub,
            }
            .with_presence(presence.clone());
            let hub: SharedHub = Arc::new(std::sync::Mutex::new(hub));
            let listeners = std::iter::once(listener).chain(private.next()).collect();
            let shutdown = started.shutdown.child_token();
            let config = &shared.config;
            let connections = Arc::new(crate::connection::Surroundings {
                log: shared.router.subscription_log(),
                keys: shared.keys.clone(),
                router: shared.router.clone(),
                ping_interval: config.ping_interval(),
                metrics: worker_metrics.clone(),
                restart_spread: crate::connection::restart_spread(config.shutdown_timeout()),
            });
            let ctx = Arc::new(WorkerContext {
                id,
                shared: shared.clone(),
                hub: hub.clone(),
                worker_metrics,
                connections,
                shutdown,
                tracker: TaskTracker::new(),
                next_conn: Default::default(),
                drain: drain.clone(),
            });
            hubs.push(hub);
            let thread = std::thread::Builder::new()
                .name(format!("fanfare-worker-{i}"))
                .spawn(move || worker::run(ctx, listeners, inbox_rx))
                .map_err(StartError::Thread)?;
            started.threads.push(thread);
        }
        let (shutdown, threads) = started.keep();
        Ok(Server {
            local_addr,
            worker_addrs,
            shutdown,
            threads,
            hubs,
            routes,
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

    /// Entries left in every hub and in the routing table; 0 when no connection is open.
    pub fn registry_entries(&self) -> usize {
        let hubs: usize = self.hubs.iter().map(|h| hub::lock(h).entries()).sum();
        hubs + self.routes.len()
    }

    /// Starts a graceful shutdown: stop accepting, close every WebSocket with 1001.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the workers to finish, at most `limit`. Returns false if some did not.
    pub fn join(mut self, limit: Duration) -> bool {
        let threads = std::mem::take(&mut self.threads);
        let (done, finished) = std::sync::mpsc::channel();
        // A helper joins them, so the wait ends the moment the last one does; past the limit it
        // is left behind, still waiting, like the threads it waits for.
        let joiner = std::thread::Builder::new()
            .name("fanfare-join".into())
            .spawn(move || {
                for t in threads {
                    let _ = t.join();
                }
                let _ = done.send(());
            });
        joiner.is_ok() && finished.recv_timeout(limit).is_ok()
    }
}

/// The webhooks `--pusher-webhook` asks for: absolute http(s) URLs, for the Pusher app.
fn webhooks(
    config: &Config,
    app: Option<&Arc<crate::pusher::App>>,
) -> Result<Option<Arc<crate::webhooks::Webhooks>>, StartError> {
    if config.pusher_webhooks.is_empty() {
        return Ok(None);
    }
    for url in &config.pusher_webhooks {
        let valid = reqwest::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !valid {
            return Err(StartError::Webhook(url.clone(), "not an http(s) URL"));
        }
    }
    let Some(app) = app else {
        let first = config.pusher_webhooks[0].clone();
        return Err(StartError::Webhook(
            first,
            "needs --pusher-app-id, --pusher-key and --pusher-secret",
        ));
    };
    Ok(Some(Arc::new(crate::webhooks::Webhooks::new(
        app.clone(),
        config.pusher_webhooks.clone(),
    ))))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Threads started so far; stopped and joined if the start fails before [`Started::keep`].
struct Started {
    shutdown: CancellationToken,
    threads: Vec<JoinHandle<()>>,
    /// The bridge's stop: cancelled by the last worker's drain, or here if the start failed.
    bridge_stop: CancellationToken,
}

impl Started {
    /// The start succeeded: the threads are the server's now.
    fn keep(mut self) -> (CancellationToken, Vec<JoinHandle<()>>) {
        (self.shutdown.clone(), std::mem::take(&mut self.threads))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shutdown.cancel();
        self.bridge_stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
