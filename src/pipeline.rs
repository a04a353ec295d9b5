//! The pipeline, assembled in one place: a log, the views over it on
//! timely workers, the view sinks, and checkpoints, from a resume point.
//!
//! `coldstream run`, `coldstream rebuild` and the tests all build their
//! pipeline with [`Pipeline::start`], so that a rebuild (or a test)
//! computes the very changes, order ids and webhook ids the server does.

use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;

use coldstream_pipelines::checkpoint::Checkpoints;
use coldstream_pipelines::operators::OperatorHooks;
use coldstream_pipelines::views::ViewConfig;
use coldstream_sources::ingest::SeqSnapshot;
use coldstream_sources::log::OpenReader;

use crate::checkpoint::{Checkpoint, CheckpointStore, ViewsFingerprint};
use crate::server::{Progress, ServerError};
use crate::supervise::{Failures, panic_message, supervised};
use crate::view_sink::{Checkpointing, ViewSinks, sink_views};
use crate::workers::{Cluster, Resume, Stopped, ViewMessage, Workers};

/// Where the views start: a checkpoint, or the log's first record.
pub struct ResumePoint {
    /// What the views' state depends on, as this build computes them.
    pub fingerprint: ViewsFingerprint,
    /// The checkpoint to resume from; `None` reads the log from offset 0.
    pub checkpoint: Option<Checkpoint>,
}

impl ResumePoint {
    /// From the log's first record, with nothing restored.
    pub fn start_of_log(views: &ViewConfig) -> ResumePoint {
        ResumePoint { fingerprint: ViewsFingerprint::of(views), checkpoint: None }
    }

    /// The newest usable checkpoint in `store`, checked against the log
    /// it resumes.
    pub fn load(store: &CheckpointStore, views: &ViewConfig, log: &dyn OpenReader) -> Result<ResumePoint, ServerError> {
        Self::load_agreed(store, views, log, &Cluster::default(), 1)
    }

    /// The checkpoint every process of `cluster` holds, the newest such
    /// (see [`crate::workers::agree`]), checked against the log.
    pub fn load_agreed(
        store: &CheckpointStore,
        views: &ViewConfig,
        log: &dyn OpenReader,
        cluster: &Cluster,
        threads: usize,
    ) -> Result<ResumePoint, ServerError> {
        let fingerprint = ViewsFingerprint::of(views);
        let mut skipped = Vec::new();
        let loaded = if cluster.is_multi() {
            let agreed = crate::workers::agree(cluster, threads, store.times()?)?;
            tracing::info!(?agreed, process = cluster.process, "the cluster agreed where to resume");
            match agreed {
                None => None,
                Some(time) => match store.load_until(&fingerprint, time, &mut skipped)? {
                    Some((path, checkpoint)) if checkpoint.dataflow.time == time => Some((path, checkpoint)),
                    _ => {
                        return Err(ServerError::Inconsistent(format!(
                            "the checkpoint at time {time} in {}, which every process of the cluster resumes from, is damaged ({}); move this process's checkpoints aside on every process to replay the log",
                            store.dir().display(),
                            skipped.join("; ")
                        )));
                    }
                },
            }
        } else {
            store.load(&fingerprint, &mut skipped)?
        };
        let (first, durable) = (log.first_offset()?, log.durable_offset());
        let checkpoint = match loaded {
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
                Some(checkpoint)
            }
            None if first > 0 => {
                return Err(ServerError::Inconsistent(format!(
                    "no usable checkpoint in {}{}, and retention removed the log before offset {first}; run `coldstream rebuild --data DIR` to recompute the views from the Parquet archive",
                    store.dir().display(),
                    if skipped.is_empty() { String::new() } else { format!(" (damaged: {})", skipped.join("; ")) },
                )));
            }
            None => None,
        };
        Ok(ResumePoint { fingerprint, checkpoint })
    }

    /// The seq map a restart of the ingest starts from.
    pub fn seqs(&self) -> SeqSnapshot {
        self.checkpoint.as_ref().map(|c| c.seqs.clone()).unwrap_or_default()
    }
}

/// How often the pipeline checkpoints, and what retention may remove.
pub struct CheckpointPolicy {
    /// Where checkpoints go.
    pub store: CheckpointStore,
    /// A checkpoint whenever the ingest time enters a new interval of this
    /// many milliseconds...
    pub every_ms: u64,
    /// ... or a commit starts this many records after the last one.
    pub every_records: u64,
    /// The ingest's latest seq map, for each checkpoint.
    pub seqs: Box<dyn Fn() -> SeqSnapshot + Send>,
    /// Log retention after each checkpoint; `None` removes nothing.
    pub retention_ms: Option<u64>,
}

/// Everything a pipeline is made of.
pub struct PipelineSpec {
    /// The log the workers read.
    pub log: Arc<dyn OpenReader>,
    /// The views' settings (the pipeline supplies their hooks).
    pub views: ViewConfig,
    /// Timely worker threads (in each process of the cluster).
    pub workers: usize,
    /// The processes the workers run on.
    pub cluster: Cluster,
    /// Where the views' changes go.
    pub sinks: ViewSinks,
    /// Where the views start.
    pub resume: ResumePoint,
    /// Checkpoints and retention.
    pub checkpoints: CheckpointPolicy,
    /// Where the pipeline reports how far the views have got.
    pub progress: Arc<Progress>,
    /// Where the view sink reports that it stopped.
    pub failures: Failures,
}

/// A running pipeline: the workers and the view sink.
pub struct Pipeline {
    workers: Workers,
    /// Tells the view sink that the workers are gone without finishing.
    abandon: std::sync::mpsc::SyncSender<ViewMessage>,
    view_sink: JoinHandle<Result<(), ServerError>>,
}

impl Pipeline {
    /// Restores the sinks and the operators from the resume point and
    /// starts the view sink and the workers.
    pub fn start(spec: PipelineSpec) -> Result<Pipeline, ServerError> {
        let PipelineSpec { log, views, workers, cluster, mut sinks, resume, checkpoints: policy, progress, failures } =
            spec;
        let workers = workers.max(1);
        let ResumePoint { fingerprint, checkpoint } = resume;
        let (dataflow, offset) = match checkpoint {
            Some(checkpoint) => {
                sinks.restore(&checkpoint.sinks, checkpoint.sink_frontier)?;
                (Some(checkpoint.dataflow), checkpoint.offset)
            }
            None => (None, 0),
        };
        tracing::info!(
            resume_offset = offset,
            views_covered_ms = sinks.resumes_at(),
            last_ingest = ?log.durable_ingest_ms(),
            "views resume"
        );
        let (changes, messages) = sync_channel(256);
        let checkpoints = {
            let changes = changes.clone();
            let deliver = move |snapshot| {
                let _ = changes.send(ViewMessage::Snapshot(snapshot));
            };
            if cluster.is_multi() {
                let first = cluster.first_worker(workers);
                Checkpoints::on_workers(dataflow, first..first + workers, deliver)
            } else {
                Checkpoints::new(dataflow, deliver)
            }
        };
        let checkpointing = Checkpointing::new(
            policy.store,
            fingerprint,
            checkpoints.clone(),
            policy.seqs,
            Arc::clone(&log),
            policy.retention_ms,
            progress,
        )?;
        let view_sink = supervised("view sink", &failures, move || sink_views(messages, sinks, checkpointing))?;
        let views = ViewConfig { hooks: OperatorHooks { checkpoints, ..views.hooks }, ..views };
        let resume =
            Resume { offset, checkpoint_every_ms: policy.every_ms, checkpoint_every_records: policy.every_records };
        let abandon = changes.clone();
        let workers = Workers::start(workers, &cluster, views, log, changes, resume, &failures)?;
        Ok(Pipeline { workers, abandon, view_sink })
    }

    /// How far the workers have read the log.
    pub fn read_progress(&self) -> Arc<crate::workers::ReadProgress> {
        self.workers.read_progress()
    }

    /// Reads the log to its durable end, hands every change to the sinks,
    /// takes a last checkpoint and waits for all of it.
    pub fn stop(self) -> Result<(), ServerError> {
        let unfinished = match self.workers.stop() {
            Stopped::Finished => None,
            Stopped::Panicked(panic) => Some(format!(
                "the timely workers stopped ({panic}): the views wrote what was final, without a last checkpoint; the next start resumes from the one before"
            )),
            Stopped::Abandoned => Some(
                "the other processes of the cluster did not stop within 30 s, so the views could not finish: stopped without a last checkpoint (the cluster resumes from the one before); stop every process of a cluster together".to_owned(),
            ),
        };
        if let Some(unfinished) = unfinished {
            let _ = self.abandon.send(ViewMessage::Abandoned);
            let _ = self.view_sink.join();
            return Err(ServerError::Inconsistent(unfinished));
        }
        self.view_sink.join().unwrap_or_else(|panic| {
            Err(ServerError::Inconsistent(format!("the view sink panicked: {}", panic_message(&*panic))))
        })
    }
}
