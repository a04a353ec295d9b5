//! Group commit: the one writer of the event log.
//!
//! Connections hand batches of candidate records to [`Ingest::append`]
//! through a bounded queue; a dedicated thread drains whatever is queued,
//! drops duplicates by `(source_id, seq)`, appends the rest with one ingest
//! time, fsyncs once, and only then answers every waiting batch. A stalled
//! disk therefore fills the queue and slows acks; it never grows memory.
//!
//! The highest durable seq of every source survives restarts: the writer
//! publishes a copy with the log offset it covers (about four times a second),
//! the server keeps the latest in its checkpoints, and on start the map is
//! that copy plus what the log holds after its offset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::log::{EventLog, LogError, OpenReader};
use crate::proto::{self, LogEntry, log_entry::Entry};

/// A record offered for appending.
#[derive(Debug)]
pub enum Candidate {
    /// An event that passed the acceptance rules.
    Accepted(proto::Event),
    /// A rejected event, for the dead letter (never deduplicated).
    Rejected(proto::RejectedEvent),
}

/// What became of a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Appended and fsynced.
    Appended,
    /// Its `(source_id, seq)` was already durable; not appended again.
    Duplicate,
    /// Kept in the dead letter, fsynced.
    DeadLettered,
}

/// Why a batch could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The log failed; nothing of the batch is acknowledged.
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// The writer has stopped (the server is shutting down).
    #[error("the log writer has stopped")]
    Stopped,
}

impl IngestError {
    /// Whether the sender should retry later.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// Settings of the writer.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Batches waiting for the writer, at most.
    pub queue_batches: usize,
    /// Records in one group commit, at most.
    pub max_commit_records: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { queue_batches: 1024, max_commit_records: 50_000 }
    }
}

/// A queued batch: resolves once the batch is durable (or failed).
pub struct Pending(oneshot::Receiver<Result<Vec<Outcome>, IngestError>>);

impl std::future::Future for Pending {
    type Output = Result<Vec<Outcome>, IngestError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|answer| answer.unwrap_or(Err(IngestError::Stopped)))
    }
}

struct Request {
    candidates: Vec<Candidate>,
    reply: oneshot::Sender<Result<Vec<Outcome>, IngestError>>,
}

/// The handle connections append through. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Request>,
    highest: Arc<Mutex<HashMap<String, u64>>>,
    published: Arc<Mutex<SeqSnapshot>>,
    readers: Arc<dyn OpenReader>,
}

/// Milliseconds since the Unix epoch on the gateway clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The highest durable seq of every source, and the log offset up to which
/// it covers the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeqSnapshot {
    /// Every record before this offset is in `highest`.
    pub offset: u64,
    /// `source_id → seq`.
    pub highest: HashMap<String, u64>,
}

/// How often the writer publishes a [`SeqSnapshot`].
const SEQ_SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The highest seq of every source: `start`, then the log from its offset.
fn highest_seqs(readers: &dyn OpenReader, start: SeqSnapshot) -> Result<HashMap<String, u64>, LogError> {
    let SeqSnapshot { offset, mut highest } = start;
    let first = readers.first_offset()?;
    if offset < first {
        tracing::warn!(
            covered = offset,
            log_starts_at = first,
            "retention removed records that no seq snapshot covers; duplicates of them will not be recognised"
        );
    }
    let mut reader = readers.open(offset.clamp(first, readers.durable_offset()))?;
    let mut records = Vec::with_capacity(4096);
    loop {
        records.clear();
        if reader.read(4096, &mut records)? == 0 {
            return Ok(highest);
        }
        for (_, record) in records.drain(..) {
            if let Ok(crate::log::Entry::Accepted(event)) = record.decode() {
                let seq = highest.entry(event.source_id).or_insert(0);
                *seq = (*seq).max(event.seq);
            }
        }
    }
}

impl Ingest {
    /// Starts the writer thread over `log`, with the seqs of `start` (a
    /// checkpointed [`SeqSnapshot`]; the default reads the whole log).
    pub fn start(
        log: Box<dyn EventLog>,
        config: IngestConfig,
        start: SeqSnapshot,
    ) -> Result<(Ingest, JoinHandle<()>), LogError> {
        let readers = log.readers();
        let highest = highest_seqs(readers.as_ref(), start)?;
        let published =
            Arc::new(Mutex::new(SeqSnapshot { offset: readers.durable_offset(), highest: highest.clone() }));
        let highest = Arc::new(Mutex::new(highest));
        let (queue, requests) = mpsc::channel(config.queue_batches.max(1));
        let writer = Writer {
            log,
            requests,
            highest: Arc::clone(&highest),
            published: Arc::clone(&published),
            last_published: std::time::Instant::now(),
            config,
        };
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| LogError::io("starting the log writer thread", e))?;
        Ok((Ingest { queue, highest, published, readers }, thread))
    }

    /// The latest published copy of the seq map and the offset it covers.
    pub fn seqs(&self) -> SeqSnapshot {
        self.published.lock().expect("the seq snapshot is never poisoned").clone()
    }

    /// Queues a batch, waiting for room in the queue, and returns the
    /// future of its outcome. Batches are committed in the order they were
    /// queued, so a connection that queues in order is deduplicated in order.
    pub async fn submit(&self, candidates: Vec<Candidate>) -> Result<Pending, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Request { candidates, reply }).await.map_err(|_| IngestError::Stopped)?;
        Ok(Pending(answer))
    }

    /// Appends a batch and waits until it is durable.
    pub async fn append(&self, candidates: Vec<Candidate>) -> Result<Vec<Outcome>, IngestError> {
        self.submit(candidates).await?.await
    }

    /// The highest durable seq of `source_id` (0 if none).
    pub fn highest_durable_seq(&self, source_id: &str) -> u64 {
        self.highest.lock().expect("the seq map is never poisoned").get(source_id).copied().unwrap_or(0)
    }

    /// Opens readers of the log this writer appends to.
    pub fn readers(&self) -> Arc<dyn OpenReader> {
        Arc::clone(&self.readers)
    }
}

struct Writer {
    log: Box<dyn EventLog>,
    requests: mpsc::Receiver<Request>,
    highest: Arc<Mutex<HashMap<String, u64>>>,
    published: Arc<Mutex<SeqSnapshot>>,
    last_published: std::time::Instant,
    config: IngestConfig,
}

impl Writer {
    fn run(mut self) {
        let mut group: Vec<Request> = Vec::new();
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        while let Some(first) = self.requests.blocking_recv() {
            let mut records = first.candidates.len();
            group.push(first);
            while records < self.config.max_commit_records {
                match self.requests.try_recv() {
                    Ok(request) => {
                        records += request.candidates.len();
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut group, &mut payloads);
        }
        let highest = self.highest.lock().expect("the seq map is never poisoned").clone();
        *self.published.lock().expect("the seq snapshot is never poisoned") =
            SeqSnapshot { offset: self.log.end_offset(), highest };
        tracing::debug!("log writer stopped: every connection has closed");
    }

    fn commit(&mut self, group: &mut Vec<Request>, payloads: &mut Vec<Vec<u8>>) {
        payloads.clear();
        let mut pending: HashMap<String, u64> = HashMap::new();
        let mut outcomes: Vec<Vec<Outcome>> = Vec::with_capacity(group.len());
        {
            let highest = self.highest.lock().expect("the seq map is never poisoned");
            for request in group.iter_mut() {
                let mut answer = Vec::with_capacity(request.candidates.len());
                for candidate in request.candidates.drain(..) {
                    let entry = match candidate {
                        Candidate::Accepted(event) => {
                            let durable = highest.get(&event.source_id).copied().unwrap_or(0);
                            let seen = pending.get(&event.source_id).copied().unwrap_or(0).max(durable);
                            if event.seq <= seen {
                                answer.push(Outcome::Duplicate);
                                continue;
                            }
                            pending.insert(event.source_id.clone(), event.seq);
                            answer.push(Outcome::Appended);
                            Entry::Accepted(event)
                        }
                        Candidate::Rejected(rejected) => {
                            answer.push(Outcome::DeadLettered);
                            Entry::Rejected(rejected)
                        }
                    };
                    payloads.push(LogEntry { entry: Some(entry) }.encode_to_vec());
                }
                outcomes.push(answer);
            }
        }
        let result = if payloads.is_empty() {
            Ok(())
        } else {
            let ingest_ms = now_ms().max(self.log.last_ingest_ms().map_or(0, |t| t + 1));
            self.log.append(ingest_ms, payloads).and_then(|_| self.log.sync())
        };
        match result {
            Ok(()) => {
                let mut highest = self.highest.lock().expect("the seq map is never poisoned");
                for (source, seq) in pending {
                    highest.insert(source, seq);
                }
                let snapshot = (self.last_published.elapsed() >= SEQ_SNAPSHOT_EVERY)
                    .then(|| SeqSnapshot { offset: self.log.end_offset(), highest: highest.clone() });
                drop(highest);
                if let Some(snapshot) = snapshot {
                    *self.published.lock().expect("the seq snapshot is never poisoned") = snapshot;
                    self.last_published = std::time::Instant::now();
                }
                for (request, answer) in group.drain(..).zip(outcomes) {
                    let _ = request.reply.send(Ok(answer));
                }
            }
            Err(error) => {
                tracing::error!(%error, "group commit failed; the batches are not acknowledged");
                let message = error.to_string();
                for request in group.drain(..) {
                    let _ = request.reply.send(Err(IngestError::Log(LogError::Failed(message.clone()))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use coldstream_pipelines::Event;
    use coldstream_pipelines::fleet::{Fleet, FleetSpec};

    use super::*;
    use crate::log::embedded::{EmbeddedConfig, EmbeddedLog};

    /// One fridge's first events, seqs 1, 2, …
    fn events() -> Vec<Event> {
        let spec =
            FleetSpec { seed: 5, fridges: 1, events: 12, start_us: 1_767_225_600_000_000, bad_rate: 0.0, skus: None };
        let mut fleet = Fleet::new(&spec);
        let events = fleet.fridges[0].events_until(i64::MAX);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
        events
    }

    fn candidates(events: &[Event]) -> Vec<Candidate> {
        events.iter().map(|event| Candidate::Accepted(crate::convert::encode(event))).collect()
    }

    fn start(dir: &std::path::Path) -> (Ingest, JoinHandle<()>) {
        let log = EmbeddedLog::open(dir, EmbeddedConfig::default()).expect("opens");
        Ingest::start(Box::new(log), IngestConfig::default(), SeqSnapshot::default()).expect("starts")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_seq_at_or_below_the_highest_durable_one_is_a_duplicate_across_batches_and_restarts() {
        use Outcome::{Appended, Duplicate};
        let dir = tempfile::tempdir().expect("temp dir");
        let events = events();
        let (ingest, writer) = start(dir.path());
        assert_eq!(ingest.append(candidates(&events[..5])).await.expect("durable"), [Appended; 5]);
        let resent = ingest.append(candidates(&events[3..8])).await.expect("durable");
        assert_eq!(resent, [Duplicate, Duplicate, Appended, Appended, Appended]);
        assert_eq!(ingest.highest_durable_seq(&events[0].source_id), 8);
        drop(ingest);
        writer.join().expect("the writer stops");
        // After a restart the seqs come back from the log itself.
        let (ingest, _writer) = start(dir.path());
        assert_eq!(ingest.highest_durable_seq(&events[0].source_id), 8);
        let after = ingest.append(candidates(&events[6..10])).await.expect("durable");
        assert_eq!(after, [Duplicate, Duplicate, Appended, Appended]);
        let mut reader = ingest.readers().open(0).expect("reads");
        let mut records = Vec::new();
        while reader.read(100, &mut records).expect("reads") > 0 {}
        assert_eq!(records.len(), 10, "each event is in the log once");
    }
}
