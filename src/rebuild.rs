//! `coldstream rebuild`: recomputes every view from the Parquet archive
//! alone, for when the checkpoints are lost or the view definitions or
//! settings change.
//!
//! The archive (`events/`, `rejected/`) holds every log record with its
//! ingest time, in ranges of log offsets. [`ArchiveLog`] serves it as a
//! read-only log, so the rebuild runs the very dataflow the server runs,
//! at the same logical times: the changes, the order ids and the webhook
//! ids come out as they did live. The old `views/` is moved to
//! `views.before-rebuild/`, new changelogs are written, webhook messages
//! newer than the outbox's covered time are queued for the next start,
//! and a checkpoint at the archive's end lets `coldstream run` go on from
//! the log after it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use coldstream_pipelines::checkpoint::Checkpoints;
use coldstream_pipelines::operators::OperatorHooks;
use coldstream_pipelines::views::ViewConfig;
use coldstream_pipelines::{Event, Time};
use coldstream_sinks::parquet::archive::{ArchivedRanges, read_events};
use coldstream_sinks::parquet::{ViewChangelogs, list_parts};
use coldstream_sinks::webhooks::Webhooks;
use coldstream_sources::ingest::SeqSnapshot;
use coldstream_sources::log::{LogError, LogReader, OpenReader, Record};
use coldstream_sources::proto::{LogEntry, log_entry::Entry};
use prost::Message;

use crate::checkpoint::{CheckpointStore, Gatherer, ViewsFingerprint};
use crate::config::Config;
use crate::runtime::{Resume, ViewMessage, Workers};
use crate::server::{Checkpointing, Progress, ServerError};

/// The archive as a read-only log: every range's records at their offsets,
/// accepted events in ingest-time order, each rejection as an empty record.
/// Cloning shares it.
#[derive(Clone)]
pub struct ArchiveLog(Arc<Archive>);

struct Archive {
    ranges: Vec<((u64, u64), Vec<PathBuf>, usize)>,
    end: u64,
    last_ingest_ms: Option<u64>,
}

impl ArchiveLog {
    /// Lists the archive under the data directory `root`; it must run from
    /// offset 0 without a gap.
    pub fn open(root: &Path) -> Result<ArchiveLog, ServerError> {
        let archived = ArchivedRanges::list(root)?;
        archived.check_contiguous()?;
        let end = archived.end();
        let ranges: Vec<_> =
            archived.ranges.into_iter().map(|(range, (files, rejected))| (range, files, rejected)).collect();
        let last_ingest_ms = match ranges.last() {
            Some((_, files, _)) => {
                let mut last = None;
                for file in files {
                    last = last.max(read_events(file)?.iter().map(|(t, _)| *t).max());
                }
                last
            }
            None => None,
        };
        Ok(ArchiveLog(Arc::new(Archive { ranges, end, last_ingest_ms })))
    }

    /// The offset after the last archived record.
    pub fn end(&self) -> u64 {
        self.0.end
    }

    /// The records of the range at `index`, in offset order.
    fn records(&self, index: usize) -> Result<Vec<Record>, LogError> {
        let ((from, to), files, rejected) = &self.0.ranges[index];
        let mut events = Vec::new();
        for file in files {
            events.extend(read_events(file).map_err(|e| LogError::Corrupt {
                file: file.display().to_string(),
                position: 0,
                reason: e.to_string(),
            })?);
        }
        // Day partitions split a range; its records are in ingest order.
        events.sort_by_key(|(ingest_ms, _)| *ingest_ms);
        let count = (to - from) as usize;
        if events.len() + rejected != count {
            tracing::warn!(
                from,
                to,
                events = events.len(),
                rejected,
                "an archive range does not hold one row per offset"
            );
        }
        let last = events.last().map_or(0, |(t, _)| *t);
        let mut records: Vec<Record> = events
            .into_iter()
            .map(|(ingest_ms, event)| Record {
                ingest_ms,
                payload: LogEntry { entry: Some(Entry::Accepted(coldstream_sources::convert::encode(&event))) }
                    .encode_to_vec(),
            })
            .collect();
        // Rejections carry nothing the views read; they keep the offsets.
        records.resize(count, Record { ingest_ms: last, payload: Vec::new() });
        Ok(records)
    }
}

impl OpenReader for ArchiveLog {
    fn open(&self, offset: u64) -> Result<Box<dyn LogReader>, LogError> {
        if offset > self.0.end {
            return Err(LogError::OutOfRange { requested: offset, end: self.0.end });
        }
        let ranges = &self.0.ranges;
        let index = ranges.iter().position(|((_, to), _, _)| *to > offset).unwrap_or(ranges.len());
        Ok(Box::new(ArchiveReader { log: self.clone(), index, buffered: Vec::new(), position: offset }))
    }

    fn durable_offset(&self) -> u64 {
        self.0.end
    }

    fn first_offset(&self) -> Result<u64, LogError> {
        Ok(0)
    }

    fn durable_ingest_ms(&self) -> Option<u64> {
        self.0.last_ingest_ms
    }

    fn subscribe(&self, _wake: Box<dyn Fn() + Send + Sync>) {}
}

struct ArchiveReader {
    log: ArchiveLog,
    /// The next range to load.
    index: usize,
    /// The loaded range's records from `position` on, reversed.
    buffered: Vec<Record>,
    position: u64,
}

impl LogReader for ArchiveReader {
    fn read(&mut self, max: usize, out: &mut Vec<(u64, Record)>) -> Result<usize, LogError> {
        let mut read = 0;
        while read < max {
            if self.buffered.is_empty() {
                let Some(((from, _), _, _)) = self.log.0.ranges.get(self.index) else { break };
                let mut records = self.log.records(self.index)?;
                records.drain(..(self.position - from) as usize);
                records.reverse();
                self.buffered = records;
                self.index += 1;
                continue;
            }
            let record = self.buffered.pop().expect("checked non-empty");
            out.push((self.position, record));
            self.position += 1;
            read += 1;
        }
        Ok(read)
    }

    fn position(&self) -> u64 {
        self.position
    }
}

/// The highest seq of every source in the archive.
fn archived_seqs(root: &Path) -> Result<HashMap<String, u64>, ServerError> {
    let mut highest: HashMap<String, u64> = HashMap::new();
    for (path, _, _) in list_parts(&root.join("events"))? {
        for (_, event) in read_events(&path)? {
            let seq = highest.entry(event.source_id).or_insert(0);
            *seq = (*seq).max(event.seq);
        }
    }
    Ok(highest)
}

/// What a rebuild did.
#[derive(Debug)]
pub struct Rebuilt {
    /// Log records replayed from the archive.
    pub records: u64,
    /// The checkpoint's logical time.
    pub time: Time,
    /// Where the log resumes.
    pub offset: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Recomputes every view of `config.data_dir` from its archive.
pub async fn rebuild(config: &Config) -> Result<Rebuilt, ServerError> {
    let started = Instant::now();
    let root = config.data_dir.clone();
    let log = ArchiveLog::open(&root)?;
    if log.end() == 0 {
        return Err(ServerError::Inconsistent(format!(
            "{} holds no archived events (events/ is empty or missing); nothing to rebuild from",
            root.display()
        )));
    }
    let views_dir = root.join("views");
    if views_dir.exists() {
        let aside = root.join("views.before-rebuild");
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(|e| io(format!("removing {}", aside.display()), e))?;
        }
        std::fs::rename(&views_dir, &aside).map_err(|e| io(format!("moving {} aside", views_dir.display()), e))?;
    }
    let store = CheckpointStore::open(&root, config.checkpoint.keep)?;
    let checkpoints_dir = store.dir().to_path_buf();
    std::fs::remove_dir_all(&checkpoints_dir).map_err(|e| io(format!("removing {}", checkpoints_dir.display()), e))?;
    let store = CheckpointStore::open(&root, config.checkpoint.keep)?;

    let parquet = config.parquet();
    let changelogs = ViewChangelogs::open(&root, parquet.clone())?;
    let (webhooks, dispatchers) =
        Webhooks::start(&root, &config.webhooks()?, parquet, Arc::new(AtomicBool::new(false)))?;
    // The server delivers what the rebuild queues, at its next start.
    for dispatcher in dispatchers {
        dispatcher.abort();
    }
    webhooks.stopping().store(true, std::sync::atomic::Ordering::Release);

    let (changes, messages) = std::sync::mpsc::sync_channel(256);
    let checkpoints = {
        let changes = changes.clone();
        Checkpoints::new(None, move |snapshot| {
            let _ = changes.send(ViewMessage::Snapshot(snapshot));
        })
    };
    let views = config.views();
    let fingerprint = ViewsFingerprint::of(&views);
    let progress = Arc::new(Progress::default());
    let seqs = SeqSnapshot { offset: log.end(), highest: archived_seqs(&root)? };
    let checkpointing = Checkpointing {
        store,
        gatherer: Gatherer::default(),
        fingerprint,
        checkpoints: checkpoints.clone(),
        seqs: Box::new(move || seqs.clone()),
        log_dir: root.join("log"),
        retention_ms: None,
        progress: Arc::clone(&progress),
    };
    let sink = {
        let progress = Arc::clone(&progress);
        std::thread::Builder::new()
            .name("view-sink".into())
            .spawn(move || crate::server::sink_views(messages, changelogs, webhooks, &progress, checkpointing))
            .map_err(|source| ServerError::Thread { name: "view-sink", source })?
    };
    let views = ViewConfig { hooks: OperatorHooks { checkpoints, ..views.hooks }, ..views };
    // One checkpoint, at the end.
    let resume = Resume { offset: 0, checkpoint_every_ms: u64::MAX, checkpoint_every_records: u64::MAX };
    let readers: Arc<dyn OpenReader> = Arc::new(log.clone());
    let workers = Workers::start(config.worker_threads(), views, readers, changes, resume)?;
    tokio::task::spawn_blocking(move || workers.stop())
        .await
        .map_err(|e| ServerError::Inconsistent(format!("the rebuild's workers failed: {e}")))?;
    sink.join().map_err(|_| ServerError::Inconsistent("the rebuild's view sink failed".into()))??;
    let written = store_newest(&root, config)?;
    let (time, offset) = written.ok_or_else(|| {
        ServerError::Inconsistent("the rebuild finished but wrote no checkpoint; run it again".into())
    })?;
    Ok(Rebuilt { records: log.end(), time, offset, elapsed: started.elapsed() })
}

/// The newest checkpoint's time and log offset.
fn store_newest(root: &Path, config: &Config) -> Result<Option<(Time, u64)>, ServerError> {
    let store = CheckpointStore::open(root, config.checkpoint.keep)?;
    let fingerprint = ViewsFingerprint::of(&config.views());
    Ok(store.load(&fingerprint, &mut Vec::new())?.map(|(_, c)| (c.dataflow.time, c.offset)))
}

fn io(context: String, source: std::io::Error) -> ServerError {
    ServerError::Inconsistent(format!("{context}: {source}"))
}

/// Every archived event with its ingest time, in ingest order: what the
/// batch references are computed from.
pub fn archived_events(root: &Path) -> Result<Vec<(u64, Event)>, ServerError> {
    let mut all = Vec::new();
    for (path, _, _) in list_parts(&root.join("events"))? {
        all.extend(read_events(&path)?);
    }
    all.sort_by_key(|(ingest_ms, _)| *ingest_ms);
    Ok(all)
}

/// Counts every archived event by `(source_id, seq)`.
pub fn archived_counts(events: &[(u64, Event)]) -> BTreeMap<(String, u64), usize> {
    let mut counts = BTreeMap::new();
    for (_, event) in events {
        *counts.entry((event.source_id.clone(), event.seq)).or_insert(0) += 1;
    }
    counts
}
