//! `coldstream run`: the long-running pipeline server.

use std::time::Duration;

use anyhow::{Context, bail};
use coldstream::config::DEV_SECRET;
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

/// Runs the server until Ctrl-C, then drains the log into every sink.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging("info");
    let mut config = args.config.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let secret_from_env = std::env::var("COLDSTREAM_SECRET").is_ok();
    if config.auth.secret == DEV_SECRET && !secret_from_env && !config.auth.allow_dev_secret {
        bail!(
            "no fleet secret: set auth.secret in the config or COLDSTREAM_SECRET (or auth.allow_dev_secret = true for a local trial)"
        );
    }
    runtime()?.block_on(async move {
        let started = std::time::Instant::now();
        let server = Server::start(&config).await?;
        // Scripts and tests read the bound address from this line.
        println!("coldstream listening on {}", server.addr());
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        tokio::select! {
            status = server.replayed(Duration::from_secs(86_400)) => {
                if status.is_ok() {
                    // ... and, from this one, the time it took to replay what the log held.
                    // Whoever read the address may have closed the pipe.
                    let line = format!("coldstream caught up in {} ms\n", started.elapsed().as_millis());
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
                }
                (&mut ctrl_c).await.context("waiting for Ctrl-C")?;
            }
            signal = &mut ctrl_c => signal.context("waiting for Ctrl-C")?,
        }
        tracing::info!("shutting down: draining the log into every sink");
        server.shutdown().await?;
        anyhow::Ok(())
    })
}
