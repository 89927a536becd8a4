//! Encoding a frame once per message, the Redis header around it, and decoding client frames.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fanfare::bridge::wire;
use fanfare::protocol::{Channel, ClientMessage, Frame};
use serde_json::value::RawValue;

fn encode(c: &mut Criterion) {
    let small = RawValue::from_string(r#"{"seq":1,"t":1700000000000000000}"#.into()).unwrap();
    let big = RawValue::from_string(format!(r#"{{"pad":"{}"}}"#, "x".repeat(4096))).unwrap();
    let channel = Channel::new("room:42").unwrap();
    let mut g = c.benchmark_group("protocol_encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("direct_small", |b| b.iter(|| Frame::direct(&small)));
    g.bench_function("channel_small", |b| {
        b.iter(|| Frame::channel(&channel, &small))
    });
    g.bench_function("direct_4k", |b| b.iter(|| Frame::direct(&big)));
    let frame = Frame::direct(&small);
    g.bench_function("redis_wire_encode", |b| {
        b.iter(|| wire::encode(42, wire::Body::Message(small.get().as_bytes())))
    });
    let encoded = wire::encode(42, wire::Body::Message(small.get().as_bytes()));
    let target = fanfare::protocol::Target::All;
    g.bench_function("redis_wire_decode_and_check", |b| {
        b.iter(|| match wire::decode(&encoded).unwrap().body {
            wire::Body::Message(payload) => wire::frame(&target, payload, 65536),
            _ => None,
        })
    });
    g.bench_function("per_recipient_clone", |b| b.iter(|| frame.clone()));
    // A refresh's cost is one verification: the HS256 signature and the claims.
    let keys = fanfare::auth::TokenKeys::new("bench-secret").unwrap();
    let claims = fanfare::auth::claims("42", Some(vec!["room:*".into()]), Some(600));
    let token = keys.issue(&claims).unwrap();
    g.bench_function("token_verify", |b| b.iter(|| keys.verify(&token).unwrap()));
    g.bench_function("client_subscribe_decode", |b| {
        b.iter(|| ClientMessage::decode(r#"{"type":"subscribe","channel":"room:42"}"#))
    });
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
