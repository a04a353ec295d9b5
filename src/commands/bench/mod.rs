//! `coldstream bench`: end-to-end throughput and latency.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use coldstream_sinks::webhooks::{EndpointConfig, Protocol};

mod curve;
mod harness;

use harness::BenchSpec;

use super::{init_logging, runtime_with};

/// The workload and where the report goes.
#[derive(clap::Args)]
pub struct Args {
    /// Where the run's data goes (replaced if it holds an earlier bench).
    #[arg(long, default_value = "./coldstream-data/bench")]
    pub data: PathBuf,
    /// Seconds the fleet sends.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Events per second for the whole fleet, or `max`.
    #[arg(long, default_value = "max")]
    pub rate: String,
    /// Simulated fridges (the bench's standard workload is 200).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub fridges: u64,
    /// Seed of the simulated fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Timely worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Threads of the async runtime that runs the gateway, webhook delivery
    /// and the three receivers (0: one per core); `async_threads` in the config.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub async_threads: u16,
    /// How the three local receivers are spoken to: `auto` (HTTP/1.1 to
    /// them), `http1` or `http2` (cleartext, every delivery a stream of one
    /// connection); `protocol` of a `[webhooks.*]` table.
    #[arg(long, default_value = "auto")]
    pub webhook_protocol: Protocol,
    /// Deliveries in flight at once to each receiver; `max_in_flight` of a
    /// `[webhooks.*]` table.
    #[arg(long, default_value_t = EndpointConfig::DEFAULT_MAX_IN_FLIGHT as u64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub webhook_in_flight: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run flat out, then at 10, 25, 50 and 75 % of that rate, and draw
    /// latency against throughput to this SVG file (the reports go
    /// beside it as JSON).
    #[arg(long, conflicts_with = "rate")]
    pub curve: Option<PathBuf>,
}

/// Runs the bench and prints its report.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging("warn");
    let rate = super::rate(&args.rate)?;
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    let spec = BenchSpec {
        data_dir: args.data,
        duration: Duration::from_secs_f64(args.duration),
        rate,
        fridges: args.fridges as usize,
        workers: args.workers,
        seed: args.seed,
        fleet_binary: None,
        webhook_protocol: args.webhook_protocol,
        webhook_in_flight: args.webhook_in_flight as usize,
    };
    if let Some(path) = args.curve {
        let points = runtime_with(args.async_threads.into())?.block_on(curve::run_and_draw(&spec, &path))?;
        print!("{}", curve::table(&points));
        println!("curve: {} and {}", path.display(), path.with_extension("json").display());
        return Ok(());
    }
    let report = runtime_with(args.async_threads.into())?.block_on(harness::run(&spec))?;
    print!("{report}");
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
