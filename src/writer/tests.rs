//! The writer against real loopback sockets: what the socket takes, what waits, what is cut.

use super::*;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};

async fn pair(limits: QueueLimits) -> (Writer, TcpStream, OwnedReadHalf) {
    let (client, server) = small_buffer_pair().await;
    let (read, write) = server.into_split();
    let writer = Writer::new(limits, Default::default());
    writer.attach(write);
    (writer, client, read)
}

/// Gives `writer` a fresh loopback socket and lets it write for 100 ms (readiness arrives
/// with the first poll of the driver, which `next_event` waits for).
async fn attach_and_write(writer: &Writer) -> (TcpStream, OwnedReadHalf) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let (read, write) = server.into_split();
    writer.attach(write);
    tokio::select! {
        _ = writer.next_event() => panic!("writer ended"),
        () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
    }
    (client, read)
}

fn text(s: &str) -> Frame {
    Frame::error(crate::protocol::ErrorCode::BadRequest, s)
}

#[tokio::test]
async fn frames_queue_until_attached_then_go_out_in_order() {
    let writer = Writer::new(
        QueueLimits {
            frames: 8,
            bytes: 1 << 20,
        },
        Default::default(),
    );
    assert_eq!(writer.push(&text("a")), Pushed::First);
    assert_eq!(writer.push(&text("b")), Pushed::Queued);
    assert_eq!(writer.flush(), Flushed::Ok);
    assert_eq!(writer.queued(), 2);
    let (mut client, read) = attach_and_write(&writer).await;
    assert_eq!(writer.queued(), 0);
    // Both waited for the socket, so one writev took them.
    assert_eq!(writer.metrics.socket_writes.load(Relaxed), 1);
    assert_eq!(writer.metrics.frames_written.load(Relaxed), 2);
    let want = [text("a").bytes().clone(), text("b").bytes().clone()].concat();
    let mut got = vec![0; want.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, want);
    drop(read);
}

#[tokio::test]
async fn small_frames_are_gathered_into_one_send_and_large_ones_follow_whole() {
    let writer = Writer::new(
        QueueLimits {
            frames: 64,
            bytes: 1 << 20,
        },
        Default::default(),
    );
    let large = "y".repeat(3 * GATHER_FRAME);
    let frames = [
        text("a"),
        text("b"),
        text("c"),
        text(&large),
        text("d"),
        text("e"),
    ];
    for f in &frames {
        writer.push(f);
    }
    let (mut client, _read) = attach_and_write(&writer).await;
    assert_eq!(writer.queued(), 0);
    // a, b, c in one send; the large frame and what follows in one writev.
    assert_eq!(writer.metrics.socket_writes.load(Relaxed), 2);
    assert_eq!(writer.metrics.frames_written.load(Relaxed), 6);
    let want: Vec<u8> = frames.iter().flat_map(|f| f.bytes().to_vec()).collect();
    let mut got = vec![0; want.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, want);
}

#[tokio::test]
async fn send_all_writes_what_the_socket_takes_and_queues_the_rest_in_order() {
    let (writer, mut client, _read) = pair(QueueLimits {
        frames: 64,
        bytes: usize::MAX,
    })
    .await;
    write_ready(&writer).await;
    let big = "z".repeat(100_000);
    let frames = [text("a"), text(&big), text("b"), text(&big), text("c")];
    assert_eq!(writer.send_all(&frames), Some(Flushed::Ok));
    assert!(writer.queued() > 0, "the small socket took only part");
    let want: Vec<u8> = frames.iter().flat_map(|f| f.bytes().to_vec()).collect();
    let reading = async {
        let mut got = vec![0; want.len()];
        client.read_exact(&mut got).await.unwrap();
        got
    };
    let got = tokio::select! {
        got = reading => got,
        _ = writer.next_event() => panic!("writer ended"),
    };
    assert_eq!(got, want);
    assert_eq!(writer.metrics.frames_written.load(Relaxed), 5);
}

#[tokio::test]
async fn a_full_socket_queues_then_cuts_over_the_limit() {
    let (writer, _client, _read) = pair(QueueLimits {
        frames: 4,
        bytes: usize::MAX,
    })
    .await;
    write_ready(&writer).await;
    let big = Frame::error(crate::protocol::ErrorCode::BadRequest, &"x".repeat(60_000));
    let mut flushes = Vec::new();
    for _ in 0..1000 {
        writer.push(&big);
        let f = writer.flush();
        flushes.push(f);
        if f != Flushed::Ok {
            break;
        }
    }
    // The kernel took what its small buffers hold, then four frames waited; the fifth cut.
    let cut = flushes.iter().position(|f| matches!(f, Flushed::Cut(_)));
    assert!(cut.is_some_and(|i| i >= 4), "{flushes:?}");
    assert!(matches!(flushes.last(), Some(Flushed::Cut(n)) if *n >= 4));
    assert_eq!(writer.push(&big), Pushed::Refused);
    assert_eq!(writer.next_event().await, WriterEvent::SlowConsumer);
}

#[tokio::test]
async fn bytes_limit_counts_but_one_frame_always_fits() {
    // The stuck writer already holds one frame of 1 MiB, far over the bytes limit.
    let (writer, _keep) = stuck(QueueLimits {
        frames: 100,
        bytes: 10,
    })
    .await;
    writer.push(&text("b"));
    // The partly written head stays (a close frame may follow it); the other is dropped.
    assert!(matches!(writer.flush(), Flushed::Cut(1)));
    assert_eq!(writer.cut_dropped(), 1);
}

#[tokio::test]
async fn a_burst_is_allowed_on_top_of_the_limits_until_it_drains() {
    let (writer, _keep) = stuck(QueueLimits {
        frames: 2,
        bytes: usize::MAX,
    })
    .await;
    let replay: Vec<Frame> = (0..50).map(|i| text(&i.to_string())).collect();
    writer.push_burst(None, &replay);
    assert_eq!(
        writer.flush(),
        Flushed::Ok,
        "51 waiting, 50 of them a burst"
    );
    writer.push(&text("live"));
    writer.push(&text("live"));
    assert!(
        matches!(writer.flush(), Flushed::Cut(_)),
        "past the burst and the limit"
    );
}

/// A client that never reads and resubscribes in a loop gets no new room for the same
/// channel's replay: it is cut at the second one, not after holding every copy.
#[tokio::test]
async fn a_replay_of_the_same_topic_again_replaces_its_room() {
    let (writer, _keep) = stuck(QueueLimits {
        frames: 2,
        bytes: usize::MAX,
    })
    .await;
    let news = Channel::new("news").unwrap();
    let replay: Vec<Frame> = (0..50).map(|i| text(&i.to_string())).collect();
    writer.push_burst(Some(&news), &replay);
    assert_eq!(writer.flush(), Flushed::Ok);
    let other = Channel::new("other").unwrap();
    writer.push_burst(Some(&other), &replay);
    assert_eq!(
        writer.flush(),
        Flushed::Ok,
        "another channel has room of its own"
    );
    writer.end_burst(&other);
    writer.push_burst(Some(&news), &replay);
    assert!(
        matches!(writer.flush(), Flushed::Cut(_)),
        "150 waiting, room for 52"
    );
}

#[tokio::test]
async fn nothing_is_judged_before_the_socket_is_there() {
    let writer = Writer::new(
        QueueLimits {
            frames: 1,
            bytes: 1,
        },
        Default::default(),
    );
    for _ in 0..10 {
        writer.push(&text("early"));
        assert_eq!(writer.flush(), Flushed::Ok);
    }
    assert_eq!(writer.queued(), 10);
}

#[tokio::test]
async fn after_our_close_frame_nothing_else_goes_out() {
    let (writer, _keep) = stuck(QueueLimits {
        frames: 100,
        bytes: usize::MAX,
    })
    .await;
    writer.close(&Frame::close(1001, "bye"));
    let pong = Frame::pong();
    assert_eq!(writer.push_control(pong.bytes()), Flushed::Gone);
    assert_eq!(writer.push(&pong), Pushed::Refused);
    assert_eq!(
        writer.queued(),
        2,
        "the partly written head, then the close"
    );
}

/// Every connection holds a writer: what only a few need (commands, a burst's room, the
/// count of what a cut dropped) is allocated while needed and given back once empty.
#[tokio::test]
async fn an_idle_writer_holds_nothing_for_what_it_rarely_needs() {
    assert!(
        std::mem::size_of::<Writer>() <= 152,
        "the writer grew to {} bytes",
        std::mem::size_of::<Writer>()
    );
    let writer = Writer::new(
        QueueLimits {
            frames: 64,
            bytes: usize::MAX,
        },
        Default::default(),
    );
    let (_client, _read) = attach_and_write(&writer).await;
    writer.push_burst(None, &[text("replayed"), text("too")]);
    writer.command(Command::Disconnect("bye".into()));
    assert!(writer.state().rare.is_some());
    assert_eq!(writer.flush(), Flushed::Ok);
    assert!(
        matches!(writer.next_event().await, WriterEvent::Command(_)),
        "the command is heard"
    );
    assert!(
        writer.state().rare.is_none(),
        "given back once written and heard"
    );
}

/// A backend that floods a connection with commands cannot turn its drain into a slow
/// consumer's cut: the drain is heard after them.
#[tokio::test]
async fn a_drain_is_heard_past_the_commands_limit() {
    let writer = Writer::new(
        QueueLimits {
            frames: 64,
            bytes: usize::MAX,
        },
        Default::default(),
    );
    for _ in 0..MAX_COMMANDS {
        writer.command(Command::Disconnect("x".into()));
    }
    writer.command(Command::Drain);
    for _ in 0..MAX_COMMANDS {
        let event = writer.next_event().await;
        assert!(matches!(
            event,
            WriterEvent::Command(Command::Disconnect(_))
        ));
    }
    assert_eq!(
        writer.next_event().await,
        WriterEvent::Command(Command::Drain)
    );
}
