//! The bridge's connection for the fleet's bookkeeping, all in one slot (the presence
//! registry's): the registry of live processes and their channels (`presence`), and the
//! webhooks' stream, cursors and lease (`webhooks`), and the questions asked of them
//! ([`Question`]). One multiplexed connection, made when first needed and made again after a
//! failure.

use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

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
        let client = self.deployment.client(&node)?;
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

/// KEYS: the registry. ARGV: the prefix of each process's set, the prefix of the channels
/// wanted. The channels any live process has members in.
const CHANNELS: &str = "
local out, seen = {}, {}
for _, instance in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  for _, c in ipairs(redis.call('SMEMBERS', ARGV[1] .. instance)) do
    if not seen[c] and string.sub(c, 1, #ARGV[2]) == ARGV[2] then
      seen[c] = true
      out[#out + 1] = c
    end
  end
end
return out";

/// What the router asks of the registry.
pub enum Question {
    /// The fleet's channels with members, whose names start with `prefix`.
    Channels {
        prefix: String,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// Claims an idempotency key for `ttl_ms` (`SET NX`): true if it was free.
    Once {
        key: String,
        ttl_ms: u64,
        reply: oneshot::Sender<bool>,
    },
}

/// Answers questions until `stop`; one that cannot be answered now is dropped unanswered.
pub async fn answer(
    registry: Arc<Registry>,
    mut questions: mpsc::Receiver<Question>,
    stop: CancellationToken,
) {
    while let Some(Some(question)) = stop.run_until_cancelled(questions.recv()).await {
        match question {
            Question::Channels { prefix, reply } => {
                let (key, sets) = registry.names.presence_registry("");
                let Ok(mut conn) = registry.conn().await else {
                    continue;
                };
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(CHANNELS).arg(1).arg(key).arg(sets).arg(prefix);
                let call = cmd.query_async::<Vec<String>>(&mut conn);
                match tokio::time::timeout(super::RESPONSE_TIMEOUT, call).await {
                    Ok(Ok(channels)) => {
                        let _ = reply.send(channels);
                    }
                    Ok(Err(_)) | Err(_) => registry.lost(),
                }
            }
            Question::Once { key, ttl_ms, reply } => {
                let Ok(mut conn) = registry.conn().await else {
                    continue;
                };
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(1).arg("NX").arg("PX").arg(ttl_ms);
                let call = cmd.query_async::<Option<String>>(&mut conn);
                match tokio::time::timeout(super::RESPONSE_TIMEOUT, call).await {
                    Ok(Ok(set)) => {
                        let _ = reply.send(set.is_some());
                    }
                    Ok(Err(_)) | Err(_) => registry.lost(),
                }
            }
        }
    }
}
