//! Where the bridge's Redis is: one server, or a Redis Cluster found from seed nodes — which
//! master serves each slot, and how the bridge keeps that map true as masters fail over and
//! slots move.
//!
//! On a cluster every name is hash-tagged by its topic ([`Names`](super::wire::Names)), so a
//! topic's shard channel and history keys share a slot and one script writes them all. The
//! bridge asks any node for `CLUSTER SLOTS` at start, whenever a link fails, Redis answers
//! `-MOVED` or takes a shard subscription away (`sunsubscribe`: its slot moved), and every few
//! seconds; publishers and subscribers follow the map it publishes on a watch.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::pubsub::{self, Reader, Writer};
use super::tls::Tls;

/// Slots of a Redis Cluster.
pub const SLOTS: usize = 16384;
/// How often the map is checked when nothing asked.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Least time between two checks asked for (a failing master asks once per reconnect attempt).
const REFRESH_GAP: Duration = Duration::from_millis(200);
/// Longest wait for a node to answer `CLUSTER SLOTS`.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The slot of a key or shard channel: CRC16 (XMODEM) of its hash tag — what lies between the
/// first `{` and the next `}`, if that is not empty — or of the whole name.
pub fn slot(name: &[u8]) -> u16 {
    let tag = name.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &name[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tag.unwrap_or(name)) % SLOTS as u16
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A Redis server, as `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The `--redis` setting: one server, or the seed nodes of a cluster.
#[derive(Clone, Debug)]
pub struct Deployment {
    /// Credentials and database for every connection; its address is the first seed.
    template: ConnectionInfo,
    seeds: Vec<Node>,
    /// A Redis Cluster: sharded pub/sub, hash-tagged names, a map of slots.
    pub cluster: bool,
    /// `rediss`: every connection is TLS (set by [`with_tls`](Self::with_tls) once loaded).
    pub tls: bool,
    tls_setup: Option<Arc<Tls>>,
    /// Through Redis Sentinel: the master's name; the seeds are the sentinels. The bridge runs
    /// as on a cluster whose one master the sentinels name (its map follows a failover).
    pub sentinel: Option<String>,
}

impl Deployment {
    /// `redis://[user:password@]host:port[/db]`, or
    /// `redis+cluster://[user:password@]host:port[,host:port…]` for a cluster (any of its nodes
    /// will do; the others are found).
    ///
    /// # Errors
    /// A URL that does not parse, or that is not over TCP.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return Self::sentinels(rest);
        }
        let cluster = url
            .strip_prefix("redis+cluster://")
            .map(|rest| (rest, false))
            .or_else(|| {
                url.strip_prefix("rediss+cluster://")
                    .map(|rest| (rest, true))
            });
        let Some((rest, tls)) = cluster else {
            let template = url.into_connection_info().map_err(|e| e.to_string())?;
            let (host, port, tls) =
                match template.addr().clone() {
                    ConnectionAddr::Tcp(host, port) => (host, port, false),
                    ConnectionAddr::TcpTls { host, port, .. } => (host, port, true),
                    _ => return Err(
                        "only redis:// and rediss:// URLs over TCP are supported (no Unix socket)"
                            .into(),
                    ),
                };
            return Ok(Deployment {
                template,
                seeds: vec![Node { host, port }],
                cluster: false,
                tls,
                tls_setup: None,
                sentinel: None,
            });
        };
        let (credentials, hosts) = match rest.rsplit_once('@') {
            Some((c, h)) => (format!("{c}@"), h),
            None => (String::new(), rest),
        };
        let hosts = hosts.trim_end_matches('/');
        let mut seeds = Vec::new();
        let mut template = None;
        for host in hosts.split(',') {
            let info = format!("redis://{credentials}{host}")
                .into_connection_info()
                .map_err(|e| format!("{host:?}: {e}"))?;
            let ConnectionAddr::Tcp(h, port) = info.addr().clone() else {
                return Err(format!("{host:?}: not a host:port"));
            };
            let info = match tls {
                false => info,
                true => info.set_addr(ConnectionAddr::TcpTls {
                    host: h.clone(),
                    port,
                    insecure: false,
                    tls_params: None,
                }),
            };
            seeds.push(Node { host: h, port });
            template.get_or_insert(info);
        }
        Ok(Deployment {
            template: template.ok_or("redis+cluster:// names no node")?,
            seeds,
            cluster: true,
            tls,
            tls_setup: None,
            sentinel: None,
        })
    }

    /// `[user:password@]host:port[,host:port…]/MASTER[/db]` after `redis+sentinel://`: the
    /// sentinels, the name of the master they watch, and the master's credentials and database.
    fn sentinels(rest: &str) -> Result<Self, String> {
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((c, r)) => (format!("{c}@"), r),
            None => (String::new(), rest),
        };
        let mut parts = rest.splitn(3, '/');
        let hosts = parts.next().unwrap_or_default();
        let master = parts
            .next()
            .filter(|m| !m.is_empty())
            .ok_or("redis+sentinel:// needs the master's name: …/MASTER")?;
        let db = parts.next().filter(|d| !d.is_empty()).unwrap_or("0");
        let template = format!("redis://{credentials}127.0.0.1/{db}")
            .into_connection_info()
            .map_err(|e| e.to_string())?;
        let mut seeds = Vec::new();
        for host in hosts.split(',') {
            let info = format!("redis://{host}")
                .into_connection_info()
                .map_err(|e| format!("{host:?}: {e}"))?;
            let ConnectionAddr::Tcp(h, port) = info.addr().clone() else {
                return Err(format!("{host:?}: not a host:port"));
            };
            seeds.push(Node { host: h, port });
        }
        Ok(Deployment {
            template,
            seeds,
            cluster: true,
            tls: false,
            tls_setup: None,
            sentinel: Some(master.to_string()),
        })
    }

    /// Every connection of a `rediss` deployment is made with `tls`.
    pub fn with_tls(mut self, tls: Arc<Tls>) -> Self {
        self.tls_setup = Some(tls);
        self
    }

    /// How to connect to `node`, with this deployment's credentials.
    pub fn connection(&self, node: &Node) -> ConnectionInfo {
        let addr = match self.tls {
            false => ConnectionAddr::Tcp(node.host.clone(), node.port),
            true => ConnectionAddr::TcpTls {
                host: node.host.clone(),
                port: node.port,
                insecure: false,
                tls_params: None,
            },
        };
        self.template.clone().set_addr(addr)
    }

    /// A redis-rs client for `node` (TLS as the deployment says).
    ///
    /// # Errors
    /// redis-rs refuses the address.
    pub fn client(&self, node: &Node) -> Result<redis::Client, String> {
        let info = self.connection(node);
        match &self.tls_setup {
            Some(tls) => tls.client(info),
            None => redis::Client::open(info).map_err(|e| e.to_string()),
        }
    }

    /// One of the bridge's own connections to `node` (see [`pubsub::connect`]).
    ///
    /// # Errors
    /// As [`pubsub::connect`]; a `rediss` deployment without its TLS settings.
    pub async fn open(&self, node: &Node, max_bulk: usize) -> Result<(Reader, Writer), String> {
        let tls = match (self.tls, &self.tls_setup) {
            (false, _) => None,
            (true, Some(tls)) => Some(tls.as_ref()),
            (true, None) => return Err("rediss:// without its TLS settings".into()),
        };
        pubsub::connect(&self.connection(node), tls, max_bulk).await
    }

    /// The map to start from: the one server, or, on a cluster, no slot served yet.
    pub fn first_map(&self) -> Topology {
        match self.cluster {
            false => Topology::single(self.seeds[0].clone()),
            true => Topology::default(),
        }
    }
}

/// Which master serves each slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// The masters, each once, in order.
    pub masters: Vec<Node>,
    /// Index into `masters` for each slot; [`NOBODY`] for a slot no master serves. Empty for a
    /// single server, which serves every slot.
    owners: Vec<u16>,
}

const NOBODY: u16 = u16::MAX;

impl Topology {
    pub fn single(node: Node) -> Self {
        Topology {
            masters: vec![node],
            owners: Vec::new(),
        }
    }

    /// The index of the master that serves `name` (a key or shard channel), if one does.
    pub fn owner(&self, name: &str) -> Option<usize> {
        if self.owners.is_empty() {
            return (!self.masters.is_empty()).then_some(0);
        }
        let i = self.owners[slot(name.as_bytes()) as usize];
        (i != NOBODY).then_some(i as usize)
    }

    /// The master that serves `name`, if one does.
    pub fn node_of(&self, name: &str) -> Option<&Node> {
        self.owner(name).map(|i| &self.masters[i])
    }

    /// Every slot has a master.
    pub fn complete(&self) -> bool {
        !self.masters.is_empty() && self.owners.iter().all(|&o| o != NOBODY)
    }

    /// Reads a `CLUSTER SLOTS` reply; `asked` stands in for a node that does not know its own
    /// address (an empty host).
    fn from_slots(reply: &Value, asked: &Node) -> Result<Self, String> {
        let Value::Array(ranges) = reply else {
            return Err(format!("CLUSTER SLOTS answered {reply:?}"));
        };
        let mut map = Topology {
            masters: Vec::new(),
            owners: vec![NOBODY; SLOTS],
        };
        for range in ranges {
            let bad = || format!("CLUSTER SLOTS: unexpected range {range:?}");
            let Value::Array(parts) = range else {
                return Err(bad());
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(bad());
            };
            let (Some(Value::BulkString(host)), Some(Value::Int(port))) =
                (master.first(), master.get(1))
            else {
                return Err(bad());
            };
            let host = String::from_utf8_lossy(host).into_owned();
            let node = Node {
                host: if host.is_empty() || host == "?" {
                    asked.host.clone()
                } else {
                    host
                },
                port: u16::try_from(*port).map_err(|_| bad())?,
            };
            let index = match map.masters.iter().position(|m| *m == node) {
                Some(i) => i,
                None => {
                    map.masters.push(node);
                    map.masters.len() - 1
                }
            };
            let (start, end) = (*start as usize, *end as usize);
            if start > end || end >= SLOTS {
                return Err(bad());
            }
            map.owners[start..=end].fill(index as u16);
        }
        // The same map whatever order a node listed its ranges in.
        let mut order: Vec<usize> = (0..map.masters.len()).collect();
        order.sort_by(|a, b| map.masters[*a].cmp(&map.masters[*b]));
        let mut renumber = vec![0u16; order.len()];
        for (new, old) in order.iter().enumerate() {
            renumber[*old] = new as u16;
        }
        for o in map.owners.iter_mut().filter(|o| **o != NOBODY) {
            *o = renumber[*o as usize];
        }
        map.masters.sort();
        Ok(map)
    }
}

/// Keeps the cluster's map true: asks the nodes it knows, then the seeds, whenever a link asks
/// (`refresh`) and every [`REFRESH_EVERY`].
pub struct Keeper {
    pub deployment: Deployment,
    pub map: watch::Sender<Arc<Topology>>,
    pub refresh: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl Keeper {
    pub async fn run(self) {
        loop {
            match self.discover().await {
                Ok(map) => {
                    if **self.map.borrow() != map {
                        tracing::info!(
                            masters = %map.masters.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                            complete = map.complete(),
                            "bridge: cluster map changed"
                        );
                        self.map.send_replace(Arc::new(map));
                    }
                }
                Err(why) => tracing::warn!("bridge: cannot read the cluster map: {why}"),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.refresh.notified() => {}
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
            tokio::time::sleep(REFRESH_GAP).await;
        }
    }

    async fn discover(&self) -> Result<Topology, String> {
        if let Some(master) = &self.deployment.sentinel {
            return self.ask_sentinels(master).await;
        }
        let known = self.map.borrow().masters.clone();
        let mut last = String::from("no node to ask");
        for node in known.iter().chain(&self.deployment.seeds) {
            match ask(&self.deployment, node).await {
                Ok(map) => return Ok(map),
                Err(why) => last = format!("{node}: {why}"),
            }
        }
        Err(last)
    }
}

impl Keeper {
    /// The master the sentinels name now (the first that answers), checked to be one: a
    /// sentinel that has not yet seen a failover names the old master, which answers as a
    /// replica if it is back.
    async fn ask_sentinels(&self, master: &str) -> Result<Topology, String> {
        let mut last = String::from("no sentinel to ask");
        for sentinel in &self.deployment.seeds {
            let call = async {
                let client = redis::Client::open(format!("redis://{sentinel}"))
                    .map_err(|e| e.to_string())?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                let named: Option<(String, u16)> = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let (host, port) = named.ok_or(format!("it knows no master {master:?}"))?;
                let node = Node { host, port };
                let role: Value = {
                    let client = self.deployment.client(&node)?;
                    let mut conn = client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| format!("{node}: {e}"))?;
                    redis::cmd("ROLE")
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| format!("{node}: {e}"))?
                };
                match role {
                    Value::Array(parts) if matches!(parts.first(), Some(Value::BulkString(r)) if r == b"master") => {
                        Ok(Topology::single(node))
                    }
                    _ => Err(format!("{node} is not a master (yet)")),
                }
            };
            match tokio::time::timeout(ASK_TIMEOUT, call).await {
                Ok(Ok(map)) => return Ok(map),
                Ok(Err(why)) => last = format!("sentinel {sentinel}: {why}"),
                Err(_) => last = format!("sentinel {sentinel}: no answer"),
            }
        }
        Err(last)
    }
}

async fn ask(deployment: &Deployment, node: &Node) -> Result<Topology, String> {
    let call = async {
        let client = deployment.client(node)?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    let reply = tokio::time::timeout(ASK_TIMEOUT, call)
        .await
        .map_err(|_| "no answer".to_string())??;
    Topology::from_slots(&reply, node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_its_credentials() {
        let d =
            Deployment::parse("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/main/2").unwrap();
        assert_eq!(d.sentinel.as_deref(), Some("main"));
        assert_eq!(d.seeds.len(), 2);
        assert_eq!(d.seeds[1].to_string(), "10.0.0.2:26380");
        let master = d.connection(&Node {
            host: "10.0.0.9".into(),
            port: 6379,
        });
        assert_eq!(master.redis_settings().password(), Some("pw"));
        assert_eq!(master.redis_settings().db(), 2);
        assert!(Deployment::parse("redis+sentinel://10.0.0.1:26379").is_err());
        assert!(Deployment::parse("redis+sentinel://10.0.0.1:26379/").is_err());
    }

    #[test]
    fn slots_follow_the_cluster_spec() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), crc16(b"{bar") % 16384);
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn cluster_urls_name_every_seed_with_the_same_credentials() {
        let d = Deployment::parse("redis+cluster://:pw@a:7000,b:7001/").unwrap();
        assert!(d.cluster);
        assert_eq!(d.seeds.len(), 2);
        let b = d.connection(&d.seeds[1]);
        assert_eq!(b.addr(), &ConnectionAddr::Tcp("b".into(), 7001));
        assert_eq!(b.redis_settings().password(), Some("pw"));
        let single = Deployment::parse("redis://h:1/2").unwrap();
        assert!(!single.cluster);
        assert_eq!(
            single.first_map().node_of("anything").unwrap().to_string(),
            "h:1"
        );
        assert!(Deployment::parse("redis+unix:///tmp/r.sock").is_err());
    }

    #[test]
    fn a_slots_reply_becomes_one_map_whatever_its_order() {
        let range = |start, end, port| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                Value::Array(vec![
                    Value::BulkString(b"10.0.0.1".to_vec()),
                    Value::Int(port),
                    Value::BulkString(b"id".to_vec()),
                ]),
            ])
        };
        let asked = Node {
            host: "x".into(),
            port: 1,
        };
        let a = Value::Array(vec![range(0, 8191, 7001), range(8192, 16383, 7000)]);
        let b = Value::Array(vec![range(8192, 16383, 7000), range(0, 8191, 7001)]);
        let (a, b) = (
            Topology::from_slots(&a, &asked).unwrap(),
            Topology::from_slots(&b, &asked).unwrap(),
        );
        assert_eq!(a, b);
        assert!(a.complete());
        assert_eq!(a.node_of("foo").unwrap().port, 7000, "slot 12182");
        let partial = Value::Array(vec![range(0, 100, 7000)]);
        assert!(!Topology::from_slots(&partial, &asked).unwrap().complete());
    }
}
