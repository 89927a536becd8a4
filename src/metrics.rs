//! Counters and gauges, rendered in the Prometheus text format by `GET /metrics`.
//!
//! Per-delivery counters live in each worker's own [`WorkerMetrics`] (no cache line shared
//! between workers on the hot path); `/metrics` sums them.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

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
    /// Frames dropped because their connection was cut as a slow consumer.
    pub dropped_slow: AtomicU64,
    /// Frames dropped because their connection closed or broke before they were written.
    pub dropped_closed: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_consumer_closes: AtomicU64,
    /// Connections closed because the client was silent too long.
    pub ping_timeouts: AtomicU64,
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
}

impl BridgeMetrics {
    pub fn is_up(&self) -> bool {
        self.publish_up.load(Relaxed) && self.subscribe_up.load(Relaxed)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP fanfare_bridge_up Whether each Redis link is connected.\n\
             # TYPE fanfare_bridge_up gauge\n\
             fanfare_bridge_up{{link=\"publish\"}} {}\n\
             fanfare_bridge_up{{link=\"subscribe\"}} {}",
            u8::from(self.publish_up.load(Relaxed)),
            u8::from(self.subscribe_up.load(Relaxed)),
        );
        gauge(
            out,
            "fanfare_bridge_node_id_conflict",
            "1 while another process holds this process's --node-id.",
            i64::from(self.node_conflict.load(Relaxed)),
        );
        gauge(
            out,
            "fanfare_bridge_subscriptions",
            "Live Redis subscriptions.",
            self.subscriptions.load(Relaxed),
        );
        for (name, help, c) in [
            (
                "fanfare_bridge_published_total",
                "Messages published to Redis.",
                &self.published,
            ),
            (
                "fanfare_bridge_received_total",
                "Messages from other machines.",
                &self.received,
            ),
            (
                "fanfare_bridge_dropped_total",
                "Messages not sent to other machines: Redis down or behind.",
                &self.dropped,
            ),
            (
                "fanfare_bridge_malformed_total",
                "Unreadable payloads from Redis.",
                &self.malformed,
            ),
            (
                "fanfare_bridge_reconnects_total",
                "Reconnections of a Redis link.",
                &self.reconnects,
            ),
            (
                "fanfare_bridge_inbox_full_total",
                "Messages from other machines a worker missed: its inbox was full.",
                &self.inbox_full,
            ),
        ] {
            counter(out, name, help, c.load(Relaxed));
        }
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
    accepted: [AtomicU64; 3],
    rejected: [AtomicU64; REJECT_STATUSES.len()],
}

impl Metrics {
    pub fn new(workers: usize, bridge: Option<Arc<BridgeMetrics>>) -> Self {
        Metrics {
            workers: (0..workers).map(|_| Arc::default()).collect(),
            bridge,
            accepted: Default::default(),
            rejected: Default::default(),
        }
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

    fn sum(&self, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
        self.workers.iter().map(|w| f(w)).sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let conns: i64 = self
            .workers
            .iter()
            .map(|w| w.connections.load(Relaxed))
            .sum();
        gauge(
            &mut out,
            "fanfare_connections",
            "Open WebSocket connections.",
            conns,
        );
        let mut per_worker = |name: &str, help: &str, f: &dyn Fn(&WorkerMetrics) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, w) in self.workers.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", f(w));
            }
        };
        per_worker(
            "fanfare_bus_received_total",
            "Messages the local bus handed to each worker.",
            &|w| w.bus_received.load(Relaxed),
        );
        per_worker(
            "fanfare_connections_opened_total",
            "WebSocket connections accepted by each worker.",
            &|w| w.connections_opened.load(Relaxed),
        );
        counter(
            &mut out,
            "fanfare_frames_delivered_total",
            "Frames handed to connections, one per recipient.",
            self.sum(|w| w.frames_pushed.load(Relaxed)),
        );
        let _ = writeln!(
            out,
            "# HELP fanfare_dropped_messages_total Frames handed to a connection and never written, by reason.\n\
             # TYPE fanfare_dropped_messages_total counter\n\
             fanfare_dropped_messages_total{{reason=\"slow\"}} {}\n\
             fanfare_dropped_messages_total{{reason=\"closed\"}} {}",
            self.sum(|w| w.dropped_slow.load(Relaxed)),
            self.sum(|w| w.dropped_closed.load(Relaxed)),
        );
        counter(
            &mut out,
            "fanfare_slow_consumer_closes_total",
            "Connections closed because their queue went over --queue-limit.",
            self.sum(|w| w.slow_consumer_closes.load(Relaxed)),
        );
        counter(
            &mut out,
            "fanfare_ping_timeouts_total",
            "Connections closed because the client was silent for twice the ping interval.",
            self.sum(|w| w.ping_timeouts.load(Relaxed)),
        );
        counter(
            &mut out,
            "fanfare_client_errors_total",
            "Client frames refused (bad_request, binary, oversize).",
            self.sum(|w| w.client_errors.load(Relaxed)),
        );
        let _ = writeln!(
            out,
            "# HELP fanfare_messages_accepted_total Messages accepted by the publish API.\n\
             # TYPE fanfare_messages_accepted_total counter"
        );
        for (kind, n) in ["direct", "channel", "broadcast"]
            .iter()
            .zip(&self.accepted)
        {
            let _ = writeln!(
                out,
                "fanfare_messages_accepted_total{{kind=\"{kind}\"}} {}",
                n.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP fanfare_rejected_requests_total HTTP requests refused, by status.\n\
             # TYPE fanfare_rejected_requests_total counter"
        );
        for (status, n) in REJECT_STATUSES.iter().zip(&self.rejected) {
            let _ = writeln!(
                out,
                "fanfare_rejected_requests_total{{status=\"{status}\"}} {}",
                n.load(Relaxed)
            );
        }
        if let Some(bridge) = &self.bridge {
            bridge.render(&mut out);
        }
        out
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}
