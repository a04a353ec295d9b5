//! `coldstream simulate`: a fleet of simulated fridges over gRPC.

use anyhow::{Context, bail};
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sources::client::ClientTls;
use coldstream_sources::simulator::{self as simulate, RunSpec};

use super::{FleetArgs, KeyArgs, init_logging, runtime};

/// The gateway and the fleet.
#[derive(clap::Args)]
pub struct Args {
    /// The gateway; give several (`--target A --target B`, or `A,B`) to
    /// spread the fleet over them, each fridge moving to the next when
    /// its gateway is unreachable.
    #[arg(long, default_value = "http://127.0.0.1:50051", value_delimiter = ',')]
    pub target: Vec<String>,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Fridge events to send in all.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Events per second for the whole fleet, or `max`.
    #[arg(long, default_value = "max")]
    pub rate: String,
    /// Event time of the first event (RFC 3339); by default early
    /// enough that the history ends before now.
    #[arg(long)]
    pub start: Option<String>,
    /// Events per batch, at most.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Share of events made invalid on purpose (0 to 1).
    #[arg(long, default_value_t = 0.0005)]
    pub bad_rate: f64,
    #[command(flatten)]
    pub key: KeyArgs,
    /// For an `https://` target: the CA of the gateway's certificate, PEM
    /// (else the system's roots).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// For an `https://` target: the name its certificate carries, when it
    /// is not the target's host.
    #[arg(long)]
    pub tls_domain: Option<String>,
}

/// Sends the fleet's events and prints what the gateway answered.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging("warn");
    let rate = super::rate(&args.rate)?;
    if !(0.0..=1.0).contains(&args.bad_rate) {
        bail!("--bad-rate must be between 0 and 1");
    }
    let (fridges, events) = (args.fleet.fridges as usize, args.events);
    let start_us = match args.start {
        Some(text) => chrono::DateTime::parse_from_rfc3339(&text)
            .with_context(|| format!("--start {text:?} is not an RFC 3339 time"))?
            .timestamp_micros(),
        None => FleetSpec::start_before(chrono::Utc::now().timestamp_micros(), fridges, events),
    };
    let spec = FleetSpec { seed: args.fleet.seed, fridges, events, start_us, bad_rate: args.bad_rate, skus: None };
    let run_spec = RunSpec {
        target: args.target.join(","),
        tokens: args.key.tokens()?,
        tls: Some(ClientTls {
            ca: args
                .ca_file
                .as_ref()
                .map(|path| std::fs::read(path).with_context(|| format!("reading --ca-file {}", path.display())))
                .transpose()?,
            domain: args.tls_domain,
            identity: None,
        }),
        rate,
        batch: args.batch,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let summary = runtime()?.block_on(simulate::run(Fleet::new(&spec), &run_spec, events))?;
    println!("{summary}");
    Ok(())
}
