//! Group commit: the one writer of the event log.
//!
//! Connections hand batches of candidate records to [`Ingest::append`]
//! through a bounded queue; a dedicated thread drains whatever is queued,
//! applies the seq rules, appends what passes with one ingest time, fsyncs
//! once, and only then answers every waiting batch. A stalled disk
//! therefore fills the queue and slows acks; it never grows memory.
//!
//! The seq rules (see the README's "Sources and seqs"): every source (a
//! [`Principal`]: fridges and back-office clients are separate namespaces)
//! has a [`Position`], its highest durable `(incarnation, seq)`. An event
//! of a lower incarnation is refused as stale; a higher incarnation starts
//! a new seq space at 0; a seq at or below the position is a duplicate; a
//! seq more than `max_seq_gap` above it is refused (`seq_gap`), so one bad
//! counter cannot silence a fridge.
//!
//! The positions survive restarts: the writer publishes a copy with the log
//! offset it covers (about four times a second), the server keeps the
//! latest in its checkpoints, and on start the map is that copy plus what
//! the log holds after its offset.
//!
//! On a log with several writers (gateways sharing a Fluvio topic), a
//! follower thread also reads what the others append into the positions,
//! and a fridge's `Welcome` waits until it has read everything the log held
//! when the fridge said `Hello` ([`Ingest::catch_up`]): the highest durable
//! seq it is given counts what any gateway acknowledged. Appends still in
//! flight at another gateway cannot be seen; their copies are dropped
//! where the log is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use coldstream_pipelines::metrics::{Counter, Histogram, Registry};
use coldstream_pipelines::traces::{self, Traces};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Principal;
use crate::convert::Rejection;
use crate::log::{EventLog, LogError, OpenReader};
use crate::proto::{self, LogEntry, RejectReason, RejectedEvent, log_entry::Entry};

/// A record offered for appending.
#[derive(Debug)]
pub enum Candidate {
    /// An event that passed the acceptance rules; the seq rules remain.
    Accepted {
        /// The event.
        event: proto::Event,
        /// Who sent it: the namespace its seq lives in.
        source: Principal,
        /// The sender's incarnation.
        incarnation: u64,
    },
    /// A rejected event, for the dead letter (never deduplicated).
    Rejected(proto::RejectedEvent),
}

/// What became of a candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Appended and fsynced.
    Appended,
    /// Its `(source, incarnation, seq)` was already durable; not appended again.
    Duplicate,
    /// Rejected before it was offered; kept in the dead letter, fsynced.
    DeadLettered,
    /// Refused by the seq rules; kept in the dead letter, fsynced.
    Refused(Rejection),
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

/// Settings of the writer.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Batches waiting for the writer, at most.
    pub queue_batches: usize,
    /// Records in one group commit, at most.
    pub max_commit_records: usize,
    /// How far above a source's highest durable seq a seq may jump.
    pub max_seq_gap: u64,
    /// Where the writer's instruments are registered.
    pub metrics: Registry,
    /// Where a followed batch's span waits for the views after its commit.
    pub traces: Traces,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            queue_batches: 1024,
            max_commit_records: 50_000,
            max_seq_gap: 1_000_000,
            metrics: Registry::default(),
            traces: Traces::default(),
        }
    }
}

/// What the log writer measures (`coldstream_log_*`).
struct WriterMetrics {
    commit_records: Histogram,
    commit_batches: Histogram,
    fsync_seconds: Histogram,
    commits_failed: Counter,
    appended: Counter,
}

impl WriterMetrics {
    fn register(registry: &Registry) -> WriterMetrics {
        use coldstream_pipelines::metrics::{LATENCY_SECONDS, SIZES};
        WriterMetrics {
            commit_records: registry.histogram(
                "coldstream_log_commit_records",
                "Records in one group commit (accepted and rejected events).",
                &[],
                SIZES,
            ),
            commit_batches: registry.histogram(
                "coldstream_log_commit_batches",
                "Batches acknowledged by one group commit.",
                &[],
                SIZES,
            ),
            fsync_seconds: registry.histogram(
                "coldstream_log_fsync_seconds",
                "Time to make one group commit durable (the log's sync).",
                &[],
                LATENCY_SECONDS,
            ),
            commits_failed: registry.counter(
                "coldstream_log_commits_failed_total",
                "Group commits that failed (a full disk, an I/O error); their batches were not acknowledged.",
                &[],
            ),
            appended: registry.counter(
                "coldstream_log_records_appended_total",
                "Records appended to the log and made durable.",
                &[],
            ),
        }
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
    /// The batch's span, when it is followed.
    span: Option<tracing::Span>,
}

/// The handle connections append through. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Request>,
    failing: Arc<Mutex<Option<String>>>,
    highest: Arc<Mutex<HashMap<Principal, Position>>>,
    published: Arc<Mutex<SeqSnapshot>>,
    readers: Arc<dyn OpenReader>,
    /// On a log with several writers: how far the follower has read.
    followed: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// How long a `Welcome` waits for the follower to catch up.
const CATCH_UP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Milliseconds since the Unix epoch on the gateway clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Where a source stands: its highest durable seq, in its highest
/// incarnation. Ordered by incarnation, then seq.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The incarnation.
    pub incarnation: u64,
    /// The highest durable seq in it (0 before its first event).
    pub seq: u64,
}

impl Position {
    /// The highest durable seq as a source in `incarnation` sees it: 0 in
    /// a newer incarnation, `None` in a stale one.
    pub fn seq_in(self, incarnation: u64) -> Option<u64> {
        match incarnation.cmp(&self.incarnation) {
            std::cmp::Ordering::Less => None,
            std::cmp::Ordering::Equal => Some(self.seq),
            std::cmp::Ordering::Greater => Some(0),
        }
    }
}

/// The stale-incarnation refusal, in one wording for streams and events.
pub fn stale(source: &Principal, incarnation: u64, position: Position) -> String {
    format!(
        "{source} announced incarnation {incarnation}, but incarnation {} is already durable: a stale device or a restored image; raise the incarnation",
        position.incarnation
    )
}

/// What the seq rules make of an event of `source` at `incarnation`, `seq`,
/// when the source stands at `position`.
fn judge(
    source: &Principal,
    position: Position,
    incarnation: u64,
    seq: u64,
    max_gap: u64,
) -> Result<Option<Position>, Rejection> {
    let Some(highest) = position.seq_in(incarnation) else {
        return Err(Rejection { code: RejectReason::StaleIncarnation, message: stale(source, incarnation, position) });
    };
    if seq <= highest {
        return Ok(None);
    }
    if seq - highest > max_gap {
        return Err(Rejection {
            code: RejectReason::SeqGap,
            message: format!(
                "seq {seq} is {} above the highest durable seq {highest} (gateway.max_seq_gap is {max_gap}); send the events in between first",
                seq - highest
            ),
        });
    }
    Ok(Some(Position { incarnation, seq }))
}

/// The highest durable position of every source, and the log offset up to
/// which it covers the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeqSnapshot {
    /// Every record before this offset is in `highest`.
    pub offset: u64,
    /// `source → position`.
    pub highest: HashMap<Principal, Position>,
}

impl SeqSnapshot {
    /// Takes in an accepted event read back from a log or an archive.
    pub fn observe(&mut self, event: &coldstream_pipelines::Event) {
        let source = if event.kind().is_back_office() {
            Principal::BackOffice(event.source_id.clone())
        } else {
            Principal::Fridge(event.source_id.clone())
        };
        let position = self.highest.entry(source).or_default();
        *position = (*position).max(Position { incarnation: event.incarnation, seq: event.seq });
    }
}

/// How often the writer publishes a [`SeqSnapshot`].
const SEQ_SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The position of every source: `start`, then the log from its offset;
/// with the offset read up to.
fn highest_seqs(readers: &dyn OpenReader, start: SeqSnapshot) -> Result<SeqSnapshot, LogError> {
    let offset = start.offset;
    let mut seqs = start;
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
            seqs.offset = reader.position();
            return Ok(seqs);
        }
        for (_, record) in records.drain(..) {
            if let Ok(crate::log::Entry::Accepted(event)) = record.decode() {
                seqs.observe(&event);
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
        let read = highest_seqs(readers.as_ref(), start)?;
        let followed = readers.shared().then(|| Arc::new(std::sync::atomic::AtomicU64::new(read.offset)));
        let published = Arc::new(Mutex::new(read.clone()));
        let highest = Arc::new(Mutex::new(read.highest));
        if let Some(followed) = &followed {
            let reader = readers.open(read.offset)?;
            let (highest, followed, readers) = (Arc::downgrade(&highest), Arc::clone(followed), Arc::clone(&readers));
            std::thread::Builder::new()
                .name("log follower".into())
                .spawn(move || follow(readers.as_ref(), reader, &highest, &followed))
                .map_err(|e| LogError::io("starting the log follower thread", e))?;
        }
        let (queue, requests) = mpsc::channel(config.queue_batches.max(1));
        let failing = Arc::new(Mutex::new(None));
        let writer = Writer {
            log,
            failing: Arc::clone(&failing),
            requests,
            highest: Arc::clone(&highest),
            published: Arc::clone(&published),
            last_published: std::time::Instant::now(),
            metrics: WriterMetrics::register(&config.metrics),
            config,
        };
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| LogError::io("starting the log writer thread", e))?;
        Ok((Ingest { queue, failing, highest, published, readers, followed }, thread))
    }

    /// On a log with several writers, waits (at most 10 s) until the
    /// positions hold every record the log held at the call, so that a
    /// position read next counts what other gateways acknowledged.
    pub async fn catch_up(&self) {
        let Some(followed) = &self.followed else { return };
        let readers = Arc::clone(&self.readers);
        let target = match tokio::task::spawn_blocking(move || readers.latest_offset()).await {
            Ok(Ok(target)) => target,
            Ok(Err(error)) => {
                tracing::warn!(%error, "finding the log's end; answering with the positions read so far");
                return;
            }
            Err(_) => return,
        };
        let deadline = tokio::time::Instant::now() + CATCH_UP_PATIENCE;
        while followed.load(std::sync::atomic::Ordering::Acquire) < target {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(
                    target,
                    "the log follower did not catch up in time; answering with the positions read so far"
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// The latest published copy of the seq map and the offset it covers.
    pub fn seqs(&self) -> SeqSnapshot {
        self.published.lock().expect("the seq snapshot is never poisoned").clone()
    }

    /// Queues a batch, waiting for room in the queue, and returns the
    /// future of its outcome. Batches are committed in the order they were
    /// queued, so a connection that queues in order is deduplicated in order.
    pub async fn submit(&self, candidates: Vec<Candidate>) -> Result<Pending, IngestError> {
        self.submit_traced(candidates, None).await
    }

    /// [`Ingest::submit`], for a batch followed by `span`: its commit is a
    /// child span, and the views' wait after it another.
    pub async fn submit_traced(
        &self,
        candidates: Vec<Candidate>,
        span: Option<tracing::Span>,
    ) -> Result<Pending, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Request { candidates, reply, span }).await.map_err(|_| IngestError::Stopped)?;
        Ok(Pending(answer))
    }

    /// Appends a batch and waits until it is durable.
    pub async fn append(&self, candidates: Vec<Candidate>) -> Result<Vec<Outcome>, IngestError> {
        self.submit(candidates).await?.await
    }

    /// The highest durable position of `source` (zero if none).
    pub fn position(&self, source: &Principal) -> Position {
        self.highest.lock().expect("the seq map is never poisoned").get(source).copied().unwrap_or_default()
    }

    /// Fridges with at least one durable event.
    pub fn fridges_known(&self) -> usize {
        let highest = self.highest.lock().expect("the seq map is never poisoned");
        highest.keys().filter(|source| matches!(source, Principal::Fridge(_))).count()
    }

    /// Why the last group commit failed, while no later one has succeeded:
    /// the log cannot append (a full disk), and fridges are told to retry.
    pub fn log_failure(&self) -> Option<String> {
        self.failing.lock().expect("the failure is never poisoned").clone()
    }

    /// Opens readers of the log this writer appends to.
    pub fn readers(&self) -> Arc<dyn OpenReader> {
        Arc::clone(&self.readers)
    }
}

/// Reads what every writer appends into the positions, until the
/// positions are dropped.
fn follow(
    readers: &dyn OpenReader,
    mut reader: Box<dyn crate::log::LogReader>,
    highest: &std::sync::Weak<Mutex<HashMap<Principal, Position>>>,
    followed: &std::sync::atomic::AtomicU64,
) {
    let this = std::thread::current();
    readers.subscribe(Box::new(move || this.unpark()));
    let mut records = Vec::with_capacity(4096);
    let mut seen = SeqSnapshot::default();
    loop {
        records.clear();
        let read = match reader.read(4096, &mut records) {
            Ok(read) => read,
            Err(error) => {
                tracing::error!(%error, "following the log; retrying");
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
        };
        for (_, record) in records.drain(..) {
            if let Ok(crate::log::Entry::Accepted(event)) = record.decode() {
                seen.observe(&event);
            }
        }
        let Some(highest) = highest.upgrade() else { return };
        if !seen.highest.is_empty() {
            let mut highest = highest.lock().expect("the seq map is never poisoned");
            for (source, position) in seen.highest.drain() {
                let known = highest.entry(source).or_default();
                *known = (*known).max(position);
            }
        }
        followed.store(reader.position(), std::sync::atomic::Ordering::Release);
        if read == 0 {
            std::thread::park_timeout(std::time::Duration::from_millis(100));
        }
    }
}

/// The encoded records of a group commit. Each slot's buffer is kept for
/// the next commit, so that a commit allocates nothing per record.
#[derive(Default)]
struct Encoded {
    buffers: Vec<Vec<u8>>,
    used: usize,
}

impl Encoded {
    /// A buffer larger than this is given back rather than kept.
    const KEEP_BYTES: usize = 4096;

    fn clear(&mut self) {
        for buffer in &mut self.buffers[..self.used] {
            if buffer.capacity() > Self::KEEP_BYTES {
                *buffer = Vec::new();
            }
        }
        self.used = 0;
    }

    fn push(&mut self, record: &impl Message) {
        if self.used == self.buffers.len() {
            self.buffers.push(Vec::new());
        }
        let buffer = &mut self.buffers[self.used];
        buffer.clear();
        record.encode(buffer).expect("a Vec grows to fit what is encoded");
        self.used += 1;
    }

    fn len(&self) -> usize {
        self.used
    }

    fn is_empty(&self) -> bool {
        self.used == 0
    }

    fn as_slice(&self) -> &[Vec<u8>] {
        &self.buffers[..self.used]
    }
}

struct Writer {
    log: Box<dyn EventLog>,
    failing: Arc<Mutex<Option<String>>>,
    requests: mpsc::Receiver<Request>,
    highest: Arc<Mutex<HashMap<Principal, Position>>>,
    published: Arc<Mutex<SeqSnapshot>>,
    last_published: std::time::Instant,
    metrics: WriterMetrics,
    config: IngestConfig,
}

impl Writer {
    fn run(mut self) {
        let mut group: Vec<Request> = Vec::new();
        let mut payloads = Encoded::default();
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

    fn commit(&mut self, group: &mut Vec<Request>, payloads: &mut Encoded) {
        payloads.clear();
        let mut pending: HashMap<Principal, Position> = HashMap::new();
        let mut outcomes: Vec<Vec<Outcome>> = Vec::with_capacity(group.len());
        {
            let highest = self.highest.lock().expect("the seq map is never poisoned");
            // The source of the candidates in a row (a batch has one) and
            // its position so far: looked up once per row, not per event.
            let mut current: Option<(Principal, Position)> = None;
            for request in group.iter_mut() {
                let mut answer = Vec::with_capacity(request.candidates.len());
                for candidate in request.candidates.drain(..) {
                    let (entry, incarnation) = match candidate {
                        Candidate::Accepted { event, source, incarnation } => {
                            let (source, position) = match &mut current {
                                Some(row) if row.0 == source => row,
                                row => {
                                    if let Some((before, position)) = row.take() {
                                        pending.insert(before, position);
                                    }
                                    let position = pending
                                        .get(&source)
                                        .or_else(|| highest.get(&source))
                                        .copied()
                                        .unwrap_or_default();
                                    row.insert((source, position))
                                }
                            };
                            match judge(source, *position, incarnation, event.seq, self.config.max_seq_gap) {
                                Ok(None) => {
                                    answer.push(Outcome::Duplicate);
                                    continue;
                                }
                                Ok(Some(next)) => {
                                    *position = next;
                                    answer.push(Outcome::Appended);
                                    (Entry::Accepted(event), incarnation)
                                }
                                Err(rejection) => {
                                    let refused = Entry::Rejected(RejectedEvent {
                                        principal: source.to_string(),
                                        event: Some(event),
                                        code: rejection.code as i32,
                                        message: rejection.message.clone(),
                                    });
                                    answer.push(Outcome::Refused(rejection));
                                    (refused, incarnation)
                                }
                            }
                        }
                        Candidate::Rejected(rejected) => {
                            answer.push(Outcome::DeadLettered);
                            (Entry::Rejected(rejected), 0)
                        }
                    };
                    payloads.push(&LogEntry { entry: Some(entry), incarnation });
                }
                outcomes.push(answer);
            }
            if let Some((source, position)) = current {
                pending.insert(source, position);
            }
        }
        let followed: Vec<&tracing::Span> = group.iter().filter_map(|r| r.span.as_ref()).collect();
        let commit = followed.first().map(|first| {
            let commit = tracing::info_span!(
                target: traces::TARGET,
                parent: *first,
                "log.commit",
                records = payloads.len(),
                batches = group.len(),
                ingest_ms = tracing::field::Empty,
            );
            for other in &followed[1..] {
                commit.follows_from(*other);
            }
            commit
        });
        let result = if payloads.is_empty() {
            Ok(())
        } else {
            let ingest_ms = now_ms().max(self.log.last_ingest_ms().map_or(0, |t| t + 1));
            self.log.append(ingest_ms, payloads.as_slice()).and_then(|_| {
                let syncing = std::time::Instant::now();
                let synced = self.log.sync();
                self.metrics.fsync_seconds.observe_duration(syncing.elapsed());
                synced
            })
        };
        match &result {
            Ok(()) => {
                if let (Some(commit), Some(time)) = (&commit, self.log.last_ingest_ms())
                    && !payloads.is_empty()
                {
                    commit.record("ingest_ms", time);
                    let waiting =
                        tracing::info_span!(target: traces::TARGET, parent: commit, "views.pending", ingest_ms = time);
                    self.config.traces.committed(time, waiting);
                }
                self.metrics.commit_records.observe(payloads.len() as f64);
                self.metrics.commit_batches.observe(group.len() as f64);
                self.metrics.appended.add(payloads.len() as u64);
            }
            Err(_) => self.metrics.commits_failed.inc(),
        }
        *self.failing.lock().expect("the failure is never poisoned") = result.as_ref().err().map(|e| e.to_string());
        match result {
            Ok(()) => {
                let mut highest = self.highest.lock().expect("the seq map is never poisoned");
                for (source, position) in pending {
                    let known = highest.entry(source).or_default();
                    *known = (*known).max(position);
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

    fn fridge(events: &[Event]) -> Principal {
        Principal::Fridge(events[0].source_id.clone())
    }

    fn candidates_in(incarnation: u64, events: &[Event]) -> Vec<Candidate> {
        events
            .iter()
            .map(|event| Candidate::Accepted {
                event: crate::convert::encode(event),
                source: fridge(events),
                incarnation,
            })
            .collect()
    }

    fn candidates(events: &[Event]) -> Vec<Candidate> {
        candidates_in(0, events)
    }

    fn start(dir: &std::path::Path) -> (Ingest, JoinHandle<()>) {
        let log = EmbeddedLog::open(dir, EmbeddedConfig::default()).expect("opens");
        Ingest::start(
            Box::new(log),
            IngestConfig { max_seq_gap: 100, ..IngestConfig::default() },
            SeqSnapshot::default(),
        )
        .expect("starts")
    }

    fn codes(outcomes: &[Outcome]) -> Vec<Option<RejectReason>> {
        outcomes
            .iter()
            .map(|outcome| match outcome {
                Outcome::Refused(rejection) => Some(rejection.code),
                _ => None,
            })
            .collect()
    }

    fn records(ingest: &Ingest) -> Vec<crate::log::Entry> {
        let mut reader = ingest.readers().open(0).expect("reads");
        let mut records = Vec::new();
        while reader.read(100, &mut records).expect("reads") > 0 {}
        records.into_iter().map(|(_, record)| record.decode().expect("decodes")).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_seq_at_or_below_the_highest_durable_one_is_a_duplicate_across_batches_and_restarts() {
        use Outcome::{Appended, Duplicate};
        let dir = tempfile::tempdir().expect("temp dir");
        let events = events();
        let (ingest, writer) = start(dir.path());
        assert_eq!(ingest.append(candidates(&events[..5])).await.expect("durable"), vec![Appended; 5]);
        let resent = ingest.append(candidates(&events[3..8])).await.expect("durable");
        assert_eq!(resent, [Duplicate, Duplicate, Appended, Appended, Appended]);
        assert_eq!(ingest.position(&fridge(&events)), Position { incarnation: 0, seq: 8 });
        drop(ingest);
        writer.join().expect("the writer stops");
        // After a restart the seqs come back from the log itself.
        let (ingest, _writer) = start(dir.path());
        assert_eq!(ingest.position(&fridge(&events)).seq, 8);
        let after = ingest.append(candidates(&events[6..10])).await.expect("durable");
        assert_eq!(after, [Duplicate, Duplicate, Appended, Appended]);
        assert_eq!(records(&ingest).len(), 10, "each event is in the log once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_seq_far_beyond_the_highest_durable_one_is_refused_and_silences_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let events = events();
        let (ingest, _writer) = start(dir.path());
        let mut wild = crate::convert::encode(&events[0]);
        wild.seq = u64::MAX;
        let refused = ingest
            .append(vec![Candidate::Accepted { event: wild, source: fridge(&events), incarnation: 0 }])
            .await
            .expect("durable");
        assert_eq!(codes(&refused), [Some(RejectReason::SeqGap)]);
        assert_eq!(ingest.position(&fridge(&events)).seq, 0, "the refused seq moved nothing");
        let real = ingest.append(candidates(&events[..10])).await.expect("durable");
        assert_eq!(real, vec![Outcome::Appended; 10]);
        let entries = records(&ingest);
        assert!(matches!(&entries[0], crate::log::Entry::Rejected(r) if r.code == RejectReason::SeqGap as i32));
        assert_eq!(entries.len(), 11, "the refused event is in the dead letter, the ten real ones in the log");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_higher_incarnation_starts_a_new_seq_space_and_a_lower_one_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let events = events();
        let (ingest, writer) = start(dir.path());
        ingest.append(candidates(&events[..6])).await.expect("durable");
        // The flash was wiped: seqs restart at 1 in incarnation 1.
        let fresh = ingest.append(candidates_in(1, &events[..3])).await.expect("durable");
        assert_eq!(fresh, vec![Outcome::Appended; 3]);
        assert_eq!(ingest.position(&fridge(&events)), Position { incarnation: 1, seq: 3 });
        let stale = ingest.append(candidates_in(0, &events[6..8])).await.expect("durable");
        assert_eq!(codes(&stale), [Some(RejectReason::StaleIncarnation); 2]);
        drop(ingest);
        writer.join().expect("the writer stops");
        let (ingest, _writer) = start(dir.path());
        assert_eq!(ingest.position(&fridge(&events)), Position { incarnation: 1, seq: 3 }, "from the log");
        let accepted: Vec<_> = records(&ingest)
            .into_iter()
            .filter_map(|entry| match entry {
                crate::log::Entry::Accepted(event) => Some((event.incarnation, event.seq)),
                _ => None,
            })
            .collect();
        assert_eq!(accepted, [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (1, 1), (1, 2), (1, 3)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_back_office_client_named_like_a_fridge_shares_none_of_its_seqs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let events = events();
        let (ingest, _writer) = start(dir.path());
        let as_back_office: Vec<_> = events[..10]
            .iter()
            .map(|event| Candidate::Accepted {
                event: crate::convert::encode(event),
                source: Principal::BackOffice(event.source_id.clone()),
                incarnation: 0,
            })
            .collect();
        ingest.append(as_back_office).await.expect("durable");
        assert_eq!(ingest.position(&fridge(&events)).seq, 0);
        let own = ingest.append(candidates(&events[..10])).await.expect("durable");
        assert_eq!(own, vec![Outcome::Appended; 10]);
    }
}
