//! A real Redis Cluster on free ports: three masters, each with a replica, made by
//! `redis-cli --cluster create`, torn down with the test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{cluster_port, RedisServer, TestServer, PATIENCE};

pub struct RedisCluster {
    /// Every node, masters first as created (a failover changes which are masters).
    pub nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Three masters and three replicas, every slot served, replicas in sync.
    pub fn start() -> RedisCluster {
        Self::start_with(|_| Vec::new())
    }

    /// [`start`](Self::start), each node given `more(its port)` as more arguments.
    pub fn start_with(more: impl Fn(u16) -> Vec<String>) -> RedisCluster {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fanfare-cluster-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                let port = cluster_port();
                RedisServer::cluster_node_with(port, &dir, &more(port))
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli (apt-get install -y redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_healthy();
        cluster
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// A URL naming only the node at `index`: the rest is discovered.
    pub fn url_of(&self, index: usize) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.nodes[index].port)
    }

    /// Runs a command on the node at `port`.
    pub fn on<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> redis::RedisResult<T> {
        super::redis_query(port, args)
    }

    /// Ports of the nodes still running.
    fn alive(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().filter(|n| n.running()).map(|n| n.port)
    }

    /// The port of the master serving `name`'s slot, as a live node sees it.
    pub fn master_of(&self, name: &str) -> u16 {
        let port = self.alive().next().expect("a live node");
        let slot: i64 = self.on(port, &["CLUSTER", "KEYSLOT", name]).unwrap();
        self.master_of_slot(slot as u16)
    }

    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let port = self.alive().next().expect("a live node");
        // A node in the middle of a failover may not answer within the timeout on a loaded
        // machine: asked again.
        let mut tries = 0;
        let slots: Vec<redis::Value> = loop {
            match self.on(port, &["CLUSTER", "SLOTS"]) {
                Ok(slots) => break slots,
                Err(e) if tries < 20 && e.is_io_error() => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("CLUSTER SLOTS on {port}: {e}"),
            }
        };
        for range in slots {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let (redis::Value::Int(a), redis::Value::Int(b), redis::Value::Array(m)) =
                (&parts[0], &parts[1], &parts[2])
            else {
                continue;
            };
            if (*a..=*b).contains(&i64::from(slot)) {
                let redis::Value::Int(p) = m[1] else {
                    panic!("a port")
                };
                return p as u16;
            }
        }
        panic!("slot {slot} has no master")
    }

    /// Ports of the three masters now.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = (0..16384u16)
            .step_by(1000)
            .chain([16383])
            .map(|s| self.master_of_slot(s))
            .collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// `PUBSUB SHARDNUMSUB` of a shard channel on the node at `port`.
    pub fn shard_subscribers(&self, port: u16, channel: &str) -> i64 {
        let (_, n): (String, i64) = self.on(port, &["PUBSUB", "SHARDNUMSUB", channel]).unwrap();
        n
    }

    /// A name of the form `<stem><n>` whose hash tag `{<kind>:<name>}` lands on the master at
    /// `port`, so tests can spread topics over every master.
    pub fn name_on(&self, port: u16, kind: &str, stem: &str) -> String {
        let probe = self.alive().next().expect("a live node");
        (0..10_000)
            .map(|i| format!("{stem}{i}"))
            .find(|name| {
                let tag = format!("{{{kind}:{name}}}");
                let slot: i64 = self.on(probe, &["CLUSTER", "KEYSLOT", &tag]).unwrap();
                self.master_of_slot(slot as u16) == port
            })
            .expect("some name lands on every master")
    }

    /// Kills the node at `port` (no shutdown, like a crash).
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
            .kill();
    }

    /// Freezes (SIGSTOP) or thaws the node at `port`: its sockets stay open, it answers nothing.
    pub fn freeze(&self, port: u16, frozen: bool) {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
            .freeze(frozen);
    }

    /// Moves `slot`, with its keys, to the master at `to` (as `redis-cli --cluster reshard`
    /// does, for one chosen slot): IMPORTING, MIGRATING, MIGRATE of its keys, then NODE on
    /// every master.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.master_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is already there");
        let id = |port| -> String { self.on(port, &["CLUSTER", "MYID"]).unwrap() };
        let (from_id, to_id) = (id(from), id(to));
        let s = slot.to_string();
        let ok = |r: redis::RedisResult<()>| r.unwrap();
        ok(self.on(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]));
        ok(self.on(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]));
        loop {
            let keys: Vec<String> = self
                .on(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"])
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            ok(self.on(from, &args));
        }
        for port in self.masters() {
            ok(self.on(port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]));
        }
        let deadline = Instant::now() + PATIENCE;
        while self.master_of_slot(slot) != to {
            assert!(Instant::now() < deadline, "slot {slot} never moved");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a new node and makes it a replica of the master at `master`; returns once it is
    /// in sync.
    pub fn add_replica(&mut self, master: u16) -> u16 {
        let node = RedisServer::cluster_node(cluster_port(), &self.dir);
        let port = node.port;
        self.nodes.push(node);
        let id: String = self.on(master, &["CLUSTER", "MYID"]).unwrap();
        let master_port = master.to_string();
        let _: () = self
            .on(port, &["CLUSTER", "MEET", "127.0.0.1", &master_port])
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        while self.on::<()>(port, &["CLUSTER", "REPLICATE", &id]).is_err() {
            assert!(Instant::now() < deadline, "the new node never met {master}");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_healthy();
        port
    }

    /// Every live node says the cluster is ok, and every replica is in sync with its master.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = self.alive().all(|port| {
                let info: String = self.on(port, &["CLUSTER", "INFO"]).unwrap_or_default();
                let replication: String =
                    self.on(port, &["INFO", "replication"]).unwrap_or_default();
                info.contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never became healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestServer {
    /// A server of a fleet on a Redis Cluster: two workers, this prefix and node id.
    pub fn on_cluster(url: &str, prefix: &str, node: &str, history_size: u32) -> TestServer {
        let (url, prefix, node) = (url.to_string(), prefix.to_string(), node.to_string());
        TestServer::start_with(move |c| {
            c.redis = Some(url);
            c.redis_prefix = prefix;
            c.node_id = Some(node);
            c.history_size = history_size;
        })
    }
}
