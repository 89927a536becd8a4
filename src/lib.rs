//! # fanfare — a real-time WebSocket push server
//!
//! An application backend says "send this JSON to user 42" or "publish this on channel
//! `news`" over HTTP; every open socket of that user, or every subscriber of that channel,
//! receives it.
//!
//! ## Layout: data flows one way
//!
//! ```text
//! publish:  http ─▶ router ─▶ bus ─▶ hub (each worker) ─▶ connection ─▶ socket
//!                      └────▶ bridge ─▶ Redis ─▶ bridge (other processes) ─▶ bus ─▶ …
//! ```
//!
//! - [`config`]: every `fanfare serve` flag, its environment variable and default.
//! - [`server`]: starts N workers on one port and stops them.
//! - [`worker`]: one thread with its own runtime, listener, hub and bus task.
//! - [`listener`]: SO_REUSEPORT sockets, one per worker.
//! - [`http`]: hyper connections; `/ws` upgrades, the publish API, health and metrics.
//! - [`router`]: the door for publishing: to the bridge, and to the workers with recipients.
//! - [`bridge`]: one Redis link per process: publishes, and subscribes to what has local
//!   recipients; what other machines publish goes to the local bus.
//! - [`interest`]: which workers have a recipient for each user and channel.
//! - [`bus`]: one bounded inbox per worker.
//! - [`hub`]: a worker's registry (user → connections, channel → subscribers) and fan-out.
//! - [`connection`]: one WebSocket: reads, writes, pings, closes.
//! - [`protocol`]: wire types and the ids `UserId`, `Channel`, `ConnId`; frames encoded once.
//! - [`auth`]: client tokens (HS256) and channel permissions.
//! - [`metrics`]: counters rendered for Prometheus.
//! - [`error`]: close reasons and start-up errors.
//! - [`bench`]: `fanfare bench`, the load generator (a client of all the above).

pub mod auth;
pub mod bench;
pub mod bridge;
pub mod bus;
pub mod config;
pub mod connection;
pub mod error;
pub mod http;
pub mod hub;
pub mod interest;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod router;
pub mod server;
pub mod worker;

pub use config::Config;
pub use server::Server;
