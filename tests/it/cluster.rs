//! The pipeline on several processes: timely's cluster mode over one
//! embedded log, each process a real `coldstream run --role pipeline`
//! following the log's directory, connected over loopback TCP.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use coldstream::query;
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sinks::parquet::view_tables;
use coldstream_sinks::webhooks::receiver::{Keep, Receiver};
use coldstream_sinks::webhooks::{EXAMPLE_SECRET, Endpoint, Outbox, Secret};
use coldstream_sources::log::embedded::{EmbeddedConfig, EmbeddedLog};
use coldstream_sources::log::{EventLog, Record};

use crate::support::{TEST_SECRET, binary};

/// 16 fridges, 16,000 events in event-time order, committed 100 at a time
/// at ingest times 1 ms apart. Returns how many events the log holds.
pub(crate) fn fleet_log(dir: &Path) -> usize {
    let spec =
        FleetSpec { seed: 7, fridges: 16, events: 16_000, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let mut events = Fleet::new(&spec).all_events();
    events.sort_by_key(|event| event.event_time);
    let mut log = EmbeddedLog::open(dir, EmbeddedConfig::default()).unwrap();
    for (batch, chunk) in events.chunks(100).enumerate() {
        let payloads: Vec<Vec<u8>> = chunk.iter().map(Record::accepted).collect();
        log.append(1_000 + batch as u64, &payloads).unwrap();
        log.sync().unwrap();
    }
    events.len()
}

/// A config file sending every endpoint's webhooks to `receiver`, with a
/// checkpoint every 3,000 records.
pub(crate) fn config_file(dir: &Path, name: &str, receiver: &Receiver) -> PathBuf {
    config_file_after(dir, name, "[checkpoint]\nevery_records = 3000\n", receiver)
}

/// A config file of `head`, then every endpoint's webhooks to `receiver`.
pub(crate) fn config_file_after(dir: &Path, name: &str, head: &str, receiver: &Receiver) -> PathBuf {
    let mut text = head.to_owned();
    for endpoint in Endpoint::ALL {
        text.push_str(&format!(
            "[webhooks.{0}]\nurl = \"http://{1}/{0}\"\nsecret = \"{EXAMPLE_SECRET}\"\n",
            endpoint.as_str(),
            receiver.addr()
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Free loopback ports for a hostfile, one per process.
pub(crate) fn hostfile(dir: &Path, processes: usize) -> PathBuf {
    let listeners: Vec<std::net::TcpListener> =
        (0..processes).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let hosts: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let path = dir.join("hosts");
    std::fs::write(&path, hosts.join("\n") + "\n").unwrap();
    path
}

/// A `coldstream run` that prints `caught up` once it has read what the log held.
pub(crate) struct Process {
    child: Child,
    caught_up: std::sync::mpsc::Receiver<()>,
}

impl Process {
    pub(crate) fn start(args: &[&str]) -> Process {
        let mut child = binary()
            .arg("run")
            .args(args)
            .env("COLDSTREAM_SECRET", TEST_SECRET)
            .env("COLDSTREAM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tell, caught_up) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("coldstream caught up") {
                    let _ = tell.send(());
                }
            }
        });
        Process { child, caught_up }
    }

    /// Process `index` of a pipeline cluster of two one-worker processes.
    pub(crate) fn member(index: usize, hosts: &Path, dir: &Path, config: &Path, extra: &[&str]) -> Process {
        let index = index.to_string();
        let mut args = vec!["--role", "pipeline", "--workers", "1", "--processes", "2", "--process", &index];
        args.extend(["--hostfile", hosts.to_str().unwrap(), "--data", dir.to_str().unwrap()]);
        args.extend(["--config", config.to_str().unwrap()]);
        args.extend(extra);
        Process::start(&args)
    }

    pub(crate) fn wait_caught_up(&self) {
        self.caught_up.recv_timeout(Duration::from_secs(300)).expect("the process catches up within 300 s");
    }

    /// SIGTERM, and waits for a clean exit.
    pub(crate) fn terminate(&self) {
        let status = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit by itself, whatever its status.
    #[cfg_attr(not(feature = "fluvio"), allow(dead_code))]
    pub(crate) fn wait_exit(mut self) {
        for _ in 0..1200 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("coldstream run did not stop by itself within 120 s");
    }

    pub(crate) fn wait_success(mut self) {
        for _ in 0..1200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "coldstream run exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("coldstream run did not stop within 120 s");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every change of every view, consolidated (`diff` summed per record and
/// time), and every `_now` row, as sorted CSV lines per table, over the
/// data directories `dirs` read as one.
pub(crate) async fn outputs(dirs: &[PathBuf]) -> Vec<(String, Vec<String>)> {
    let ctx = query::context_of(dirs).await.unwrap();
    let drop_region = if dirs.len() > 1 { " EXCLUDE (data_region)" } else { "" };
    let mut tables = Vec::new();
    for (view, changelog) in view_tables() {
        let columns: Vec<String> =
            changelog.fields().iter().filter(|f| f.name() != "diff").map(|f| format!("\"{}\"", f.name())).collect();
        let columns = columns.join(", ");
        let changes = format!(
            "SELECT {columns}, SUM(diff) AS diff FROM {view} GROUP BY {columns} HAVING SUM(diff) <> 0 ORDER BY {columns}"
        );
        let now = format!("SELECT *{drop_region} FROM {view}_now");
        for (name, sql) in [(view.to_owned(), changes), (format!("{view}_now"), now)] {
            let batches = query::run(&ctx, &sql).await.unwrap();
            let csv = query::render(&batches, query::Format::Csv).unwrap();
            let mut lines: Vec<String> = csv.lines().skip(1).map(str::to_owned).collect();
            lines.sort();
            tables.push((name, lines));
        }
    }
    tables
}

/// Every webhook id the data directories produced that must reach
/// `receiver`: delivered, or still waiting in an outbox. A `restock.updated`
/// is left out, since one that a later state of its order superseded
/// before it was sent may be skipped, and which ones are depends on timing.
pub(crate) fn webhook_ids(dirs: &[PathBuf], receiver: &Receiver) -> BTreeSet<String> {
    let mut ids: BTreeSet<String> =
        receiver.received().into_iter().filter(|d| d.kind != "restock.updated").map(|d| d.id).collect();
    for dir in dirs {
        let outbox = Outbox::open(&dir.join("webhooks")).unwrap();
        ids.extend(outbox.pending().filter(|m| !m.may_be_superseded()).map(|m| m.id().to_owned()));
    }
    ids
}

pub(crate) async fn receiver() -> Receiver {
    Receiver::start(([127, 0, 0, 1], 0).into(), Secret::parse(EXAMPLE_SECRET).unwrap(), Keep::Everything).await.unwrap()
}

fn count(dirs: &[PathBuf], sql: &str) -> impl std::future::Future<Output = u64> {
    let dirs = dirs.to_vec();
    let sql = sql.to_owned();
    async move {
        let ctx = query::context_of(&dirs).await.unwrap();
        let batches = query::run(&ctx, &sql).await.unwrap();
        let csv = query::render(&batches, query::Format::Csv).unwrap();
        csv.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipeline_processes_in_a_timely_cluster_compute_exactly_what_one_process_does() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("log");
    let events = fleet_log(&log);
    let log_arg = log.to_str().unwrap();

    // One process with two workers.
    let (alone_receiver, cluster_receiver) = (receiver().await, receiver().await);
    let alone = root.path().join("alone");
    let alone_config = config_file(root.path(), "alone.toml", &alone_receiver);
    let process = Process::start(&[
        "--role",
        "pipeline",
        "--log-dir",
        log_arg,
        "--workers",
        "2",
        "--data",
        alone.to_str().unwrap(),
        "--config",
        alone_config.to_str().unwrap(),
    ]);
    process.wait_caught_up();
    process.terminate();
    process.wait_success();

    // Two processes with one worker each: as many workers, on two processes.
    let hosts = hostfile(root.path(), 2);
    let cluster_config = config_file(root.path(), "cluster.toml", &cluster_receiver);
    let dirs: Vec<PathBuf> = (0..2).map(|i| root.path().join(format!("process-{i}"))).collect();
    let processes: Vec<Process> =
        (0..2).map(|i| Process::member(i, &hosts, &dirs[i], &cluster_config, &["--log-dir", log_arg])).collect();
    for process in &processes {
        process.wait_caught_up();
    }
    for process in &processes {
        process.terminate();
    }
    for process in processes {
        process.wait_success();
    }

    // The same changes, `_now` rows and webhook ids.
    let (one, two) = (outputs(std::slice::from_ref(&alone)).await, outputs(&dirs).await);
    assert_eq!(one.len(), two.len());
    for ((table, rows), (_, cluster_rows)) in one.iter().zip(&two) {
        assert_eq!(rows, cluster_rows, "{table} differs between one process and a cluster of two");
    }
    let filled: BTreeSet<&str> = one.iter().filter(|(_, rows)| !rows.is_empty()).map(|(t, _)| t.as_str()).collect();
    for table in ["inventory", "inventory_now", "sessions", "revenue", "sales_7d", "restock_orders"] {
        assert!(filled.contains(table), "{table} holds rows (filled: {filled:?})");
    }
    let (alone_ids, cluster_ids) =
        (webhook_ids(std::slice::from_ref(&alone), &alone_receiver), webhook_ids(&dirs, &cluster_receiver));
    assert!(!alone_ids.is_empty());
    assert_eq!(alone_ids, cluster_ids, "the cluster sends the webhooks one process sends, with the same ids");

    // Each process kept its own fridges: both did work, on disjoint fridges.
    let fridges = |dir: &PathBuf| {
        let dir = dir.clone();
        async move {
            let ctx = query::context(&dir).await.unwrap();
            let batches = query::run(&ctx, "SELECT DISTINCT fridge_id FROM inventory").await.unwrap();
            let csv = query::render(&batches, query::Format::Csv).unwrap();
            csv.lines().skip(1).map(str::to_owned).collect::<BTreeSet<String>>()
        }
    };
    let (first, second) = (fridges(&dirs[0]).await, fridges(&dirs[1]).await);
    assert!(!first.is_empty() && !second.is_empty(), "both processes kept fridges: {first:?} {second:?}");
    assert!(first.is_disjoint(&second), "a fridge lives on one process: {first:?} {second:?}");

    // The log is archived once, by process 0.
    assert_eq!(count(std::slice::from_ref(&alone), "SELECT COUNT(*) FROM events").await, events as u64);
    assert_eq!(count(&dirs, "SELECT COUNT(*) FROM events").await, events as u64);
    assert_eq!(count(&dirs[1..], "SELECT COUNT(*) FROM events").await, 0);

    // A restart of the cluster resumes from a checkpoint both processes hold.
    for dir in &dirs {
        let place = std::fs::read_dir(dir.join("checkpoints")).unwrap().next().unwrap().unwrap().path();
        assert!(place.file_name().unwrap().to_string_lossy().ends_with("-of-2x1"), "{}", place.display());
        assert!(std::fs::read_dir(&place).unwrap().count() > 0, "{} holds checkpoints", place.display());
    }
    alone_receiver.stop().await;
    cluster_receiver.stop().await;
}

/// Telemetry events of `fridge`, seqs 1 to `count`, as the wire has them.
fn telemetry(fridge: &str, count: u64) -> Vec<coldstream_sources::proto::Event> {
    use coldstream_pipelines::event::Temperature;
    (1..=count)
        .map(|seq| {
            let payload =
                coldstream_pipelines::Payload::Telemetry { temperature_c: Temperature(4.0), door_open: false };
            coldstream_sources::convert::encode(&crate::support::event(fridge, seq, seq as i64, payload))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fridge_of_another_region_is_sent_to_its_gateway_and_a_query_reads_both_regions() {
    use coldstream::server::Server;
    use coldstream_sources::client::{ClientError, Fridge, Session};

    let root = tempfile::tempdir().unwrap();
    let mut us_config = crate::support::config(&root.path().join("us"));
    us_config.region.name = "us-east".into();
    let us = Server::start(&us_config).await.unwrap();
    let us_url = format!("http://{}", us.addr());

    let registry = root.path().join("fridges.csv");
    std::fs::write(&registry, "fridge_id,region\nFR-US-1,us-east\nFR-EU-1,eu-west\n").unwrap();
    let mut eu_config = crate::support::config(&root.path().join("eu"));
    eu_config.region.name = "eu-west".into();
    eu_config.region.gateways.insert("us-east".into(), us_url.clone());
    eu_config.region.registry = Some(registry.clone());
    let eu = Server::start(&eu_config).await.unwrap();
    let eu_url = format!("http://{}", eu.addr());

    // Hello at the wrong region: refused, with the region and its gateway.
    let channel = coldstream_sources::client::channel(&eu_url).await.unwrap();
    let token = crate::support::fridge_token("FR-US-1");
    match Session::open(channel, "FR-US-1", &token).await {
        Err(ClientError::Redirected { region, gateway }) => {
            assert_eq!((region.as_str(), gateway), ("us-east", us_url.clone()))
        }
        Err(other) => panic!("expected a redirect, got {other}"),
        Ok(_) => panic!("expected a redirect, got a Welcome"),
    }
    // A fridge client follows it; a fridge of this region stays.
    let mut moved = Fridge::over(vec![eu_url.clone()], "FR-US-1", token);
    assert_eq!(moved.send(telemetry("FR-US-1", 20)).await.unwrap().accepted, 20);
    assert_eq!(moved.endpoint(), us_url);
    let mut staying = Fridge::over(vec![eu_url.clone()], "FR-EU-1", crate::support::fridge_token("FR-EU-1"));
    assert_eq!(staying.send(telemetry("FR-EU-1", 30)).await.unwrap().accepted, 30);
    assert_eq!(staying.endpoint(), eu_url);

    for server in [us, eu] {
        server.caught_up(Duration::from_secs(120)).await.unwrap();
        server.shutdown().await.unwrap();
    }
    // One set of tables over both regions, each row labelled.
    let dirs = [root.path().join("us"), root.path().join("eu")];
    let ctx = query::context_of(&dirs).await.unwrap();
    let sql =
        "SELECT data_region, source_id, COUNT(*) AS n FROM events GROUP BY data_region, source_id ORDER BY data_region";
    let csv = query::render(&query::run(&ctx, sql).await.unwrap(), query::Format::Csv).unwrap();
    assert_eq!(csv, "data_region,source_id,n\neu-west,FR-EU-1,30\nus-east,FR-US-1,20\n");
    let now = "SELECT data_region, COUNT(*) AS n FROM excursions_now GROUP BY data_region";
    query::run(&ctx, now).await.unwrap();

    // A registry naming a region without a gateway is a one-line error.
    std::fs::write(&registry, "FR-X-1,mars\n").unwrap();
    let error = eu_config.region.regions().unwrap_err().to_string();
    assert!(error.contains("mars") && error.contains("line 1") && !error.contains('\n'), "{error}");
}
