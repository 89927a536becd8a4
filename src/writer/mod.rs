//! The outgoing side of one WebSocket: frames are written straight to the socket while it can
//! take them, and only what it refuses waits here.
//!
//! The hub and the connection task both write through the [`Writer`], on the worker's thread:
//! the hub pushes message frames (a whole bus batch, then one [`Writer::flush`] per touched
//! connection, so a burst costs one system call), the connection task pushes replies and the
//! WebSocket control frames tungstenite produces (pongs, close replies), and waits for the
//! socket to become writable when frames are left over.
//!
//! **Bounded**: frames the socket refused count against `--queue-limit` (frames) and
//! `--queue-bytes` (bytes; a single frame is always accepted). A flush that leaves more than
//! either is a slow consumer: the queued frames are dropped and counted, and the connection is
//! closed with 1008. A reader that keeps up is never cut, however large the burst: the limit
//! judges what the kernel's send buffer could not take, not how the server batches.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use tokio::io::Interest;
use tokio::net::tcp::OwnedWriteHalf;

use crate::config::QueueLimits;
use crate::event_stream::Positions;
use crate::metrics::WorkerMetrics;
use crate::protocol::{Channel, Frame};

/// Most buffers handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// Frames up to this size that wait together are copied into one buffer and sent with one
/// `send`: on loopback the kernel's per-iovec copy and `writev`'s own overhead cost more than
/// copying a few small frames, hot in cache since every recipient shares them.
const GATHER_FRAME: usize = 1024;
const GATHER_BYTES: usize = 16 * 1024;

thread_local! {
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The outcome of [`Writer::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued, and the first push since the last flush: the caller must flush this writer.
    First,
    /// Queued behind other pushes not flushed yet.
    Queued,
    /// Not taken: the connection is cut, broken or closing.
    Refused,
}

/// The outcome of [`Writer::flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything is in the socket, or what is left is within the limits.
    Ok,
    /// The limits were exceeded: the connection is cut as a slow consumer and this many frames
    /// were dropped.
    Cut(u64),
    /// The connection is cut, broken or closed; nothing more is written.
    Gone,
}

/// What the hub asks of a connection that only its task can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close with 4003 and this reason (`POST /disconnect`); the hub has unregistered it.
    Disconnect(Arc<str>),
    /// A subscription the backend made (`POST /subscribe`) is reserved: send `subscribed`
    /// and let the channel's messages in once the bridge has it; with history, from where the
    /// channel stood when the backend asked.
    Activate(Channel, Option<crate::protocol::Since>),
    /// The server drains (SIGTERM): close with 1012 at a moment of the connection's own within
    /// the drain. A command, not a wait on the worker's shutdown token: an idle connection's
    /// task then holds no wait of its own for it.
    Drain,
}

/// What the connection task hears from its writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterEvent {
    /// Over the limits: close with 1008.
    SlowConsumer,
    /// Writing failed: the peer is gone.
    Broken,
    /// The hub asks for something.
    Command(Command),
}

/// Commands that may wait for a connection task (a backend calling `/subscribe` in a loop for
/// one user); past this the connection is cut like a slow consumer.
const MAX_COMMANDS: usize = 256;

pub struct Writer {
    /// Set once the upgrade completes. Before that (between registering the connection and the
    /// 101 reaching the client) frames only queue, so the 101 is always first on the wire.
    socket: OnceLock<OwnedWriteHalf>,
    state: Mutex<State>,
    limits: QueueLimits,
    /// Wakes the connection task: frames wait for the socket, or the writer was cut or broke.
    /// A waker, not a `Notify`: the task polls [`Writer::poll_next_event`] in place, so an idle
    /// connection's task holds no wait of its own for it (a `Notified` is 64 bytes).
    wake: AtomicWaker,
    /// The worker's counters of writes and frames written (frames per write is the broadcast
    /// cost's lever: each write on loopback also runs the receiver's TCP input).
    metrics: Arc<WorkerMetrics>,
    /// Set at the upgrade when the client negotiated permessage-deflate.
    deflate: OnceLock<Deflate>,
}

/// Which text frames a connection that negotiated permessage-deflate gets compressed: those
/// of at least `min_bytes` (`--compression-min-bytes`) and at most `max_payload` (what its
/// `server_max_window_bits` allows).
#[derive(Debug, Clone, Copy)]
pub struct Deflate {
    pub min_bytes: u32,
    pub max_payload: u32,
}

#[derive(Default)]
struct State {
    /// Frames the socket has not taken yet; the head may be partly written (already advanced).
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// The head of `queue` is partly on the wire: it must be finished before anything else.
    head_started: bool,
    status: Status,
    /// Pushed since the last flush: the hub flushes each such writer once per batch.
    dirty: bool,
    /// What an idle connection does not need, allocated only while it does: every connection
    /// holds a writer, most of the time empty.
    rare: Option<Box<Rare>>,
}

#[derive(Default)]
struct Rare {
    /// For the connection task, oldest first.
    commands: VecDeque<Command>,
    /// Frames dropped when the writer was cut; counted once, when the connection ends.
    cut_dropped: u64,
    /// Room above the limits for the replays pushed at once (resumes), until the queue empties:
    /// a replay is a burst like any other and never cuts a client that reads. One per topic,
    /// the last pushed (a topic replayed again replaces its room, and an unsubscribed channel
    /// gives it back), so a client that resubscribes in a loop without reading is cut instead
    /// of holding every replay again.
    bursts: Vec<Burst>,
    /// A stream of server-sent events: frames go out as events, and where the stream stands.
    events: Option<Positions>,
}

/// The room one topic's replay has above the limits.
struct Burst {
    /// The channel, or `None` for the connection's direct messages.
    topic: Option<Channel>,
    frames: usize,
    bytes: usize,
}

/// Most room above `--queue-bytes` that the replays of one connection may have at once.
pub const MAX_BURST_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    #[default]
    Open,
    /// Over the limits; only the close frame may still be written.
    Cut,
    /// The close frame is queued; nothing more is accepted.
    Closing,
    /// A write failed.
    Broken,
}

impl Writer {
    pub fn new(limits: QueueLimits, metrics: Arc<WorkerMetrics>) -> Self {
        Writer {
            socket: OnceLock::new(),
            state: Mutex::default(),
            limits,
            wake: AtomicWaker::new(),
            metrics,
            deflate: OnceLock::new(),
        }
    }

    /// The connection negotiated permessage-deflate: from now on its text frames in range go
    /// out compressed (each publication's compressed frame, shared).
    pub fn use_deflate(&self, deflate: Deflate) {
        let _ = self.deflate.set(deflate);
    }

    /// The bytes of `frame` as this connection takes them: compressed when it negotiated
    /// deflate and the frame is in range (and smaller compressed), else as built.
    fn wire<'f>(&self, frame: &'f Frame) -> &'f Bytes {
        let Some(d) = self.deflate.get() else {
            return frame.bytes();
        };
        let len = u32::try_from(frame.payload().len()).unwrap_or(u32::MAX);
        if len < d.min_bytes || len > d.max_payload {
            return frame.bytes();
        }
        frame.deflated().unwrap_or(frame.bytes())
    }

    /// Frames go out as server-sent events ([`crate::event_stream`]) from now on, the stream
    /// standing at `positions`.
    pub fn use_event_stream(&self, positions: Positions) {
        self.state().rare().events = Some(positions);
    }

    /// The bytes of `frame` for this connection: [`wire`](Self::wire)'s, or its event.
    fn bytes_of(&self, s: &mut State, frame: &Frame) -> Bytes {
        match s.rare.as_mut().and_then(|r| r.events.as_mut()) {
            Some(events) => events.event(frame),
            None => self.wire(frame).clone(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere leaves a queue that is still a valid queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the writer its socket once the upgrade completed, and writes what queued before.
    pub fn attach(&self, socket: OwnedWriteHalf) -> Flushed {
        let _ = self.socket.set(socket);
        self.flush()
    }

    /// [`attach`](Self::attach) for a transport that writes its own response `head` first
    /// (an event stream's), ahead of the frames queued meanwhile.
    pub fn attach_after(&self, head: Bytes, socket: OwnedWriteHalf) -> Flushed {
        {
            let mut s = self.state();
            s.queued_bytes += head.len();
            s.queue.push_front(head);
        }
        self.attach(socket)
    }

    /// Queues a frame behind everything pushed before; the caller then [`flush`](Self::flush)es
    /// (once for many pushes). A frame pushed to a cut, broken or closing writer is refused: its
    /// connection is on its way out, and the caller counts the frame as dropped.
    pub fn push(&self, frame: &Frame) -> Pushed {
        self.push_all(std::slice::from_ref(frame))
    }

    /// [`push`](Self::push) for several frames in order, under one lock.
    pub fn push_all(&self, frames: &[Frame]) -> Pushed {
        let mut s = self.state();
        if s.status != Status::Open {
            return Pushed::Refused;
        }
        for frame in frames {
            let bytes = self.bytes_of(&mut s, frame);
            s.push(bytes);
        }
        match std::mem::replace(&mut s.dirty, true) {
            false => Pushed::First,
            true => Pushed::Queued,
        }
    }

    /// Pushes frames that go out as one burst (`subscribed` and a replay) of `topic` (a
    /// channel, `None` for direct messages): the limits grow by their size until the queue has
    /// drained once, or the topic's next burst replaces it, or the channel is unsubscribed.
    pub fn push_burst(&self, topic: Option<&Channel>, frames: &[Frame]) {
        let mut s = self.state();
        if s.status != Status::Open {
            return;
        }
        let frames: Vec<Bytes> = frames.iter().map(|f| self.bytes_of(&mut s, f)).collect();
        let bursts = &mut s.rare().bursts;
        bursts.retain(|b| b.topic.as_ref() != topic);
        bursts.push(Burst {
            topic: topic.cloned(),
            frames: frames.len(),
            bytes: frames.iter().map(Bytes::len).sum(),
        });
        for bytes in frames {
            s.push(bytes);
        }
        s.dirty = true;
    }

    /// `channel` was unsubscribed: its replay, if still waiting, has no more room of its own.
    pub fn end_burst(&self, channel: &Channel) {
        let mut s = self.state();
        if let Some(rare) = s.rare.as_mut() {
            rare.bursts.retain(|b| b.topic.as_ref() != Some(channel));
        }
        s.tidy();
    }

    /// [`push`](Self::push) then [`flush`](Self::flush): for single frames (replies, pings).
    pub fn send(&self, frame: &Frame) -> Flushed {
        self.push(frame);
        self.flush()
    }

    /// Writes what the socket takes now, without waiting, then checks the limits against what
    /// is left. Costs no system call while the socket is known to be full.
    pub fn flush(&self) -> Flushed {
        self.flush_locked(&mut self.state())
    }

    /// [`push_all`](Self::push_all) then [`flush`](Self::flush) under one lock, for the hub
    /// when nothing else in its batch can follow these frames; `None` when refused.
    ///
    /// With nothing queued, the frames are written straight from the caller's (shared) bytes,
    /// and only what the socket refuses is queued: no reference counted per recipient.
    pub fn send_all(&self, frames: &[Frame]) -> Option<Flushed> {
        let mut s = self.state();
        if s.status != Status::Open {
            return None;
        }
        let mut rest = frames;
        // An event stream's events are its own (their ids): they go through the queue.
        let direct = self
            .socket
            .get()
            .filter(|_| s.queue.is_empty() && !frames.is_empty() && !s.is_event_stream());
        if let Some(socket) = direct {
            match write_some(socket, frames.iter().map(|f| &self.wire(f)[..])) {
                Ok(0) => {}
                Ok(mut written) => {
                    let mut whole = 0;
                    while let Some((frame, after)) = rest.split_first() {
                        let len = self.wire(frame).len();
                        if written < len {
                            if written > 0 {
                                s.push(self.wire(frame).slice(written..));
                                s.head_started = true;
                                rest = after;
                            }
                            break;
                        }
                        written -= len;
                        whole += 1;
                        rest = after;
                    }
                    self.metrics.socket_writes.fetch_add(1, Relaxed);
                    self.metrics.frames_written.fetch_add(whole, Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!("write failed: {e}");
                    s.status = Status::Broken;
                    self.wake.wake();
                    return Some(Flushed::Gone);
                }
            }
        }
        for frame in rest {
            let bytes = self.bytes_of(&mut s, frame);
            s.push(bytes);
        }
        Some(self.flush_locked(&mut s))
    }

    fn flush_locked(&self, s: &mut State) -> Flushed {
        s.dirty = false;
        if s.status == Status::Broken {
            return Flushed::Gone;
        }
        if let Some(socket) = self.socket.get() {
            if let Err(e) = s.write_to(socket, &self.metrics) {
                tracing::debug!("write failed: {e}");
                s.status = Status::Broken;
                self.wake.wake();
                return Flushed::Gone;
            }
        }
        // Before the upgrade completes nothing can be written, so nothing is judged yet: what
        // waits then is bounded by the time an upgrade may take (`--request-timeout`).
        if s.queue.is_empty() {
            if let Some(rare) = s.rare.as_mut() {
                rare.bursts.clear();
            }
            s.tidy();
            return Flushed::Ok;
        }
        if self.socket.get().is_none() {
            return Flushed::Ok;
        }
        let bursts = s.rare.as_ref().map_or(&[][..], |r| &r.bursts[..]);
        let burst_frames: usize = bursts.iter().map(|b| b.frames).sum();
        let burst_bytes: usize = bursts.iter().map(|b| b.bytes).sum();
        let burst_bytes = burst_bytes.min(MAX_BURST_BYTES);
        let over = s.queue.len() > self.limits.frames.saturating_add(burst_frames)
            || (s.queue.len() > 1
                && s.queued_bytes > self.limits.bytes.saturating_add(burst_bytes));
        if s.status == Status::Open && over {
            let dropped = s.cut();
            self.wake.wake();
            return Flushed::Cut(dropped);
        }
        self.wake.wake();
        match s.status {
            Status::Open | Status::Closing => Flushed::Ok,
            Status::Cut | Status::Broken => Flushed::Gone,
        }
    }

    /// Cuts the writer as a slow consumer from outside: the hub, when live frames piled up past
    /// the limit while a resume's history read was pending.
    pub fn cut(&self) {
        let mut s = self.state();
        if s.status == Status::Open {
            s.cut();
            self.wake.wake();
        }
    }

    /// Queues the close frame as the last one: after it nothing more is accepted. Allowed over
    /// the limits (a slow consumer still gets its 1008 if its socket ever drains).
    pub fn close(&self, frame: &Frame) {
        let mut s = self.state();
        if s.status == Status::Broken {
            return;
        }
        let bytes = self.bytes_of(&mut s, frame);
        s.push(bytes);
        s.status = Status::Closing;
        drop(s);
        self.flush();
    }

    /// Queues raw bytes of whole frames tungstenite wrote (pongs, the reply to a client's close)
    /// and flushes. Refused once our own close frame is queued: nothing may follow it (not a
    /// second close when the client echoes ours, nor pongs a closing client provokes).
    pub fn push_control(&self, bytes: &[u8]) -> Flushed {
        {
            let mut s = self.state();
            if s.status != Status::Open {
                return Flushed::Gone;
            }
            s.push(Bytes::copy_from_slice(bytes));
        }
        self.flush()
    }

    /// Hands a command to the connection task.
    pub fn command(&self, command: Command) {
        let mut s = self.state();
        // A drain is always heard: a connection the backend flooded with commands still closes
        // with 1012 in its turn, not as a slow consumer.
        if s.rare().commands.len() >= MAX_COMMANDS && command != Command::Drain {
            if s.status == Status::Open {
                s.cut();
            }
        } else {
            s.rare().commands.push_back(command);
        }
        drop(s);
        self.wake.wake();
    }

    /// The next thing the connection task must act on; meanwhile writes whatever waits as the
    /// socket becomes writable. Cancel-safe: for the connection task's `select!`.
    pub fn next_event(&self) -> impl Future<Output = WriterEvent> + '_ {
        std::future::poll_fn(|cx| self.poll_next_event(cx))
    }

    /// [`next_event`](Self::next_event) as a poll: it holds no state between polls.
    pub fn poll_next_event(&self, cx: &mut Context<'_>) -> Poll<WriterEvent> {
        loop {
            // Registered before looking, so a wake between the look and the return is not lost.
            self.wake.register(cx.waker());
            let pending = {
                let mut s = self.state();
                match s.status {
                    Status::Cut => return Poll::Ready(WriterEvent::SlowConsumer),
                    Status::Broken => return Poll::Ready(WriterEvent::Broken),
                    Status::Open | Status::Closing => {}
                }
                if let Some(command) = s.rare.as_mut().and_then(|r| r.commands.pop_front()) {
                    s.tidy();
                    return Poll::Ready(WriterEvent::Command(command));
                }
                !s.queue.is_empty()
            };
            // Frames wait: write them as the socket takes more (a cut or a command is heard
            // meanwhile through the waker).
            let Some(socket) = self.socket.get().filter(|_| pending) else {
                return Poll::Pending;
            };
            match ready!(socket.as_ref().poll_write_ready(cx)) {
                Ok(()) => {
                    self.flush();
                }
                Err(_) => {
                    self.state().status = Status::Broken;
                    return Poll::Ready(WriterEvent::Broken);
                }
            }
        }
    }

    /// Writes what is queued until the queue is empty or the socket breaks (the close frame's
    /// last stretch; the caller bounds it with a timeout).
    pub async fn drain(&self) {
        loop {
            {
                let s = self.state();
                if s.queue.is_empty() || s.status == Status::Broken {
                    return;
                }
            }
            let Some(socket) = self.socket.get() else {
                return;
            };
            if socket.writable().await.is_err() {
                return;
            }
            self.flush();
        }
    }

    /// Frames still queued (not written); counted as dropped when the connection ends.
    pub fn queued(&self) -> usize {
        self.state().queue.len()
    }

    /// The frames still queued, oldest first.
    #[cfg(test)]
    pub(crate) fn queued_frames(&self) -> Vec<Bytes> {
        self.state().queue.iter().cloned().collect()
    }

    /// Frames dropped because the writer was cut as a slow consumer.
    pub fn cut_dropped(&self) -> u64 {
        self.state().rare.as_ref().map_or(0, |r| r.cut_dropped)
    }
}

impl State {
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Gives the rare parts back once they hold nothing.
    fn tidy(&mut self) {
        let empty = self.rare.as_ref().is_some_and(|r| {
            r.commands.is_empty() && r.bursts.is_empty() && r.cut_dropped == 0 && r.events.is_none()
        });
        if empty {
            self.rare = None;
        }
    }

    fn is_event_stream(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.events.is_some())
    }

    fn push(&mut self, bytes: Bytes) {
        self.queued_bytes += bytes.len();
        self.queue.push_back(bytes);
    }

    /// Drops every queued frame but a partly written head (so a close frame can still follow
    /// on a frame boundary); returns how many were dropped.
    fn cut(&mut self) -> u64 {
        let keep = usize::from(self.head_started);
        let dropped = (self.queue.len() - keep) as u64;
        for b in self.queue.drain(keep..) {
            self.queued_bytes -= b.len();
        }
        self.status = Status::Cut;
        self.rare().cut_dropped += dropped;
        dropped
    }

    /// Writes queued frames until the socket would block or the queue is empty: one frame with
    /// `send`, small frames gathered into one `send`, larger ones with `writev`.
    fn write_to(&mut self, socket: &OwnedWriteHalf, metrics: &WorkerMetrics) -> io::Result<()> {
        while !self.queue.is_empty() {
            let mut written = match write_some(socket, self.queue.iter().map(|b| &b[..])) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            self.queued_bytes -= written;
            let mut frames = 0;
            while written > 0 {
                let head = self
                    .queue
                    .front_mut()
                    .expect("written bytes came from the queue");
                if written >= head.len() {
                    written -= head.len();
                    self.queue.pop_front();
                    self.head_started = false;
                    frames += 1;
                } else {
                    head.advance(written);
                    self.head_started = true;
                    written = 0;
                }
            }
            metrics.socket_writes.fetch_add(1, Relaxed);
            metrics.frames_written.fetch_add(frames, Relaxed);
        }
        Ok(())
    }
}

/// Writes a prefix of `frames` (at least one) with one system call and returns its length in
/// bytes: one frame with `send`, small frames gathered into one `send`, larger ones with
/// `writev`.
fn write_some<'a, I>(socket: &OwnedWriteHalf, frames: I) -> io::Result<usize>
where
    I: Iterator<Item = &'a [u8]> + Clone,
{
    let mut two = frames.clone();
    let first = two.next().expect("at least one frame");
    match two.next() {
        None => socket.try_write(first),
        Some(second) if first.len() <= GATHER_FRAME && second.len() <= GATHER_FRAME => {
            // Copied only when the socket may take it: a socket known to be full (a stuck
            // client flushed at every batch) costs neither the copy nor a system call.
            socket.as_ref().try_io(Interest::WRITABLE, || {
                GATHER.with_borrow_mut(|buf| {
                    buf.clear();
                    for b in frames.take_while(|b| b.len() <= GATHER_FRAME) {
                        if buf.len() + b.len() > GATHER_BYTES {
                            break;
                        }
                        buf.extend_from_slice(b);
                    }
                    socket2::SockRef::from(socket.as_ref()).send(buf)
                })
            })
        }
        Some(_) => {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (slice, b) in slices.iter_mut().zip(frames) {
                *slice = IoSlice::new(b);
                n += 1;
            }
            socket.try_write_vectored(&slices[..n])
        }
    }
}

/// A loopback connection (client, server) with small socket buffers both ways, so a client that
/// stops reading fills them quickly. For tests.
#[cfg(test)]
pub(crate) async fn small_buffer_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpSocket::new_v4().unwrap();
    client.set_recv_buffer_size(4096).unwrap();
    let client = client
        .connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    (client, server)
}

/// A writer whose socket is full (its peer never reads) for tests of the limits: it holds one
/// large frame partly written. Keep the returned sockets alive as long as the writer.
#[cfg(test)]
pub(crate) async fn stuck(limits: QueueLimits) -> (Arc<Writer>, impl Sized) {
    let (client, server) = small_buffer_pair().await;
    let (read, write) = server.into_split();
    let writer = Arc::new(Writer::new(limits, Default::default()));
    writer.attach(write);
    // Let the driver see the socket writable, then fill it.
    write_ready(&writer).await;
    let big = Frame::error(crate::protocol::ErrorCode::BadRequest, &"x".repeat(1 << 20));
    writer.push(&big);
    assert_eq!(writer.flush(), Flushed::Ok);
    assert_eq!(
        writer.queued(),
        1,
        "the socket took part of the frame, not all"
    );
    (writer, (client, read))
}

/// Waits until the driver has reported the attached socket writable once.
#[cfg(test)]
async fn write_ready(writer: &Writer) {
    writer
        .socket
        .get()
        .expect("attached")
        .writable()
        .await
        .unwrap();
}

#[cfg(test)]
mod tests;
