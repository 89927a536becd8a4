//! The fuzz targets' entry points (`fuzz/`, run with `cargo fuzz`), replayed here over their
//! corpus and over a few thousand deterministic mutations of it: a smoke run in every test run,
//! on stable Rust.

use std::path::Path;

use fanfare::fuzzing;

/// Every file of `fuzz/corpus/<target>`, then `rounds` mutations of them (bytes flipped,
/// inserted, cut), through `run`.
fn replay(target: &str, rounds: usize, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|f| std::fs::read(f.unwrap().path()).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "no corpus for {target}");
    // xorshift: the same inputs on every run, so a failure reproduces.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in &seeds {
        run(seed);
    }
    for i in 0..rounds {
        let mut input = seeds[i % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % (input.len() + 1);
            match next() % 3 {
                0 if at < input.len() => input[at] = next() as u8,
                1 => {
                    const BYTES: &[u8] = b"{}[]\":,\\ \x00\xffu8a";
                    input.insert(at, BYTES[(next() as usize) % BYTES.len()])
                }
                _ => input.truncate(at),
            }
        }
        run(&input);
    }
}

#[test]
fn client_frame() {
    replay("client_frame", 5_000, fuzzing::client_frame);
}

#[test]
fn publish_body() {
    replay("publish_body", 5_000, fuzzing::publish_body);
}

#[test]
fn redis_wire() {
    replay("redis_wire", 5_000, fuzzing::redis_wire);
}

#[test]
fn redis_resp() {
    replay("redis_resp", 5_000, fuzzing::redis_resp);
}

#[test]
fn names() {
    replay("names", 5_000, fuzzing::names);
}

#[test]
fn token() {
    replay("token", 2_000, fuzzing::token);
}
