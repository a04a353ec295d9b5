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
use coldstream_sinks::webhooks::receiver::{Keep, Receiver};

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
    /// Pipeline processes: 1 runs one `coldstream run` (gateway, log and
    /// pipeline); more run a gateway and that many pipeline processes in
    /// timely's cluster mode, and each cycle kills one of them at random.
    pub processes: usize,
}

/// What happened, and what the checks found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// SIGKILLs sent.
    pub kills: u32,
    /// Of them, to the gateway and to pipeline processes (cluster mode).
    pub kills_by_role: BTreeMap<&'static str, u32>,
    /// Pipeline processes that stopped by themselves when a peer was killed.
    pub peers_stopped: u32,
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
    /// Webhook messages that must arrive (every one derived but the
    /// `restock.updated` a later message of its order supersedes), those
    /// delivered at least once, and those delivered more than once.
    pub webhooks: (usize, usize, usize),
    /// Superseded updates derived, and how many of them were not sent.
    pub superseded: (usize, usize),
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
        if !self.kills_by_role.is_empty() {
            let roles: Vec<String> = self.kills_by_role.iter().map(|(role, n)| format!("{role} {n}")).collect();
            writeln!(
                f,
                "cluster: killed {}; {} surviving pipeline processes stopped by themselves and the cluster restarted",
                roles.join(", "),
                self.peers_stopped
            )?;
        }
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
            "webhooks: {} due, {} delivered, {} delivered more than once (same id and body), {} unexpected; \
             {} superseded updates, {} of them skipped",
            self.webhooks.0,
            self.webhooks.1,
            self.webhooks.2,
            self.webhook_strays,
            self.superseded.0,
            self.superseded.1
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

/// Where one member of the deployment keeps its data, and what it runs.
struct Place {
    data_dir: PathBuf,
    /// `role = ...` and `[cluster]` lines, and the log's folder.
    role: String,
    log_dir: Option<PathBuf>,
}

fn server_config(
    spec: &ChaosSpec,
    place: &Place,
    listen: std::net::SocketAddr,
    receivers: &[(Endpoint, std::net::SocketAddr)],
) -> String {
    let log_dir =
        place.log_dir.as_ref().map(|dir| format!("dir = {:?}\n", dir.display().to_string())).unwrap_or_default();
    let mut toml = format!(
        "data_dir = {:?}\nlisten = \"{listen}\"\nworkers = {}\n{}\n[auth]\nsecret = \"{FLEET_SECRET}\"\n\n\
         [log]\nsegment_mb = 1\nretention_hours = 0\n{log_dir}\n[parquet]\nroll_seconds = 1\nroll_mb = 8\n\n\
         [checkpoint]\ninterval_seconds = 1\nkeep = 3\n\n\
         [webhooks]\nretry_initial_ms = 50\nretry_max_ms = 1000\nbreaker_open_ms = 500\n",
        place.data_dir.display().to_string(),
        spec.workers,
        place.role,
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
                        "a coldstream process did not print {prefix:?} within {timeout:?} (exit status {status:?}); see its log in chaos/"
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

    fn stop(self) -> anyhow::Result<()> {
        self.signal("-INT")?;
        self.wait_clean()
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args([signal, &pid]).status().with_context(|| format!("sending {signal}"))?;
        Ok(())
    }

    fn wait_clean(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("a coldstream process exited with {status} when stopped; see its log in chaos/");
        }
        Ok(())
    }

    /// Waits for the process to exit by itself (with any status).
    fn exits_within(mut self, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(false)
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

/// One process of the deployment: its config, its log file, and the
/// running process if it runs.
struct Member {
    name: &'static str,
    /// Whether it prints `listening on` (it has a gateway) and `caught up` (a pipeline).
    gateway: bool,
    pipeline: bool,
    data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    running: Option<ServerProcess>,
}

/// Every process of the deployment under test.
struct Deployment {
    exe: PathBuf,
    members: Vec<Member>,
}

impl Deployment {
    /// Writes the configs: one server, or a gateway and `spec.processes`
    /// pipeline processes following its log in timely's cluster mode.
    fn plan(
        spec: &ChaosSpec,
        exe: PathBuf,
        listen: std::net::SocketAddr,
        receivers: &[(Endpoint, std::net::SocketAddr)],
    ) -> anyhow::Result<Deployment> {
        let own = harness_dir(&spec.data_dir);
        let mut members = Vec::new();
        let mut add = |name: &'static str, gateway: bool, pipeline: bool, place: Place| -> anyhow::Result<()> {
            let config = own.join(format!("{name}.toml"));
            std::fs::write(&config, server_config(spec, &place, listen, receivers))?;
            let log = own.join(format!("{name}.log"));
            members.push(Member { name, gateway, pipeline, data_dir: place.data_dir, config, log, running: None });
            Ok(())
        };
        if spec.processes <= 1 {
            add("server", true, true, Place { data_dir: spec.data_dir.clone(), role: String::new(), log_dir: None })?;
        } else {
            let gateway_dir = spec.data_dir.join("gateway");
            let role = "role = \"gateway\"\n".to_owned();
            add("gateway", true, false, Place { data_dir: gateway_dir.clone(), role, log_dir: None })?;
            let hosts: Vec<String> =
                (0..spec.processes).map(|_| free_port().map(|a| format!("\"{a}\""))).collect::<anyhow::Result<_>>()?;
            const NAMES: [&str; 4] = ["process-0", "process-1", "process-2", "process-3"];
            if spec.processes > NAMES.len() {
                bail!("--processes is at most {}", NAMES.len());
            }
            for (process, name) in NAMES.iter().enumerate().take(spec.processes) {
                let role = format!(
                    "role = \"pipeline\"\n\n[cluster]\nprocesses = {}\nprocess = {process}\nhosts = [{}]\n",
                    spec.processes,
                    hosts.join(", ")
                );
                let place = Place { data_dir: spec.data_dir.join(name), role, log_dir: Some(gateway_dir.join("log")) };
                add(name, false, true, place)?;
            }
        }
        Ok(Deployment { exe, members })
    }

    /// Where `events/` is written: the server's, or process 0's.
    fn archive_dir(&self) -> &Path {
        &self.members.iter().find(|m| m.pipeline).expect("a deployment has a pipeline").data_dir
    }

    /// The data directories of the pipeline: one, or one per process.
    fn view_dirs(&self) -> Vec<PathBuf> {
        self.members.iter().filter(|m| m.pipeline).map(|m| m.data_dir.clone()).collect()
    }

    /// Starts every member that is not running and waits until each has
    /// started; with `catch_up`, until every pipeline has caught up too,
    /// and returns the longest spawn-to-caught-up time.
    fn start_missing(&mut self, catch_up: bool) -> anyhow::Result<Option<u64>> {
        let mut started = Vec::new();
        // The gateway first: it creates the log its followers read.
        for gateway in [true, false] {
            for (i, member) in self.members.iter_mut().enumerate().filter(|(_, m)| m.gateway == gateway) {
                if member.running.is_none() {
                    let mut process = ServerProcess::start(&self.exe, &member.config, &member.log)?;
                    if gateway {
                        process.wait_for("coldstream listening on ", CATCH_UP)?;
                    }
                    member.running = Some(process);
                    started.push(i);
                }
            }
        }
        for &i in &started {
            let member = &mut self.members[i];
            if !member.gateway {
                let process = member.running.as_mut().expect("just started");
                process.wait_for("coldstream pipeline process ", CATCH_UP)?;
            }
        }
        if !catch_up || !started.iter().any(|&i| self.members[i].pipeline) {
            return Ok(None);
        }
        let mut longest = 0;
        for &i in &started {
            let member = &mut self.members[i];
            if !member.pipeline {
                continue;
            }
            let process = member.running.as_mut().expect("just started");
            process.wait_for("coldstream caught up in ", CATCH_UP)?;
            longest = longest.max(process.spawned.elapsed().as_millis() as u64);
        }
        Ok(Some(longest))
    }

    /// SIGKILLs one member at random. When it is a pipeline process of a
    /// cluster, the others must notice and stop by themselves (timely has
    /// no partial recovery: the cluster restarts); returns how many did.
    fn kill_one(&mut self, rng: &mut SmallRng, report: &mut ChaosReport) -> anyhow::Result<()> {
        let victim = rng.random_range(0..self.members.len());
        let member = &mut self.members[victim];
        member.running.take().expect("every member runs").kill()?;
        report.kills += 1;
        if self.members.len() > 1 {
            *report
                .kills_by_role
                .entry(if self.members[victim].pipeline { "pipeline" } else { "gateway" })
                .or_insert(0) += 1;
        }
        torn_leftovers(&self.members[victim].data_dir, &mut report.torn);
        if !self.members[victim].pipeline || self.members.len() == 1 {
            return Ok(());
        }
        for member in self.members.iter_mut().filter(|m| m.pipeline && m.running.is_some()) {
            let process = member.running.take().expect("checked");
            let name = member.name;
            if !process.exits_within(Duration::from_secs(60))? {
                bail!("{name} went on for 60 s after a peer process was killed; see chaos/{name}.log");
            }
            report.peers_stopped += 1;
        }
        Ok(())
    }

    /// Stops every running member cleanly: the gateway first, so that the
    /// pipeline then reads a log that no longer grows.
    fn stop_all(&mut self) -> anyhow::Result<()> {
        for member in self.members.iter_mut().filter(|m| m.gateway) {
            if let Some(process) = member.running.take() {
                process.stop()?;
            }
        }
        let running: Vec<ServerProcess> = self.members.iter_mut().filter_map(|m| m.running.take()).collect();
        for process in &running {
            process.signal("-INT")?;
        }
        for process in running {
            process.wait_clean()?;
        }
        Ok(())
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
        let receiver = Receiver::start(([127, 0, 0, 1], 0).into(), secret.clone(), Keep::Everything).await?;
        receivers.push((endpoint, receiver));
    }
    let listen = free_port()?;
    let addresses: Vec<_> = receivers.iter().map(|(e, r)| (*e, r.addr())).collect();
    let mut deployment = Deployment::plan(&spec, exe.clone(), listen, &addresses)?;

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
        // Every other cycle waits for the catch-up first; the rest may be
        // killed while the pipeline is still replaying.
        if let Some(restart) = deployment.start_missing(cycle % 2 == 0)? {
            report.restarts_ms.push(restart);
        }
        let wait = rng.random_range(50..=spec.max_run_ms.max(51));
        std::thread::sleep(Duration::from_millis(wait));
        deployment.kill_one(&mut rng, &mut report)?;
        if fleet.0.try_wait()?.is_some() {
            // Restarts go on without traffic.
            continue;
        }
    }

    // The last run: let the fleet finish, then stop cleanly; a pipeline
    // started again after that reads the whole log and stops.
    deployment.start_missing(false)?;
    let fleet_status = tokio::task::spawn_blocking(move || fleet.0.wait()).await??;
    if !fleet_status.success() {
        deployment.stop_all()?;
        bail!("the fleet gave up ({fleet_status}); see chaos/fleet.log");
    }
    deployment.stop_all()?;
    if let Some(restart) = deployment.start_missing(true)? {
        report.restarts_ms.push(restart);
    }
    deployment.stop_all()?;

    // Events: exactly once.
    let archive_dir = deployment.archive_dir().to_path_buf();
    let view_dirs = deployment.view_dirs();
    let expected: Vec<Event> = Fleet::new(&fleet_spec).all_events();
    report.events = expected.len();
    let archived = coldstream::rebuild::archived_events(&archive_dir)?;
    report.archived = archived.len();
    let counts = coldstream::rebuild::archived_counts(&archived);
    let wanted: BTreeSet<(String, u64)> = expected.iter().map(|e| (e.source_id.clone(), e.seq)).collect();
    report.lost = wanted.iter().filter(|key| !counts.contains_key(*key)).count();
    report.repeated = counts.iter().filter(|(key, n)| **n > 1 || !wanted.contains(*key)).count();

    // Views: the batch references over what is archived.
    let events: Vec<Event> = archived.into_iter().map(|(_, event)| event).collect();
    report.views = coldstream::verify::views_of(&view_dirs, &events).await?;
    let ctx = coldstream::query::context_of(&view_dirs).await?;

    // Changelogs and webhooks: an uninterrupted recomputation on one process.
    let scratch = own.join("recomputed");
    for table in ["events", "rejected"] {
        copy_dir(&archive_dir.join(table), &scratch.join(table))?;
    }
    let pipeline_config = &deployment.members.iter().find(|m| m.pipeline).expect("a pipeline").config;
    let mut config = Config::load(pipeline_config)?;
    config.data_dir = scratch.clone();
    config.role = Default::default();
    config.cluster = Default::default();
    config.log = Default::default();
    coldstream::rebuild::rebuild(&config).await?;
    let recomputed = coldstream::query::context(&scratch).await?;
    let several = view_dirs.len() > 1;
    for (view, _) in view_tables() {
        let (live, again) = (net_changes(&ctx, view, several).await?, net_changes(&recomputed, view, false).await?);
        report.changelog_differences += live.symmetric_difference(&again).count();
    }
    let messages = Outbox::open(&scratch.join("webhooks"))?.messages()?;
    let derived: BTreeMap<String, String> =
        messages.iter().map(|message| (message.id.clone(), message.body.clone())).collect();
    // A `restock.updated` with a later message of its order may be skipped.
    let mut later_of_key = BTreeSet::new();
    let mut optional = BTreeSet::new();
    for message in messages.iter().rev() {
        if message.may_be_superseded() && later_of_key.contains(&message.key) {
            optional.insert(message.id.clone());
        }
        later_of_key.insert(message.key.clone());
    }

    // Deliver what the outboxes still hold, then compare.
    if let Some(restart) = deployment.start_missing(true)? {
        report.restarts_ms.push(restart);
    }
    let deadline = Instant::now() + CATCH_UP;
    let received = loop {
        let received: Vec<_> = receivers.iter().flat_map(|(_, r)| r.received()).collect();
        let ids: BTreeSet<&String> = received.iter().map(|d| &d.id).collect();
        if derived.keys().all(|id| optional.contains(id) || ids.contains(id)) || Instant::now() >= deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    deployment.stop_all()?;
    let mut delivered: BTreeMap<&String, usize> = BTreeMap::new();
    for delivery in &received {
        match derived.get(&delivery.id) {
            Some(body) if *body == delivery.body => *delivered.entry(&delivery.id).or_insert(0) += 1,
            _ => report.webhook_strays += 1,
        }
    }
    let due = derived.len() - optional.len();
    let delivered_due = delivered.keys().filter(|id| !optional.contains(**id)).count();
    report.webhooks = (due, delivered_due, delivered.values().filter(|n| **n > 1).count());
    report.superseded = (optional.len(), optional.iter().filter(|id| !delivered.contains_key(id)).count());
    for (_, receiver) in receivers {
        receiver.stop().await;
    }
    // What the logs say was cut or skipped on the restarts.
    for member in &deployment.members {
        let log = std::fs::read_to_string(&member.log).unwrap_or_default();
        for (pattern, what) in [
            ("truncating a torn tail", "log tails"),
            ("cutting a torn tail off the webhook outbox", "outbox tails"),
            ("skipping a damaged checkpoint", "checkpoints skipped"),
        ] {
            let seen = log.lines().filter(|line| line.contains(pattern)).count() as u32;
            if seen > 0 {
                *report.torn.entry(what).or_insert(0) += seen;
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A changelog's net changes: every `(record, time)` whose diffs do not
/// sum to zero, with the sum.
async fn net_changes(
    ctx: &datafusion::prelude::SessionContext,
    view: &str,
    several: bool,
) -> anyhow::Result<BTreeSet<String>> {
    let columns = if several { "* EXCLUDE (data_region)" } else { "*" };
    let batches = coldstream::query::run(ctx, &format!("SELECT {columns} FROM {view}"))
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
