//! The bridge's connection for the fleet's bookkeeping, all in one slot (the presence
//! registry's): the registry of live processes and their channels (`presence`), and the
//! webhooks' stream, cursors and lease (`webhooks`). One multiplexed connection, made when
//! first needed and made again after a failure.

use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;

use super::cluster::{Deployment, Topology};
use super::wire::Names;

pub struct Registry {
    pub deployment: Deployment,
    pub map: tokio::sync::watch::Receiver<Arc<Topology>>,
    pub names: Names,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl Registry {
    pub fn new(
        deployment: Deployment,
        map: tokio::sync::watch::Receiver<Arc<Topology>>,
        names: Names,
    ) -> Self {
        Registry {
            deployment,
            map,
            names,
            conn: Mutex::default(),
        }
    }

    /// The connection to the master of the registry's slot.
    pub async fn conn(&self) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(c);
        }
        let (registry, _) = self.names.presence_registry("");
        let node = self
            .map
            .borrow()
            .node_of(&registry)
            .cloned()
            .ok_or("no master serves the registry's slot")?;
        let client =
            redis::Client::open(self.deployment.connection(&node)).map_err(|e| e.to_string())?;
        let c = tokio::time::timeout(
            super::RESPONSE_TIMEOUT,
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// A call on the connection failed: the next one connects again (the slot may have moved).
    pub fn lost(&self) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
