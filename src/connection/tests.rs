//! The connection loop over a real loopback socket, with a tungstenite client on the other
//! end. Real time: under paused time the clock may jump ahead of a loopback write the
//! driver has not seen yet, so short real intervals it is.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::config::QueueLimits;
use crate::hub::{Hub, SharedHub};
use crate::protocol::{ConnId, UserId, WorkerId};
use crate::routes::Routes;

struct Client {
    ws: WebSocketStream<TcpStream>,
    hub: SharedHub,
    writer: Arc<Writer>,
    log: Arc<SubscriptionLog>,
    metrics: Arc<WorkerMetrics>,
}

/// A ping interval no test waits for.
const NEVER: Duration = Duration::from_secs(3600);

async fn start(frames: usize, with_log: bool) -> Client {
    start_pinging(frames, with_log, NEVER).await
}

async fn start_pinging(frames: usize, with_log: bool, ping_interval: Duration) -> Client {
    let log = Arc::new(SubscriptionLog::default());
    let routes = Arc::new(Routes::new(1, with_log.then(|| log.clone())));
    let metrics = Arc::<WorkerMetrics>::default();
    let (bus, _) = crate::bus::Bus::new(routes.clone(), 1);
    let router = Arc::new(Router::new(
        bus.clone(),
        None,
        None,
        Arc::new(crate::presence::Presence::new(bus)),
        Arc::new(crate::metrics::Metrics::new(1, None, None)),
    ));
    let hub: SharedHub = Arc::new(std::sync::Mutex::new(Hub::new(
        WorkerId(0),
        routes,
        10,
        metrics.clone(),
    )));
    let id = ConnId {
        worker: WorkerId(0),
        seq: 1,
    };
    let writer = Arc::new(Writer::new(
        QueueLimits {
            frames,
            bytes: usize::MAX,
        },
        Default::default(),
    ));
    hub::lock(&hub).register(id, UserId::new("u").unwrap(), writer.clone(), None);
    let (client, server) = crate::writer::small_buffer_pair().await;
    let (read, write) = server.into_split();
    writer.attach(write);
    let connection = Connection {
        registration: Registration {
            id,
            hub: hub.clone(),
        },
        writer: writer.clone(),
        worker: Arc::new(Surroundings {
            log: with_log.then(|| log.clone()),
            keys: Arc::new(TokenKeys::new("test").unwrap()),
            router,
            ping_interval,
            metrics: metrics.clone(),
            restart_spread: Duration::ZERO,
        }),
        user: UserId::new("u").unwrap(),
        permissions: Permissions::new(&["news".into()]),
        exp: None,
        pusher: None,
        event_stream: false,
        rate: None,
        slot: Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap(),
    };
    let io = SocketIo {
        read,
        writer: writer.clone(),
        inflating: None,
    };
    let server_ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let task = connection.run(server_ws);
    // What every idle connection holds: the task is most of its memory (BENCHMARKS.md,
    // "Memory, and a million connections"): 944 bytes in a debug build on rustc 1.95; the
    // bound leaves a little room for other compilers, not for a wait of the writer's own
    // (+120), on the worker's shutdown (+80) or the subscriptions' waits inline (+88) again.
    let size = std::mem::size_of_val(&task);
    assert!(size <= 984, "the connection task grew to {size} bytes");
    tokio::spawn(task);
    Client {
        ws: WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        hub,
        writer,
        log,
        metrics,
    }
}

impl Client {
    async fn next(&mut self) -> Message {
        self.ws.next().await.unwrap().unwrap()
    }
    async fn text(&mut self) -> String {
        loop {
            match self.next().await {
                Message::Text(t) => return t.to_string(),
                Message::Ping(_) => {}
                other => panic!("expected text, got {other:?}"),
            }
        }
    }
    /// The code of the server's close frame, whatever comes before it.
    async fn close(&mut self) -> u16 {
        loop {
            if let Some(code) = close_code(&self.next().await) {
                return code;
            }
        }
    }
    async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }
}

fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(f)) => Some(f.code.into()),
        _ => None,
    }
}

#[tokio::test]
async fn silent_client_gets_a_ping_then_is_closed_after_twice_the_interval() {
    const PING: Duration = Duration::from_millis(200);
    let started = Instant::now();
    let mut c = start_pinging(8, false, PING).await;
    assert!(matches!(c.next().await, Message::Ping(_)));
    assert!(started.elapsed() >= PING);
    // tungstenite answers a ping only when it reads next: not reading is being silent.
    tokio::time::sleep(3 * PING).await;
    assert_eq!(c.close().await, 1001);
    assert!(started.elapsed() >= 2 * PING);
    assert_eq!(hub::lock(&c.hub).entries(), 0);
}

#[tokio::test]
async fn a_client_that_talks_is_not_closed() {
    let mut c = start_pinging(8, false, Duration::from_millis(50)).await;
    for _ in 0..5 {
        assert!(matches!(c.next().await, Message::Ping(_)));
    }
    assert_eq!(hub::lock(&c.hub).connections(), 1);
}

#[tokio::test]
async fn replies_keep_order_and_bad_frames_get_their_close_codes() {
    let mut c = start(8, false).await;
    c.writer.push(&Frame::pong());
    c.writer.flush();
    c.send(r#"{"type":"subscribe","channel":"news"}"#).await;
    c.send(r#"{"type":"subscribe","channel":"secret"}"#).await;
    assert_eq!(c.text().await, Frame::pong().as_str());
    assert_eq!(c.text().await, r#"{"type":"subscribed","channel":"news"}"#);
    assert!(c.text().await.contains("forbidden"));
    c.ws.send(Message::binary(vec![1])).await.unwrap();
    assert_eq!(c.close().await, 1003);
}

#[tokio::test]
async fn subscribed_waits_for_the_bridge_while_writes_go_on() {
    let mut c = start(64, true).await;
    c.send(r#"{"type":"subscribe","channel":"news"}"#).await;
    c.send(r#"{"type":"ping"}"#).await;
    // The bridge has not confirmed: meanwhile other frames still flow.
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.writer
        .push(&Frame::unsubscribed(&Channel::new("x").unwrap()));
    c.writer.flush();
    assert!(c.text().await.contains("unsubscribed"));
    // Confirm once the connection has asked (its subscribe is read by the server task).
    let asked = Instant::now();
    while c.log.is_applied(c.log.ticket()) {
        assert!(asked.elapsed() < Duration::from_secs(10), "never asked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.log.confirm(c.log.take().1);
    assert_eq!(c.text().await, r#"{"type":"subscribed","channel":"news"}"#);
    assert_eq!(c.text().await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn a_client_close_is_echoed() {
    let mut c = start(8, false).await;
    c.ws.close(None).await.unwrap();
    let echo = c.ws.next().await;
    assert!(
        matches!(echo, Some(Ok(Message::Close(_)))),
        "expected the close echoed, got {echo:?}"
    );
}

#[tokio::test]
async fn ping_flood_from_a_client_that_never_reads_is_a_slow_consumer() {
    let c = start(16, false).await;
    let (mut sink, _stream) = c.ws.split();
    // Never read: pongs pile up behind a full socket until the queue limit cuts it.
    let payload = vec![0u8; 125];
    let mut sent = 0;
    while c
        .metrics
        .slow_consumer_closes
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        sink.send(Message::Ping(payload.clone().into()))
            .await
            .unwrap();
        sent += 1;
        assert!(sent < 200_000, "never cut: {} queued", c.writer.queued());
        if sent % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(hub::lock(&c.hub).connections(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_warning_comes_30_s_before_exp_or_at_once() {
    let unix = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let d = Deadlines::new(Duration::from_secs(25), Some(unix() + 100), 0);
    let now = Instant::now();
    let (warn, expire) = (d.warn.unwrap() - now, d.expire.unwrap() - now);
    assert!(
        warn > Duration::from_secs(68) && warn <= Duration::from_secs(70),
        "{warn:?}"
    );
    assert_eq!(expire - warn, EXPIRY_WARNING);
    // Other connections are warned up to 5 s earlier, spread by their number.
    let early: Vec<Duration> = (1..=100)
        .map(|seq| {
            let d = Deadlines::new(Duration::from_secs(25), Some(unix() + 100), seq);
            d.expire.unwrap() - d.warn.unwrap()
        })
        .collect();
    let spread = EXPIRY_WARNING + WARNING_SPREAD;
    assert!(early.iter().all(|e| *e >= EXPIRY_WARNING && *e < spread));
    let distinct: std::collections::HashSet<_> = early.iter().collect();
    assert!(distinct.len() > 50);
    assert_eq!(d.next(), now + Duration::from_secs(25), "the ping first");
    let soon = Deadlines::new(Duration::from_secs(25), Some(unix() + 5), 3);
    assert_eq!(soon.warn, Some(now));
    assert!(Deadlines::new(Duration::from_secs(25), None, 0)
        .warn
        .is_none());
}

#[tokio::test]
async fn shutdown_closes_with_1012() {
    let mut c = start(8, false).await;
    crate::hub::lock(&c.hub).drain();
    assert_eq!(c.close().await, 1012);
}
