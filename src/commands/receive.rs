//! `coldstream receive`: a webhook receiver that verifies signatures.

use anyhow::Context;
use coldstream_sinks::webhooks::Secret;
use coldstream_sinks::webhooks::receiver::Receiver;

use super::{init_logging, runtime};

/// Where to listen and the endpoint's secret.
#[derive(clap::Args)]
pub struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: std::net::SocketAddr,
    /// The endpoint's `whsec_` secret.
    #[arg(long)]
    pub secret: String,
}

/// Receives and prints deliveries until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging("warn");
    let secret = Secret::parse(&args.secret).context("--secret")?;
    let listen = args.listen;
    runtime()?.block_on(async move {
        let receiver = Receiver::start(listen, secret, true).await.with_context(|| format!("listening on {listen}"))?;
        eprintln!("receiving webhooks on http://{}/ (Ctrl-C stops)", receiver.addr());
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        receiver.stop().await;
        anyhow::Ok(())
    })
}
