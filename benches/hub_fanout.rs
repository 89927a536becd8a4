//! The per-message hot path: one frame fanned out by a worker's hub to 1, 100 and 1,000
//! connections over real loopback sockets (the write system calls included, readers draining
//! on another thread), and the routing lookup and bus hand-off before it.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fanfare::bus::{Bus, Delivery, Envelope};
use fanfare::config::QueueLimits;
use fanfare::hub::Hub;
use fanfare::protocol::Topic;
use fanfare::protocol::{ConnId, Frame, Target, UserId, WorkerId};
use fanfare::routes::Routes;
use fanfare::writer::Writer;
use serde_json::value::RawValue;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

fn frame() -> Frame {
    Frame::direct(&RawValue::from_string(r#"{"seq":1,"t":1700000000000000000}"#.into()).unwrap())
}

/// A hub with `n` connections whose clients read everything on a thread of their own.
fn hub_with(runtime: &tokio::runtime::Runtime, n: usize) -> Hub {
    let mut hub = Hub::new(
        WorkerId(0),
        Arc::new(Routes::new(1, None)),
        1,
        Arc::default(),
    );
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::with_capacity(n);
    for seq in 0..n as u64 {
        let (client, server) = runtime.block_on(async {
            let client = TcpStream::connect(addr).await.unwrap();
            (client, listener.accept().await.unwrap().0)
        });
        let (read, write) = server.into_split();
        std::mem::forget(read);
        let writer = Arc::new(Writer::new(
            QueueLimits {
                frames: 1 << 20,
                bytes: usize::MAX,
            },
            Default::default(),
        ));
        writer.attach(write);
        let id = ConnId {
            worker: WorkerId(0),
            seq,
        };
        hub.register(id, UserId::new(&format!("u{seq}")).unwrap(), writer, None);
        clients.push(client.into_std().unwrap());
    }
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut readers = tokio::task::JoinSet::new();
            for c in clients {
                readers.spawn(async move {
                    let mut c = TcpStream::from_std(c).unwrap();
                    let mut buf = vec![0u8; 64 * 1024];
                    while matches!(c.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
            while readers.join_next().await.is_some() {}
        });
    });
    hub
}

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("hub_fanout");
    for n in [1usize, 100, 1_000] {
        let mut hub = hub_with(&runtime, n);
        let delivery = Delivery {
            target: Target::All,
            frame: frame(),
            position: None,
        };
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("broadcast_written", n), &n, |b, _| {
            b.iter_custom(|iters| deliver_many(&runtime, &mut hub, &delivery, iters))
        });
    }
    let mut hub = hub_with(&runtime, 1_000);
    let delivery = Delivery {
        target: Target::User(UserId::new("u424").unwrap()),
        frame: frame(),
        position: None,
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("direct_among_1000", |b| {
        b.iter_custom(|iters| deliver_many(&runtime, &mut hub, &delivery, iters))
    });
    group.finish();
}

/// Delivers `iters` times inside the runtime, yielding now and then so its driver learns which
/// sockets can take more (as a worker's runtime does between bus batches).
fn deliver_many(
    runtime: &tokio::runtime::Runtime,
    hub: &mut Hub,
    delivery: &Delivery,
    iters: u64,
) -> std::time::Duration {
    runtime.block_on(async {
        let started = std::time::Instant::now();
        for i in 0..iters {
            hub.deliver(delivery);
            if i % 16 == 15 {
                tokio::task::yield_now().await;
            }
        }
        started.elapsed()
    })
}

fn lookup_and_handoff(c: &mut Criterion) {
    let routes = Arc::new(Routes::new(2, None));
    for i in 0..10_000 {
        routes.add(
            &Topic::User(UserId::new(&format!("u{i}")).unwrap()),
            WorkerId((i % 2) as u8),
        );
    }
    let (bus, mut inboxes) = Bus::new(routes.clone(), 2);
    let target = Target::User(UserId::new("u4243").unwrap());
    c.bench_function("routes_lookup", |b| b.iter(|| routes.workers_for(&target)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let delivery = Delivery {
        target,
        frame: frame(),
        position: None,
    };
    c.bench_function("bus_handoff", |b| {
        b.iter(|| {
            runtime.block_on(bus.deliver(Envelope::Message(delivery.clone())));
            inboxes[1].try_recv().unwrap()
        })
    });
}

criterion_group!(benches, fanout, lookup_and_handoff);
criterion_main!(benches);
