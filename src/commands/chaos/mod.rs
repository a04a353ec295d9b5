//! `coldstream chaos`: kill the server anywhere, prove nothing was lost.

use std::path::PathBuf;

use anyhow::bail;

mod harness;

use harness::ChaosSpec;

use super::{FleetArgs, init_logging, runtime};

/// The run: its data, its cycles and its fleet.
#[derive(clap::Args)]
pub struct Args {
    /// A fresh data directory for the run.
    #[arg(long)]
    pub data: PathBuf,
    /// Kill and restart cycles.
    #[arg(long, default_value_t = 10)]
    pub cycles: u32,
    /// Fridge events the fleet sends in all.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Events per second the fleet sends (default: spread over the cycles).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Timely workers of the server.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// The longest the server runs before it is killed, in ms.
    #[arg(long, default_value_t = 2500)]
    pub max_run_ms: u64,
    /// Pipeline processes: more than 1 runs a gateway and that many
    /// pipeline processes in timely's cluster mode (at most 4), and kills
    /// one of them at random each cycle.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
}

/// Runs the cycles and the checks; fails if a check does.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging("warn");
    let Args { data, cycles, events, fleet, rate, workers, max_run_ms, processes } = args;
    let rate = rate.unwrap_or((events as f64 / (f64::from(cycles.max(1)) * 2.0)).max(1000.0));
    if !(rate.is_finite() && rate > 0.0) || cycles == 0 || events == 0 {
        bail!("--rate, --cycles and --events must be positive");
    }
    let FleetArgs { fridges, seed } = fleet;
    if !(1..=4).contains(&processes) {
        bail!("--processes must be 1 to 4");
    }
    let spec = ChaosSpec {
        data_dir: data,
        cycles,
        events,
        fridges: fridges as usize,
        seed,
        rate,
        workers,
        max_run_ms,
        processes,
    };
    println!(
        "chaos: {cycles} SIGKILL cycles, {events} events from {fridges} fridges at {rate:.0} events/s, seed {seed}{}",
        if processes > 1 { format!(", a gateway and {processes} pipeline processes") } else { String::new() }
    );
    let report = runtime()?.block_on(harness::run(spec))?;
    println!("{report}");
    if !report.passed() {
        bail!("chaos checks failed");
    }
    Ok(())
}
