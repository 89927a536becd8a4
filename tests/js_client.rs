//! The JavaScript client (clients/js) and the console page built on it, tested by their own
//! suite (`npm test`: Node's test runner against real `fanfare serve` and `redis-server`
//! processes, and headless Chromium for the page), run from here so `cargo nextest run` stays
//! the one entry point. Also checks that the committed build (clients/js/dist, which the server
//! serves at /fanfare.js) is the build of the committed source.

mod common;

use std::path::{Path, PathBuf};

fn js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) {
    common::run_in(&js(), program, args, env);
}

#[test]
fn the_javascript_client_and_the_console_page_pass_their_tests() {
    if !js().join("node_modules/.package-lock.json").exists() {
        run("npm", &["ci", "--no-audit", "--no-fund"], &[]);
    }
    // The build of the source, next to the committed one.
    let fresh = std::env::temp_dir().join(format!("fanfare-js-{}", std::process::id()));
    run(
        "npx",
        &[
            "tsc",
            "-p",
            "tsconfig.json",
            "--outDir",
            fresh.to_str().unwrap(),
        ],
        &[],
    );
    for file in ["fanfare.js", "fanfare.d.ts"] {
        let built = std::fs::read_to_string(fresh.join(file)).unwrap();
        let committed = std::fs::read_to_string(js().join("dist").join(file)).unwrap();
        assert!(
            built == committed,
            "clients/js/dist/{file} is not the build of clients/js/src: run `npm run build` there and commit it"
        );
    }
    let _ = std::fs::remove_dir_all(&fresh);
    run(
        "npm",
        &["test"],
        &[("FANFARE_BIN", env!("CARGO_BIN_EXE_fanfare"))],
    );
}
