//! Counters and gauges, rendered by `GET /metrics` with `prometheus-client`.
//!
//! Per-delivery counters are plain atomics in each worker's own [`WorkerMetrics`] (no cache line
//! shared between workers on the hot path, no registry lookup per message); a scrape reads them
//! all into a snapshot that `prometheus-client` encodes.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::protocol::Target;

/// Counters owned by one worker.
#[derive(Default, Debug)]
pub struct WorkerMetrics {
    /// Open WebSocket connections on this worker.
    pub connections: AtomicI64,
    /// Connections ever accepted (upgrade completed) on this worker.
    pub connections_opened: AtomicU64,
    /// Messages handed to this worker by the local bus.
    pub bus_received: AtomicU64,
    /// Frames pushed to a connection's writer (one per recipient of a message).
    pub frames_pushed: AtomicU64,
    /// System calls (`send`, `writev`) that put frames into sockets, and the frames they
    /// completed: broadcast
    /// cost per delivery falls as frames per write rises.
    pub socket_writes: AtomicU64,
    pub frames_written: AtomicU64,
    /// Frames dropped because their connection was cut as a slow consumer.
    pub dropped_slow: AtomicU64,
    /// Frames dropped because their connection closed or broke before they were written.
    pub dropped_closed: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_consumer_closes: AtomicU64,
    /// Connections closed because the client was silent too long.
    pub ping_timeouts: AtomicU64,
    /// Connections closed at their token's `exp` (4001).
    pub expired_closes: AtomicU64,
    /// Connections closed by `POST /disconnect` (4003).
    pub disconnect_closes: AtomicU64,
    /// `refresh` frames accepted and refused.
    pub refreshes_accepted: AtomicU64,
    pub refreshes_refused: AtomicU64,
    /// Client frames answered with `bad_request` or closed for size/type.
    pub client_errors: AtomicU64,
}

impl WorkerMetrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// The Redis bridge's links and traffic.
#[derive(Default, Debug)]
pub struct BridgeMetrics {
    pub publish_up: AtomicBool,
    pub subscribe_up: AtomicBool,
    /// Messages published to Redis.
    pub published: AtomicU64,
    /// Messages from other machines handed to the local bus.
    pub received: AtomicU64,
    /// Messages not sent to other machines because the publisher was down or behind.
    pub dropped: AtomicU64,
    /// Payloads from Redis that were not ours to read (another version, broken).
    pub malformed: AtomicU64,
    /// Times a link connected again after losing Redis.
    pub reconnects: AtomicU64,
    /// Messages from other machines a worker missed because its inbox was full.
    pub inbox_full: AtomicU64,
    /// Another process holds this process's node id.
    pub node_conflict: AtomicBool,
    /// Live Redis subscriptions of this process.
    pub subscriptions: AtomicI64,
    /// With history: reads of a topic's history to fill a gap (a reconnect, a dropped push).
    pub gap_reads: AtomicU64,
    /// With history: gaps Redis no longer had, said to the topic's recipients.
    pub gaps_lost: AtomicU64,
    /// With `--history-ack-replicas`: history publishes fewer replicas confirmed in time (503).
    pub unconfirmed: AtomicU64,
    /// Redis answered the last history write `-OOM` (at `maxmemory`): unready until one passes.
    pub out_of_memory: AtomicBool,
    /// Each Redis master the bridge uses (one without a cluster), by `host:port`.
    shards: std::sync::Mutex<std::collections::BTreeMap<String, Arc<ShardMetrics>>>,
}

/// The bridge's links to one Redis master and their traffic.
#[derive(Default, Debug)]
pub struct ShardMetrics {
    pub publish_up: AtomicBool,
    pub subscribe_up: AtomicBool,
    pub subscriptions: AtomicI64,
    pub published: AtomicU64,
    pub received: AtomicU64,
}

impl BridgeMetrics {
    pub fn is_up(&self) -> bool {
        self.publish_up.load(Relaxed) && self.subscribe_up.load(Relaxed)
    }

    /// The metrics of the master at `node` (`host:port`), made on first use.
    pub fn shard(&self, node: &str) -> Arc<ShardMetrics> {
        self.shards_locked()
            .entry(node.to_string())
            .or_default()
            .clone()
    }

    /// Forgets masters no longer in the cluster's map.
    pub fn keep_shards(&self, keep: impl Fn(&str) -> bool) {
        self.shards_locked().retain(|node, _| keep(node));
    }

    fn shards_locked(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Arc<ShardMetrics>>> {
        // Every state of the map is valid; a panic elsewhere must not stop the metrics.
        self.shards.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// HTTP answers that refused a request, by status.
const REJECT_STATUSES: [u16; 11] = [400, 401, 403, 404, 405, 408, 413, 414, 426, 431, 503];

/// Every metric of one process.
#[derive(Debug)]
pub struct Metrics {
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// Present with `--redis`.
    pub bridge: Option<Arc<BridgeMetrics>>,
    /// Present with `--history-size`.
    pub history: Option<Arc<crate::history::History>>,
    /// Present with `--pusher-webhook`.
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    accepted: [AtomicU64; 3],
    rejected: [AtomicU64; REJECT_STATUSES.len()],
}

impl Metrics {
    pub fn new(
        workers: usize,
        bridge: Option<Arc<BridgeMetrics>>,
        history: Option<Arc<crate::history::History>>,
    ) -> Self {
        Metrics {
            workers: (0..workers).map(|_| Arc::default()).collect(),
            bridge,
            history,
            webhooks: None,
            accepted: Default::default(),
            rejected: Default::default(),
        }
    }

    pub fn with_webhooks(mut self, webhooks: Option<Arc<crate::webhooks::Webhooks>>) -> Self {
        self.webhooks = webhooks;
        self
    }

    /// A message the publish API accepted (once per message, not per recipient).
    pub fn accepted(&self, target: &Target) {
        let i = match target {
            Target::User(_) => 0,
            Target::Channel(_) => 1,
            Target::All => 2,
        };
        self.accepted[i].fetch_add(1, Relaxed);
    }

    /// An HTTP request refused (a 4xx, or a 503 at the connection limit).
    pub fn rejected(&self, status: u16) {
        if let Some(i) = REJECT_STATUSES.iter().position(|s| *s == status) {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }

    /// The exposition for `GET /metrics` (OpenMetrics text, which Prometheus reads).
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot::take(self)));
        let mut out = String::with_capacity(4096);
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// Every value at one instant, read from the atomics; what a scrape encodes.
#[derive(Debug)]
struct Snapshot {
    gauges: Vec<(&'static str, &'static str, i64)>,
    counters: Vec<(&'static str, &'static str, u64)>,
    families: Vec<Family>,
}

/// A metric with one label: name, help, label name, and (label value, value) per series.
type Family = (&'static str, &'static str, &'static str, Vec<(String, u64)>);

impl Snapshot {
    fn take(m: &Metrics) -> Snapshot {
        let sum = |f: fn(&WorkerMetrics) -> &AtomicU64| -> u64 {
            m.workers.iter().map(|w| f(w).load(Relaxed)).sum()
        };
        let per_worker = |f: fn(&WorkerMetrics) -> &AtomicU64| -> Vec<(String, u64)> {
            let each = m.workers.iter().enumerate();
            each.map(|(i, w)| (i.to_string(), f(w).load(Relaxed)))
                .collect()
        };
        let connections = m.workers.iter().map(|w| w.connections.load(Relaxed)).sum();
        let mut gauges = vec![(
            "fanfare_connections",
            "Open WebSocket connections.",
            connections,
        )];
        let mut counters = vec![
            ("fanfare_frames_delivered", "Frames handed to connections, one per recipient.", sum(|w| &w.frames_pushed)),
            ("fanfare_socket_writes", "System calls (send, writev) that put WebSocket frames into sockets.", sum(|w| &w.socket_writes)),
            ("fanfare_frames_written", "WebSocket frames written whole into sockets (divided by fanfare_socket_writes: frames per write).", sum(|w| &w.frames_written)),
            ("fanfare_slow_consumer_closes", "Connections closed because more than --queue-limit frames or --queue-bytes waited for their socket.", sum(|w| &w.slow_consumer_closes)),
            ("fanfare_ping_timeouts", "Connections closed because the client was silent for twice the ping interval.", sum(|w| &w.ping_timeouts)),
            ("fanfare_client_errors", "Client frames refused (bad_request, binary, oversize, not UTF-8).", sum(|w| &w.client_errors)),
            ("fanfare_token_expired_closes", "Connections closed at their token's exp (4001).", sum(|w| &w.expired_closes)),
            ("fanfare_disconnect_closes", "Connections closed by POST /disconnect (4003).", sum(|w| &w.disconnect_closes)),
        ];
        counters.push((
            "fanfare_deflate_compressions",
            "Messages compressed for permessage-deflate: one per publication, shared by every recipient that negotiated it.",
            crate::deflate::COMPRESSED.load(Relaxed),
        ));
        let accepted = ["direct", "channel", "broadcast"].iter().zip(&m.accepted);
        let rejected = REJECT_STATUSES.iter().zip(&m.rejected);
        let mut families = vec![
            ("fanfare_bus_received", "Messages the local bus handed to each worker.", "worker", per_worker(|w| &w.bus_received)),
            ("fanfare_connections_opened", "WebSocket connections accepted by each worker.", "worker", per_worker(|w| &w.connections_opened)),
            ("fanfare_dropped_messages", "Frames handed to a connection and never written: slow = cut as a slow consumer, closed = still waiting when it closed.", "reason", vec![
                ("slow".into(), sum(|w| &w.dropped_slow)),
                ("closed".into(), sum(|w| &w.dropped_closed)),
            ]),
            ("fanfare_refreshes", "Token refreshes, by result.", "result", vec![
                ("accepted".into(), sum(|w| &w.refreshes_accepted)),
                ("refused".into(), sum(|w| &w.refreshes_refused)),
            ]),
            ("fanfare_messages_accepted", "Messages accepted by the publish API.", "kind",
                accepted.map(|(k, n)| (k.to_string(), n.load(Relaxed))).collect()),
            ("fanfare_rejected_requests", "HTTP requests refused, by status.", "status",
                rejected.map(|(s, n)| (s.to_string(), n.load(Relaxed))).collect()),
        ];
        if let Some(w) = &m.webhooks {
            counters.extend([
                (
                    "fanfare_webhook_events_sent",
                    "Webhook events the endpoints took (once per URL).",
                    w.sent.load(Relaxed),
                ),
                (
                    "fanfare_webhook_failures",
                    "Webhook POSTs that failed (each retry counts).",
                    w.failures.load(Relaxed),
                ),
                (
                    "fanfare_webhook_events_dropped",
                    "Webhook events given up on: older than 15 minutes, or pushed out of a full outbox or stream (once per URL).",
                    w.dropped.load(Relaxed),
                ),
            ]);
        }
        if let Some(h) = &m.history {
            let (bytes, topics) = h.usage();
            gauges.push((
                "fanfare_history_bytes",
                "Frame bytes kept for recovery.",
                bytes,
            ));
            gauges.push((
                "fanfare_history_topics",
                "Topics whose position is remembered.",
                topics,
            ));
            counters.push((
                "fanfare_history_evicted",
                "Messages dropped from the history to stay under --history-max-bytes.",
                h.evicted.load(Relaxed),
            ));
        }
        if let Some(b) = &m.bridge {
            gauges.push((
                "fanfare_bridge_subscriptions",
                "Live Redis subscriptions.",
                b.subscriptions.load(Relaxed),
            ));
            gauges.push((
                "fanfare_bridge_node_id_conflict",
                "1 while another process holds this process's --node-id.",
                i64::from(b.node_conflict.load(Relaxed)),
            ));
            counters.extend([
                (
                    "fanfare_bridge_published",
                    "Messages published to Redis.",
                    b.published.load(Relaxed),
                ),
                (
                    "fanfare_bridge_received",
                    "Messages relayed from Redis (with history, this machine's own too).",
                    b.received.load(Relaxed),
                ),
                (
                    "fanfare_bridge_dropped",
                    "Messages not sent to other machines: Redis down or behind.",
                    b.dropped.load(Relaxed),
                ),
                (
                    "fanfare_bridge_inbox_full",
                    "Messages from other machines a worker missed: its inbox was full.",
                    b.inbox_full.load(Relaxed),
                ),
                (
                    "fanfare_bridge_malformed",
                    "Payloads from Redis refused: another version, too large, not JSON.",
                    b.malformed.load(Relaxed),
                ),
                (
                    "fanfare_bridge_reconnects",
                    "Reconnections of a Redis link.",
                    b.reconnects.load(Relaxed),
                ),
                (
                    "fanfare_bridge_gap_reads",
                    "History reads to fill a gap in what Redis relayed (after a reconnect).",
                    b.gap_reads.load(Relaxed),
                ),
                (
                    "fanfare_bridge_gaps_lost",
                    "Gaps Redis's history no longer had, said to recipients (recovered: false).",
                    b.gaps_lost.load(Relaxed),
                ),
                (
                    "fanfare_bridge_unconfirmed",
                    "History publishes fewer than --history-ack-replicas replicas confirmed in time.",
                    b.unconfirmed.load(Relaxed),
                ),
            ]);
            let up = |v: &AtomicBool| u64::from(v.load(Relaxed));
            families.push((
                "fanfare_bridge_up",
                "Whether each Redis link is connected.",
                "link",
                vec![
                    ("publish".into(), up(&b.publish_up)),
                    ("subscribe".into(), up(&b.subscribe_up)),
                ],
            ));
            let shards = b.shards_locked();
            let per_shard = |f: &dyn Fn(&ShardMetrics) -> u64| {
                shards.iter().map(|(n, m)| (n.clone(), f(m))).collect()
            };
            families.extend([
                (
                    "fanfare_bridge_shard_up",
                    "Whether both links to each Redis master are connected and subscribed.",
                    "shard",
                    per_shard(&|m| up(&m.publish_up) & up(&m.subscribe_up)),
                ),
                (
                    "fanfare_bridge_shard_subscriptions",
                    "Live Redis subscriptions on each master.",
                    "shard",
                    per_shard(&|m| m.subscriptions.load(Relaxed).max(0) as u64),
                ),
                (
                    "fanfare_bridge_shard_published",
                    "Messages published to each master.",
                    "shard",
                    per_shard(&|m| m.published.load(Relaxed)),
                ),
                (
                    "fanfare_bridge_shard_received",
                    "Messages relayed from each master.",
                    "shard",
                    per_shard(&|m| m.received.load(Relaxed)),
                ),
            ]);
        }
        Snapshot {
            gauges,
            counters,
            families,
        }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, v) in &self.gauges {
            let gauge = ConstGauge::new(*v);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        for (name, help, v) in &self.counters {
            let counter = ConstCounter::new(*v);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, label, series) in &self.families {
            // Links up and subscriptions are gauges; every other family counts.
            let gauge = name.ends_with("_up") || name.ends_with("_subscriptions");
            let kind = if gauge {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (value, n) in series {
                let labels = [(*label, value.as_str())];
                let metric = family.encode_family(&labels)?;
                if gauge {
                    ConstGauge::new(*n as i64).encode(metric)?;
                } else {
                    ConstCounter::new(*n).encode(metric)?;
                }
            }
        }
        Ok(())
    }
}
