//! `coldstream demo`: the whole system on one machine — the server on a
//! loopback port, a simulated fleet streaming into it over gRPC — then what
//! happened and a few queries over the results.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{Config, DEV_SECRET};
use crate::query::{self, Format};
use crate::server::Server;
use crate::simulate::{self, Fleet, FleetSpec, RunSpec};

/// The demo's settings.
#[derive(Clone, Debug)]
pub struct DemoSpec {
    /// Where the demo's data goes; replaced if it holds an earlier demo.
    pub data_dir: PathBuf,
    /// Fridge events to simulate.
    pub events: u64,
    /// Simulated fridges.
    pub fridges: usize,
    /// Seed of the fleet.
    pub seed: u64,
    /// Timely worker threads (0: one per core).
    pub workers: usize,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The data directory holds something other than an earlier demo.
    #[error("{0} is not empty and was not made by `coldstream demo`; choose another --data")]
    NotADemoDir(String),
    /// A file operation.
    #[error("{0}")]
    Io(String),
    /// The server.
    #[error("{0}")]
    Server(#[from] crate::server::ServerError),
    /// The simulated fleet.
    #[error("simulated fleet: {0}")]
    Fleet(#[from] coldstream_sources::client::ClientError),
    /// A query.
    #[error("query: {0}")]
    Query(String),
    /// The views did not catch up.
    #[error("the views did not catch up with the log within {0:?}")]
    Timeout(Duration),
}

const MARKER: &str = ".coldstream-demo";

fn prepare(dir: &Path) -> Result<(), DemoError> {
    let io = |e: std::io::Error| DemoError::Io(format!("{}: {e}", dir.display()));
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map_err(io)?.next().is_none();
        if !empty {
            if !dir.join(MARKER).exists() {
                return Err(DemoError::NotADemoDir(dir.display().to_string()));
            }
            std::fs::remove_dir_all(dir).map_err(io)?;
        }
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join(MARKER), b"made by coldstream demo; deleted by the next demo\n").map_err(io)
}

/// Peak resident memory of this process, in MiB (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn show(data_dir: &Path, title: &str, sql: &str) -> Result<(), DemoError> {
    let ctx = query::context(data_dir).await.map_err(|e| DemoError::Query(query::one_line(&e)))?;
    let batches = query::run(&ctx, sql).await.map_err(|e| DemoError::Query(query::one_line(&e)))?;
    let table = query::render(&batches, Format::Table).map_err(|e| DemoError::Query(query::one_line(&e)))?;
    println!("\n{title}\n  $ coldstream query --data {} \"{sql}\"\n{table}", data_dir.display());
    Ok(())
}

/// Runs the demo and prints its report.
pub async fn run(spec: DemoSpec) -> Result<(), DemoError> {
    prepare(&spec.data_dir)?;
    let config = Config {
        data_dir: spec.data_dir.clone(),
        listen: "127.0.0.1:0".parse().expect("a literal socket address"),
        workers: spec.workers,
        ..Config::default()
    };
    let server = Server::start(&config).await?;
    let target = format!("http://{}", server.addr());
    println!(
        "coldstream demo: server on {target}, {} workers, data in {}",
        config.worker_threads(),
        spec.data_dir.display()
    );
    println!("simulating {} fridges sending {} events (seed {})…", spec.fridges, spec.events, spec.seed);
    let now_us = chrono::Utc::now().timestamp_micros();
    let fleet_spec = FleetSpec {
        seed: spec.seed,
        fridges: spec.fridges,
        events: spec.events,
        start_us: FleetSpec::start_before(now_us, spec.fridges, spec.events),
        bad_rate: 0.0005,
    };
    let started = Instant::now();
    let run_spec = RunSpec { target, secret: DEV_SECRET.into(), rate: None, batch: 500, progress: true };
    let summary = simulate::run(Fleet::new(&fleet_spec), &run_spec, spec.events).await?;
    let limit = Duration::from_secs(600);
    let status = server.caught_up(limit).await.map_err(|_| DemoError::Timeout(limit))?;
    let end_to_end = started.elapsed();
    server.shutdown().await?;

    let accepted = summary.delivered.accepted;
    println!("\nfleet: {summary}");
    println!(
        "end to end: {accepted} events accepted, fsynced, archived and reflected in every view in {:.1} s = {:.0} events/s",
        end_to_end.as_secs_f64(),
        accepted as f64 / end_to_end.as_secs_f64()
    );
    println!("log: {} records (accepted and dead-lettered)", status.durable_offset);
    if let Some(peak) = peak_rss_mib() {
        println!("peak memory: {peak:.0} MiB resident");
    }
    let dir = spec.data_dir.display();
    println!("data: {dir}/log (event log), {dir}/events, {dir}/rejected, {dir}/views/inventory (Parquet)");

    show(
        &spec.data_dir,
        "Accepted events by kind:",
        "SELECT kind, COUNT(*) AS events FROM events GROUP BY kind ORDER BY events DESC",
    )
    .await?;
    show(&spec.data_dir, "Rejected events by reason:", "SELECT reason_code, COUNT(*) AS events, MIN(reason) AS example FROM rejected GROUP BY reason_code ORDER BY events DESC").await?;
    show(
        &spec.data_dir,
        "Lowest stock right now:",
        "SELECT fridge_id, sku, on_hand FROM inventory_now ORDER BY on_hand, fridge_id, sku LIMIT 10",
    )
    .await?;
    println!("\nTry: cargo run --release -- query --data {dir} \"SELECT COUNT(*) FROM events\"");
    Ok(())
}
