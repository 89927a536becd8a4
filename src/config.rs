//! Server configuration: every `fanfare serve` flag, its environment variable and its default.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::protocol::{random_hex, MAX_WORKERS};

/// Longest duration any flag takes, in seconds (a day): far beyond any sensible setting, and far
/// from the values where adding it to a clock overflows.
pub const MAX_SECS: u64 = 86_400;

/// Settings of `fanfare serve`. Each flag also reads `FANFARE_<FLAG>`.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// HTTP + WebSocket address, shared by all workers (SO_REUSEPORT); port 0 picks a free one
    #[arg(long, env = "FANFARE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Worker threads, each with its own runtime and listener [default: number of CPUs]
    #[arg(long, env = "FANFARE_WORKERS", value_parser = clap::value_parser!(u8).range(1..=MAX_WORKERS as i64))]
    pub workers: Option<u8>,

    /// Redis to relay through: redis://host:port/db, or a Redis Cluster as
    /// redis+cluster://host:port[,host:port…] (sharded pub/sub); rediss:// and
    /// rediss+cluster:// over TLS; redis+sentinel://host:port[,host:port…]/MASTER through
    /// Redis Sentinel; none: single-machine mode
    #[arg(long, env = "FANFARE_REDIS")]
    pub redis: Option<String>,

    /// With rediss://: the CA (PEM) that signs Redis's certificate, instead of the system's
    /// roots
    #[arg(long = "redis-ca", env = "FANFARE_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,

    /// With rediss://: a client certificate (PEM) for Redis servers that ask for one
    #[arg(
        long = "redis-cert",
        env = "FANFARE_REDIS_CERT",
        requires = "redis_key"
    )]
    pub redis_cert: Option<std::path::PathBuf>,

    /// With rediss://: the client certificate's private key (PEM)
    #[arg(long = "redis-key", env = "FANFARE_REDIS_KEY", requires = "redis_cert")]
    pub redis_key: Option<std::path::PathBuf>,

    /// Prefix of every Redis channel and key
    #[arg(long, env = "FANFARE_REDIS_PREFIX", default_value = "fanfare:")]
    pub redis_prefix: String,

    /// This machine's identity in the cluster [default: random]
    #[arg(long, env = "FANFARE_NODE_ID")]
    pub node_id: Option<String>,

    /// HS256 secret for client tokens [default: generated and printed]
    #[arg(long, env = "FANFARE_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Key for the publish API [default: generated and printed]
    #[arg(long, env = "FANFARE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Largest HTTP body and largest client frame, in bytes
    #[arg(long, env = "FANFARE_MAX_MESSAGE_BYTES", default_value_t = 65536)]
    pub max_message_bytes: usize,

    /// Frames that may wait for a connection whose socket is full before it is closed as a slow consumer
    #[arg(long, env = "FANFARE_QUEUE_LIMIT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_limit: u32,

    /// Bytes that may wait for a connection whose socket is full (one frame always may)
    #[arg(long, env = "FANFARE_QUEUE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_bytes: u64,

    /// Most WebSocket connections this process holds; more get 503 [default: the file
    /// descriptor limit less a tenth for HTTP and Redis]
    #[arg(long, env = "FANFARE_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Seconds a client may take to send a request's headers, or its body (then 408); an idle
    /// keep-alive connection is closed after it, and an upgrade must complete within it
    #[arg(long, env = "FANFARE_REQUEST_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub request_timeout: u64,

    /// Channels one connection may be subscribed to at once; more get a `forbidden` error
    #[arg(long, env = "FANFARE_MAX_SUBSCRIPTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscriptions: u32,

    /// Server WebSocket ping period in seconds; a client silent for twice this is closed
    #[arg(long, env = "FANFARE_PING_INTERVAL", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub ping_interval: u64,

    /// Grace period in seconds on SIGTERM/SIGINT
    #[arg(long, env = "FANFARE_SHUTDOWN_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=MAX_SECS))]
    pub shutdown_timeout: u64,

    /// Messages kept per channel and per user for recovery (PROTOCOL section 7); 0 = off
    #[arg(long, env = "FANFARE_HISTORY_SIZE", default_value_t = 0)]
    pub history_size: u32,

    /// Seconds a message stays recoverable
    #[arg(long, env = "FANFARE_HISTORY_TTL", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub history_ttl: u64,

    /// Seconds a publish's idempotencyKey is remembered: a repeat within it is answered as
    /// the first was and delivered nowhere
    #[arg(long, env = "FANFARE_IDEMPOTENCY_TTL", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub idempotency_ttl: u64,

    /// Most bytes of messages the history keeps in this process, all topics together; past
    /// it the oldest go. Default: an eighth of the machine's memory (at least 64 MiB)
    #[arg(long, env = "FANFARE_HISTORY_MAX_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub history_max_bytes: Option<u64>,

    /// With --redis: answer a history publish 202 only once this many replicas of its master
    /// hold it (WAIT), and deliver it only then; 0 = off (PROTOCOL section 7)
    #[arg(long, env = "FANFARE_HISTORY_ACK_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub history_ack_replicas: u32,

    /// How long a history publish waits for --history-ack-replicas, in ms; past it, 503
    #[arg(long, env = "FANFARE_HISTORY_ACK_TIMEOUT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub history_ack_timeout: u64,

    /// Allowed `Origin` of WebSocket upgrades (repeatable); when given, others get 403
    #[arg(
        long = "allowed-origin",
        env = "FANFARE_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Client frames per second per connection (burst twice that); over it each frame is
    /// dropped with an `error` `rate_limited`, and 10 s over it closes the connection (1008).
    /// 0: no limit
    #[arg(long = "client-rate", env = "FANFARE_CLIENT_RATE", default_value_t = 0)]
    pub client_rate: u32,

    /// New WebSocket connections per second this process admits (burst one second's); beyond
    /// it the upgrade gets 503 with Retry-After. 0: no limit
    #[arg(long = "accept-rate", env = "FANFARE_ACCEPT_RATE", default_value_t = 0)]
    pub accept_rate: u32,

    /// permessage-deflate on WebSocket fronts for clients that offer it (on or off)
    #[arg(long, env = "FANFARE_COMPRESSION", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    pub compression: bool,

    /// Text frames shorter than this go uncompressed even to clients with deflate
    #[arg(long, env = "FANFARE_COMPRESSION_MIN_BYTES", default_value_t = 256)]
    pub compression_min_bytes: u32,

    /// Pusher Channels protocol: the app id (with --pusher-key and --pusher-secret, all or none)
    #[arg(long, env = "FANFARE_PUSHER_APP_ID")]
    pub pusher_app_id: Option<String>,

    /// Pusher Channels protocol: the app key clients connect with (`/app/{key}`)
    #[arg(long, env = "FANFARE_PUSHER_KEY")]
    pub pusher_key: Option<String>,

    /// Pusher Channels protocol: the app secret that signs channel auth and API requests
    #[arg(long, env = "FANFARE_PUSHER_SECRET", hide_env_values = true)]
    pub pusher_secret: Option<String>,

    /// Pusher webhooks: a URL (http or https) that receives channel_occupied, channel_vacated,
    /// member_added, member_removed and client_event, once per fleet (repeatable)
    #[arg(
        long = "pusher-webhook",
        env = "FANFARE_PUSHER_WEBHOOK",
        value_delimiter = ','
    )]
    pub pusher_webhooks: Vec<String>,

    /// Also give each worker a private listener on 127.0.0.1:0, so tests can place a connection
    /// on a chosen worker (the kernel spreads the shared port by hash).
    #[arg(skip)]
    pub worker_listeners: bool,
}

/// A secret the server made up because none was configured; printed once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    TokenSecret,
    ApiKey,
}

/// How much a connection may leave waiting for its socket (`--queue-limit`, `--queue-bytes`).
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub frames: usize,
    pub bytes: usize,
}

impl Config {
    /// Defaults for every flag, as `fanfare serve` with no flags and no environment would have.
    pub fn new() -> Self {
        Self::parse_args(&[]).expect("defaults parse")
    }

    /// The configuration `fanfare serve ARGS` would run with.
    pub fn parse_args(args: &[&str]) -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        use clap::Parser;
        let argv = std::iter::once("fanfare").chain(args.iter().copied());
        Wrapper::try_parse_from(argv).map(|w| w.config)
    }

    pub fn workers(&self) -> usize {
        self.workers
            .map(usize::from)
            .unwrap_or_else(|| num_cpus::get().clamp(1, MAX_WORKERS))
    }

    /// The configured node id, or a random one (fixed for the life of the process only if the
    /// caller keeps the result).
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| random_hex(8))
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }

    pub fn history_ttl(&self) -> Duration {
        Duration::from_secs(self.history_ttl)
    }

    /// `--history-max-bytes`, or an eighth of the machine's memory (at least 64 MiB).
    pub fn history_max_bytes(&self) -> usize {
        let given = self
            .history_max_bytes
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX));
        given.unwrap_or_else(|| {
            // SAFETY: sysconf(3) only reads system configuration.
            let (pages, page) = unsafe {
                (
                    libc::sysconf(libc::_SC_PHYS_PAGES),
                    libc::sysconf(libc::_SC_PAGESIZE),
                )
            };
            let memory = usize::try_from(pages.max(0))
                .unwrap_or(0)
                .saturating_mul(usize::try_from(page.max(0)).unwrap_or(0));
            (memory / 8).max(64 << 20)
        })
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout)
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            frames: self.queue_limit as usize,
            bytes: usize::try_from(self.queue_bytes).unwrap_or(usize::MAX),
        }
    }

    /// `--max-connections`, or what the file descriptor limit allows with room for HTTP and
    /// Redis connections.
    pub fn max_connections(&self) -> usize {
        match self.max_connections {
            Some(n) => n as usize,
            None => {
                let fds = rlimit::getrlimit(rlimit::Resource::NOFILE)
                    .map(|(soft, _)| soft)
                    .unwrap_or(1024);
                let fds = usize::try_from(fds).unwrap_or(usize::MAX);
                fds.saturating_sub((fds / 10).max(64)).max(1)
            }
        }
    }

    /// Fills in a random token secret and API key where none was given, and says which.
    pub fn generate_missing_secrets(&mut self) -> Vec<Generated> {
        let mut made = Vec::new();
        if self.token_secret.is_none() {
            self.token_secret = Some(random_hex(32));
            made.push(Generated::TokenSecret);
        }
        if self.api_key.is_none() {
            self.api_key = Some(random_hex(24));
            made.push(Generated::ApiKey);
        }
        made
    }
}

/// `on` or `off`.
fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?}: say on or off")),
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::parse_args(args)
    }

    #[test]
    fn durations_are_bounded() {
        assert!(parse(&["--ping-interval", "99999999999"]).is_err());
        assert!(parse(&["--shutdown-timeout", "18446744073709551615"]).is_err());
        assert!(parse(&["--request-timeout", "0"]).is_err());
        let c = parse(&["--ping-interval", "86400", "--request-timeout", "3"]).unwrap();
        assert_eq!(c.request_timeout(), Duration::from_secs(3));
        let _ = tokio::time::Instant::now() + 3 * c.ping_interval();
    }

    #[test]
    fn compression_is_on_or_off() {
        assert!(Config::new().compression);
        assert!(!parse(&["--compression", "off"]).unwrap().compression);
        assert!(parse(&["--compression", "maybe"]).is_err());
    }

    #[test]
    fn default_connection_limit_leaves_descriptors_free() {
        let c = Config::new();
        assert!(c.max_connections() >= 1);
        assert_eq!(
            parse(&["--max-connections", "7"])
                .unwrap()
                .max_connections(),
            7
        );
    }
}
