//! The per-message hot path without sockets: one frame fanned out by a worker's hub to 1, 100
//! and 10,000 in-memory connections, and the local-bus hand-off and registry lookup before it.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fanfare::bus::{Bus, Delivery};
use fanfare::hub::{Hub, Outbox};
use fanfare::interest::{Interest, Topic};
use fanfare::protocol::{ConnId, Frame, Target, UserId, WorkerId};
use fanfare::router::LocalRouter;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

fn frame() -> Frame {
    Frame::direct(&RawValue::from_string(r#"{"seq":1,"t":1700000000000000000}"#.into()).unwrap())
}

fn hub_with(n: usize) -> (Hub, Vec<mpsc::Receiver<Frame>>) {
    let mut hub = Hub::new(WorkerId(0), Arc::default(), Arc::default());
    let mut receivers = Vec::with_capacity(n);
    for seq in 0..n as u64 {
        let (outbox, rx, _cut) = Outbox::new(1024);
        let id = ConnId {
            worker: WorkerId(0),
            seq,
        };
        hub.register(id, UserId::new(&format!("u{seq}")).unwrap(), outbox);
        receivers.push(rx);
    }
    (hub, receivers)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_fanout");
    for n in [1usize, 100, 10_000] {
        let (mut hub, mut receivers) = hub_with(n);
        let delivery = Delivery {
            target: Target::All,
            frame: frame(),
        };
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("broadcast_and_drain", n), &n, |b, _| {
            b.iter(|| {
                hub.deliver(&delivery);
                for rx in &mut receivers {
                    let _ = rx.try_recv();
                }
            })
        });
    }
    let (mut hub, mut receivers) = hub_with(10_000);
    let delivery = Delivery {
        target: Target::User(UserId::new("u4242").unwrap()),
        frame: frame(),
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("direct_among_10000", |b| {
        b.iter(|| {
            hub.deliver(&delivery);
            let _ = receivers[4242].try_recv();
        })
    });
    group.finish();
}

fn lookup_and_handoff(c: &mut Criterion) {
    let interest = Arc::new(Interest::default());
    for i in 0..10_000 {
        interest.add(
            &Topic::User(UserId::new(&format!("u{i}")).unwrap()),
            WorkerId((i % 2) as u8),
        );
    }
    let (bus, mut inboxes) = Bus::new(2);
    let local = LocalRouter::new(interest.clone(), bus);
    let target = Target::User(UserId::new("u4243").unwrap());
    c.bench_function("interest_lookup", |b| b.iter(|| local.workers_for(&target)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let delivery = Delivery {
        target,
        frame: frame(),
    };
    c.bench_function("bus_handoff", |b| {
        b.iter(|| {
            runtime.block_on(local.deliver(delivery.clone()));
            inboxes[1].try_recv().unwrap()
        })
    });
}

criterion_group!(benches, fanout, lookup_and_handoff);
criterion_main!(benches);
