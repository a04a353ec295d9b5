//! `coldstream bench`: end-to-end throughput and latency of the whole
//! pipeline on this machine.
//!
//! The pipeline (gateway, log, views, Parquet and webhook sinks) runs in
//! this process with three local webhook receivers; the simulated fleet
//! runs as a separate `coldstream simulate` process, flat out or at a fixed
//! rate, for a fixed duration. The report gives:
//!
//! - events per second accepted end to end: from the fleet's start until
//!   every accepted event is fsynced, archived and in every view;
//! - latency from the moment the commit holding an event is durable (its
//!   fridge is acked then) to the arrival, at its receiver, of the webhook
//!   its view change causes (a restock order, a payment, an alert), as an
//!   HdrHistogram: p50, p99, p99.9, max; the durable moment is sampled
//!   every millisecond;
//! - the same latency by stage, so that a regression shows where it is:
//!   commit → views computed (the workers' frontier passed the commit),
//!   views → outbox (every sink has the changes, the webhooks fsynced in
//!   the outbox), outbox → receiver (delivered); the first two over the
//!   sampled commits, the last over the deliveries;
//! - CPU seconds of this process (pipeline and receivers) per million
//!   events, and its peak resident memory;
//! - the machine and the settings.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coldstream_sinks::webhooks::{Endpoint, Protocol};
use hdrhistogram::Histogram;
use serde_json::json;

use coldstream::config::Config;
use coldstream::server::Server;
use coldstream_sinks::webhooks::receiver::{Keep, Receipt};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Where the run's data goes (replaced if it holds an earlier bench).
    pub data_dir: PathBuf,
    /// How long the fleet sends.
    pub duration: Duration,
    /// Events per second for the whole fleet; `None` for flat out.
    pub rate: Option<f64>,
    /// Simulated fridges.
    pub fridges: usize,
    /// Timely workers.
    pub workers: usize,
    /// Seed of the fleet.
    pub seed: u64,
    /// The `coldstream` binary that runs the fleet (`None`: this program).
    pub fleet_binary: Option<PathBuf>,
    /// How the three endpoints are spoken to.
    pub webhook_protocol: Protocol,
    /// Deliveries in flight at once to each endpoint.
    pub webhook_in_flight: usize,
}

/// Latency percentiles of one kind of webhook, in ms.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Latency {
    /// What was measured, e.g. `restock`.
    pub of: String,
    /// Deliveries measured.
    pub count: u64,
    /// Percentiles and the maximum, in ms.
    pub p50_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// 99.9th percentile.
    pub p999_ms: u64,
    /// The slowest.
    pub max_ms: u64,
}

/// One second of the run as the views saw it: the sampled commits that
/// became durable in it and how long each took to be in every view.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ViewsSecond {
    /// Seconds from the first sampled commit.
    pub second: u64,
    /// Sampled commits that became durable in this second.
    pub commits: u64,
    /// Their commit → in every view latency, 99th percentile, ms.
    pub p99_ms: u64,
    /// The slowest of them, ms.
    pub max_ms: u64,
}

/// What a run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// Cores and CPU model.
    pub machine: String,
    /// The settings.
    pub settings: serde_json::Value,
    /// Log records appended (fridge and back-office events).
    pub events: u64,
    /// Events per second, fleet start to every view caught up.
    pub events_per_second: f64,
    /// Seconds from the fleet's start until every view and the archive had caught up.
    pub seconds: f64,
    /// Seconds from the fleet's start until the views had every event the
    /// fleet sent, and until the archive had.
    pub views_seconds: f64,
    /// See `views_seconds`.
    pub archive_seconds: f64,
    /// Seconds the fleet sent for.
    pub fleet_seconds: f64,
    /// Latency from commit to webhook arrival, by endpoint and over all.
    pub latency: Vec<Latency>,
    /// The same, by stage: commit → views computed, views → outbox,
    /// outbox → receiver.
    pub stages: Vec<Latency>,
    /// The views' latency second by second: whether a p99 comes from a
    /// few slow moments (a stall) or from all of the run (a full machine).
    pub views_by_second: Vec<ViewsSecond>,
    /// `restock.updated` deliveries skipped because a newer state of the
    /// same order superseded them before they were sent.
    pub superseded_updates: u64,
    /// Deliveries of a webhook id the receivers had already received
    /// (measured once, at the first).
    pub repeated_deliveries: u64,
    /// CPU seconds of the pipeline process per million events.
    pub cpu_seconds_per_million_events: f64,
    /// Peak resident memory of the pipeline process, MiB.
    pub peak_rss_mib: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "machine: {}", self.machine)?;
        writeln!(f, "settings: {}", self.settings)?;
        writeln!(
            f,
            "throughput: {} events in {:.1} s = {:.0} events/s end to end",
            self.events, self.seconds, self.events_per_second
        )?;
        writeln!(
            f,
            "  the fleet sent for {:.1} s; every event was in the views after {:.1} s and in events/ after {:.1} s",
            self.fleet_seconds, self.views_seconds, self.archive_seconds
        )?;
        writeln!(
            f,
            "cpu: {:.2} s per million events (pipeline process); peak memory {:.0} MiB",
            self.cpu_seconds_per_million_events, self.peak_rss_mib
        )?;
        writeln!(
            f,
            "restock.updated skipped: {} (a newer state of the same order was pending); delivered again: {}",
            self.superseded_updates, self.repeated_deliveries
        )?;
        latency_table(f, "latency, commit to webhook arrival (ms):", "webhook", 12, &self.latency)?;
        latency_table(f, "latency by stage (ms):", "stage", 26, &self.stages)?;
        let mut slowest: Vec<&ViewsSecond> = self.views_by_second.iter().collect();
        slowest.sort_by_key(|s| std::cmp::Reverse((s.max_ms, s.second)));
        let over = |ms: u64| self.views_by_second.iter().filter(|s| s.max_ms > ms).count();
        write!(
            f,
            "views by second: {} s measured, {} with a commit over 100 ms, {} over 250 ms; slowest (second: p99 / max ms):",
            self.views_by_second.len(),
            over(100),
            over(250)
        )?;
        for s in slowest.iter().take(5) {
            write!(f, " {}: {} / {}", s.second, s.p99_ms, s.max_ms)?;
        }
        writeln!(f)
    }
}

/// A table of latencies under `title`, the first column `width` wide.
fn latency_table(
    f: &mut std::fmt::Formatter<'_>,
    title: &str,
    first: &str,
    width: usize,
    rows: &[Latency],
) -> std::fmt::Result {
    writeln!(f, "{title}")?;
    writeln!(f, "  {first:<width$} {:>8} {:>6} {:>6} {:>7} {:>6}", "count", "p50", "p99", "p99.9", "max")?;
    for l in rows {
        writeln!(
            f,
            "  {:<width$} {:>8} {:>6} {:>6} {:>7} {:>6}",
            l.of, l.count, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
        )?;
    }
    Ok(())
}

const MARKER: &str = ".coldstream-bench";

/// Empties `dir` if it holds an earlier bench's data; refuses anything else.
fn prepare(dir: &Path) -> anyhow::Result<()> {
    if !super::super::fresh_dir(dir, MARKER, "bench").with_context(|| dir.display().to_string())? {
        bail!("{} is not empty and not an earlier bench's data; give another --data", dir.display());
    }
    Ok(())
}

/// CPU seconds this process has used (Linux; clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// The sampler's record of when each commit became durable and when the
/// views passed it.
#[derive(Default)]
struct Samples {
    /// (ingest time, the first wall time, ms, it was durable).
    durable_at: Vec<(u64, u64)>,
    /// (views frontier, the first wall time, ms, the views were past it).
    views_at: Vec<(u64, u64)>,
    /// (workers' frontier, the first wall time, ms, it was past it).
    computed_at: Vec<(u64, u64)>,
}

/// The first wall time at which a sampled frontier (`at`: frontier →
/// first wall time) was past `time`.
fn passed(at: &[(u64, u64)], time: u64) -> Option<u64> {
    at.get(at.partition_point(|(frontier, _)| *frontier <= time)).map(|(_, wall)| *wall)
}

impl Samples {
    fn take(&mut self, status: coldstream::server::Status, now_ms: u64) {
        if let Some(last) = status.last_ingest_ms
            && self.durable_at.last().is_none_or(|(t, _)| *t < last)
        {
            self.durable_at.push((last, now_ms));
        }
        if self.views_at.last().is_none_or(|(f, _)| *f < status.views_frontier) {
            self.views_at.push((status.views_frontier, now_ms));
        }
        if self.computed_at.last().is_none_or(|(f, _)| *f < status.computed_frontier) {
            self.computed_at.push((status.computed_frontier, now_ms));
        }
    }

    /// Each stage's latency: over the sampled commits, from durable to
    /// computed and from computed to in every sink; over `deliveries`,
    /// from in the outbox to arrival.
    fn stages(&self, deliveries: &[Receipt]) -> Vec<Latency> {
        let (mut computing, mut sinking, mut delivering) = (new_histogram(), new_histogram(), new_histogram());
        for &(time, durable_ms) in &self.durable_at {
            if let (Some(computed), Some(sunk)) = (passed(&self.computed_at, time), passed(&self.views_at, time)) {
                computing.saturating_record(computed.saturating_sub(durable_ms));
                sinking.saturating_record(sunk.saturating_sub(computed.max(durable_ms)));
            }
        }
        for delivery in deliveries {
            if let Some(enqueued) = delivery.timestamp_ms.and_then(|time| passed(&self.views_at, time)) {
                delivering.saturating_record(delivery.received_ms.saturating_sub(enqueued));
            }
        }
        vec![
            summary("commit → views computed", &computing),
            summary("views → outbox", &sinking),
            summary("outbox → receiver", &delivering),
        ]
    }

    /// Each sampled commit's durable moment and how long until every view
    /// had it (the frontier passed it), ms.
    fn views_delays(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.durable_at.iter().filter_map(|&(time, durable_ms)| {
            passed(&self.views_at, time).map(|views_ms| (durable_ms, views_ms.saturating_sub(durable_ms)))
        })
    }

    /// From each sampled commit's durable moment to the moment every view
    /// had it.
    fn views_latency(&self) -> Latency {
        let mut histogram = new_histogram();
        for (_, delay) in self.views_delays() {
            histogram.saturating_record(delay);
        }
        summary("in the views", &histogram)
    }

    /// [`Samples::views_latency`] second by second.
    fn views_by_second(&self) -> Vec<ViewsSecond> {
        let Some(&(_, first_ms)) = self.durable_at.first() else { return Vec::new() };
        let mut seconds: Vec<(u64, Histogram<u64>)> = Vec::new();
        for (durable_ms, delay) in self.views_delays() {
            let second = (durable_ms - first_ms) / 1000;
            if seconds.last().is_none_or(|(s, _)| *s != second) {
                seconds.push((second, new_histogram()));
            }
            if let Some((_, histogram)) = seconds.last_mut() {
                histogram.saturating_record(delay);
            }
        }
        seconds
            .into_iter()
            .map(|(second, h)| ViewsSecond {
                second,
                commits: h.len(),
                p99_ms: h.value_at_quantile(0.99),
                max_ms: h.max(),
            })
            .collect()
    }
}

/// 1 ms to an hour, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("the bounds and precision are valid")
}

fn summary(of: &str, histogram: &Histogram<u64>) -> Latency {
    Latency {
        of: of.to_owned(),
        count: histogram.len(),
        p50_ms: histogram.value_at_quantile(0.5),
        p99_ms: histogram.value_at_quantile(0.99),
        p999_ms: histogram.value_at_quantile(0.999),
        max_ms: histogram.max(),
    }
}

/// Latencies of `deliveries`, from the wall time their change's commit was
/// durable (`durable_at`: ingest time → first wall time it was durable).
fn latency(of: &str, deliveries: &[Receipt], durable_at: &[(u64, u64)]) -> Latency {
    let mut histogram = new_histogram();
    for delivery in deliveries {
        let Some(time) = delivery.timestamp_ms else { continue };
        let index = durable_at.partition_point(|(t, _)| *t < time);
        if let Some((_, acked_ms)) = durable_at.get(index) {
            histogram.saturating_record(delivery.received_ms.saturating_sub(*acked_ms));
        }
    }
    summary(of, &histogram)
}

/// Runs the benchmark.
pub async fn run(spec: &BenchSpec) -> anyhow::Result<BenchReport> {
    prepare(&spec.data_dir)?;
    let mut config = Config::loopback(&spec.data_dir, spec.workers);
    let receivers =
        super::super::local_receivers(&mut config, Keep::Receipts).await.context("starting a webhook receiver")?;
    for (endpoint, _) in &receivers {
        if let Some(section) = config.webhooks.endpoint_mut(*endpoint) {
            section.protocol = spec.webhook_protocol;
            section.max_in_flight = spec.webhook_in_flight;
        }
    }
    let server = Server::start(&config).await?;
    let exe = match &spec.fleet_binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe().context("finding the coldstream binary")?,
    };
    // Enough events for the duration; a flat-out fleet is stopped when it is up.
    let events = match spec.rate {
        Some(rate) => (rate * spec.duration.as_secs_f64()).ceil() as u64,
        None => 1_000_000_000,
    };
    let rate = spec.rate.map_or_else(|| "max".to_owned(), |r| r.to_string());
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut fleet = Command::new(&exe)
        .args(["simulate", "--target", &format!("http://{}", server.addr()), "--bad-rate", "0"])
        .args(["--fridges", &spec.fridges.to_string(), "--events", &events.to_string(), "--rate", &rate])
        .args(["--seed", &spec.seed.to_string()])
        .env("COLDSTREAM_SECRET", coldstream::config::DEV_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting coldstream simulate")?;
    let deadline = started + spec.duration + Duration::from_secs(if spec.rate.is_some() { 60 } else { 0 });
    // When each commit became durable (and its events acked): the wall time
    // at which the durable ingest time first reached each value, sampled
    // every millisecond by a thread of its own. Ingest times are logical
    // and may run ahead of the wall clock (each commit takes a new
    // millisecond), so they cannot be compared with arrival times directly.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (source, sampling) = (server.status_source(), std::sync::Arc::clone(&sampling));
        std::thread::spawn(move || {
            let mut samples = Samples::default();
            while sampling.load(std::sync::atomic::Ordering::Acquire) {
                samples.take(source.status(), coldstream_sources::ingest::now_ms());
                std::thread::sleep(Duration::from_millis(1));
            }
            samples
        })
    };
    loop {
        if let Some(status) = fleet.try_wait()? {
            if !status.success() {
                bail!("the fleet failed ({status})");
            }
            break;
        }
        if let Some(failure) = server.failure() {
            let _ = fleet.kill();
            let _ = fleet.wait();
            bail!("the pipeline stopped: {failure}");
        }
        if Instant::now() >= deadline {
            let _ = fleet.kill();
            let _ = fleet.wait();
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Which consumer finishes last: the views or the archive.
    let fleet_seconds = started.elapsed().as_secs_f64();
    let fleet_done = server.status();
    let (mut views_at, mut archive_at) = (None, None);
    let status = loop {
        let status = server.status();
        if views_at.is_none() && fleet_done.last_ingest_ms.is_none_or(|last| status.views_frontier > last) {
            views_at = Some(started.elapsed().as_secs_f64());
        }
        if archive_at.is_none() && status.archived_offset >= fleet_done.durable_offset {
            archive_at = Some(started.elapsed().as_secs_f64());
        }
        if status.caught_up() {
            break status;
        }
        if let Some(failure) = server.failure() {
            bail!("the pipeline stopped: {failure}");
        }
        if started.elapsed() > spec.duration + Duration::from_secs(600) {
            bail!("the views did not catch up within 600 s: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    sampling.store(false, std::sync::atomic::Ordering::Release);
    let samples = sampler.join().map_err(|_| anyhow::anyhow!("the latency sampler failed"))?;
    let durable_at = &samples.durable_at;
    // Let the last webhooks arrive before reading the receivers.
    let drained = Instant::now() + Duration::from_secs(60);
    while server.webhooks_pending() > 0 && Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::new();
    let mut all = Vec::new();
    for (endpoint, receiver) in &receivers {
        let first = receiver.take_receipts();
        let name = match endpoint {
            Endpoint::Procurement => "restock",
            Endpoint::Accounting => "payment",
            Endpoint::Alerts => "alerts",
        };
        latencies.push(latency(name, &first, durable_at));
        all.extend(first);
    }
    let repeated_deliveries = receivers.iter().map(|(_, receiver)| receiver.repeats()).sum();
    latencies.push(latency("all", &all, durable_at));
    latencies.push(samples.views_latency());
    let stages = samples.stages(&all);
    let views_by_second = samples.views_by_second();
    let superseded_updates = server.webhooks_superseded();
    server.shutdown().await?;
    for (_, receiver) in receivers {
        receiver.stop().await;
    }
    let events = status.durable_offset;
    Ok(BenchReport {
        machine: coldstream::machine::describe(),
        settings: json!({
            "rate": rate,
            "duration_s": spec.duration.as_secs_f64(),
            "fridges": spec.fridges,
            "workers": config.worker_threads(),
            "async_threads": tokio::runtime::Handle::current().metrics().num_workers(),
            "seed": spec.seed,
            "webhook_endpoints": 3,
            "webhook_protocol": spec.webhook_protocol.as_str(),
            "webhook_in_flight": spec.webhook_in_flight,
            "config": "defaults (fsync per group commit, 10 s checkpoints, 30 s Parquet rolls)",
        }),
        events,
        events_per_second: events as f64 / seconds.max(1e-9),
        seconds,
        views_seconds: views_at.unwrap_or(seconds),
        archive_seconds: archive_at.unwrap_or(seconds),
        fleet_seconds,
        latency: latencies,
        stages,
        views_by_second,
        superseded_updates,
        repeated_deliveries,
        cpu_seconds_per_million_events: cpu / (events.max(1) as f64 / 1e6),
        peak_rss_mib: coldstream::machine::peak_rss_mib().unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_views_latency_is_told_second_by_second_from_the_first_commit() {
        // Commits durable at 1,000, 1,500, 2,100 and 3,900 ms wall time; the
        // views pass them at 1,010, 1,700, 2,105 and 4,000.
        let samples = Samples {
            durable_at: vec![(10, 1_000), (20, 1_500), (30, 2_100), (40, 3_900)],
            views_at: vec![(11, 1_010), (21, 1_700), (31, 2_105), (41, 4_000)],
            computed_at: Vec::new(),
        };
        let seconds: Vec<(u64, u64, u64)> =
            samples.views_by_second().iter().map(|s| (s.second, s.commits, s.max_ms)).collect();
        // A second without a commit has no row.
        assert_eq!(seconds, [(0, 2, 200), (1, 1, 5), (2, 1, 100)]);
        assert!(Samples::default().views_by_second().is_empty());
    }
}
