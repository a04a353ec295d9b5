//! The view sink: one thread that hands the workers' view changes to every
//! [`ViewSink`] as the frontier passes them, and gathers the checkpoints
//! (the operators' states, the sinks' states by name, the log offset and
//! the seq map). A thread of their own writes them and then lets the log's
//! retention remove what every consumer has covered, so that a checkpoint
//! being written never holds the views' frontier back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use coldstream_pipelines::Time;
use coldstream_pipelines::checkpoint::Checkpoints;
use coldstream_pipelines::metrics::{Counter, Registry};
use coldstream_pipelines::traces::Traces;
use coldstream_pipelines::views::{NAMES, ViewBatch};
use coldstream_sinks::ViewSink;
use coldstream_sources::ingest::SeqSnapshot;
use coldstream_sources::log::OpenReader;

use crate::checkpoint::{Checkpoint, CheckpointStore, Gatherer, ViewsFingerprint};
use crate::server::{Progress, ServerError};
use crate::workers::ViewMessage;

/// The sinks of the views' changes, in the order they are handed each
/// batch; the last one takes the batch itself.
pub struct ViewSinks {
    sinks: Vec<Box<dyn ViewSink>>,
    /// Changes handed on, per view, in [`coldstream_pipelines::views::NAMES`] order.
    changes: Vec<Counter>,
    /// Followed batches' spans, which end as the frontier passes them.
    traces: Traces,
}

impl ViewSinks {
    /// The sinks, in order. Their names must differ: they key the sinks'
    /// states in a checkpoint.
    pub fn new(sinks: Vec<Box<dyn ViewSink>>) -> ViewSinks {
        ViewSinks { sinks, changes: vec![Counter::default(); NAMES.len()], traces: Traces::default() }
    }

    /// Counts the changes of each view in `registry`.
    pub fn counted(self, registry: &Registry) -> ViewSinks {
        let changes = NAMES
            .iter()
            .map(|view| {
                registry.counter(
                    "coldstream_view_changes_total",
                    "Changes (insertions and retractions) a view emitted to its sinks.",
                    &[("view", view)],
                )
            })
            .collect();
        ViewSinks { changes, ..self }
    }

    /// Ends followed batches' `views.pending` spans as every sink passes them.
    pub fn traced(self, traces: Traces) -> ViewSinks {
        ViewSinks { traces, ..self }
    }

    /// Hands `batch` to every sink.
    pub fn push(&mut self, batch: ViewBatch) {
        if let Some(counter) = NAMES.iter().position(|view| *view == batch.view()).and_then(|i| self.changes.get(i)) {
            counter.add(batch.len() as u64);
        }
        if let Some((last, others)) = self.sinks.split_last_mut() {
            for sink in others {
                sink.push(&batch);
            }
            last.take(batch);
        }
    }

    /// Every change before `frontier` has been pushed.
    pub fn advance(&mut self, frontier: Time, closing: bool) -> Result<(), ServerError> {
        for sink in &mut self.sinks {
            sink.advance(frontier, closing).map_err(|source| ServerError::ViewSink { sink: sink.name(), source })?;
        }
        self.traces.views_passed(frontier);
        Ok(())
    }

    /// Every sink's state at `frontier`, by name.
    pub fn snapshot(&mut self, frontier: Time) -> Result<BTreeMap<String, Vec<u8>>, ServerError> {
        let mut states = BTreeMap::new();
        for sink in &mut self.sinks {
            let state =
                sink.snapshot(frontier).map_err(|source| ServerError::ViewSink { sink: sink.name(), source })?;
            states.insert(sink.name().to_owned(), state);
        }
        Ok(states)
    }

    /// Gives every sink its state of a checkpoint taken at `frontier`.
    pub fn restore(&mut self, states: &BTreeMap<String, Vec<u8>>, frontier: Time) -> Result<(), ServerError> {
        for sink in &mut self.sinks {
            let Some(state) = states.get(sink.name()) else {
                return Err(ServerError::Inconsistent(format!(
                    "the checkpoint holds no state of the {} sink; run `coldstream rebuild --data DIR`",
                    sink.name()
                )));
            };
            sink.restore(state, frontier).map_err(|source| ServerError::ViewSink { sink: sink.name(), source })?;
        }
        Ok(())
    }

    /// Changes before this time were acted on by every sink before this start.
    pub fn resumes_at(&self) -> Time {
        self.sinks.iter().map(|sink| sink.resumes_at()).max().unwrap_or(0)
    }
}

/// How the view sink takes checkpoints: it gathers them, and a thread of
/// their own writes them, so that encoding and fsyncing a checkpoint never
/// holds up the views' frontier.
pub struct Checkpointing {
    /// What the state depends on.
    fingerprint: ViewsFingerprint,
    /// The operators' side: how many snapshots make one checkpoint.
    checkpoints: Checkpoints,
    /// The ingest's latest seq map.
    seqs: Box<dyn Fn() -> SeqSnapshot + Send>,
    /// Where the view sink says how far the views have got.
    progress: Arc<Progress>,
    gatherer: Gatherer,
    writer: CheckpointWriter,
}

impl Checkpointing {
    /// Checkpointing into `store`.
    pub fn new(
        store: CheckpointStore,
        fingerprint: ViewsFingerprint,
        checkpoints: Checkpoints,
        seqs: Box<dyn Fn() -> SeqSnapshot + Send>,
        log: Arc<dyn OpenReader>,
        retention_ms: Option<u64>,
        progress: Arc<Progress>,
    ) -> Result<Checkpointing, ServerError> {
        let writer = CheckpointWriter::start(store, log, retention_ms, Arc::clone(&progress))?;
        Ok(Checkpointing { fingerprint, checkpoints, seqs, progress, gatherer: Gatherer::default(), writer })
    }

    /// Gives the sinks' state at `frontier` to the checkpoints that need it.
    fn sink_at(&mut self, frontier: u64, sinks: &mut ViewSinks) -> Result<(), ServerError> {
        if self.gatherer.wants_sink(frontier) {
            let states = sinks.snapshot(frontier)?;
            self.gatherer.sink(frontier, states);
        }
        Ok(())
    }

    /// Hands the newest whole checkpoint, if there is one, to the writer.
    fn write_whole(&mut self) {
        if let Some(checkpoint) =
            self.gatherer.take_whole(self.checkpoints.expected_snapshots(), &self.fingerprint, &self.seqs)
        {
            self.writer.write(checkpoint);
        }
    }
}

/// The thread that writes whole checkpoints and then trims the log. One
/// checkpoint is written at a time and at most one more waits: a newer
/// whole checkpoint replaces a waiting one, since it covers everything the
/// older one does, so memory stays bounded however slow the disk is.
struct CheckpointWriter {
    slot: Arc<(std::sync::Mutex<WriterSlot>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct WriterSlot {
    next: Option<Checkpoint>,
    closing: bool,
}

impl CheckpointWriter {
    fn start(
        store: CheckpointStore,
        log: Arc<dyn OpenReader>,
        retention_ms: Option<u64>,
        progress: Arc<Progress>,
    ) -> Result<CheckpointWriter, ServerError> {
        let slot = Arc::new((std::sync::Mutex::new(WriterSlot::default()), std::sync::Condvar::new()));
        let shared = Arc::clone(&slot);
        let thread = std::thread::Builder::new()
            .name("checkpoint writer".into())
            .spawn(move || {
                let (lock, wake) = &*shared;
                loop {
                    let next = {
                        let mut slot = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        loop {
                            if let Some(next) = slot.next.take() {
                                break Some(next);
                            }
                            if slot.closing {
                                break None;
                            }
                            slot = wake.wait(slot).unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                    };
                    let Some(checkpoint) = next else { return };
                    write_and_trim(&store, &checkpoint, &*log, retention_ms, &progress);
                }
            })
            .map_err(|error| ServerError::Inconsistent(format!("starting the checkpoint writer: {error}")))?;
        Ok(CheckpointWriter { slot, thread: Some(thread) })
    }

    /// Writes `checkpoint` once the one being written, if any, is done.
    fn write(&self, checkpoint: Checkpoint) {
        let (lock, wake) = &*self.slot;
        let mut slot = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(replaced) = slot.next.replace(checkpoint) {
            tracing::debug!(time = replaced.dataflow.time, "a newer checkpoint replaced one waiting to be written");
        }
        wake.notify_one();
    }
}

impl Drop for CheckpointWriter {
    /// Writes what is waiting, then stops the thread.
    fn drop(&mut self) {
        let (lock, wake) = &*self.slot;
        lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner).closing = true;
        wake.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the checkpoint writer panicked; the next start replays from the last checkpoint on disk");
        }
    }
}

/// Writes `checkpoint` into `store`, says so in `progress`, then lets the
/// log's retention remove what every kept checkpoint and the archive have
/// covered.
fn write_and_trim(
    store: &CheckpointStore,
    checkpoint: &Checkpoint,
    log: &dyn OpenReader,
    retention_ms: Option<u64>,
    progress: &Progress,
) {
    let started = std::time::Instant::now();
    match store.write(checkpoint) {
        Ok((path, bytes)) => {
            progress.checkpoint_written_ms.store(coldstream_sources::ingest::now_ms(), Ordering::Release);
            progress.checkpoint_bytes.store(bytes as u64, Ordering::Release);
            progress.checkpoint_write_us.store(started.elapsed().as_micros() as u64, Ordering::Release);
            progress.checkpoint_time.store(checkpoint.sink_frontier, Ordering::Release);
            progress.checkpoints.fetch_add(1, Ordering::AcqRel);
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
    let Some(retention_ms) = retention_ms else { return };
    let keep_from = match store.keep_from() {
        Ok(keep_from) => keep_from.unwrap_or(0),
        Err(error) => return tracing::warn!(%error, "listing checkpoints for retention"),
    };
    // The archive's last range stays in the log: a restart writes it
    // again, and a rebuild resumes the log after it.
    let archived = progress.archive_committed.load(Ordering::Acquire);
    let until_ms = coldstream_sources::ingest::now_ms().saturating_sub(retention_ms);
    match log.trim(keep_from.min(archived), until_ms) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, before = keep_from.min(archived), "log retention removed segments"),
        Err(error) => tracing::warn!(%error, "log retention"),
    }
}

/// How long the view sink waits for a message before it lets the sinks
/// close files that have waited long enough.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// Hands view changes to every sink as the frontier passes them, and
/// gathers checkpoints, until the workers have stopped and the last
/// checkpoint is written.
pub fn sink_views(
    messages: Receiver<ViewMessage>,
    mut sinks: ViewSinks,
    mut checkpointing: Checkpointing,
) -> Result<(), ServerError> {
    let resume_at = sinks.resumes_at();
    let progress = Arc::clone(&checkpointing.progress);
    let mut closed = false;
    let mut last_frontier = None;
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
            match messages.recv_timeout(IDLE_TICK) {
                Ok(message) => message,
                // Nothing new: a quiet log still lets files that have waited
                // `roll_seconds` close, so the views reach Parquet.
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(frontier) = last_frontier {
                        sinks.advance(frontier, false)?;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        };
        match message {
            ViewMessage::Changes(batch) => sinks.push(batch),
            ViewMessage::Frontier(frontier) => {
                last_frontier = Some(frontier);
                if frontier >= resume_at {
                    progress.computed.store(frontier, Ordering::Release);
                }
                sinks.advance(frontier, false)?;
                if frontier >= resume_at {
                    progress.views.store(frontier, Ordering::Release);
                }
                checkpointing.sink_at(frontier, &mut sinks)?;
            }
            ViewMessage::Closed(frontier) => {
                progress.computed.store(frontier, Ordering::Release);
                sinks.advance(frontier, true)?;
                progress.views.store(frontier, Ordering::Release);
                checkpointing.sink_at(frontier, &mut sinks)?;
                closed = true;
            }
            ViewMessage::Abandoned => {
                if let Some(frontier) = last_frontier {
                    sinks.advance(frontier, true)?;
                }
                return Ok(());
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
