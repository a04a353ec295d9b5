//! The pipeline server: gateway, log writer, timely workers and sinks,
//! wired together and stopped in order.
//!
//! Shutdown order: the gateway stops taking calls; the log writer finishes
//! its last commit; the archiver and the workers read the log to its
//! durable end; the sinks write what they buffered, and a last checkpoint
//! is taken. After a crash instead, the views resume from the newest
//! checkpoint and the log after it, and the archive from what its files
//! say it covered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use coldstream_pipelines::metrics::Registry;
use coldstream_pipelines::traces::Traces;
use coldstream_sinks::SinkError;
use coldstream_sinks::parquet::{EventArchive, ViewChangelogs};
use coldstream_sinks::webhooks::{OutboxError, WebhookConfig, Webhooks};
use coldstream_sources::gateway::{Gateway, GatewayConfig, GatewayError, bind};
use coldstream_sources::ingest::{Ingest, IngestConfig, SeqSnapshot};
use coldstream_sources::log::{LogError, OpenReader};
use tokio::sync::oneshot;

use crate::archiver::archive_log;
use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::config::{Config, Role};
use crate::pipeline::{CheckpointPolicy, Pipeline, PipelineSpec, ResumePoint};
use crate::supervise::{Failures, panic_message, supervised};
use crate::view_sink::ViewSinks;
use crate::workers::{Cluster, RuntimeError};

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The event log.
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// A Parquet sink.
    #[error("parquet sink: {0}")]
    Sink(#[from] SinkError),
    /// A sink of the views' changes.
    #[error("{sink} sink: {source}")]
    ViewSink {
        /// The sink's name.
        sink: &'static str,
        /// What went wrong.
        #[source]
        source: SinkError,
    },
    /// The gRPC gateway.
    #[error("{0}")]
    Gateway(#[from] GatewayError),
    /// The timely workers.
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// The webhook outbox.
    #[error("{0}")]
    Outbox(#[from] OutboxError),
    /// The configuration.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The checkpoints.
    #[error("{0}")]
    Checkpoint(#[from] CheckpointError),
    /// The data directory's parts do not fit together.
    #[error("{0}")]
    Inconsistent(String),
    /// Another process owns the data directory.
    #[error("{dir} is in use by another coldstream process{holder}; stop it first, or give this one another --data")]
    InUse {
        /// The data directory.
        dir: String,
        /// Who holds it, as the lock file says (` (pid N)`), if it says.
        holder: String,
    },
    /// A thread could not be started.
    #[error("starting thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
}

/// The lock of a data directory: one process owns it, from before it
/// touches any file there until it has stopped. A second `coldstream run`
/// or a `coldstream rebuild` on a live server's directory is refused
/// instead of truncating its log's tail, removing its temporary files or
/// delivering its webhooks. Readers (`coldstream query`) take no lock.
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// Takes the lock of `dir` (creating `dir/LOCK`), or says who holds it.
    pub fn take(dir: &Path) -> Result<DataDirLock, ServerError> {
        use std::io::Write;
        let path = dir.join("LOCK");
        let io = |source: std::io::Error| ServerError::Inconsistent(format!("opening {}: {source}", path.display()));
        let mut file =
            std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(ServerError::InUse {
                    dir: dir.display().to_string(),
                    holder: if holder.is_empty() { String::new() } else { format!(" (pid {holder})") },
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
        }
        // Who holds it, for the message a second process prints.
        let written =
            file.set_len(0).and_then(|_| writeln!(file, "{}", std::process::id())).and_then(|_| file.sync_all());
        written.map_err(|source| ServerError::Inconsistent(format!("writing {}: {source}", path.display())))?;
        Ok(DataDirLock { _file: file })
    }
}

/// How far each consumer of the log has got.
#[derive(Default)]
pub struct Progress {
    /// Offset up to which `events/` and `rejected/` hold the log (in files or buffered).
    pub archived: AtomicU64,
    /// Logical time before which every view change has reached its sink.
    pub views: AtomicU64,
    /// Logical time before which the workers have computed every view
    /// change (the sinks may still be writing it).
    pub computed: AtomicU64,
    /// The first offset of the archive's last committed range: a restart
    /// reads the log again from there, so retention keeps it.
    pub archive_committed: AtomicU64,
    /// Checkpoints written since the server started.
    pub checkpoints: AtomicU64,
    /// When the last checkpoint was written (ms since the Unix epoch; 0: none yet).
    pub checkpoint_written_ms: AtomicU64,
    /// The last checkpoint's size in bytes.
    pub checkpoint_bytes: AtomicU64,
    /// How long writing the last checkpoint took, in microseconds.
    pub checkpoint_write_us: AtomicU64,
    /// The logical time of the last checkpoint.
    pub checkpoint_time: AtomicU64,
}

/// A point-in-time view of the server's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Records durable in the log.
    pub durable_offset: u64,
    /// Ingest time of the last durable record.
    pub last_ingest_ms: Option<u64>,
    /// Records read by the archiver.
    pub archived_offset: u64,
    /// The views' frontier: every change before it is in its sinks (the
    /// webhooks' in the outbox).
    pub views_frontier: u64,
    /// The workers' frontier: every change before it is computed.
    pub computed_frontier: u64,
}

impl Status {
    /// Whether every consumer has processed every durable record.
    pub fn caught_up(&self) -> bool {
        self.archived_offset >= self.durable_offset && self.last_ingest_ms.is_none_or(|last| self.views_frontier > last)
    }
}

/// Reads a server's progress from any thread.
#[derive(Clone)]
pub struct StatusSource {
    readers: Arc<dyn OpenReader>,
    progress: Arc<Progress>,
}

impl StatusSource {
    /// How far every consumer has got.
    pub fn status(&self) -> Status {
        Status {
            durable_offset: self.readers.durable_offset(),
            last_ingest_ms: self.readers.durable_ingest_ms(),
            archived_offset: self.progress.archived.load(Ordering::Acquire),
            views_frontier: self.progress.views.load(Ordering::Acquire),
            computed_frontier: self.progress.computed.load(Ordering::Acquire),
        }
    }
}

/// A running server: the front (gateway and log writer) of the roles
/// `all` and `gateway`, the back (archiver, workers, sinks) of `all` and
/// `pipeline`.
pub struct Server {
    /// The log's durable end and last ingest time when the server started.
    held_at_start: (u64, Option<u64>),
    data_dir: PathBuf,
    readers: Arc<dyn OpenReader>,
    progress: Arc<Progress>,
    front: Option<Front>,
    back: Option<Back>,
    /// The Flight SQL endpoint, when it is enabled.
    flight_sql: Option<crate::flight_sql::FlightSqlServer>,
    /// The metrics listener, when it is enabled.
    metrics: Option<crate::metrics::MetricsServer>,
    registry: Registry,
    failures: Failures,
    /// Held until the server has stopped (dropped last, with the server).
    _lock: DataDirLock,
}

/// The gateway and the log writer.
struct Front {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    gateway: tokio::task::JoinHandle<Result<(), GatewayError>>,
    writer: JoinHandle<()>,
    /// Follows the components' health into the gateway's.
    watcher: tokio::task::JoinHandle<()>,
}

/// What the back needs to start.
struct BackSpec<'a> {
    config: &'a Config,
    /// The views' settings, with their policy UDF loaded.
    views: coldstream_pipelines::views::ViewConfig,
    cluster: Cluster,
    data_dir: &'a Path,
    readers: &'a Arc<dyn OpenReader>,
    store: CheckpointStore,
    resume: ResumePoint,
    /// The ingest whose seq map goes into each checkpoint (none in a pipeline process).
    ingest: Option<Ingest>,
    progress: &'a Arc<Progress>,
    failures: &'a Failures,
    /// Set while webhook delivery holds ingestion back.
    hold: &'a Arc<AtomicBool>,
    /// Where the components register their instruments.
    registry: &'a Registry,
    /// The batches followed with spans, shared by every component.
    traces: Traces,
}

/// A component's thread: it ends with its error, if it had one.
type Component = JoinHandle<Result<(), ServerError>>;

/// The archiver, the workers and the view sinks.
struct Back {
    /// The archiver (on the process that owns the log's records) and its stop flag.
    archiver: Option<(Arc<AtomicBool>, Component)>,
    pipeline: Pipeline,
    /// Webhook delivery, one task per endpoint.
    dispatchers: Vec<tokio::task::JoinHandle<()>>,
    outbox: Arc<std::sync::Mutex<coldstream_sinks::webhooks::Outbox>>,
    stopping_webhooks: Arc<AtomicBool>,
    readers: Arc<dyn OpenReader>,
    /// The latest alerts and open orders, for the status page.
    recent: Arc<std::sync::Mutex<coldstream_sinks::webhooks::Recent>>,
}

/// The file in a data directory naming the sequence of the log whose
/// offsets its archive counts in: the whole log, or a process's share of
/// a partitioned one.
const ARCHIVED_LOG_FILE: &str = "archived-log";

/// Checks that the archive in `data_dir` counts offsets in the sequence
/// this process reads (`share`, or the whole log), and records it for the
/// next start. A directory without the file archived the whole log.
fn check_archive_layout(data_dir: &Path, share: Option<coldstream_sources::log::Share>) -> Result<(), ServerError> {
    let path = data_dir.join(ARCHIVED_LOG_FILE);
    let now = share.map_or_else(|| "the whole log".to_owned(), |share| share.to_string());
    let io =
        |doing: &str, e| ServerError::Log(LogError::Io { context: format!("{doing} {}", path.display()), source: e });
    match std::fs::read_to_string(&path) {
        Ok(before) if before.trim() == now => return Ok(()),
        Ok(before) => {
            return Err(ServerError::Inconsistent(format!(
                "the archive in {} holds {}, and this process reads {now}: run the cluster with as many processes as it had, or give this process a new data directory (the old one stays queryable with `coldstream query --data DIR`)",
                data_dir.display(),
                before.trim()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if share.is_some() && data_dir.join("events").read_dir().is_ok_and(|mut d| d.next().is_some()) {
                return Err(ServerError::Inconsistent(format!(
                    "the archive in {} holds the whole log, and this process reads {now}: give this process a new data directory (the old one stays queryable with `coldstream query --data DIR`)",
                    data_dir.display()
                )));
            }
        }
        Err(e) => return Err(io("reading", e)),
    }
    let file = std::fs::File::create(&path).map_err(|e| io("writing", e))?;
    std::io::Write::write_all(&mut &file, format!("{now}\n").as_bytes()).map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("syncing", e))
}

/// How long a stopping pipeline waits to see what a log with several
/// writers held when it was asked to stop.
const SETTLE_PATIENCE: Duration = Duration::from_secs(10);

impl Back {
    fn start(spec: BackSpec<'_>) -> Result<Back, ServerError> {
        let BackSpec {
            config,
            views,
            cluster,
            data_dir,
            readers,
            store,
            resume,
            ingest,
            progress,
            failures,
            hold,
            registry,
            traces,
        } = spec;
        let parquet = config.parquet();
        // Process 0 of a cluster archives a log every process reads whole
        // (the embedded log is one partition); each process its own share.
        let archiver = if cluster.process == 0 || readers.share().is_some() {
            check_archive_layout(data_dir, readers.share())?;
            let (archive, archived) = EventArchive::open(data_dir, parquet.clone())?;
            progress.archive_committed.store(archived.map_or(0, |(first, _)| first), Ordering::Release);
            let log_starts = readers.first_offset()?;
            if let Some((first, _)) = archived
                && first < log_starts
            {
                return Err(ServerError::Inconsistent(format!(
                    "the archive in events/ resumes at log offset {first}, which retention removed (log/ starts at {log_starts}); run `coldstream rebuild --data DIR`"
                )));
            }
            if let Some((_, end)) = archived
                && end > readers.durable_offset()
            {
                return Err(ServerError::Inconsistent(format!(
                    "the archive in events/ covers log offsets up to {end}, but the log in {} ends at {}: the log lost records that were acknowledged (a replaced or restored log directory); put the right log back, or move it aside and run `coldstream rebuild --data DIR`",
                    config.log.describe(data_dir),
                    readers.durable_offset(),
                )));
            }
            let stop = Arc::new(AtomicBool::new(false));
            let (readers, progress, stopping) = (Arc::clone(readers), Arc::clone(progress), Arc::clone(&stop));
            let archiver = supervised("archiver", failures, move || {
                archive_log(readers.as_ref(), archive, archived, &progress, &stopping)
            })?;
            Some((stop, archiver))
        } else {
            // Nothing to archive here: the views' retention waits on nothing.
            progress.archived.store(u64::MAX, Ordering::Release);
            None
        };
        let changelogs = ViewChangelogs::open(data_dir, parquet.clone())?;
        let webhook_config = WebhookConfig { metrics: registry.clone(), traces: traces.clone(), ..config.webhooks()? };
        let (webhooks, dispatchers) = Webhooks::start(data_dir, &webhook_config, parquet, Arc::clone(hold))?;
        let recent = webhooks.recent();
        let outbox = webhooks.outbox();
        let stopping_webhooks = webhooks.stopping();
        // In a cluster, or beside a gateway in another process, no one
        // process knows what every reader of the log has covered.
        let retention_ms = if cluster.is_multi() || ingest.is_none() { None } else { config.log.retention_ms() };
        let pipeline = Pipeline::start(PipelineSpec {
            log: Arc::clone(readers),
            views,
            workers: config.worker_threads(),
            cluster,
            sinks: ViewSinks::new(vec![Box::new(webhooks), Box::new(changelogs)]).counted(registry).traced(traces),
            resume,
            checkpoints: CheckpointPolicy {
                store,
                every_ms: config.checkpoint.interval_seconds * 1000,
                every_records: config.checkpoint.every_records,
                seqs: match ingest {
                    Some(ingest) => Box::new(move || ingest.seqs()),
                    None => Box::new(SeqSnapshot::default),
                },
                retention_ms,
            },
            progress: Arc::clone(progress),
            failures: failures.clone(),
        })?;
        Ok(Back { archiver, pipeline, dispatchers, outbox, stopping_webhooks, readers: Arc::clone(readers), recent })
    }

    /// Reads the log to its durable end into every sink, and checkpoints.
    fn stop(self) -> Result<(), ServerError> {
        self.settle();
        self.stopping_webhooks.store(true, Ordering::Release);
        if let Some((stop, _)) = &self.archiver {
            stop.store(true, Ordering::SeqCst);
        }
        let viewed = self.pipeline.stop();
        let archived = match self.archiver {
            Some((_, archiver)) => archiver.join().unwrap_or_else(|panic| {
                Err(ServerError::Inconsistent(format!("the archiver panicked: {}", panic_message(&*panic))))
            }),
            None => Ok(()),
        };
        archived.and(viewed)
    }
}

impl Back {
    /// On a log with several writers, waits (at most 10 s) until what the
    /// log held at the call is durable here, so that a stop covers what
    /// the gateways acked before it; the rest waits for the next start.
    fn settle(&self) {
        if !self.readers.shared() {
            return;
        }
        let target = match self.readers.latest_offset() {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(%error, "finding the log's end before stopping");
                return;
            }
        };
        let deadline = std::time::Instant::now() + SETTLE_PATIENCE;
        while self.readers.durable_offset() < target && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Front {
    async fn start(
        config: &Config,
        ingest: Ingest,
        writer: JoinHandle<()>,
        tokens: coldstream_sources::auth::Tokens,
        gateway: GatewayConfig,
        status: StatusSource,
        failures: &Failures,
    ) -> Result<Front, ServerError> {
        let listener = bind(config.listen).await?;
        let addr = listener.local_addr().map_err(|source| GatewayError::Bind { addr: config.listen, source })?;
        let health = Health { ingest: ingest.clone(), failures: failures.clone(), status };
        let (serving, watching) = tokio::sync::watch::channel(Ok(()));
        let watcher = tokio::spawn(health.clone().watch(serving));
        let gateway = Gateway::new(ingest, tokens, gateway).with_status(Arc::new(move || health.reply()));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let gateway = tokio::spawn(gateway.serve(listener, watching, async move {
            let _ = stopped.await;
        }));
        Ok(Front { addr, shutdown: Some(shutdown), gateway, writer, watcher })
    }

    /// Stops taking calls; returns the log writer, which ends once the
    /// last connection has gone.
    async fn stop(mut self) -> Result<JoinHandle<()>, ServerError> {
        self.watcher.abort();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match tokio::time::timeout(Duration::from_secs(5), &mut self.gateway).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => tracing::error!(%join, "the gateway task failed"),
            Err(_) => {
                tracing::warn!("connections still open after 5 s; closing them");
                self.gateway.abort();
            }
        }
        Ok(self.writer)
    }
}

impl Server {
    /// Opens the data directory and starts every part of `config.role`;
    /// returns once the gateway is listening (a pipeline process: once its
    /// workers run).
    pub async fn start(config: &Config) -> Result<Server, ServerError> {
        let data_dir = config.data_dir.clone();
        let role = config.role;
        let cluster = config.cluster.cluster()?;
        if cluster.is_multi() && role == Role::All && cluster.process != 0 {
            return Err(ServerError::Config(crate::config::ConfigError::Invalid(format!(
                "process {} of a cluster runs --role pipeline (or gateway): the log has one writer, process 0 with --role all or a gateway",
                cluster.process
            ))));
        }
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| LogError::Io { context: format!("creating {}", data_dir.display()), source: e })?;
        // Credentials and certificates are checked before any file is touched.
        let (tokens, tls) = (config.auth.tokens()?, config.server_tls()?);
        let udfs = crate::udf::load_all(&config.sql.udfs)
            .map_err(|e| ServerError::Config(crate::config::ConfigError::Invalid(e.to_string())))?;
        let flight_sql = if role.has_pipeline() { config.flight_sql(&tokens, tls.as_ref(), &udfs)? } else { None };
        let regions = config.region.regions()?;
        let metrics = config.metrics(tls.as_ref())?;
        let lock = DataDirLock::take(&data_dir)?;
        let registry = Registry::default();
        let traces = config.traces();
        let flight_sql = match flight_sql {
            Some(flight_sql) => {
                let listen = flight_sql.listen;
                Some(
                    crate::flight_sql::FlightSqlServer::start(flight_sql)
                        .map_err(|source| ServerError::Gateway(GatewayError::Bind { addr: listen, source }))?,
                )
            }
            None => None,
        };
        if !config.region.name.is_empty() {
            // `coldstream query` labels this directory's rows with it.
            let path = data_dir.join(crate::query::REGION_FILE);
            std::fs::write(&path, format!("{}\n", config.region.name))
                .map_err(|e| LogError::Io { context: format!("writing {}", path.display()), source: e })?;
        }
        // A pipeline process of a cluster on a partitioned log reads its
        // share of the partitions; the server's progress is the pipeline's.
        let share = if role.has_pipeline() { config.log.follow_share(&cluster)? } else { None };
        let (log, readers) = if role.has_gateway() {
            let log = config.log.open(&data_dir)?;
            let readers = share.clone().unwrap_or_else(|| log.readers());
            (Some(log), readers)
        } else {
            (
                None,
                match share {
                    Some(share) => share,
                    None => config.log.follow(&data_dir)?,
                },
            )
        };
        let held_at_start = (readers.durable_offset(), readers.durable_ingest_ms());
        let views = config.views_with(&udfs)?;
        let threads = config.worker_threads();
        let resume = if role.has_pipeline() {
            let store = CheckpointStore::open_in_cluster(&data_dir, config.checkpoint.keep, &cluster, threads)?;
            let resume = ResumePoint::load_agreed(&store, &views, readers.as_ref(), &cluster, threads)?;
            Some((store, resume))
        } else {
            None
        };
        let ingest = match log {
            Some(log) => Some(Ingest::start(
                log,
                IngestConfig {
                    queue_batches: config.gateway.queue_batches,
                    max_commit_records: config.gateway.max_commit_records,
                    max_seq_gap: config.gateway.max_seq_gap,
                    metrics: registry.clone(),
                    traces: traces.clone(),
                },
                resume.as_ref().map(|(_, resume)| resume.seqs()).unwrap_or_default(),
            )?),
            None => None,
        };
        let progress = Arc::new(Progress::default());
        let failures = Failures::default();
        let hold = Arc::new(AtomicBool::new(false));
        let back = match resume {
            Some((store, resume)) => Some(Back::start(BackSpec {
                config,
                views,
                cluster,
                data_dir: &data_dir,
                readers: &readers,
                store,
                resume,
                ingest: ingest.as_ref().map(|(ingest, _)| ingest.clone()),
                progress: &progress,
                failures: &failures,
                hold: &hold,
                registry: &registry,
                traces: traces.clone(),
            })?),
            None => None,
        };
        crate::metrics::register_process(&registry);
        crate::metrics::register(
            &registry,
            crate::metrics::Sources {
                readers: Arc::clone(&readers),
                progress: Arc::clone(&progress),
                ingest: ingest.as_ref().map(|(ingest, _)| ingest.clone()),
                read: back.as_ref().map(|back| back.pipeline.read_progress()),
                role: role.as_str(),
            },
        );
        let status = StatusSource { readers: Arc::clone(&readers), progress: Arc::clone(&progress) };
        let front = match ingest {
            Some((ingest, writer)) => {
                let gateway = GatewayConfig {
                    hold,
                    tls,
                    regions: regions.map(Arc::new),
                    metrics: registry.clone(),
                    traces: traces.clone(),
                    ..config.gateway()
                };
                Some(Front::start(config, ingest, writer, tokens, gateway, status, &failures).await?)
            }
            None => None,
        };
        let metrics = match metrics {
            Some(metrics) => {
                let listen = metrics.listen;
                let page = crate::metrics::Page {
                    registry: registry.clone(),
                    recent: back.as_ref().map(|back| Arc::clone(&back.recent)),
                };
                Some(
                    crate::metrics::MetricsServer::start(metrics, page)
                        .await
                        .map_err(|source| ServerError::Gateway(GatewayError::Bind { addr: listen, source }))?,
                )
            }
            None => None,
        };
        tracing::info!(
            addr = ?front.as_ref().map(|f| f.addr),
            flight_sql = ?flight_sql.as_ref().map(|f| f.addr()),
            metrics = ?metrics.as_ref().map(|m| m.addr()),
            ?role,
            data_dir = %data_dir.display(),
            workers = threads,
            "coldstream is running"
        );
        Ok(Server {
            held_at_start,
            data_dir,
            readers,
            progress,
            front,
            back,
            flight_sql,
            metrics,
            registry,
            failures,
            _lock: lock,
        })
    }

    /// The address the gateway listens on.
    /// (A pipeline process has no gateway: `0.0.0.0:0`.)
    pub fn addr(&self) -> SocketAddr {
        self.front.as_ref().map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |front| front.addr)
    }

    /// The address the Flight SQL endpoint listens on, when it is enabled.
    pub fn flight_sql_addr(&self) -> Option<SocketAddr> {
        self.flight_sql.as_ref().map(|f| f.addr())
    }

    /// The address of the metrics and the status page, when they are enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr())
    }

    /// The server's instruments, as `/metrics` renders them.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// How far every consumer has got.
    pub fn status(&self) -> Status {
        self.status_source().status()
    }

    /// A handle that reads [`Server::status`] from any thread.
    pub fn status_source(&self) -> StatusSource {
        StatusSource { readers: Arc::clone(&self.readers), progress: Arc::clone(&self.progress) }
    }

    /// Webhook deliveries not yet acknowledged by their receivers.
    pub fn webhooks_pending(&self) -> usize {
        self.back.as_ref().map_or(0, |back| back.outbox.lock().map_or(0, |outbox| outbox.pending_len()))
    }

    /// Webhook deliveries skipped since the start because a later state of
    /// the same order superseded them before they were sent.
    pub fn webhooks_superseded(&self) -> u64 {
        self.back.as_ref().map_or(0, |back| back.outbox.lock().map_or(0, |outbox| outbox.superseded()))
    }

    /// Waits until every consumer has processed every record the log held
    /// when the server started: the end of the restart's replay, however
    /// busy the gateway is meanwhile.
    pub async fn replayed(&self, timeout: Duration) -> Result<Status, Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status();
            if self.back.is_none() {
                // A gateway has nothing to replay.
                return Ok(status);
            }
            let (offset, last) = self.held_at_start;
            if status.archived_offset >= offset && last.is_none_or(|last| status.views_frontier > last) {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(status);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every consumer has processed every durable record.
    pub async fn caught_up(&self, timeout: Duration) -> Result<Status, Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status();
            if status.caught_up() {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The one-line reason a component stopped in a way it cannot recover
    /// from, if one has.
    pub fn failure(&self) -> Option<String> {
        self.failures.first()
    }

    /// Waits until a component fails in a way it cannot recover from (the
    /// archiver or the view sink stopped); returns the one-line reason.
    pub async fn failed(&self) -> String {
        self.failures.failed().await
    }

    /// Stops taking calls, drains the log into every view and sink, and
    /// writes what is buffered.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        drop(self.flight_sql);
        drop(self.metrics);
        let writer = match self.front {
            Some(front) => Some(front.stop().await?),
            None => None,
        };
        let Some(mut back) = self.back else { return Ok(()) };
        let dispatchers = std::mem::take(&mut back.dispatchers);
        let stopped = tokio::task::spawn_blocking(move || {
            // Connections that are still open keep the writer alive; the
            // log is consistent at every commit, so it need not be joined.
            drop(writer);
            back.stop()
        })
        .await
        .unwrap_or(Ok(()));
        // What is not delivered yet stays in the outbox for the next start.
        for dispatcher in dispatchers {
            dispatcher.abort();
        }
        stopped
    }
}

/// What the health service and the `Status` call report.
#[derive(Clone)]
struct Health {
    ingest: coldstream_sources::ingest::Ingest,
    failures: Failures,
    status: StatusSource,
}

impl Health {
    /// Serving, or why not.
    fn state(&self) -> Result<(), String> {
        if let Some(failure) = self.failures.first() {
            return Err(failure);
        }
        match self.ingest.log_failure() {
            Some(failure) => Err(format!("the event log cannot append: {failure}")),
            None => Ok(()),
        }
    }

    /// Publishes the state whenever it changes, until the server stops.
    async fn watch(self, serving: tokio::sync::watch::Sender<Result<(), String>>) {
        loop {
            // Looked at before the state, so that a failure in between wakes the wait below.
            let seen = self.failures.first().is_some();
            let state = self.state();
            serving.send_if_modified(|current| {
                let changed = *current != state;
                *current = state;
                changed
            });
            tokio::select! {
                () = self.failures.unseen(seen) => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if serving.is_closed() {
                return;
            }
        }
    }

    fn reply(&self) -> coldstream_sources::proto::StatusReply {
        let status = self.status.status();
        let state = self.state();
        coldstream_sources::proto::StatusReply {
            log_durable_offset: status.durable_offset,
            log_durable_ingest_ms: status.last_ingest_ms.unwrap_or(0),
            archived_offset: status.archived_offset,
            views: coldstream_pipelines::views::NAMES
                .iter()
                .map(|view| coldstream_sources::proto::ViewFrontier {
                    view: (*view).to_owned(),
                    frontier_ms: status.views_frontier,
                })
                .collect(),
            serving: state.is_ok(),
            reason: state.err().unwrap_or_default(),
        }
    }
}

/// Starts a named thread.
pub(crate) fn spawn<T: Send + 'static>(
    name: &'static str,
    body: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, ServerError> {
    std::thread::Builder::new().name(name.into()).spawn(body).map_err(|source| ServerError::Thread { name, source })
}
