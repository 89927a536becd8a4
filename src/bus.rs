//! The local bus: one bounded inbox per worker, through which every published message reaches
//! the hubs. Every message goes through an inbox, even to the worker that accepted it, so two
//! messages accepted one after the other reach each recipient in that order.

use tokio::sync::mpsc;

use crate::protocol::{Frame, Target, WorkerId};

/// Depth of each worker's inbox. When it is full the publisher waits: HTTP callers slow down
/// instead of memory growing.
pub const INBOX_CAPACITY: usize = 4096;

/// One message on its way to the hubs: who gets it, and its encoded frame.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub target: Target,
    pub frame: Frame,
}

/// The sending side, shared by every worker's router.
#[derive(Clone)]
pub struct Bus {
    /// One per worker; the receiver is that worker's bus task, which hands each delivery to its
    /// hub. Closed when the worker stops.
    inbox_tx: Vec<mpsc::Sender<Delivery>>,
}

impl Bus {
    /// Makes the bus and the inbox receivers, one per worker, in worker order.
    pub fn new(workers: usize) -> (Bus, Vec<mpsc::Receiver<Delivery>>) {
        let (inbox_tx, inbox_rx) = (0..workers).map(|_| mpsc::channel(INBOX_CAPACITY)).unzip();
        (Bus { inbox_tx }, inbox_rx)
    }

    pub fn workers(&self) -> usize {
        self.inbox_tx.len()
    }

    /// Queues `delivery` for `worker`, waiting while its inbox is full. A worker that has
    /// stopped (shutdown) is skipped: its connections are closing anyway.
    pub async fn send(&self, worker: WorkerId, delivery: Delivery) {
        let _ = self.inbox_tx[usize::from(worker.0)].send(delivery).await;
    }
}
