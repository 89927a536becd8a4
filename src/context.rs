//! What a worker and its handlers share: [`Shared`] (the whole process's: settings, secrets,
//! the door for publishing) and [`WorkerContext`] (one worker's: its hub, tasks, shutdown).
//! The worker accepts connections and hands them to `http`; both read these, neither owns
//! the other.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::hub::SharedHub;
use crate::metrics::{Metrics, WorkerMetrics};
use crate::protocol::WorkerId;
use crate::router::Router;

/// What every worker of the process shares: settings, secrets, the door for publishing, the
/// process-wide counters and connection limit. The publish API and the operator endpoints need
/// nothing else.
pub struct Shared {
    pub config: Arc<Config>,
    pub keys: Arc<TokenKeys>,
    pub api_key: Arc<str>,
    /// Reaches every worker's inbox and the bridge.
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    /// `--max-connections` permits; each WebSocket holds one until it ends.
    pub connection_slots: Arc<Semaphore>,
    /// With `--pusher-app-id`: the application the Pusher front serves.
    pub pusher: Option<Arc<crate::pusher::App>>,
    /// With `--accept-rate`: the new connections this process may still admit this second.
    pub accept: Option<std::sync::Mutex<crate::rate::Bucket>>,
    /// With `--pusher-webhook`: where client events are reported.
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
}

/// One worker's own state beside what it shares: its hub, counters, shutdown and tasks. The
/// upgrade handler and the accept loop use it; everything else gets [`Shared`].
pub struct WorkerContext {
    pub id: WorkerId,
    pub shared: Arc<Shared>,
    pub hub: SharedHub,
    pub worker_metrics: Arc<WorkerMetrics>,
    /// Cancelled on shutdown: the accept loop stops, HTTP connections finish, WebSockets close
    /// with 1001.
    pub shutdown: CancellationToken,
    /// Every HTTP connection and WebSocket of this worker, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Numbers this worker's connections ([`crate::protocol::ConnId::seq`]).
    pub next_conn: AtomicU64,
    /// Told when this worker's drain is over (the bridge stops after the last one).
    pub drain: Arc<Drain>,
    /// What each of its connections shares.
    pub connections: Arc<crate::connection::Surroundings>,
}

/// Counts the workers still draining: the last one to finish cancels `done`, which stops the
/// bridge, so what the drain changed (the presence of every connection it closed) reaches
/// Redis before the bridge goes.
pub struct Drain {
    left: std::sync::atomic::AtomicUsize,
    pub done: CancellationToken,
}

impl Drain {
    pub fn new(workers: usize) -> Self {
        Drain {
            left: workers.into(),
            done: CancellationToken::new(),
        }
    }

    pub(crate) fn finished(&self) {
        if self.left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.done.cancel();
        }
    }
}
