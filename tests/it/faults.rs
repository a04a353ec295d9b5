//! Faults on loopback: a disk that fills up and frees again, a sink that
//! panics. Each checks that no acked event is lost and that the process
//! says what happened.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coldstream::checkpoint::CheckpointStore;
use coldstream::pipeline::{CheckpointPolicy, Pipeline, PipelineSpec, ResumePoint};
use coldstream::server::{Progress, Server};
use coldstream::supervise::Failures;
use coldstream::view_sink::ViewSinks;
use coldstream_pipelines::Payload;
use coldstream_pipelines::views::{ViewBatch, ViewConfig};
use coldstream_sinks::{SinkError, ViewSink};
use coldstream_sources::client::{self, Session};
use coldstream_sources::convert::encode;
use coldstream_sources::ingest::SeqSnapshot;
use coldstream_sources::log::embedded::{EmbeddedConfig, EmbeddedLog};
use coldstream_sources::log::{EventLog, LogError, LogReader, OpenReader, Record};
use coldstream_sources::proto;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{event, fridge_token, query_csv};

/// A sink that panics on the first change it is given.
struct Panicking;

impl ViewSink for Panicking {
    fn name(&self) -> &'static str {
        "panicking"
    }
    fn push(&mut self, _: &ViewBatch) {
        panic!("a sink bug");
    }
    fn advance(&mut self, _: u64, _: bool) -> Result<(), SinkError> {
        Ok(())
    }
    fn snapshot(&mut self, _: u64) -> Result<Vec<u8>, SinkError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _: &[u8], _: u64) -> Result<(), SinkError> {
        Ok(())
    }
}

#[test]
fn a_panicking_sink_is_reported_at_once_and_stop_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EmbeddedLog::open(dir.path().join("log"), EmbeddedConfig::default()).unwrap();
    let taken = event("FR-000001", 1, 1, Payload::ItemTaken { session_id: "s".into(), sku: "cola".into(), qty: 1 });
    log.append(1_000, &[Record::accepted(&taken)]).unwrap();
    log.sync().unwrap();
    let failures = Failures::default();
    let views = ViewConfig::default();
    let pipeline = Pipeline::start(PipelineSpec {
        log: log.readers(),
        resume: ResumePoint::start_of_log(&views),
        views,
        workers: 1,
        cluster: Default::default(),
        sinks: ViewSinks::new(vec![Box::new(Panicking)]),
        checkpoints: CheckpointPolicy {
            store: CheckpointStore::open(dir.path(), 1).unwrap(),
            every_ms: u64::MAX,
            every_records: u64::MAX,
            seqs: Box::new(SeqSnapshot::default),
            retention_ms: None,
        },
        progress: Arc::new(Progress::default()),
        failures: failures.clone(),
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reason = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(60), failures.failed()).await });
    let reason = reason.expect("the failure is reported while the pipeline runs");
    assert!(reason.contains("view sink") && reason.contains("a sink bug"), "{reason}");
    let stopped = pipeline.stop().expect_err("a panic is not Ok");
    assert!(stopped.to_string().contains("a sink bug"), "{stopped}");
}

/// A tmpfs of `mib` MiB mounted on `at`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with a ballast file; returns its path.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

async fn health(addr: &str) -> ServingStatus {
    let channel = client::channel(addr).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest { service: "coldstream.v1.FridgeGateway".into() })
        .await
        .unwrap();
    answer.into_inner().status()
}

async fn wait_for_health(addr: &str, wanted: ServingStatus) {
    for _ in 0..300 {
        if health(addr).await == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway never reported {wanted:?}");
}

fn taken(seq: u64) -> proto::Event {
    encode(&event("FR-000001", seq, 1, Payload::ItemTaken { session_id: "S1".into(), sku: "cola".into(), qty: 1 }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_acks_says_not_serving_and_resumes_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), 24) else {
        println!("skipped: no tmpfs could be mounted here (needs root)");
        return;
    };
    let data = disk.0.join("data");
    let mut config = crate::support::config(&data);
    config.checkpoint.interval_seconds = 3600;
    let server = Server::start(&config).await.unwrap();
    let addr = format!("http://{}", server.addr());
    let channel = client::channel(&addr).await.unwrap();
    let mut fridge = Session::open(channel.clone(), "FR-000001", &fridge_token("FR-000001")).await.unwrap();
    fridge.send(1, (1..=10).map(taken).collect()).await.unwrap();
    assert_eq!(fridge.ack().await.unwrap().accepted.len(), 10);
    server.caught_up(Duration::from_secs(60)).await.unwrap();

    let ballast = fill(&disk.0);
    // Big enough that the write cannot fit in what is left.
    let batch: Vec<_> = (11..=2_000).map(taken).collect();
    fridge.send(2, batch.clone()).await.unwrap();
    let refused = fridge.ack().await.expect_err("nothing is acked while the disk is full");
    assert!(refused.to_string().contains("not durable"), "{refused}");
    wait_for_health(&addr, ServingStatus::NotServing).await;
    let status = proto::fridge_gateway_client::FridgeGatewayClient::new(channel.clone())
        .status(authorized(proto::StatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(!status.serving && status.reason.contains("cannot append"), "{status:?}");

    std::fs::remove_file(ballast).unwrap();
    // The fridge resends what was not acked; the log appends again by itself.
    let mut fridge = Session::open(channel, "FR-000001", &fridge_token("FR-000001")).await.unwrap();
    assert_eq!(fridge.highest_durable_seq, 10);
    fridge.send(3, batch).await.unwrap();
    assert_eq!(fridge.ack().await.unwrap().accepted.len(), 1_990);
    wait_for_health(&addr, ServingStatus::Serving).await;
    server.caught_up(Duration::from_secs(60)).await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(query_csv(&data, "SELECT count(*) AS n, max(seq) AS top FROM events").await, "n,top\n2000,2000\n");
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {}", fridge_token("FR-000001")).parse().unwrap());
    request
}

/// What runs once, inside the first read that finds records.
type During = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

/// A log whose first read that finds records runs `during` before it
/// returns: what happens between a read and what the workers do with it.
struct Interrupted {
    inner: Arc<dyn OpenReader>,
    during: During,
}

struct InterruptedReader {
    inner: Box<dyn LogReader>,
    during: During,
}

impl OpenReader for Interrupted {
    fn open(&self, offset: u64) -> Result<Box<dyn LogReader>, LogError> {
        Ok(Box::new(InterruptedReader { inner: self.inner.open(offset)?, during: Arc::clone(&self.during) }))
    }
    fn durable_offset(&self) -> u64 {
        self.inner.durable_offset()
    }
    fn first_offset(&self) -> Result<u64, LogError> {
        self.inner.first_offset()
    }
    fn durable_ingest_ms(&self) -> Option<u64> {
        self.inner.durable_ingest_ms()
    }
    fn subscribe(&self, wake: Box<dyn Fn() + Send + Sync>) {
        self.inner.subscribe(wake)
    }
    fn trim(&self, before: u64, until_ms: u64) -> Result<usize, LogError> {
        self.inner.trim(before, until_ms)
    }
}

impl LogReader for InterruptedReader {
    fn read(&mut self, max: usize, out: &mut Vec<(u64, Record)>) -> Result<usize, LogError> {
        let read = self.inner.read(max, out)?;
        if read > 0 {
            let during = self.during.lock().unwrap().take();
            if let Some(during) = during {
                during();
            }
        }
        Ok(read)
    }
    fn position(&self) -> u64 {
        self.inner.position()
    }
    fn floor(&self) -> Option<u64> {
        self.inner.floor()
    }
}

/// What the views handed to their sink: the times of inventory changes,
/// and the frontier of the last, final advance.
#[derive(Default)]
struct Seen {
    inventory_times: Vec<u64>,
    closed_at: Option<u64>,
}

struct Recording(Arc<Mutex<Seen>>);

impl ViewSink for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn push(&mut self, batch: &ViewBatch) {
        if let ViewBatch::Inventory(changes) = batch {
            self.0.lock().unwrap().inventory_times.extend(changes.iter().map(|(_, time, _)| *time));
        }
    }
    fn advance(&mut self, frontier: u64, last: bool) -> Result<(), SinkError> {
        if last {
            self.0.lock().unwrap().closed_at = Some(frontier);
        }
        Ok(())
    }
    fn snapshot(&mut self, _: u64) -> Result<Vec<u8>, SinkError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _: &[u8], _: u64) -> Result<(), SinkError> {
        Ok(())
    }
}

#[test]
fn a_stop_asked_while_the_workers_read_still_covers_what_was_durable_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path().join("log"), EmbeddedConfig::default()).unwrap();
    let readers = log.readers();
    let log = Arc::new(Mutex::new(log));
    let item =
        |seq| event("FR-000001", seq, 1, Payload::ItemTaken { session_id: "s".into(), sku: "cola".into(), qty: 1 });
    let commit = move |log: &Mutex<EmbeddedLog>, ingest_ms, seq| {
        let mut log = log.lock().unwrap();
        log.append(ingest_ms, &[Record::accepted(&item(seq))]).unwrap();
        log.sync().unwrap();
    };
    commit(&log, 1_000, 1);
    // While the workers hold what they read of the first commit, a second
    // one becomes durable and then the stop is asked: the stop must cover it.
    let (ask_stop, stop_asked) = std::sync::mpsc::channel();
    let during: Box<dyn FnOnce() + Send> = {
        let log = Arc::clone(&log);
        Box::new(move || {
            commit(&log, 2_000, 2);
            ask_stop.send(()).unwrap();
            // Long enough for the stop to be asked before the read returns.
            std::thread::sleep(Duration::from_millis(500));
        })
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let views = ViewConfig::default();
    let pipeline = Pipeline::start(PipelineSpec {
        log: Arc::new(Interrupted { inner: readers, during: Arc::new(Mutex::new(Some(during))) }),
        resume: ResumePoint::start_of_log(&views),
        views,
        workers: 1,
        cluster: Default::default(),
        sinks: ViewSinks::new(vec![Box::new(Recording(Arc::clone(&seen)))]),
        checkpoints: CheckpointPolicy {
            store: CheckpointStore::open(dir.path(), 1).unwrap(),
            every_ms: u64::MAX,
            every_records: u64::MAX,
            seqs: Box::new(SeqSnapshot::default),
            retention_ms: None,
        },
        progress: Arc::new(Progress::default()),
        failures: Failures::default(),
    })
    .unwrap();
    stop_asked.recv_timeout(Duration::from_secs(60)).expect("the workers read the first commit");
    pipeline.stop().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.closed_at, Some(2_001), "the views closed before the second commit");
    assert!(
        seen.inventory_times.contains(&2_000),
        "the second commit never reached inventory: {:?}",
        seen.inventory_times
    );
}
