//! `coldstream demo`: the whole system on one machine — the server on a
//! loopback port, a simulated fleet streaming into it over gRPC — then what
//! happened and a few queries over the results.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;

use super::{DataArgs, FleetArgs, init_logging, runtime};

use coldstream::config::{Config, DEV_SECRET};
use coldstream::query::{self, Format};
use coldstream::server::Server;
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sinks::webhooks::receiver::Delivery;
use coldstream_sources::auth::Tokens;
use coldstream_sources::simulator::{self as simulate, RunSpec};

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
    /// The fleet's pace in events/s (`None`: as fast as the server acks).
    pub rate: Option<f64>,
    /// Where to serve the metrics and the status page while the demo runs.
    pub metrics: Option<std::net::SocketAddr>,
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
    Server(#[from] coldstream::server::ServerError),
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
    match super::fresh_dir(dir, MARKER, "demo") {
        Ok(true) => Ok(()),
        Ok(false) => Err(DemoError::NotADemoDir(dir.display().to_string())),
        Err(e) => Err(DemoError::Io(format!("{}: {e}", dir.display()))),
    }
}

async fn show(ctx: &SessionContext, data_dir: &Path, title: &str, sql: &str) -> Result<(), DemoError> {
    let batches = query::run(ctx, sql).await.map_err(|e| DemoError::Query(query::one_line(&e)))?;
    let table = query::render(&batches, Format::Table).map_err(|e| DemoError::Query(query::one_line(&e)))?;
    let shell = sql.replace('"', "\\\"");
    println!("\n{title}\n  $ coldstream query --data {} \"{shell}\"\n{table}", data_dir.display());
    Ok(())
}

/// A sample of each view, shown at the end of the demo.
const VIEW_SAMPLES: &[(&str, &str)] = &[
    (
        "Lowest stock right now (inventory_now):",
        "SELECT fridge_id, sku, on_hand FROM inventory_now ORDER BY on_hand, fridge_id, sku LIMIT 5",
    ),
    (
        "Sessions by status (sessions_now):",
        "SELECT status, COUNT(*) AS sessions, SUM(expected_cents) AS expected_cents, SUM(captured_cents) AS captured_cents \
         FROM sessions_now GROUP BY status ORDER BY sessions DESC",
    ),
    (
        "Busiest fridge-hours (revenue_now):",
        "SELECT fridge_id, hour, captured_cents, sessions, units FROM revenue_now \
         ORDER BY captured_cents DESC, fridge_id, hour LIMIT 5",
    ),
    (
        "Best sellers over the last 7 days (sales_7d_now):",
        "SELECT sku, SUM(units) AS units FROM sales_7d_now GROUP BY sku ORDER BY units DESC, sku LIMIT 5",
    ),
    (
        "Cold-chain excursions (excursions_now):",
        "SELECT fridge_id, start, \"end\", max_temperature_c FROM excursions_now ORDER BY start, fridge_id LIMIT 5",
    ),
    (
        "Open restock orders (restock_orders_now):",
        "SELECT order_id, opened_at, COUNT(*) AS lines, SUM(qty) AS units FROM restock_orders_now \
         GROUP BY order_id, opened_at ORDER BY opened_at, order_id LIMIT 5",
    ),
    ("Alerts raised (alerts_now):", "SELECT type, COUNT(*) AS alerts FROM alerts_now GROUP BY type ORDER BY type"),
];

/// Runs the demo and prints its report.
pub async fn demo(spec: DemoSpec) -> Result<(), DemoError> {
    prepare(&spec.data_dir)?;
    let mut config = Config::loopback(&spec.data_dir, spec.workers);
    if let Some(listen) = spec.metrics {
        config.metrics = coldstream::config::MetricsSection { enabled: true, listen };
    }
    // A receiver per webhook endpoint, in this process.
    let receivers = super::local_receivers(&mut config, coldstream_sinks::webhooks::receiver::Keep::Everything)
        .await
        .map_err(|e| DemoError::Io(format!("starting a webhook receiver: {e}")))?;
    let server = Server::start(&config).await?;
    let target = format!("http://{}", server.addr());
    println!(
        "coldstream demo: server on {target}, {} workers, data in {}",
        config.worker_threads(),
        spec.data_dir.display()
    );
    if let Some(addr) = server.metrics_addr() {
        println!("status page on http://{addr}/ (metrics on http://{addr}/metrics) while the demo runs");
    }
    println!("simulating {} fridges sending {} events (seed {})…", spec.fridges, spec.events, spec.seed);
    let now_us = chrono::Utc::now().timestamp_micros();
    let fleet_spec = FleetSpec {
        seed: spec.seed,
        fridges: spec.fridges,
        events: spec.events,
        start_us: FleetSpec::start_before(now_us, spec.fridges, spec.events),
        bad_rate: 0.0005,
        skus: None,
    };
    let started = Instant::now();
    let run_spec =
        RunSpec { target, tokens: Tokens::new(DEV_SECRET), tls: None, rate: spec.rate, batch: 500, progress: true };
    let summary = simulate::run(Fleet::new(&fleet_spec), &run_spec, spec.events).await?;
    let limit = Duration::from_secs(600);
    let status = server.caught_up(limit).await.map_err(|_| DemoError::Timeout(limit))?;
    let end_to_end = started.elapsed();
    let webhooks_started = Instant::now();
    while server.webhooks_pending() > 0 && webhooks_started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let webhooks_drained = webhooks_started.elapsed();
    let webhooks_pending = server.webhooks_pending();
    server.shutdown().await?;

    let accepted = summary.delivered.accepted;
    println!("\nfleet: {summary}");
    println!(
        "end to end: {accepted} events accepted, fsynced, archived and reflected in every view in {:.1} s = {:.0} events/s",
        end_to_end.as_secs_f64(),
        accepted as f64 / end_to_end.as_secs_f64()
    );
    println!("log: {} records (accepted and dead-lettered)", status.durable_offset);
    if let Some(peak) = coldstream::machine::peak_rss_mib() {
        println!("peak memory: {peak:.0} MiB resident");
    }
    let delivered: Vec<Delivery> = receivers.iter().flat_map(|(_, r)| r.received()).collect();
    println!(
        "webhooks: {} delivered, signed and verified by 3 local receivers, {:.1} s after the views caught up ({} still pending)",
        delivered.len(),
        webhooks_drained.as_secs_f64(),
        webhooks_pending
    );
    let mut kinds: std::collections::BTreeMap<&str, (usize, &Delivery)> = std::collections::BTreeMap::new();
    for delivery in &delivered {
        kinds.entry(delivery.kind.as_str()).or_insert((0, delivery)).0 += 1;
    }
    for (kind, (count, sample)) in &kinds {
        println!("  {kind:<20} {count:>6}  e.g. {} {}", sample.id, sample.data);
    }
    for (_, receiver) in receivers {
        receiver.stop().await;
    }
    let dir = spec.data_dir.display();
    println!(
        "data: {dir}/log (event log), {dir}/events, {dir}/rejected, {dir}/views/<view>, {dir}/webhooks_failed (Parquet), {dir}/webhooks/outbox.log"
    );

    let ctx = query::context(&spec.data_dir).await.map_err(|e| DemoError::Query(query::one_line(&e)))?;
    show(
        &ctx,
        &spec.data_dir,
        "Accepted events by kind:",
        "SELECT kind, COUNT(*) AS events FROM events GROUP BY kind ORDER BY events DESC",
    )
    .await?;
    show(&ctx, &spec.data_dir, "Rejected events by reason:", "SELECT reason_code, COUNT(*) AS events, MIN(reason) AS example FROM rejected GROUP BY reason_code ORDER BY events DESC").await?;
    for (title, sql) in VIEW_SAMPLES {
        show(&ctx, &spec.data_dir, title, sql).await?;
    }
    println!("\nTry: cargo run --release -- query --data {dir} \"SELECT COUNT(*) FROM events\"");
    Ok(())
}

/// The demo's fleet and where its data goes.
#[derive(clap::Args)]
pub struct Args {
    /// Where the demo's data goes (replaced if it holds an earlier demo).
    #[command(flatten)]
    pub data: DataArgs,
    /// Fridge events to simulate.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Timely worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Paces the fleet: events per second, or `max` (as fast as acks come).
    #[arg(long, default_value = "max")]
    pub rate: String,
    /// Serves the metrics and the live status page on this address while
    /// the demo runs (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
}

/// Runs the demo.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging("warn");
    let spec = DemoSpec {
        data_dir: args.data.dir(),
        events: args.events,
        fridges: args.fleet.fridges as usize,
        seed: args.fleet.seed,
        workers: args.workers,
        rate: super::rate(&args.rate)?,
        metrics: args.metrics,
    };
    runtime()?.block_on(demo(spec))?;
    Ok(())
}
