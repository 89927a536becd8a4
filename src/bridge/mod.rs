//! The Redis bridge: one per process, relaying messages between the machines of a fleet.
//!
//! - The **publisher** sends every message this process accepts to Redis, on the channel of its
//!   target, pipelined: whatever queued while one batch was in flight goes out as the next.
//! - The **subscriber** holds one Redis subscription per user and channel that has a local
//!   recipient (plus one for broadcasts), mirroring [`Interest`], and hands what arrives to the
//!   local bus. A machine with no recipient for a message is sent nothing for it.
//!
//! Redis pub/sub is **at most once**: what is published while a machine is cut off from Redis
//! is lost for that machine. While a link is down, messages for other machines are dropped and
//! counted (never queued without bound, never waited for), local delivery goes on, and the
//! link reconnects with capped exponential backoff; the subscriber then restores every
//! subscription from the interest table. Both links ping Redis every second, so a link that
//! silently stops answering counts as down within [`RESPONSE_TIMEOUT`] + 1 s.
//!
//! The accepting machine delivers locally at once; its own messages coming back from Redis are
//! recognised by the node id in their header and dropped, so nobody gets a copy twice.

mod publisher;
mod subscriber;
pub mod wire;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::Delivery;
use crate::interest::Interest;
use crate::metrics::BridgeMetrics;
use crate::router::LocalRouter;
use wire::Names;

/// Longest wait for Redis to answer a command or accept a connection; past it the link is down.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often each link pings Redis.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Messages waiting for the publisher; past this they are dropped and counted.
const PUBLISH_QUEUE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --redis URL: {0}")]
    Url(#[from] redis::RedisError),
    #[error("--node-id must be 1 to {} bytes", wire::MAX_NODE_ID_BYTES)]
    NodeId,
    #[error("cannot start the bridge thread: {0}")]
    Thread(std::io::Error),
}

/// Where the bridge connects and how it names things.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    pub url: String,
    pub prefix: String,
    pub node_id: String,
}

/// One message for Redis: its channel and its encoded payload.
struct Outgoing {
    channel: String,
    payload: Bytes,
}

/// The process's handle on the bridge; the router publishes through it.
pub struct Bridge {
    names: Names,
    node_id: Arc<str>,
    /// To the publisher task; closed when the bridge stops.
    publish_tx: mpsc::Sender<Outgoing>,
    metrics: Arc<BridgeMetrics>,
}

impl Bridge {
    /// Starts the bridge thread. An unreachable Redis is no error: the links retry until it
    /// answers, and `/readyz` says 503 meanwhile.
    ///
    /// # Errors
    /// A `--redis` URL that does not parse, or a node id that does not fit the header.
    pub fn start(
        config: BridgeConfig,
        interest: Arc<Interest>,
        local: LocalRouter,
        metrics: Arc<BridgeMetrics>,
        shutdown: CancellationToken,
    ) -> Result<(Bridge, JoinHandle<()>), Error> {
        if config.node_id.is_empty() || config.node_id.len() > wire::MAX_NODE_ID_BYTES {
            return Err(Error::NodeId);
        }
        let client = redis::Client::open(config.url.as_str())?;
        let names = Names::new(&config.prefix);
        let node_id: Arc<str> = config.node_id.as_str().into();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let subscriber = subscriber::Subscriber {
            client: client.clone(),
            names: names.clone(),
            node_id: node_id.clone(),
            interest,
            local,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let publisher_metrics = metrics.clone();
        let where_ = redact(&config.url);
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
                    tracing::info!(node_id = %subscriber.node_id, "bridge connecting to {where_}");
                    tokio::join!(
                        publisher::run(client, publish_rx, publisher_metrics, shutdown, &where_),
                        subscriber.run(&where_),
                    );
                });
            })
            .map_err(Error::Thread)?;
        let bridge = Bridge {
            names,
            node_id,
            publish_tx,
            metrics,
        };
        Ok((bridge, thread))
    }

    /// Queues `delivery` for the other machines. Never waits: while the publisher is down or
    /// behind, the message is dropped for them and counted.
    pub fn publish(&self, delivery: &Delivery) {
        if !self.metrics.publish_up.load(Relaxed) {
            self.metrics.dropped.fetch_add(1, Relaxed);
            return;
        }
        let outgoing = Outgoing {
            channel: self.names.target(&delivery.target),
            payload: wire::encode(&self.node_id, &delivery.frame),
        };
        if self.publish_tx.try_send(outgoing).is_err() {
            self.metrics.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Both links are connected: a message accepted now reaches every machine.
    pub fn is_up(&self) -> bool {
        self.metrics.is_up()
    }
}

/// Why a link went down, for the log.
type Down = String;

/// A Redis call that must answer within [`RESPONSE_TIMEOUT`]; a failure or silence is the link
/// going down, described for the log.
async fn within<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Down> {
    match tokio::time::timeout(RESPONSE_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", RESPONSE_TIMEOUT.as_secs())),
    }
}

/// Capped exponential backoff between reconnection attempts.
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
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
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
    fn backoff_doubles_up_to_a_cap() {
        let mut b = Backoff::new();
        let seq: Vec<_> = (0..7).map(|_| b.next().as_millis()).collect();
        assert_eq!(seq, [50, 100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Backoff::FIRST);
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
