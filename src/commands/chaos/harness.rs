//! `coldstream chaos`: kill the server anywhere, many times, and prove that
//! nothing was lost or repeated.
//!
//! The harness runs the server (`coldstream run`) and the simulated fleet
//! (`coldstream simulate`) as separate processes, with three webhook
//! receivers of its own. The server is set up so that every kind of work
//! happens all the time: a Parquet file and a checkpoint every second, 1 MiB
//! log segments removed by retention as soon as they are covered, webhooks
//! to every endpoint. Each cycle it starts the server, waits a random time
//! (sometimes for the catch-up, sometimes not) and SIGKILLs it: during
//! appends, Parquet commits, checkpoints and deliveries alike. The fleet
//! keeps its unacknowledged events and resends them.
//!
//! At the end (after a clean stop) it checks:
//! - every event the fleet sent, and had acknowledged, is in `events/`
//!   exactly once, and nothing else is;
//! - every `*_now` view equals the batch reference computed from `events/`;
//! - every view changelog, change by change, equals the one an
//!   uninterrupted recomputation of `events/` writes (`coldstream rebuild`
//!   in a scratch folder), so no change was lost or written twice;
//! - every webhook message that recomputation derives reached its receiver
//!   at least once, repeats carry the same id and body, and nothing else
//!   arrived;
//! - and it reports the restart times (spawn to caught up).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coldstream_pipelines::Event;
use coldstream_sinks::parquet::view_tables;
use coldstream_sinks::webhooks::{EXAMPLE_SECRET, Endpoint, Outbox, Secret};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use coldstream::config::Config;
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sinks::webhooks::receiver::Receiver;

/// What to run.
#[derive(Clone, Debug)]
pub struct ChaosSpec {
    /// A fresh data directory.
    pub data_dir: PathBuf,
    /// Kill and restart cycles.
    pub cycles: u32,
    /// Fridge events the fleet sends in all.
    pub events: u64,
    /// Simulated fridges.
    pub fridges: usize,
    /// Seed of the fleet and of the kill times.
    pub seed: u64,
    /// Events per second the fleet sends.
    pub rate: f64,
    /// Timely workers of the server.
    pub workers: usize,
    /// The longest a server runs before it is killed, in ms.
    pub max_run_ms: u64,
}

/// What happened, and what the checks found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// SIGKILLs sent.
    pub kills: u32,
    /// Restart times, spawn to caught up, in ms (cycles killed before they
    /// caught up have none).
    pub restarts_ms: Vec<u64>,
    /// Kills that left a half-written Parquet file, checkpoint or log tail.
    pub torn: BTreeMap<&'static str, u32>,
    /// Events the fleet sent (back office included).
    pub events: usize,
    /// Events in `events/`.
    pub archived: usize,
    /// Events missing from `events/`, and events there more than once.
    pub lost: usize,
    /// Events there more than once.
    pub repeated: usize,
    /// Rows of each `*_now` view, and whether it equals the reference.
    pub views: Vec<coldstream::verify::ViewCheck>,
    /// Changelog rows that differ from the uninterrupted recomputation.
    pub changelog_differences: usize,
    /// Webhook messages derived, delivered at least once, delivered more than once.
    pub webhooks: (usize, usize, usize),
    /// Messages that arrived but were not derived, or arrived with another body.
    pub webhook_strays: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl ChaosReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.repeated == 0
            && self.archived == self.events
            && self.views.iter().all(|check| check.equal)
            && self.changelog_differences == 0
            && self.webhooks.0 == self.webhooks.1
            && self.webhook_strays == 0
    }

    fn percentile(&self, p: f64) -> u64 {
        let mut times = self.restarts_ms.clone();
        times.sort_unstable();
        if times.is_empty() {
            return 0;
        }
        times[((times.len() - 1) as f64 * p).round() as usize]
    }
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kills: {} SIGKILLs in {:.0} s", self.kills, self.elapsed.as_secs_f64())?;
        let torn: Vec<String> = self.torn.iter().map(|(what, n)| format!("{what} {n}")).collect();
        writeln!(
            f,
            "torn by a kill and recovered: {}",
            if torn.is_empty() { "none seen".into() } else { torn.join(", ") }
        )?;
        writeln!(
            f,
            "restart to caught up: median {} ms, max {} ms ({} restarts measured)",
            self.percentile(0.5),
            self.restarts_ms.iter().max().copied().unwrap_or(0),
            self.restarts_ms.len()
        )?;
        writeln!(
            f,
            "events: {} sent and acked, {} in events/, {} lost, {} repeated",
            self.events, self.archived, self.lost, self.repeated
        )?;
        for coldstream::verify::ViewCheck { table: view, rows, equal: ok } in &self.views {
            writeln!(
                f,
                "{view}: {rows} rows, {}",
                if *ok { "equals the batch reference" } else { "DIFFERS from the batch reference" }
            )?;
        }
        writeln!(f, "view changelogs: {} rows differ from an uninterrupted recomputation", self.changelog_differences)?;
        writeln!(
            f,
            "webhooks: {} derived, {} delivered, {} delivered more than once (same id and body), {} unexpected",
            self.webhooks.0, self.webhooks.1, self.webhooks.2, self.webhook_strays
        )?;
        write!(f, "{}", if self.passed() { "PASSED" } else { "FAILED" })
    }
}

const FLEET_SECRET: &str = "chaos-fleet-secret-0001";
const CATCH_UP: Duration = Duration::from_secs(180);

/// The harness's own files, inside the data directory.
fn harness_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("chaos")
}

fn server_config(
    spec: &ChaosSpec,
    listen: std::net::SocketAddr,
    receivers: &[(Endpoint, std::net::SocketAddr)],
) -> String {
    let mut toml = format!(
        "data_dir = {:?}\nlisten = \"{listen}\"\nworkers = {}\n\n[auth]\nsecret = \"{FLEET_SECRET}\"\n\n\
         [log]\nsegment_mb = 1\nretention_hours = 0\n\n[parquet]\nroll_seconds = 1\nroll_mb = 8\n\n\
         [checkpoint]\ninterval_seconds = 1\nkeep = 3\n\n\
         [webhooks]\nretry_initial_ms = 50\nretry_max_ms = 1000\nbreaker_open_ms = 500\n",
        spec.data_dir.display().to_string(),
        spec.workers,
    );
    for (endpoint, addr) in receivers {
        toml.push_str(&format!(
            "\n[webhooks.{}]\nurl = \"http://{addr}/hooks\"\nsecret = \"{EXAMPLE_SECRET}\"\n",
            endpoint.as_str()
        ));
    }
    toml
}

/// A free loopback port.
fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// A server process and the lines it prints.
struct ServerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    spawned: Instant,
}

impl ServerProcess {
    fn start(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<ServerProcess> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut child = Command::new(exe)
            .args(["run", "--config"])
            .arg(config)
            .env("COLDSTREAM_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting coldstream run")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Ok(ServerProcess { child, lines, spawned: Instant::now() })
    }

    /// Waits for a line starting with `prefix`; returns the rest.
    fn wait_for(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_owned());
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait()?;
                    bail!(
                        "the server did not print {prefix:?} within {timeout:?} (exit status {status:?}); see chaos/server.log"
                    )
                }
            }
        }
    }

    fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().context("sending SIGINT")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the server exited with {status} after SIGINT; see chaos/server.log");
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // A harness that fails leaves no server behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The fleet process, killed if the harness stops early.
struct FleetProcess(Child);

impl Drop for FleetProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Counts what a kill left half-done: temporary Parquet and checkpoint
/// files, and a log whose next open will cut a torn tail.
fn torn_leftovers(data_dir: &Path, torn: &mut BTreeMap<&'static str, u32>) {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".tmp")) {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(data_dir, &mut found);
    for path in found {
        let text = path.to_string_lossy();
        let what = if text.contains("/checkpoints/") { "checkpoint files" } else { "parquet files" };
        *torn.entry(what).or_insert(0) += 1;
    }
}

/// Runs the harness.
pub async fn run(spec: ChaosSpec) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    if spec.data_dir.exists() && std::fs::read_dir(&spec.data_dir)?.next().is_some() {
        bail!("{} is not empty; chaos needs a fresh data directory", spec.data_dir.display());
    }
    let exe = std::env::current_exe().context("finding the coldstream binary")?;
    let own = harness_dir(&spec.data_dir);
    std::fs::create_dir_all(&own).with_context(|| format!("creating {}", own.display()))?;
    let secret = Secret::parse(EXAMPLE_SECRET)?;
    let mut receivers = Vec::new();
    for endpoint in Endpoint::ALL {
        let receiver = Receiver::start(([127, 0, 0, 1], 0).into(), secret.clone(), false).await?;
        receivers.push((endpoint, receiver));
    }
    let listen = free_port()?;
    let addresses: Vec<_> = receivers.iter().map(|(e, r)| (*e, r.addr())).collect();
    let config_path = own.join("server.toml");
    std::fs::write(&config_path, server_config(&spec, listen, &addresses))?;
    let server_log = own.join("server.log");

    // The fleet, as the simulator will generate it.
    let start_us = FleetSpec::start_before(chrono::Utc::now().timestamp_micros(), spec.fridges, spec.events);
    let fleet_spec =
        FleetSpec { seed: spec.seed, fridges: spec.fridges, events: spec.events, start_us, bad_rate: 0.0, skus: None };
    let start = chrono::DateTime::from_timestamp_micros(start_us).context("the fleet's start")?.to_rfc3339();
    let fleet_log = std::fs::File::create(own.join("fleet.log"))?;
    let fleet = Command::new(&exe)
        .args(["simulate", "--target", &format!("http://{listen}"), "--bad-rate", "0"])
        .env("COLDSTREAM_SECRET", FLEET_SECRET)
        .args(["--fridges", &spec.fridges.to_string(), "--events", &spec.events.to_string()])
        .args(["--seed", &spec.seed.to_string(), "--start", &start, "--rate", &spec.rate.to_string()])
        .stdout(fleet_log.try_clone()?)
        .stderr(fleet_log)
        .spawn()
        .context("starting coldstream simulate")?;
    let mut fleet = FleetProcess(fleet);

    let mut report = ChaosReport::default();
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    for cycle in 0..spec.cycles {
        let mut server = ServerProcess::start(&exe, &config_path, &server_log)?;
        server.wait_for("coldstream listening on ", CATCH_UP)?;
        // Every other cycle waits for the catch-up first; the rest may be
        // killed while the server is still replaying.
        if cycle % 2 == 0 {
            server.wait_for("coldstream caught up in ", CATCH_UP)?;
            report.restarts_ms.push(server.spawned.elapsed().as_millis() as u64);
        }
        let wait = rng.random_range(50..=spec.max_run_ms.max(51));
        std::thread::sleep(Duration::from_millis(wait));
        server.kill()?;
        report.kills += 1;
        torn_leftovers(&spec.data_dir, &mut report.torn);
        if fleet.0.try_wait()?.is_some() {
            // Restarts go on without traffic.
            continue;
        }
    }

    // The last run: let the fleet finish, then stop cleanly.
    let mut server = ServerProcess::start(&exe, &config_path, &server_log)?;
    server.wait_for("coldstream caught up in ", CATCH_UP)?;
    report.restarts_ms.push(server.spawned.elapsed().as_millis() as u64);
    let fleet_status = tokio::task::spawn_blocking(move || fleet.0.wait()).await??;
    if !fleet_status.success() {
        server.stop()?;
        bail!("the fleet gave up ({fleet_status}); see chaos/fleet.log");
    }
    server.stop()?;

    // Events: exactly once.
    let expected: Vec<Event> = Fleet::new(&fleet_spec).all_events();
    report.events = expected.len();
    let archived = coldstream::rebuild::archived_events(&spec.data_dir)?;
    report.archived = archived.len();
    let counts = coldstream::rebuild::archived_counts(&archived);
    let wanted: BTreeSet<(String, u64)> = expected.iter().map(|e| (e.source_id.clone(), e.seq)).collect();
    report.lost = wanted.iter().filter(|key| !counts.contains_key(*key)).count();
    report.repeated = counts.iter().filter(|(key, n)| **n > 1 || !wanted.contains(*key)).count();

    // Views: the batch references over what is archived.
    let events: Vec<Event> = archived.into_iter().map(|(_, event)| event).collect();
    report.views = coldstream::verify::views_against(&spec.data_dir, &events).await?;
    let ctx = coldstream::query::context(&spec.data_dir).await?;

    // Changelogs and webhooks: an uninterrupted recomputation.
    let scratch = own.join("recomputed");
    for table in ["events", "rejected"] {
        copy_dir(&spec.data_dir.join(table), &scratch.join(table))?;
    }
    let mut config = Config::load(&config_path)?;
    config.data_dir = scratch.clone();
    coldstream::rebuild::rebuild(&config).await?;
    let recomputed = coldstream::query::context(&scratch).await?;
    for (view, _) in view_tables() {
        let (live, again) = (net_changes(&ctx, view).await?, net_changes(&recomputed, view).await?);
        report.changelog_differences += live.symmetric_difference(&again).count();
    }
    let derived: BTreeMap<String, String> = Outbox::open(&scratch.join("webhooks"))?
        .pending()
        .map(|message| (message.id.clone(), message.body.clone()))
        .collect();

    // Deliver what the outbox still holds, then compare.
    let mut server = ServerProcess::start(&exe, &config_path, &server_log)?;
    server.wait_for("coldstream caught up in ", CATCH_UP)?;
    report.restarts_ms.push(server.spawned.elapsed().as_millis() as u64);
    let deadline = Instant::now() + CATCH_UP;
    let received = loop {
        let received: Vec<_> = receivers.iter().flat_map(|(_, r)| r.received()).collect();
        let ids: BTreeSet<&String> = received.iter().map(|d| &d.id).collect();
        if derived.keys().all(|id| ids.contains(id)) || Instant::now() >= deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    server.stop()?;
    let mut delivered: BTreeMap<&String, usize> = BTreeMap::new();
    for delivery in &received {
        match derived.get(&delivery.id) {
            Some(body) if *body == delivery.body => *delivered.entry(&delivery.id).or_insert(0) += 1,
            _ => report.webhook_strays += 1,
        }
    }
    report.webhooks = (derived.len(), delivered.len(), delivered.values().filter(|n| **n > 1).count());
    for (_, receiver) in receivers {
        receiver.stop().await;
    }
    // What the log says was cut or skipped on the restarts.
    let log = std::fs::read_to_string(&server_log).unwrap_or_default();
    for (pattern, what) in [
        ("truncating a torn tail", "log tails"),
        ("cutting a torn tail off the webhook outbox", "outbox tails"),
        ("skipping a damaged checkpoint", "checkpoints skipped"),
    ] {
        let seen = log.lines().filter(|line| line.contains(pattern)).count() as u32;
        if seen > 0 {
            report.torn.insert(what, seen);
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A changelog's net changes: every `(record, time)` whose diffs do not
/// sum to zero, with the sum.
async fn net_changes(ctx: &datafusion::prelude::SessionContext, view: &str) -> anyhow::Result<BTreeSet<String>> {
    let batches = coldstream::query::run(ctx, &format!("SELECT * FROM {view}"))
        .await
        .map_err(|e| anyhow::anyhow!(coldstream::query::one_line(&e)))?;
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    for batch in batches {
        let diff = batch.num_columns() - 1;
        let diffs = batch
            .column(diff)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .context("a changelog's diff column")?;
        for row in 0..batch.num_rows() {
            let mut key = String::new();
            for column in 0..diff {
                key.push_str(&arrow::util::display::array_value_to_string(batch.column(column), row)?);
                key.push('|');
            }
            *sums.entry(key).or_insert(0) += diffs.value(row);
        }
    }
    Ok(sums.into_iter().filter(|(_, sum)| *sum != 0).map(|(key, sum)| format!("{key}{sum}")).collect())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    let Ok(entries) = std::fs::read_dir(from) else { return Ok(()) };
    for entry in entries {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
