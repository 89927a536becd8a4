//! The node id claim: this process's hold on its `--node-id`, a key with an expiry that the
//! link to the master of its slot renews every second and gives back at shutdown. A claim held
//! by another process is a conflict, said loudly once and shown by `/readyz`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::super::cluster::Node;
use super::super::lease::{GIVE_BACK, TAKE};
use super::super::pubsub::Reply;
use super::super::{within, LinkDown, CLAIM_TTL};
use super::{Conn, Publisher};

impl Publisher {
    /// Whether the link to `node` holds the node id claim: the master of its key's slot does.
    pub(super) fn holds_claim(&self, node: &Node) -> bool {
        self.map.borrow().node_of(&self.claim_key) == Some(node)
    }

    /// Takes or renews the node id claim; a claim held by another process is a conflict, said
    /// loudly once and shown by `/readyz` until it is resolved.
    pub(super) async fn claim(&self, conn: &mut Conn) -> Result<(), LinkDown> {
        let instance = self.instance.to_string();
        let ttl = (CLAIM_TTL.as_millis() as u64).to_string();
        let args: [&[u8]; 6] = [
            b"EVAL",
            TAKE.as_bytes(),
            b"1",
            self.claim_key.as_bytes(),
            instance.as_bytes(),
            ttl.as_bytes(),
        ];
        conn.writer
            .command(&args)
            .await
            .map_err(|e| e.to_string())?;
        let held = match within(conn.reader.reply(64)).await? {
            Reply::Integer(held) => held,
            // The key's slot moved or its master is failing over: no link failure. The map is
            // read again and the claim (which lasts 5 s) renewed by the link that holds it.
            Reply::Error(e) if self.deployment.cluster => {
                tracing::warn!("bridge: renewing the node id claim: {e}");
                self.refresh.notify_one();
                return Ok(());
            }
            other => return Err(format!("the claim answered {other:?}")),
        };
        let conflict = held == 0;
        let was = self.metrics.node_conflict.swap(conflict, Relaxed);
        if conflict && !was {
            tracing::error!(
                "bridge: another process already uses --node-id {}: this one is unready until \
                 that one stops (each process of a fleet needs its own id)",
                self.node_id
            );
        } else if was && !conflict {
            tracing::info!("bridge: --node-id {} is ours now", self.node_id);
        }
        Ok(())
    }

    pub(super) async fn release(&self, conn: &mut Conn) {
        let instance = self.instance.to_string();
        let args: [&[u8]; 5] = [
            b"EVAL",
            GIVE_BACK.as_bytes(),
            b"1",
            self.claim_key.as_bytes(),
            instance.as_bytes(),
        ];
        let _ = tokio::time::timeout(Duration::from_millis(500), conn.call(&args)).await;
    }
}
