//! Errors that reach the wire, and the one place that maps them to close codes.

/// Code of the close the backend asks for with `POST /disconnect`; its reason is the backend's.
pub const DISCONNECT_CODE: u16 = 4003;

/// Why the server closes a WebSocket; each has its code and reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The server shuts down (SIGTERM/SIGINT): each connection at its own moment of the drain.
    Restart,
    /// The client was silent for twice the ping interval.
    PingTimeout,
    /// The outbound queue went over `--queue-limit`.
    SlowConsumer,
    /// The client sent a binary frame.
    Unsupported,
    /// The client sent a frame or message over `--max-message-bytes`.
    TooBig,
    /// The client broke the WebSocket protocol.
    ProtocolError,
    /// A text frame was not valid UTF-8.
    InvalidPayload,
    /// The token's `exp` passed without a refresh.
    TokenExpired,
    /// Over `--client-rate` for 10 s.
    RateLimited,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Restart => 1012,
            CloseReason::PingTimeout => 1001,
            CloseReason::SlowConsumer | CloseReason::RateLimited => 1008,
            CloseReason::Unsupported => 1003,
            CloseReason::TooBig => 1009,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidPayload => 1007,
            CloseReason::TokenExpired => 4001,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::Restart => "server restarting",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Unsupported => "binary frames are not supported",
            CloseReason::TooBig => "message too big",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::InvalidPayload => "text frame is not valid UTF-8",
            CloseReason::TokenExpired => "token expired",
            CloseReason::RateLimited => "over --client-rate for 10 s",
        }
    }
}

/// Failures of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} is required (the CLI generates one when it is missing)")]
    MissingSecret(&'static str),
    #[error("token signing self-test failed: {0}")]
    Auth(#[from] crate::auth::Error),
    #[error(transparent)]
    Bridge(#[from] crate::bridge::Error),
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("--history-ack-replicas needs --redis and --history-size: replicas are Redis's")]
    AckWithoutRedisHistory,
    #[error(
        "--pusher-app-id, --pusher-key and --pusher-secret go together: give all three or none"
    )]
    PusherPartial,
    #[error("--pusher-webhook {0:?}: {1}")]
    Webhook(String, &'static str),
}
