//! # fanfare — a real-time WebSocket push server
//!
//! An application backend says "send this JSON to user 42" or "publish this on channel
//! `news`" over HTTP; every open socket of that user, or every subscriber of that channel,
//! receives it.
//!
//! ## Layout: data flows one way
//!
//! ```text
//! publish:  http ─▶ router ─▶ bus ─▶ hub (each worker) ─▶ writer ─▶ socket
//!                      └────▶ bridge ─▶ Redis ─▶ bridge (other processes) ─▶ bus ─▶ …
//! control:  hub ─▶ routes ─▶ subscription log ─▶ bridge (Redis subscriptions)
//!           bridge ─▶ subscription log (watch) ─▶ connection (`subscribed`, the 101)
//! ```
//!
//! - [`config`]: every `fanfare serve` flag, its environment variable and default.
//! - [`server`]: starts N workers on one port and stops them.
//! - [`worker`]: one thread with its own runtime, listener, hub and bus task.
//! - [`context`]: what a worker and its handlers share (settings, router, hub, shutdown).
//! - [`listener`]: SO_REUSEPORT sockets, one per worker.
//! - [`http`]: hyper connections and one dispatcher: `/ws` upgrades, the publish API, health
//!   and metrics; limits at the door.
//! - [`router`]: the door for publishing: to the bridge, and to the bus.
//! - [`bridge`]: one Redis link per process: publishes, and subscribes to what has local
//!   recipients; what other machines publish goes to the bus.
//! - [`routes`]: the routing table: which workers have a recipient for each user and channel.
//! - [`subscriptions`]: the seam between hubs and bridge: what this process wants from Redis,
//!   and how far the bridge got.
//! - [`history`]: offsets, epochs and the messages kept for recovery (one machine).
//! - [`presence`]: who is in each channel, and their `join`/`leave` events.
//! - [`bus`]: one bounded inbox per worker; hands each message to the workers the routes name.
//! - [`hub`]: a worker's registry (user → connections, channel → subscribers) and fan-out.
//! - [`writer`]: one connection's outgoing frames: straight to the socket, queued only when
//!   it is full, bounded.
//! - [`connection`]: one WebSocket: reads, replies, pings, closes.
//! - [`protocol`]: wire types and the ids `UserId`, `Channel`, `ConnId`; frames encoded once.
//! - [`auth`]: client tokens (HS256) and channel permissions.
//! - [`metrics`]: counters rendered for Prometheus.
//! - [`error`]: close reasons and start-up errors.
//! - [`bench`]: `fanfare bench`, the load generator (a client of all the above).
//! - [`fuzzing`]: entry points of the fuzz targets in `fuzz/`.

pub mod auth;
pub mod bench;
pub mod bridge;
pub mod bus;
pub mod config;
pub mod connection;
pub mod context;
pub mod error;
pub mod frame;
pub mod fuzzing;
pub mod history;
pub mod http;
pub mod hub;
pub mod listener;
pub mod merge;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod router;
pub mod routes;
pub mod server;
pub mod subscriptions;
pub mod worker;
pub mod writer;

pub use config::Config;
pub use server::Server;
