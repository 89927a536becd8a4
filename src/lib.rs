//! # fanfare — a real-time WebSocket push server
//!
//! An application backend says "send this JSON to user 42" or "publish this on channel
//! `news`" over HTTP; every open socket of that user, or every subscriber of that channel,
//! receives it.
//!
//! ## Layout: data flows one way
//!
//! ```text
//! publish (no history, or history in this process):
//!   http::api ─▶ router ─┬─▶ history (offset, kept) ─▶ bus ─▶ hub (each worker) ─▶ writer ─▶ socket
//!                        └─▶ bridge ─▶ Redis ─▶ bridge (other machines) ─▶ bus ─▶ hub ─▶ …
//! publish (history in Redis: the only path for a topic with history):
//!   http::api ─▶ router ─▶ bridge ─▶ Redis script (offset, kept, PUBLISH)
//!                                      └─▶ bridge (every machine, this one too) ─▶ bus ─▶ hub ─▶ …
//! a session starts (http::session; `/ws` and `/sse` call it, then connection runs it):
//!   token, slot ─▶ hub.register (held) ─▶ bridge subscribed ─▶ router.read_history ─▶ hub.open
//! a topic starts (the user's stream, a channel, a backend /subscribe; one way, merge.rs):
//!   hub holds its live messages ─▶ router.read_history (here or Redis) ─▶ merge: opening + held
//! control:  hub ─▶ routes ─▶ subscription log ─▶ bridge (Redis subscriptions)
//!           bridge ─▶ subscription log (watch) ─▶ connection (`subscribed`, the session start)
//! presence: hub (joins, leaves) ─▶ presence ─▶ bus (`join`/`leave` to watchers)
//!                                      └─▶ bridge::presence ─▶ Redis (the fleet's members)
//! webhooks: presence (alone) or bridge::presence (Redis's answer), client events ─▶ webhooks
//!           outbox ─▶ store (memory, or the fleet's stream) ─▶ POST to each URL
//! ```
//!
//! The modules from the top floor down: each imports only from modules further down this list
//! (none from above, no circles); `protocol` and `frame` are the ground floor.
//!
//! - [`server`]: starts N workers on one port and stops them.
//! - [`worker`]: one thread with its own runtime, listener, hub and bus task.
//! - [`fuzzing`]: entry points of the fuzz targets in `fuzz/`.
//! - [`http`]: hyper connections and one route table (warp): `/ws` upgrades, `/sse` event
//!   streams (on a socket taken from hyper), the session start every front shares, the Pusher
//!   front (`/app/{key}`, `/apps/{id}/…`), the publish API, presence, health and metrics;
//!   limits at the door.
//! - [`context`]: what a worker and its handlers share (settings, router, hub, shutdown).
//! - [`connection`]: one client connection (a WebSocket, or an event stream that only
//!   listens): reads, replies, pings, closes, starts its subscriptions.
//! - [`hub`]: a worker's registry (user → connections, channel → subscribers) and fan-out.
//! - [`bench`]: `fanfare bench`, the load generator (a client of all the above).
//! - [`error`]: close reasons and start-up errors.
//! - [`router`]: the process's facade: publishing (to the bridge, the history, the bus), one
//!   read of a topic's history wherever it is kept, presence questions, the backend's controls.
//! - [`merge`]: how one recipient's topic opens: its live messages held while its history is
//!   read, merged by offset, nothing missed or twice.
//! - [`delta`]: fossil deltas: a channel message as the change from the one before, made once
//!   per publication.
//! - [`auth`]: client tokens (HS256) and channel permissions.
//! - [`bridge`]: one Redis link per process: publishes, keeps history and presence in Redis,
//!   and subscribes to what has local recipients; what other machines publish goes to the bus.
//! - [`writer`]: one connection's outgoing frames: straight to the socket, queued only when
//!   it is full, bounded; as WebSocket frames or as server-sent events.
//! - [`presence`]: who is in each channel, and their `join`/`leave` events.
//! - [`metrics`]: counters rendered for Prometheus.
//! - [`bus`]: one bounded inbox per worker; hands each message to the workers the routes name.
//! - [`history`]: offsets, epochs and the messages kept for recovery (one machine), and what a
//!   read of any history finds.
//! - [`idempotency`]: publish keys: a repeat is answered as the first was, delivered nowhere
//!   (remembered here alone; in Redis in a fleet).
//! - [`routes`]: the routing table: which workers have a recipient for each user and channel.
//! - [`config`]: every `fanfare serve` flag, its environment variable and default.
//! - [`subscriptions`]: the seam between hubs and bridge: what this process wants from Redis,
//!   and how far the bridge got.
//! - [`webhooks`]: Pusher webhooks: the events, this process's outbox, signed POSTs retried with
//!   backoff, a cursor per URL over a store (memory alone, a Redis stream in a fleet).
//! - [`pusher`]: the Pusher Channels protocol's app, signatures, socket ids and frames (its
//!   WebSocket dialect is `connection/pusher.rs`, its routes `http/pusher*.rs`).
//! - [`protocol`]: ids (`UserId`, `Channel`, `ConnId`), topics, client messages, and what each
//!   server message says, encoded once.
//! - [`listener`]: SO_REUSEPORT sockets, one per worker.
//! - [`rate`]: token buckets for `--client-rate` and `--accept-rate`.
//! - [`event_stream`]: Server-Sent Events as a transport: one event per frame, and the id that
//!   says where every topic of the stream stands (a browser's `Last-Event-ID` resumes them).
//! - [`frame`]: the transport's framing: a WebSocket frame built once, shared by every recipient
//!   (and its compressed form, made once).
//! - [`deflate`]: permessage-deflate: what is agreed, one compression per message, client
//!   messages inflated within the limit.

pub mod auth;
pub mod bench;
pub mod bridge;
pub mod bus;
pub mod config;
pub mod connection;
pub mod context;
pub mod deflate;
pub mod delta;
pub mod error;
pub mod event_stream;
pub mod frame;
pub mod fuzzing;
pub mod history;
pub mod http;
pub mod hub;
pub mod idempotency;
pub mod listener;
pub mod merge;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod pusher;
pub mod rate;
pub mod router;
pub mod routes;
pub mod server;
pub mod subscriptions;
pub mod webhooks;
pub mod worker;
pub mod writer;

pub use config::Config;
pub use server::Server;

/// jemalloc, for every binary built on this crate (the server, `fanfare bench`, the tests and
/// benches, so they measure what runs): an idle connection is many small allocations, and
/// jemalloc's size classes hold them in ~120 B less than glibc's malloc (paired runs,
/// BENCHMARKS.md "Memory"). Not under `cargo fuzz` (`--cfg fuzzing`), whose sanitizer
/// watches the system allocator.
#[cfg(not(fuzzing))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
