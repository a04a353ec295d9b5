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
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use coldstream_pipelines::checkpoint::Checkpoints;
use coldstream_pipelines::operators::OperatorHooks;
use coldstream_pipelines::views::ViewConfig;
use coldstream_sinks::SinkError;
use coldstream_sinks::parquet::{EventArchive, RejectedRow, ViewChangelogs};
use coldstream_sinks::webhooks::{OutboxError, Webhooks};
use coldstream_sources::auth::Tokens;
use coldstream_sources::gateway::{Gateway, GatewayConfig, GatewayError, bind};
use coldstream_sources::ingest::{Ingest, IngestConfig};
use coldstream_sources::log::embedded::{EmbeddedConfig, EmbeddedLog};
use coldstream_sources::log::{EventLog, LogError, OpenReader};
use coldstream_sources::proto::{LogEntry, RejectReason, log_entry::Entry};
use prost::Message;
use tokio::sync::oneshot;

use crate::checkpoint::{CheckpointError, CheckpointStore, Gatherer, ViewsFingerprint};
use crate::config::Config;
use crate::runtime::{Resume, RuntimeError, ViewMessage, Workers};

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The event log.
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// A Parquet sink.
    #[error("parquet sink: {0}")]
    Sink(#[from] SinkError),
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

/// How far each consumer of the log has got.
#[derive(Default)]
pub struct Progress {
    /// Offset up to which `events/` and `rejected/` hold the log (in files or buffered).
    pub archived: AtomicU64,
    /// Logical time before which every view change has reached its sink.
    pub views: AtomicU64,
    /// The first offset of the archive's last committed range: a restart
    /// reads the log again from there, so retention keeps it.
    pub archive_committed: AtomicU64,
    /// Checkpoints written since the server started.
    pub checkpoints: AtomicU64,
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
    /// The views' frontier.
    pub views_frontier: u64,
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
        }
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    /// The log's durable end and last ingest time when the server started.
    held_at_start: (u64, Option<u64>),
    data_dir: PathBuf,
    readers: Arc<dyn OpenReader>,
    progress: Arc<Progress>,
    shutdown: Option<oneshot::Sender<()>>,
    gateway: tokio::task::JoinHandle<Result<(), GatewayError>>,
    writer: JoinHandle<()>,
    stop_archiver: Arc<AtomicBool>,
    archiver: JoinHandle<Result<(), ServerError>>,
    workers: Workers,
    view_sink: JoinHandle<Result<(), ServerError>>,
    /// Webhook delivery, one task per endpoint.
    dispatchers: Vec<tokio::task::JoinHandle<()>>,
    outbox: Arc<std::sync::Mutex<coldstream_sinks::webhooks::Outbox>>,
    stopping_webhooks: Arc<AtomicBool>,
}

impl Server {
    /// Opens the data directory and starts every part; returns once the
    /// gateway is listening.
    pub async fn start(config: &Config) -> Result<Server, ServerError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| LogError::Io { context: format!("creating {}", data_dir.display()), source: e })?;
        let log =
            EmbeddedLog::open(data_dir.join("log"), EmbeddedConfig { segment_bytes: config.log.segment_mb << 20 })?;
        let readers = log.readers();
        let last_ingest = log.last_ingest_ms();
        let held_at_start = (readers.durable_offset(), last_ingest);
        let views = config.views();
        let fingerprint = ViewsFingerprint::of(&views);
        let store = CheckpointStore::open(&data_dir, config.checkpoint.keep)?;
        let checkpoint = resume_point(&store, &fingerprint, readers.as_ref())?;
        let seqs = checkpoint.as_ref().map(|c| c.seqs.clone()).unwrap_or_default();
        let (ingest, writer) = Ingest::start(
            Box::new(log),
            IngestConfig {
                queue_batches: config.gateway.queue_batches,
                max_commit_records: config.gateway.max_commit_records,
            },
            seqs,
        )?;
        let progress = Arc::new(Progress::default());

        let parquet = config.parquet();
        let (archive, resume) = EventArchive::open(&data_dir, parquet.clone())?;
        progress.archive_committed.store(resume.map_or(0, |(first, _)| first), Ordering::Release);
        let log_starts = readers.first_offset()?;
        if let Some((first, _)) = resume
            && first < log_starts
        {
            return Err(ServerError::Inconsistent(format!(
                "the archive in events/ resumes at log offset {first}, which retention removed (log/ starts at {log_starts}); run `coldstream rebuild --data DIR`"
            )));
        }
        let stop_archiver = Arc::new(AtomicBool::new(false));
        let archiver = {
            let (readers, progress, stop) = (Arc::clone(&readers), Arc::clone(&progress), Arc::clone(&stop_archiver));
            spawn("archiver", move || {
                let archived = archive_log(readers.as_ref(), archive, resume, &progress, &stop);
                if let Err(error) = &archived {
                    tracing::error!(%error, "the archiver stopped; events/ falls behind until the server restarts");
                }
                archived
            })?
        };

        let mut changelog = ViewChangelogs::open(&data_dir, parquet.clone())?;
        let hold = Arc::new(AtomicBool::new(false));
        let (mut webhooks, dispatchers) =
            Webhooks::start(&data_dir, &config.webhooks()?, parquet.clone(), Arc::clone(&hold))?;
        let (changes, view_messages) = sync_channel(256);
        let (dataflow, offset) = match checkpoint {
            Some(checkpoint) => {
                changelog.restore(&checkpoint.changelogs, checkpoint.sink_frontier)?;
                webhooks.restore(&checkpoint.webhooks, checkpoint.sink_frontier).map_err(ServerError::Inconsistent)?;
                (Some(checkpoint.dataflow), checkpoint.offset)
            }
            None => (None, 0),
        };
        tracing::info!(resume_offset = offset, views_covered_ms = changelog.covered(), ?last_ingest, "views resume");
        let outbox = webhooks.outbox();
        let stopping_webhooks = webhooks.stopping();
        let checkpoints = {
            let changes = changes.clone();
            Checkpoints::new(dataflow, move |snapshot| {
                let _ = changes.send(ViewMessage::Snapshot(snapshot));
            })
        };
        let checkpointing = Checkpointing {
            store,
            gatherer: Gatherer::default(),
            fingerprint,
            checkpoints: checkpoints.clone(),
            seqs: {
                let ingest = ingest.clone();
                Box::new(move || ingest.seqs())
            },
            log_dir: data_dir.join("log"),
            retention_ms: Some(config.log.retention_hours * 3_600_000),
            progress: Arc::clone(&progress),
        };
        let view_sink = {
            let progress = Arc::clone(&progress);
            spawn("view-sink", move || {
                let sunk = sink_views(view_messages, changelog, webhooks, &progress, checkpointing);
                if let Err(error) = &sunk {
                    tracing::error!(%error, "the view sink stopped; the views fall behind until the server restarts");
                }
                sunk
            })?
        };
        let views = ViewConfig { hooks: OperatorHooks { checkpoints, ..views.hooks }, ..views };
        let resume = Resume {
            offset,
            checkpoint_every_ms: config.checkpoint.interval_seconds * 1000,
            checkpoint_every_records: config.checkpoint.every_records,
        };
        let workers = Workers::start(config.worker_threads(), views, Arc::clone(&readers), changes, resume)?;

        let listener = bind(config.listen).await?;
        let addr = listener.local_addr().map_err(|source| GatewayError::Bind { addr: config.listen, source })?;
        let secret = std::env::var("COLDSTREAM_SECRET").unwrap_or_else(|_| config.auth.secret.clone());
        let gateway = Gateway::new(
            ingest,
            Tokens::new(secret),
            GatewayConfig {
                max_batch_events: config.gateway.max_batch_events,
                max_in_flight_batches: config.gateway.max_in_flight_batches,
                hold,
            },
        );
        let (shutdown, stopped) = oneshot::channel::<()>();
        let gateway = tokio::spawn(gateway.serve(listener, async move {
            let _ = stopped.await;
        }));
        tracing::info!(%addr, data_dir = %data_dir.display(), workers = config.worker_threads(), "coldstream is listening");
        Ok(Server {
            addr,
            held_at_start,
            data_dir,
            readers,
            progress,
            shutdown: Some(shutdown),
            gateway,
            writer,
            stop_archiver,
            archiver,
            workers,
            view_sink,
            dispatchers,
            outbox,
            stopping_webhooks,
        })
    }

    /// The address the gateway listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
        self.outbox.lock().map_or(0, |outbox| outbox.pending_len())
    }

    /// Waits until every consumer has processed every record the log held
    /// when the server started: the end of the restart's replay, however
    /// busy the gateway is meanwhile.
    pub async fn replayed(&self, timeout: Duration) -> Result<Status, Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status();
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

    /// Stops taking calls, drains the log into every view and sink, and
    /// writes what is buffered.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
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
        let (writer, workers, archiver, view_sink, stop_archiver) =
            (self.writer, self.workers, self.archiver, self.view_sink, self.stop_archiver);
        let dispatchers = self.dispatchers;
        self.stopping_webhooks.store(true, Ordering::Release);
        let stopped = tokio::task::spawn_blocking(move || {
            // Connections that are still open keep the writer alive; the
            // log is consistent at every commit, so it need not be joined.
            drop(writer);
            stop_archiver.store(true, Ordering::SeqCst);
            workers.stop();
            let archived = archiver.join().unwrap_or_else(|_| Ok(()));
            let viewed = view_sink.join().unwrap_or_else(|_| Ok(()));
            archived.and(viewed)
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

fn spawn<T: Send + 'static>(
    name: &'static str,
    body: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, ServerError> {
    std::thread::Builder::new().name(name.into()).spawn(body).map_err(|source| ServerError::Thread { name, source })
}

/// The dead-letter row of a rejected log entry.
fn rejected_row(received_ms: u64, rejected: coldstream_sources::proto::RejectedEvent) -> RejectedRow {
    let event = rejected.event.unwrap_or_default();
    let code = RejectReason::try_from(rejected.code).unwrap_or(RejectReason::Unspecified);
    RejectedRow {
        received_ms,
        principal: rejected.principal,
        source_id: Some(event.source_id.clone()).filter(|s| !s.is_empty()),
        seq: Some(event.seq).filter(|&s| s > 0),
        event_time_us: Some(event.event_time_us).filter(|&t| t != 0),
        kind: coldstream_sources::convert::wire_kind(&event).map(str::to_owned),
        reason_code: code.as_str_name().trim_start_matches("REJECT_REASON_").to_ascii_lowercase(),
        reason: rejected.message,
        event: format!("{event:?}"),
    }
}

/// Writes what the archive buffered, up to `end`, and notes where the
/// range it wrote starts.
fn commit(archive: &mut EventArchive, end: u64, progress: &Progress) -> Result<(), ServerError> {
    let first = archive.buffered_from();
    archive.flush(end)?;
    if let Some(first) = first {
        progress.archive_committed.store(first, Ordering::Release);
    }
    Ok(())
}

/// Tails the log into `events/` and `rejected/`.
fn archive_log(
    readers: &dyn OpenReader,
    mut archive: EventArchive,
    resume: Option<(u64, u64)>,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<(), ServerError> {
    let this = std::thread::current();
    readers.subscribe(Box::new(move || this.unpark()));
    let (start, redo_until) = match resume {
        Some((first, end)) => (first, Some(end)),
        None => (0, None),
    };
    let mut reader = readers.open(start.min(readers.durable_offset()))?;
    let mut records = Vec::with_capacity(4096);
    let mut last_ms = None;
    loop {
        records.clear();
        let limit = match redo_until {
            Some(end) if reader.position() < end => (end - reader.position()).min(4096) as usize,
            _ => 4096,
        };
        let read = reader.read(limit, &mut records)?;
        for (offset, record) in records.drain(..) {
            // A range ends only where a commit does (the time changes), so
            // the log after the archive starts with a whole commit.
            let redoing = redo_until.is_some_and(|end| offset < end);
            if !redoing && last_ms.is_some_and(|t| t != record.ingest_ms) && archive.is_due() {
                commit(&mut archive, offset, progress)?;
            }
            last_ms = Some(record.ingest_ms);
            match LogEntry::decode(record.payload.as_slice()) {
                Ok(LogEntry { entry: Some(Entry::Accepted(wire)) }) => match coldstream_sources::convert::decode(&wire)
                {
                    Ok(event) => archive.push_event(offset, record.ingest_ms, event),
                    Err(rejection) => {
                        tracing::warn!(offset, reason = %rejection.message, "undecodable event in the log")
                    }
                },
                Ok(LogEntry { entry: Some(Entry::Rejected(rejected)) }) => {
                    archive.push_rejected(offset, rejected_row(record.ingest_ms, rejected))
                }
                Ok(LogEntry { entry: None }) => tracing::warn!(offset, "empty log entry"),
                Err(error) => tracing::warn!(offset, %error, "undecodable log record"),
            }
        }
        let position = reader.position();
        // The range left incomplete by a crash is rewritten exactly as it
        // was; otherwise the durable end is a commit boundary.
        if redo_until == Some(position) || (position >= readers.durable_offset() && archive.is_due()) {
            commit(&mut archive, position, progress)?;
        }
        progress.archived.store(position, Ordering::Release);
        if read == 0 {
            if stop.load(Ordering::SeqCst) && position >= readers.durable_offset() {
                commit(&mut archive, position, progress)?;
                return Ok(());
            }
            std::thread::park_timeout(Duration::from_millis(200));
        }
    }
}

/// The newest usable checkpoint, checked against the log it resumes.
fn resume_point(
    store: &CheckpointStore,
    fingerprint: &ViewsFingerprint,
    readers: &dyn OpenReader,
) -> Result<Option<crate::checkpoint::Checkpoint>, ServerError> {
    let mut skipped = Vec::new();
    let loaded = store.load(fingerprint, &mut skipped)?;
    let (first, durable) = (readers.first_offset()?, readers.durable_offset());
    match loaded {
        Some((path, checkpoint)) => {
            if checkpoint.offset > durable || checkpoint.keep_from() < first {
                return Err(ServerError::Inconsistent(format!(
                    "checkpoint {} resumes the log at offset {} (seqs from {}), but log/ holds offsets {first} to {durable}: log records are missing; move {} aside and run `coldstream rebuild --data DIR`",
                    path.display(),
                    checkpoint.offset,
                    checkpoint.seqs.offset,
                    store.dir().display(),
                )));
            }
            tracing::info!(
                file = %path.display(),
                time = checkpoint.dataflow.time,
                offset = checkpoint.offset,
                fridge_states = checkpoint.dataflow.fridge_states(),
                "resuming the views from a checkpoint"
            );
            Ok(Some(checkpoint))
        }
        None if first > 0 => Err(ServerError::Inconsistent(format!(
            "no usable checkpoint in {}{}, and retention removed the log before offset {first}; run `coldstream rebuild --data DIR` to recompute the views from the Parquet archive",
            store.dir().display(),
            if skipped.is_empty() { String::new() } else { format!(" (damaged: {})", skipped.join("; ")) },
        ))),
        None => Ok(None),
    }
}

/// The view sink's side of checkpoints: gathers the parts, writes whole
/// checkpoints, then lets retention remove what every consumer has covered.
pub(crate) struct Checkpointing {
    pub(crate) store: CheckpointStore,
    pub(crate) gatherer: Gatherer,
    pub(crate) fingerprint: ViewsFingerprint,
    pub(crate) checkpoints: Checkpoints,
    /// The ingest's latest seq map.
    pub(crate) seqs: Box<dyn Fn() -> coldstream_sources::ingest::SeqSnapshot + Send>,
    pub(crate) log_dir: PathBuf,
    /// Log retention; `None` removes nothing.
    pub(crate) retention_ms: Option<u64>,
    pub(crate) progress: Arc<Progress>,
}

impl Checkpointing {
    /// Gives the sink's state at `frontier` to the checkpoints that need it.
    fn sink_at(
        &mut self,
        frontier: u64,
        changelogs: &mut ViewChangelogs,
        webhooks: &Webhooks,
    ) -> Result<(), ServerError> {
        if self.gatherer.wants_sink(frontier) {
            let buffered = changelogs.snapshot(frontier)?;
            self.gatherer.sink(frontier, buffered, webhooks.snapshot());
        }
        Ok(())
    }

    /// Writes the newest whole checkpoint, if there is one, and trims the log.
    fn write_whole(&mut self) {
        let Some(checkpoint) =
            self.gatherer.take_whole(self.checkpoints.expected_snapshots(), &self.fingerprint, (self.seqs)())
        else {
            return;
        };
        let started = std::time::Instant::now();
        match self.store.write(&checkpoint) {
            Ok((path, bytes)) => {
                self.progress.checkpoints.fetch_add(1, Ordering::AcqRel);
                tracing::debug!(
                    file = %path.display(),
                    bytes,
                    fridge_states = checkpoint.dataflow.fridge_states(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "checkpoint written"
                );
            }
            Err(error) => {
                tracing::error!(%error, "writing a checkpoint failed; the next one will try again");
                return;
            }
        }
        let Some(retention_ms) = self.retention_ms else { return };
        let keep_from = match self.store.keep_from() {
            Ok(keep_from) => keep_from.unwrap_or(0),
            Err(error) => return tracing::warn!(%error, "listing checkpoints for retention"),
        };
        // The archive's last range stays in the log: a restart writes it
        // again, and a rebuild resumes the log after it.
        let archived = self.progress.archive_committed.load(Ordering::Acquire);
        let until_ms = coldstream_sources::ingest::now_ms().saturating_sub(retention_ms);
        match coldstream_sources::log::embedded::trim(&self.log_dir, keep_from.min(archived), until_ms) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, before = keep_from.min(archived), "log retention removed segments"),
            Err(error) => tracing::warn!(%error, "log retention"),
        }
    }
}

/// Writes view changes to their changelogs and the webhook outbox as the
/// frontier passes them, and gathers checkpoints.
pub(crate) fn sink_views(
    messages: Receiver<ViewMessage>,
    mut changelogs: ViewChangelogs,
    mut webhooks: Webhooks,
    progress: &Progress,
    mut checkpointing: Checkpointing,
) -> Result<(), ServerError> {
    let resume_at = changelogs.covered();
    let mut closed = false;
    loop {
        let message = if closed {
            // The last operators' snapshots may still be on their way.
            match messages.recv_timeout(Duration::from_secs(10)) {
                Ok(message) => message,
                Err(_) => {
                    tracing::warn!("the last checkpoint did not complete; the next start replays from the one before");
                    return Ok(());
                }
            }
        } else {
            match messages.recv() {
                Ok(message) => message,
                Err(_) => return Ok(()),
            }
        };
        match message {
            ViewMessage::Changes(batch) => {
                webhooks.push(&batch);
                changelogs.push(batch);
            }
            ViewMessage::Frontier(frontier) => {
                webhooks.advance(frontier)?;
                changelogs.advance(frontier, false)?;
                if frontier >= resume_at {
                    progress.views.store(frontier, Ordering::Release);
                }
                checkpointing.sink_at(frontier, &mut changelogs, &webhooks)?;
            }
            ViewMessage::Closed(frontier) => {
                webhooks.advance(frontier)?;
                changelogs.advance(frontier, true)?;
                progress.views.store(frontier, Ordering::Release);
                checkpointing.sink_at(frontier, &mut changelogs, &webhooks)?;
                closed = true;
            }
            ViewMessage::CheckpointAt { time, offset } => checkpointing.gatherer.offset(time, offset),
            ViewMessage::Snapshot(snapshot) => checkpointing.gatherer.part(snapshot),
        }
        checkpointing.write_whole();
        if closed && checkpointing.gatherer.is_empty() {
            return Ok(());
        }
    }
}
