//! `coldstream run`: the long-running pipeline server.

use std::time::Duration;

use anyhow::Context;
use coldstream::server::Server;

use super::{ConfigArgs, init_logging, runtime};

/// The server's configuration and its overrides.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Overrides `listen`.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM, the signal service managers
/// (systemd, Docker, Kubernetes) stop a process with.
async fn stop_signal() -> anyhow::Result<()> {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for Ctrl-C"),
        _ = terminate.recv() => Ok(()),
    }
}

/// Runs the server until Ctrl-C or SIGTERM, then drains the log into every
/// sink and takes a last checkpoint.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging("info");
    let mut config = args.config.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    // Every secret is checked before anything is opened.
    config.auth.tokens()?;
    runtime()?.block_on(async move {
        let started = std::time::Instant::now();
        let server = Server::start(&config).await?;
        // Scripts and tests read the bound address from this line.
        println!("coldstream listening on {}", server.addr());
        let stop = stop_signal();
        tokio::pin!(stop);
        let replayed = async {
            if server.replayed(Duration::from_secs(86_400)).await.is_ok() {
                // ... and, from this one, the time it took to replay what the log held.
                // Whoever read the address may have closed the pipe.
                let line = format!("coldstream caught up in {} ms\n", started.elapsed().as_millis());
                let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
            }
            std::future::pending::<()>().await
        };
        // A component that cannot recover stops the process: the fleet's
        // acks stop too, instead of going on while a sink falls behind.
        let failure = tokio::select! {
            _ = replayed => None,
            stopped = &mut stop => {
                stopped?;
                None
            }
            failure = server.failed() => Some(failure),
        };
        tracing::info!("shutting down: draining the log into every sink");
        let drained = server.shutdown().await;
        match failure {
            Some(failure) => {
                Err(anyhow::anyhow!("{failure}; stopped so that nothing more is acknowledged (restart to resume)"))
            }
            None => drained.map_err(Into::into),
        }
    })
}
