//! `coldstream receive`: a webhook receiver that verifies signatures.

use anyhow::Context;
use coldstream_sinks::webhooks::Secret;
use coldstream_sinks::webhooks::receiver::{Keep, Receiver};

use super::{init_logging, runtime};

/// Where to listen and the endpoint's secret.
#[derive(clap::Args)]
pub struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: std::net::SocketAddr,
    /// A file holding the endpoint's `whsec_` secret (else
    /// `COLDSTREAM_WEBHOOK_SECRET`): never the command line, which `ps` shows.
    #[arg(long)]
    pub secret_file: Option<std::path::PathBuf>,
}

/// Receives and prints deliveries until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging("warn");
    let text = match &args.secret_file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading --secret-file {}", path.display()))?
        }
        None => std::env::var("COLDSTREAM_WEBHOOK_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .context("give the endpoint's secret with --secret-file FILE or COLDSTREAM_WEBHOOK_SECRET")?,
    };
    let secret = Secret::parse(text.trim()).context("the endpoint's secret")?;
    let listen = args.listen;
    runtime()?.block_on(async move {
        let receiver =
            Receiver::start(listen, secret, Keep::Print).await.with_context(|| format!("listening on {listen}"))?;
        eprintln!("receiving webhooks on http://{}/ (Ctrl-C stops)", receiver.addr());
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        receiver.stop().await;
        anyhow::Ok(())
    })
}
