//! Thin entry point: parse the command line, load settings, run until a signal.

use clap::Parser;
use hlgate::cli::{self, Cli, Command};
use hlgate::startup::Application;
use std::process::ExitCode;

/// jemalloc, with its background threads: they hand memory freed by closed sled databases back to
/// the system within seconds. glibc's malloc kept it (BENCHMARKS.md, "Closed buckets and
/// jemalloc").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli::load_settings(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hlgate: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => return serve(settings).await,
        Command::CheckConfig => cli::check_config(&settings),
        Command::Sign { key, post, file } => cli::sign(&key, post.as_deref(), &file).await,
        Command::Keygen { prefix } => cli::keygen(&prefix),
        Command::Outbox => cli::outbox(&settings).await,
        Command::Tenants { page_size } => cli::tenants(&settings, page_size).await,
        Command::Events(args) => cli::events(&settings, *args).await,
        Command::Store { action } => cli::store(&settings, action),
        Command::Healthcheck => cli::healthcheck(&settings).await,
        Command::Listen(args) => {
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                on_signal.cancel();
            });
            cli::listen::run(&settings, args, stop).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hlgate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: hlgate::config::Settings) -> ExitCode {
    hlgate::telemetry::init(&settings.log.filter, settings.log.format);
    // What the gateway writes (events, tokens, keys) is for its own user only: sled creates its
    // files as the umask lets it.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("hlgate: {e}");
            // As for a bad setting: an operator must act before a restart can help.
            return ExitCode::from(if e.is_damage() { 2 } else { 1 });
        }
    };
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    if app.run().await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
