//! Server configuration: every `fanfare serve` flag, its environment variable and its default.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use rand::RngCore;

use crate::protocol::MAX_WORKERS;

/// Settings of `fanfare serve`. Each flag also reads `FANFARE_<FLAG>`.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// HTTP + WebSocket address, shared by all workers (SO_REUSEPORT); port 0 picks a free one
    #[arg(long, env = "FANFARE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Worker threads, each with its own runtime and listener [default: number of CPUs]
    #[arg(long, env = "FANFARE_WORKERS", value_parser = clap::value_parser!(u8).range(1..=MAX_WORKERS as i64))]
    pub workers: Option<u8>,

    /// Redis to relay through (redis://host:port/db); none: single-machine mode
    #[arg(long, env = "FANFARE_REDIS")]
    pub redis: Option<String>,

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

    /// Outbound frames a connection may have queued before it is closed as a slow consumer
    #[arg(long, env = "FANFARE_QUEUE_LIMIT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_limit: u32,

    /// Channels one connection may be subscribed to at once; more get a `forbidden` error
    #[arg(long, env = "FANFARE_MAX_SUBSCRIPTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscriptions: u32,

    /// Server WebSocket ping period in seconds; a client silent for twice this is closed
    #[arg(long, env = "FANFARE_PING_INTERVAL", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval: u64,

    /// Grace period in seconds on SIGTERM/SIGINT
    #[arg(long, env = "FANFARE_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// Allowed `Origin` of WebSocket upgrades (repeatable); when given, others get 403
    #[arg(
        long = "allowed-origin",
        env = "FANFARE_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

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

impl Config {
    /// Defaults for every flag, as `fanfare serve` with no flags and no environment would have.
    pub fn new() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        use clap::Parser;
        Wrapper::try_parse_from(["fanfare"])
            .expect("defaults parse")
            .config
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

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
