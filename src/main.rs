//! The `fanfare` command: `serve`, `bench`, `token`.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fanfare::auth::{claims, parse_channel_list, TokenKeys};
use fanfare::config::Generated;
use fanfare::{Config, Server};

#[derive(Parser)]
#[command(name = "fanfare", version, about = "Real-time WebSocket push server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server
    Serve(Box<Config>),
    /// Load-test one or more servers and report throughput, latency and losses
    Bench(Box<fanfare::bench::BenchArgs>),
    /// Print a client token
    Token {
        /// HS256 secret (the server's --token-secret)
        #[arg(long, env = "FANFARE_TOKEN_SECRET", hide_env_values = true)]
        secret: String,
        /// User id (the `sub` claim)
        #[arg(long)]
        sub: String,
        /// Channels the client may subscribe to, comma-separated; `room:*` is a prefix
        #[arg(long)]
        channels: Option<String>,
        /// Lifetime in seconds; without it the token does not expire
        #[arg(long)]
        ttl: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => serve(*config),
        Command::Bench(args) => {
            let code = fanfare::bench::run(*args)?;
            std::process::exit(code);
        }
        Command::Token {
            secret,
            sub,
            channels,
            ttl,
        } => {
            let keys = TokenKeys::new(&secret)?;
            let channels = channels.as_deref().map(parse_channel_list);
            println!("{}", keys.issue(&claims(&sub, channels, ttl))?);
            Ok(())
        }
    }
}

fn serve(mut config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Handlers go in before "listening on": a signal sent as soon as that line shows is caught.
    let signal = {
        let _guard = runtime.enter();
        shutdown_signal()?
    };
    let generated = config.generate_missing_secrets();
    let server = Server::start(config.clone()).context("cannot start the server")?;
    let addr = server.local_addr();
    if !generated.is_empty() {
        print_banner(&config, &generated, addr)?;
    }
    tracing::info!(workers = config.workers(), "listening on {addr}");

    let signal = runtime.block_on(signal);
    tracing::info!(
        "{signal}: closing connections (up to {}s)",
        config.shutdown_timeout
    );
    server.shutdown();
    if !server.join(config.shutdown_timeout() + Duration::from_millis(500)) {
        tracing::warn!("workers did not stop in time; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers; the future names the first that comes.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}

/// Each connection holds a descriptor: use all the process may have.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!("file descriptor limit: {n}"),
        Err(e) => tracing::warn!("cannot raise the file descriptor limit: {e}"),
    }
}

fn print_banner(
    config: &Config,
    generated: &[Generated],
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let secret = config.token_secret.as_deref().unwrap_or_default();
    let api_key = config.api_key.as_deref().unwrap_or_default();
    let token =
        TokenKeys::new(secret)?.issue(&claims("42", Some(vec!["news".into()]), Some(3600)))?;
    let mut out = String::from("\nNo secret given, so fanfare made some up for this run:\n");
    if generated.contains(&Generated::TokenSecret) {
        out += &format!("  --token-secret {secret}\n");
    }
    if generated.contains(&Generated::ApiKey) {
        out += &format!("  --api-key {api_key}\n");
    }
    out += &format!(
        "\nA token for user 42 (may subscribe to `news`, valid 1 h):\n  {token}\n\
         Connect:  ws://{addr}/ws?token={token}\n\
         Send it a message:\n  curl -X POST http://{addr}/message -H 'Authorization: Bearer {api_key}' \
         -d '{{\"userId\":\"42\",\"message\":{{\"hello\":\"world\"}}}}'\n\
         Console:  http://{addr}/\n"
    );
    eprintln!("{out}");
    Ok(())
}
