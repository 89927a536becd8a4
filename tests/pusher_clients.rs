//! Pusher's own software against fanfare's Pusher front (PROTOCOL section 11): pusher-js 8
//! (unmodified, in Node) and the official `pusher` server SDK, in clients/pusher's suite
//! (`npm test`, Node's test runner against real `fanfare serve` processes), run from here so
//! `cargo nextest run` stays the one entry point.

mod common;

use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/pusher")
}

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) {
    common::run_in(&dir(), program, args, env);
}

#[test]
fn pusher_js_and_the_pusher_sdk_work_unchanged() {
    if !dir().join("node_modules/.package-lock.json").exists() {
        run("npm", &["ci", "--no-audit", "--no-fund"], &[]);
    }
    run(
        "npm",
        &["test"],
        &[("FANFARE_BIN", env!("CARGO_BIN_EXE_fanfare"))],
    );
}

#[test]
fn the_three_pusher_flags_go_together_and_none_is_empty() {
    let some = |s: &str| Some(s.to_string());
    for (id, key, secret) in [
        (some("1"), None, None),
        (some("1"), some("key"), some("")),
        (None, some("key"), some("secret")),
    ] {
        let mut config = fanfare::Config::new();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.token_secret = some("s");
        config.api_key = some("k");
        (
            config.pusher_app_id,
            config.pusher_key,
            config.pusher_secret,
        ) = (id, key, secret);
        let refused = fanfare::Server::start(config).err().expect("refused");
        assert!(refused.to_string().contains("all three"), "{refused}");
    }
}

#[test]
fn a_webhook_needs_the_pusher_app_and_an_http_url() {
    let some = |s: &str| Some(s.to_string());
    for (app, url, why) in [
        (false, "http://127.0.0.1:9/hooks", "needs --pusher-app-id"),
        (true, "ftp://example.com/hooks", "not an http(s) URL"),
        (true, "hooks", "not an http(s) URL"),
    ] {
        let mut config = fanfare::Config::new();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.token_secret = some("s");
        config.api_key = some("k");
        if app {
            (
                config.pusher_app_id,
                config.pusher_key,
                config.pusher_secret,
            ) = (some("1"), some("key"), some("secret"));
        }
        config.pusher_webhooks = vec![url.to_string()];
        let refused = fanfare::Server::start(config).err().expect("refused");
        assert!(refused.to_string().contains(why), "{refused}");
    }
}
