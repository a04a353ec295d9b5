//! The event log on a Fluvio topic (`[log] kind = "fluvio"`), built with
//! the `fluvio` feature.
//!
//! Any number of gateways append to the topic, which has any number of
//! partitions. Each record is keyed by its source (the fridge or
//! back-office id), and a source's records all go to one partition
//! ([`partition_of`], the same in every process), so they stay in order.
//! A record's value is `flags: u8 | stamp: u64 | payload` (little-endian):
//! the writer's clock in milliseconds, and the flag `COMMIT_END` on the
//! last record of each of its commits in each partition.
//! [`EventLog::append`] keeps records in memory; [`EventLog::sync`] sends
//! them and returns once Fluvio has acknowledged every one at the topic's
//! replication (`Isolation::ReadCommitted`, no retries); only then does the
//! gateway ack the fridge. Each partition's records of a commit go in one
//! request (a commit of more than a batch in rounds, each sent once the
//! one before is acknowledged), which the SPU writes whole or cut short: a
//! failed commit leaves at most the first part of each partition's
//! records, never a later part without an earlier one, which would show
//! a fridge a seq as durable above seqs the log lost.
//!
//! **Times come from the log alone.** Writers' clocks disagree and their
//! commits interleave, so a record's logical time is derived along its
//! partition: `time(k) = max(stamp(k), time(k−1) + end(k−1))`, where
//! `end` is 1 after a commit's last record and 0 otherwise. Times never
//! decrease along a partition, and every record after a commit end has a
//! time above it.
//!
//! **One sequence of every partition.** Coldstream's offsets are positions
//! in one merge of the partitions ([`Merge`]): every record whose time is
//! below the least time any partition can still bring (the *complete*
//! time: the lowest, over the partitions, of the time after what each has
//! brought so far), in the order `(time, partition, offset)`. That order
//! depends only on what the partitions hold, so every reader, in any
//! process, hands out the same records at the same offsets and times, and
//! a time is complete once a reader has read up to where the merge stands,
//! as on the embedded log.
//!
//! **Progress markers.** A partition no fridge writes to would hold the
//! complete time back for ever. So a commit also sends every partition it
//! has no record for a marker (a record with no payload, flagged `MARKER`
//! and `COMMIT_END`, at the commit's stamp): every commit ends in every
//! partition, and its sync returns once the merge is complete past it,
//! which is when its records are readable. A marker moves its partition's
//! time and is handed out to no one. The records a writer that stopped
//! mid-commit left without their end become readable with anyone's next
//! commit: they were never acknowledged, and the copies a fridge resends
//! are dropped where the log is read ([`coldstream_pipelines::dedup`]).
//! Offsets a partition never holds (a commit lost with its SPU) take no
//! place in the merge.
//!
//! A watcher follows every partition from its start and publishes how far
//! the merge is complete, keeping a [`Mark`] every `INDEX_EVERY` records
//! where a reader can start merging; a process opening the log waits
//! until the watcher has taken in the records there were.
//!
//! **Shares.** A pipeline process of a cluster reads only its share of
//! the partitions ([`FluvioLog::follow_share`]: the partitions `p` with
//! `p % processes == process`), merged the same way into a sequence of
//! their own. Times are derived along each partition, so a record has the
//! same time in a share as in the whole merge; a share's offsets are its
//! own. Its readers also tell the least time a later record can have
//! ([`LogReader::floor`]), which markers move on: a share whose fridges
//! are idle does not hold back the cluster's frontier.
//!
//! Retention is Fluvio's own (the topic's retention settings): a trim here
//! removes nothing.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use fluvio::consumer::{ConsumerConfigExt, ConsumerConfigExtBuilder, RetryMode};
use fluvio::metadata::topic::TopicSpec;
use fluvio::{
    DeliverySemantic, Fluvio, FluvioClusterConfig, Isolation, Offset, PartitionId, Partitioner, PartitionerConfig,
    RetryPolicy, TopicProducerConfigBuilder, TopicProducerPool,
};
use futures::StreamExt;
use prost::Message;

use super::{DurableEnd, EventLog, LogError, LogReader, MAX_RECORD_BYTES, OpenReader, Payload, Record, Share};
use crate::proto::{LogEntry, log_entry};

/// The value's flag for the last record of a commit in its partition.
const COMMIT_END: u8 = 1;

/// The value's flag for a progress marker, which holds nothing.
const MARKER: u8 = 2;

/// The first byte of a marker's key, followed by its partition
/// (little-endian `u32`): a source id is UTF-8, which never holds it.
const MARKER_KEY: u8 = 0xff;

/// Records of the merge between two of the watcher's [`Mark`]s.
const INDEX_EVERY: u64 = 4096;

/// Bytes before the payload in a record's value.
const HEADER_BYTES: usize = 9;

/// The producer's batch size: Fluvio's request limit (1 MiB by default).
const BATCH_BYTES: usize = 1 << 20;

/// A commit's records of one partition sent in one round, at most (with
/// room in the batch for Fluvio's own framing): a larger commit goes in
/// several rounds, each sent once the one before is acknowledged.
const ROUND_BYTES: usize = BATCH_BYTES - (64 << 10);

/// Fluvio's framing of one record in a batch, at most (its header, key
/// and value lengths as varints).
const RECORD_OVERHEAD: usize = 32;

/// Reconnections a reader's consumer makes before its reader fails (the
/// watcher, which moves the log's end, tries for ever).
const READER_RETRIES: u32 = 100;

/// How long a reader waits for records it knows are durable.
const READ_PATIENCE: Duration = Duration::from_secs(30);

/// How long [`OpenReader::latest_offset`] and [`EventLog::sync`] wait for
/// the merge to cover what the partitions held, or the commit.
const COVER_PATIENCE: Duration = Duration::from_secs(10);

/// Where the log is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FluvioLogConfig {
    /// The Fluvio cluster's controller (SC), `host:port`.
    pub endpoint: String,
    /// The topic.
    pub topic: String,
    /// Partitions of the topic when it is created here (a topic that
    /// exists keeps its own).
    pub partitions: u32,
    /// Replicas of the topic when it is created here.
    pub replication: u32,
    /// TLS to the cluster, when it is configured.
    pub tls: Option<FluvioTls>,
}

/// Verified, mutual TLS to a Fluvio cluster (Fluvio's own kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FluvioTls {
    /// The name the cluster's certificates are for.
    pub domain: String,
    /// The CA that signed them, PEM.
    pub ca: std::path::PathBuf,
    /// This client's certificate, PEM.
    pub cert: std::path::PathBuf,
    /// Its private key, PEM.
    pub key: std::path::PathBuf,
}

/// The partition of a record with key `key` in a topic of `partitions`:
/// a source's records all go to one, in every process; a marker's key
/// names its own.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let partitions = partitions.max(1);
    match key {
        [MARKER_KEY, p @ ..] if p.len() == 4 => u32::from_le_bytes(p.try_into().expect("4 bytes")) % partitions,
        _ => crc32c::crc32c(key) % partitions,
    }
}

fn marker_key(partition: u32) -> Vec<u8> {
    let mut key = vec![MARKER_KEY];
    key.extend_from_slice(&partition.to_le_bytes());
    key
}

/// Fluvio's producer places records with [`partition_of`].
struct BySource;

impl Partitioner for BySource {
    fn partition(&self, config: &PartitionerConfig, key: Option<&[u8]>, _value: &[u8]) -> PartitionId {
        partition_of(key.unwrap_or_default(), config.partition_count())
    }
}

/// The writing side of a log on a Fluvio topic.
pub struct FluvioLog {
    runtime: Arc<tokio::runtime::Runtime>,
    /// `None` after a failed commit: the next one connects afresh, since a
    /// producer whose SPU went away does not come back by itself.
    producer: Option<TopicProducerPool>,
    /// Appended, not yet sent: partition, key and value.
    buffered: Vec<(u32, Vec<u8>, Vec<u8>)>,
    /// No more than the offset the next record will get in the merge
    /// (other writers' records may come before it).
    end_offset: u64,
    /// This writer's last stamp.
    last_ingest_ms: Option<u64>,
    shared: Arc<Shared>,
}

struct Shared {
    config: FluvioLogConfig,
    runtime: Arc<tokio::runtime::Runtime>,
    /// The topic's partitions.
    partitions: u32,
    /// The partitions merged here, in order: every one, or a process's
    /// share. Merges, marks and coverage count them from 0 in this order.
    parts: Vec<u32>,
    /// The share they are, when they are not every partition.
    share: Option<Share>,
    /// After the last record of the merge that is complete, and its time.
    durable: DurableEnd,
    /// Where readers can start merging: one mark every `INDEX_EVERY`
    /// records, from the start.
    index: Mutex<Vec<Mark>>,
    /// Per partition, as the watcher has taken it in: the offset after the
    /// last record, and the first offset not yet in the complete merge;
    /// and who waits for it to move.
    coverage: (Mutex<Vec<(u64, u64)>>, Condvar),
    /// Looks up the partitions' ends, one look-up at a time.
    ends: tokio::sync::Mutex<EndLookup>,
}

/// The partitions' ends as last looked up.
#[derive(Default)]
struct EndLookup {
    /// The connection; dropped when a look-up fails, and made again by the next.
    fluvio: Option<Fluvio>,
    /// When the last look-up started, and what it found.
    last: Option<(std::time::Instant, Vec<u64>)>,
}

/// Derives records' times along a partition (see the module's doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Times {
    /// The least time the next record can have.
    floor: u64,
}

impl Times {
    fn next(&mut self, flags: u8, stamp: u64) -> u64 {
        let time = stamp.max(self.floor);
        self.floor = if flags & COMMIT_END != 0 { time + 1 } else { time };
        time
    }
}

/// Where a merge stands, enough to start another there: its position,
/// and for each partition the offset of its first record not handed out
/// with the time its partition was at before that record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mark {
    position: u64,
    parts: Vec<(u64, Times)>,
}

/// A record taken in and not handed out yet.
#[derive(Debug)]
struct Taken {
    offset: u64,
    /// Its partition's times before it.
    before: Times,
    /// Its time derived, in `ingest_ms`.
    record: Record,
}

/// One partition, as a merge takes it in.
#[derive(Debug, Default)]
struct Part {
    times: Times,
    /// The offset after the last record taken in.
    next: u64,
    queue: VecDeque<Taken>,
}

/// The partitions merged into one sequence (see the module's doc): the
/// same sequence wherever it is computed, whatever the order in which the
/// partitions' records arrive.
#[derive(Debug)]
struct Merge {
    parts: Vec<Part>,
    /// The offset of the next record handed out.
    position: u64,
}

impl Merge {
    fn at(mark: &Mark) -> Self {
        let parts = mark.parts.iter().map(|&(next, times)| Part { times, next, queue: VecDeque::new() }).collect();
        Merge { parts, position: mark.position }
    }

    fn start(partitions: u32) -> Self {
        Merge::at(&Mark { position: 0, parts: vec![(0, Times::default()); partitions as usize] })
    }

    /// Takes in the record at `offset` of the `partition`-th partition
    /// merged (in offset order within it; one already taken in is ignored).
    fn take(&mut self, partition: u32, offset: u64, flags: u8, mut record: Record) {
        let Some(part) = self.parts.get_mut(partition as usize) else { return };
        if offset < part.next {
            return;
        }
        if offset > part.next {
            // A commit lost with its SPU, never acknowledged.
            tracing::warn!(
                merged_partition = partition,
                from = part.next,
                to = offset,
                "the Fluvio partition holds no records here (the merged_partition-th of those this process reads)"
            );
        }
        let before = part.times;
        record.ingest_ms = part.times.next(flags, record.ingest_ms);
        part.next = offset + 1;
        if flags & MARKER == 0 {
            part.queue.push_back(Taken { offset, before, record });
        }
    }

    /// The least time a record not taken in yet can have.
    fn complete_before(&self) -> u64 {
        self.parts.iter().map(|part| part.times.floor).min().unwrap_or(0)
    }

    /// The next record of the merge with its offset, once no record still
    /// to come can come before it.
    fn pop(&mut self) -> Option<(u64, Record)> {
        let complete = self.complete_before();
        let (partition, _) = self
            .parts
            .iter()
            .enumerate()
            .filter_map(|(p, part)| part.queue.front().map(|t| (p, (t.record.ingest_ms, p, t.offset))))
            .filter(|(_, (time, _, _))| *time < complete)
            .min_by_key(|(_, key)| *key)?;
        let taken = self.parts[partition].queue.pop_front()?;
        let position = self.position;
        self.position += 1;
        Some((position, taken.record))
    }

    fn mark(&self) -> Mark {
        let parts = self
            .parts
            .iter()
            .map(|part| part.queue.front().map_or((part.next, part.times), |t| (t.offset, t.before)))
            .collect();
        Mark { position: self.position, parts }
    }

    /// Per partition: the offset after the last record taken in, and the
    /// first offset not handed out.
    fn coverage(&self) -> Vec<(u64, u64)> {
        self.parts.iter().map(|part| (part.next, part.queue.front().map_or(part.next, |t| t.offset))).collect()
    }
}

fn fluvio_error(context: &str, error: impl std::fmt::Display) -> LogError {
    LogError::io(context.to_owned(), std::io::Error::other(error.to_string()))
}

fn runtime() -> Result<Arc<tokio::runtime::Runtime>, LogError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fluvio log")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| LogError::io("starting the Fluvio log's runtime", e))
}

/// Runs `work`'s future to completion on `runtime`, from a thread of its
/// own when the caller is itself inside an async runtime (a server starting
/// up), where blocking on another runtime is not allowed.
fn blocking<T: Send, F: std::future::Future<Output = T>>(
    runtime: &tokio::runtime::Runtime,
    work: impl FnOnce() -> F + Send,
) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(work());
    }
    std::thread::scope(|scope| {
        scope.spawn(|| runtime.block_on(work())).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

async fn connect(config: &FluvioLogConfig) -> Result<Fluvio, LogError> {
    let mut cluster = FluvioClusterConfig::new(config.endpoint.clone());
    if let Some(tls) = &config.tls {
        cluster = cluster.with_tls(fluvio::config::TlsPaths {
            domain: tls.domain.clone(),
            key: tls.key.clone(),
            cert: tls.cert.clone(),
            ca_cert: tls.ca.clone(),
        });
    }
    Fluvio::connect_with_config(&cluster)
        .await
        .map_err(|e| fluvio_error(&format!("connecting to the Fluvio cluster at {}", config.endpoint), e))
}

/// A record's value: flags, ingest time, payload.
fn encode_value(flags: u8, ingest_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER_BYTES + payload.len());
    value.push(flags);
    value.extend_from_slice(&ingest_ms.to_le_bytes());
    value.extend_from_slice(payload);
    value
}

/// A record read back: its flags and the record.
fn decode_value(offset: u64, value: &[u8]) -> Result<(u8, Record), LogError> {
    if value.len() < HEADER_BYTES {
        return Err(LogError::Corrupt {
            file: "Fluvio record".into(),
            position: offset,
            reason: format!("{} bytes, shorter than the {HEADER_BYTES}-byte header", value.len()),
        });
    }
    let ingest_ms = u64::from_le_bytes(value[1..9].try_into().expect("8-byte slice"));
    let payload = &value[HEADER_BYTES..];
    let payload = if payload.is_empty() { Payload::Skipped } else { Payload::Encoded(payload.to_vec()) };
    Ok((value[0], Record { ingest_ms, payload }))
}

/// The source a payload belongs to: the key that keeps a fridge's records
/// in one partition.
fn key_of(payload: &[u8]) -> Vec<u8> {
    match LogEntry::decode(payload).ok().and_then(|entry| entry.entry) {
        Some(log_entry::Entry::Accepted(event)) => event.source_id.into_bytes(),
        Some(log_entry::Entry::Rejected(rejected)) => rejected.principal.into_bytes(),
        None => Vec::new(),
    }
}

/// A consumer of `partition` from `start`, of committed records only:
/// following the partition, reconnecting as `follow` says, or, without
/// it, reading up to its end and stopping there.
fn consumer_config(
    topic: &str,
    partition: u32,
    start: Offset,
    follow: Option<RetryMode>,
) -> Result<ConsumerConfigExt, LogError> {
    let mut builder = ConsumerConfigExtBuilder::default();
    builder.topic(topic.to_owned()).partition(partition).offset_start(start).isolation(Isolation::ReadCommitted);
    match follow {
        Some(retry) => builder.retry_mode(retry),
        None => builder.disable_continuous(true),
    };
    builder.build().map_err(|e| fluvio_error("configuring a Fluvio consumer", e))
}

fn absolute(offset: u64) -> Result<Offset, LogError> {
    Offset::absolute(offset as i64).map_err(|e| fluvio_error("a Fluvio offset", e))
}

/// The offset after the last record of `partition` (0 for an empty one).
async fn partition_end(fluvio: &Fluvio, topic: &str, partition: u32) -> Result<u64, LogError> {
    let config = consumer_config(topic, partition, Offset::from_end(1), None)?;
    let mut stream =
        fluvio.consumer_with_config(config).await.map_err(|e| fluvio_error("reading the end of the topic", e))?;
    let mut end = 0;
    while let Some(record) = stream.next().await {
        let record = record.map_err(|e| fluvio_error("reading the end of the topic", e))?;
        end = end.max(record.offset() as u64 + 1);
    }
    Ok(end)
}

/// The ends of the partitions `parts`, in their order.
async fn partition_ends(fluvio: &Fluvio, topic: &str, parts: &[u32]) -> Result<Vec<u64>, LogError> {
    let mut ends = Vec::with_capacity(parts.len());
    for &partition in parts {
        ends.push(partition_end(fluvio, topic, partition).await?);
    }
    Ok(ends)
}

/// The topic's partitions; it is created, as configured, if it is missing.
async fn ensure_topic(fluvio: &Fluvio, config: &FluvioLogConfig) -> Result<u32, LogError> {
    let admin = fluvio.admin().await;
    let topics = admin
        .list::<TopicSpec, String>(vec![config.topic.clone()])
        .await
        .map_err(|e| fluvio_error("listing Fluvio topics", e))?;
    if let Some(topic) = topics.iter().find(|t| t.name == config.topic) {
        let partitions = topic.spec.replicas().partitions();
        if partitions != config.partitions {
            tracing::info!(
                topic = %config.topic,
                partitions,
                configured = config.partitions,
                "the topic exists with its own number of partitions; using it"
            );
        }
        return Ok(partitions.max(1));
    }
    let spec = TopicSpec::new_computed(config.partitions.max(1), config.replication, None);
    match admin.create(config.topic.clone(), false, spec).await {
        Ok(()) => Ok(config.partitions.max(1)),
        // Another process created it first: use what it made.
        Err(error) => {
            let topics = admin
                .list::<TopicSpec, String>(vec![config.topic.clone()])
                .await
                .map_err(|e| fluvio_error("listing Fluvio topics", e))?;
            topics
                .iter()
                .find(|t| t.name == config.topic)
                .map(|topic| topic.spec.replicas().partitions().max(1))
                .ok_or_else(|| fluvio_error(&format!("creating topic {}", config.topic), error))
        }
    }
}

impl FluvioLog {
    /// Connects to the cluster, creates the topic if it is missing, and
    /// follows it up to the records it holds.
    pub fn open(config: FluvioLogConfig) -> Result<Self, LogError> {
        let runtime = runtime()?;
        let (partitions, held, producer) = blocking(&runtime, || async {
            let fluvio = connect(&config).await?;
            let partitions = ensure_topic(&fluvio, &config).await?;
            let all: Vec<u32> = (0..partitions).collect();
            let held = partition_ends(&fluvio, &config.topic, &all).await?;
            Ok::<_, LogError>((partitions, held, producer(&fluvio, &config.topic).await?))
        })?;
        let shared = Shared::watched(config, Arc::clone(&runtime), partitions, None, held)?;
        let (end_offset, last_ingest_ms) = (shared.durable.offset(), shared.durable.ingest_ms());
        Ok(FluvioLog { runtime, producer: Some(producer), buffered: Vec::new(), end_offset, last_ingest_ms, shared })
    }

    /// Readers of a log on Fluvio that other processes write.
    pub fn follow(config: FluvioLogConfig) -> Result<Arc<dyn OpenReader>, LogError> {
        Self::follow_share(config, 1, 0)
    }

    /// Readers of process `process`'s share of the topic's partitions
    /// among `processes` pipeline processes ([`Share`]): its own sequence
    /// of the partitions `p` with `p % processes == process`, so that each
    /// process reads only its part of the topic. A topic with fewer
    /// partitions than processes is read whole by every process.
    pub fn follow_share(
        config: FluvioLogConfig,
        processes: usize,
        process: usize,
    ) -> Result<Arc<dyn OpenReader>, LogError> {
        let runtime = runtime()?;
        let (partitions, share, held) = blocking(&runtime, || async {
            let fluvio = connect(&config).await?;
            let partitions = ensure_topic(&fluvio, &config).await?;
            let share = (processes > 1).then_some(Share { process, processes, partitions });
            let share = share.filter(|_| {
                let enough = partitions as usize >= processes;
                if !enough {
                    tracing::warn!(
                        topic = %config.topic,
                        partitions,
                        processes,
                        "the topic has fewer partitions than the cluster has processes: every process reads all of it"
                    );
                }
                enough
            });
            let parts = share_parts(partitions, share);
            let held = partition_ends(&fluvio, &config.topic, &parts).await?;
            Ok::<_, LogError>((partitions, share, held))
        })?;
        Ok(Arc::new(FluvioReaders(Shared::watched(config, runtime, partitions, share, held)?)))
    }
}

/// The partitions of `share` of a topic of `partitions`, in order (every
/// partition without one).
fn share_parts(partitions: u32, share: Option<Share>) -> Vec<u32> {
    (0..partitions).filter(|&p| share.is_none_or(|s| p as usize % s.processes == s.process)).collect()
}

impl Shared {
    /// The log's shared state, with a watcher that follows the partitions
    /// of `share` (every one of the topic's `partitions` without it) from
    /// their start and publishes how far their merge is complete; returns
    /// once the watcher has taken in what they held (`held`, each one's
    /// end, in their order).
    fn watched(
        config: FluvioLogConfig,
        runtime: Arc<tokio::runtime::Runtime>,
        partitions: u32,
        share: Option<Share>,
        held: Vec<u64>,
    ) -> Result<Arc<Shared>, LogError> {
        let parts = share_parts(partitions, share);
        let start = Merge::start(parts.len() as u32);
        let shared = Arc::new(Shared {
            config,
            runtime,
            partitions,
            parts,
            share,
            durable: DurableEnd::new(0, None),
            index: Mutex::new(vec![start.mark()]),
            coverage: (Mutex::new(start.coverage()), Condvar::new()),
            ends: tokio::sync::Mutex::new(EndLookup::default()),
        });
        let watched = Arc::downgrade(&shared);
        let (records, arriving) = sync_channel(4096);
        let (config, runtime) = (shared.config.clone(), Arc::clone(&shared.runtime));
        let starts = shared.parts.iter().map(|&p| (p, 0)).collect();
        std::thread::Builder::new()
            .name("fluvio watcher".into())
            .spawn(move || consume(&runtime, &config, starts, RetryMode::TryForever, records))
            .map_err(|e| LogError::io("starting the Fluvio watcher", e))?;
        let (caught_up, read_all) = sync_channel(1);
        let waiting = held.iter().any(|&end| end > 0);
        let held_records: u64 = held.iter().sum();
        std::thread::Builder::new()
            .name("fluvio merge".into())
            .spawn(move || {
                let mut merge = start;
                let mut caught_up = Some(caught_up).filter(|_| waiting);
                while let Ok(first) = arriving.recv() {
                    let Some(shared) = watched.upgrade() else { return };
                    // Take in what has arrived, then publish once.
                    for item in std::iter::once(first).chain(arriving.try_iter().take(4096)) {
                        match item {
                            // The watcher needs the times only.
                            Ok((partition, offset, flags, record)) => merge.take(
                                partition,
                                offset,
                                flags,
                                Record { ingest_ms: record.ingest_ms, payload: Payload::Skipped },
                            ),
                            Err(error) => {
                                tracing::error!(%error, "the Fluvio watcher stopped; the log's end no longer moves");
                                return;
                            }
                        }
                    }
                    let mut last = None;
                    loop {
                        if merge.position.is_multiple_of(INDEX_EVERY) {
                            let mut index = shared.index.lock().expect("the index is never poisoned");
                            if index.last().is_none_or(|mark| mark.position < merge.position) {
                                index.push(merge.mark());
                            }
                        }
                        let Some((_, record)) = merge.pop() else { break };
                        last = Some(record.ingest_ms);
                    }
                    if let Some(time) = last {
                        shared.durable.advance(merge.position, time);
                    }
                    // After the end it bounds: a reader that sees the floor
                    // sees the end it was computed at.
                    shared.durable.advance_floor(merge.complete_before());
                    let coverage = merge.coverage();
                    if coverage.iter().zip(&held).all(|(&(next, _), &end)| next >= end)
                        && let Some(done) = caught_up.take()
                    {
                        let _ = done.send(());
                    }
                    let (covered, moved) = &shared.coverage;
                    *covered.lock().expect("the coverage is never poisoned") = coverage;
                    moved.notify_all();
                }
            })
            .map_err(|e| LogError::io("starting the Fluvio watcher", e))?;
        if waiting && read_all.recv_timeout(READ_PATIENCE * 4).is_err() {
            return Err(fluvio_error(
                &format!("topic {}", shared.config.topic),
                format!("the {held_records} records it holds were not read within {} s", READ_PATIENCE.as_secs() * 4),
            ));
        }
        Ok(shared)
    }

    /// Waits, at most [`COVER_PATIENCE`], until the merge has handed out
    /// every record before `ends` (per partition); whether it has.
    fn wait_covered(&self, ends: &[u64]) -> bool {
        let (covered, moved) = &self.coverage;
        let deadline = std::time::Instant::now() + COVER_PATIENCE;
        let mut coverage = covered.lock().expect("the coverage is never poisoned");
        loop {
            if coverage.iter().zip(ends).all(|(&(next, unread), &end)| next >= end && unread >= end) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            coverage = moved.wait_timeout(coverage, left).expect("the coverage is never poisoned").0;
        }
    }
}

/// A record to send: key, value, and whether it is a marker.
type Outgoing = (Vec<u8>, Vec<u8>, bool);

/// A commit's records in rounds: each partition's records in order, at
/// most [`ROUND_BYTES`] of them per round (a larger record alone).
fn rounds(buffered: Vec<(u32, Vec<u8>, Vec<u8>)>, partitions: u32) -> Vec<Vec<Outgoing>> {
    let mut rounds = vec![Vec::new()];
    // Per partition: its round now, and the bytes in it.
    let mut place = vec![(0usize, 0usize); partitions as usize];
    for (partition, key, value) in buffered {
        let (round, bytes) = &mut place[partition as usize];
        let size = key.len() + value.len() + RECORD_OVERHEAD;
        if *bytes > 0 && *bytes + size > ROUND_BYTES {
            (*round, *bytes) = (*round + 1, 0);
        }
        *bytes += size;
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push((key, value, false));
    }
    rounds
}

async fn producer(fluvio: &Fluvio, topic: &str) -> Result<TopicProducerPool, LogError> {
    // Nothing leaves before a round's flush, and a round's records of one
    // partition fit one batch: each goes in one request, which the SPU
    // writes whole or cut short, never with a hole.
    let config = TopicProducerConfigBuilder::default()
        .isolation(Isolation::ReadCommitted)
        .delivery_semantic(DeliverySemantic::AtLeastOnce(RetryPolicy { max_retries: 0, ..RetryPolicy::default() }))
        .linger(Duration::from_secs(24 * 3600))
        .batch_size(BATCH_BYTES)
        .partitioner(Arc::new(BySource))
        .build()
        .map_err(|e| fluvio_error("configuring the Fluvio producer", e))?;
    fluvio
        .topic_producer_with_config(topic.to_owned(), config)
        .await
        .map_err(|e| fluvio_error(&format!("opening a producer on topic {topic}"), e))
}

impl EventLog for FluvioLog {
    fn append(&mut self, ingest_ms: u64, payloads: &[Vec<u8>]) -> Result<u64, LogError> {
        if let Some(too_large) = payloads.iter().find(|p| p.len() > MAX_RECORD_BYTES) {
            return Err(LogError::TooLarge(too_large.len()));
        }
        // Above this writer's last commit and what the log showed of the
        // others', so that times are derived from stamps wherever clocks
        // agree.
        let own = match self.last_ingest_ms {
            Some(last) if !self.buffered.is_empty() => last,
            Some(last) => last + 1,
            None => 0,
        };
        let seen = if self.buffered.is_empty() { self.shared.durable.ingest_ms().map_or(0, |t| t + 1) } else { 0 };
        let ingest_ms = ingest_ms.max(own).max(seen);
        let first = self.end_offset();
        for payload in payloads {
            let key = key_of(payload);
            let partition = partition_of(&key, self.shared.partitions);
            self.buffered.push((partition, key, encode_value(0, ingest_ms, payload)));
        }
        self.end_offset = first + payloads.len() as u64;
        if !payloads.is_empty() {
            self.last_ingest_ms = Some(ingest_ms);
        }
        Ok(first)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let stamp = self.last_ingest_ms.unwrap_or(0);
        // The commit ends in every partition: with its last record there,
        // or with a marker where it has none.
        let mut ended = vec![false; self.shared.partitions as usize];
        for (partition, _, value) in self.buffered.iter_mut().rev() {
            if !std::mem::replace(&mut ended[*partition as usize], true) {
                value[0] |= COMMIT_END;
            }
        }
        let sent_records = self.buffered.len() as u64;
        let mut rounds = rounds(std::mem::take(&mut self.buffered), self.shared.partitions);
        for (partition, _) in ended.iter().enumerate().filter(|(_, ended)| !**ended) {
            rounds[0].push((marker_key(partition as u32), encode_value(COMMIT_END | MARKER, stamp, &[]), true));
        }
        let (config, held) = (&self.shared.config, self.producer.take());
        let sent = blocking(&self.runtime, || async move {
            let producer = match held {
                Some(producer) => producer,
                None => producer(&connect(config).await?, &config.topic).await?,
            };
            let commit = async {
                let mut ends = Vec::new();
                for round in rounds {
                    let mut outputs = Vec::with_capacity(round.len());
                    for (key, value, marker) in round {
                        let output =
                            producer.send(key, value).await.map_err(|e| fluvio_error("sending to Fluvio", e))?;
                        outputs.push((output, marker));
                    }
                    producer.flush().await.map_err(|e| fluvio_error("flushing to Fluvio", e))?;
                    for (output, marker) in outputs {
                        let metadata = output.wait().await.map_err(|e| fluvio_error("waiting for Fluvio's ack", e))?;
                        if !marker {
                            ends.push((metadata.partition_id(), metadata.offset() as u64 + 1));
                        }
                    }
                }
                Ok::<_, LogError>(ends)
            };
            let ends = commit.await?;
            Ok::<_, LogError>((producer, ends))
        });
        // What was sent of a failed commit may be in the topic, without its
        // end: the next commit end makes it readable, and the fridge's
        // copies of it are dropped where the log is read. The producer is
        // dropped with it, and the next commit connects again.
        let (producer, acked) = match sent {
            Ok(sent) => sent,
            Err(error) => {
                self.end_offset = self.end_offset.saturating_sub(sent_records);
                return Err(error);
            }
        };
        self.producer = Some(producer);
        // Readable once the merge has handed out every record of the
        // commit (its markers are handed to no one).
        let mut ends = vec![0; self.shared.partitions as usize];
        for (partition, end) in acked {
            if let Some(slot) = ends.get_mut(partition as usize) {
                *slot = (*slot).max(end);
            }
        }
        if !self.shared.wait_covered(&ends) {
            tracing::warn!(
                "a commit Fluvio acknowledged is not readable here after {} s (the watcher is behind)",
                COVER_PATIENCE.as_secs()
            );
        }
        Ok(())
    }

    fn end_offset(&self) -> u64 {
        self.end_offset.max(self.shared.durable.offset())
    }

    fn last_ingest_ms(&self) -> Option<u64> {
        self.last_ingest_ms
    }

    fn readers(&self) -> Arc<dyn OpenReader> {
        Arc::new(FluvioReaders(Arc::clone(&self.shared)))
    }
}

/// A record as a consumer delivers it: the partition's place among those
/// consumed (its index in `starts`), offset, flags, record.
type Arrival = Result<(u32, u64, u8, Record), LogError>;

/// Streams the partitions of `starts`, each from its offset, into `out`
/// until `out` is dropped. The consumers reconnect by themselves when an
/// SPU goes away, `retry` times (Fluvio's exponential backoff between
/// attempts) before they give up and `out` receives the error.
fn consume(
    runtime: &tokio::runtime::Runtime,
    config: &FluvioLogConfig,
    starts: Vec<(u32, u64)>,
    retry: RetryMode,
    out: SyncSender<Arrival>,
) {
    let failed = runtime.block_on(async {
        let fluvio = connect(config).await?;
        let mut streams = Vec::with_capacity(starts.len());
        for (place, &(partition, from)) in starts.iter().enumerate() {
            let consumer = consumer_config(&config.topic, partition, absolute(from)?, Some(retry.clone()))?;
            let stream =
                fluvio.consumer_with_config(consumer).await.map_err(|e| fluvio_error("consuming the topic", e))?;
            streams.push(stream.map(move |record| (place, partition, record)).boxed());
        }
        let mut next: Vec<u64> = starts.iter().map(|&(_, from)| from).collect();
        let mut arrivals = futures::stream::select_all(streams);
        while let Some((place, partition, record)) = arrivals.next().await {
            let record = record.map_err(|e| fluvio_error("consuming the topic", e))?;
            let offset = record.offset() as u64;
            let expected = std::mem::replace(&mut next[place], offset + 1);
            if offset > expected {
                // A stream that catches up skips what lies between the end of
                // a response cut at its size limit and the partition's end at
                // that moment: fetch the offsets it skipped, which a commit
                // lost with its SPU leaves empty.
                for (offset, flags, record) in skipped(&fluvio, &config.topic, partition, expected, offset).await? {
                    if out.send(Ok((place as u32, offset, flags, record))).is_err() {
                        return Ok(());
                    }
                }
            }
            let item = decode_value(offset, record.value()).map(|(flags, r)| (place as u32, offset, flags, r));
            if out.send(item).is_err() {
                return Ok(());
            }
        }
        Ok::<_, LogError>(())
    });
    if let Err(error) = failed {
        let _ = out.send(Err(error));
    }
}

/// The records of `partition` from `from` up to `until` (exclusive), in
/// order, fetched again: as many fetches as it takes, each starting after
/// the last record found, until one finds nothing before `until`.
async fn skipped(
    fluvio: &Fluvio,
    topic: &str,
    partition: u32,
    from: u64,
    until: u64,
) -> Result<Vec<(u64, u8, Record)>, LogError> {
    let mut found = Vec::new();
    let mut cursor = from;
    while cursor < until {
        let consumer = consumer_config(topic, partition, absolute(cursor)?, None)?;
        let mut stream =
            fluvio.consumer_with_config(consumer).await.map_err(|e| fluvio_error("consuming the topic", e))?;
        let before = cursor;
        while let Some(record) = stream.next().await {
            let record = record.map_err(|e| fluvio_error("consuming the topic", e))?;
            let offset = record.offset() as u64;
            if offset >= until {
                break;
            }
            if offset >= cursor {
                let (flags, decoded) = decode_value(offset, record.value())?;
                found.push((offset, flags, decoded));
                cursor = offset + 1;
            }
        }
        if cursor == before {
            break;
        }
    }
    Ok(found)
}

/// Opens readers of a log on Fluvio.
struct FluvioReaders(Arc<Shared>);

impl OpenReader for FluvioReaders {
    /// A reader starts merging at the watcher's last mark before `offset`
    /// and skips to it: the merge, and so every record's time, is exact.
    fn open(&self, offset: u64) -> Result<Box<dyn LogReader>, LogError> {
        let durable = self.durable_offset();
        if offset > durable {
            return Err(LogError::OutOfRange { requested: offset, end: durable });
        }
        let mark = {
            let index = self.0.index.lock().expect("the index is never poisoned");
            index[index.partition_point(|mark| mark.position <= offset).saturating_sub(1)].clone()
        };
        let (records, arriving) = sync_channel(8192);
        let (config, runtime) = (self.0.config.clone(), Arc::clone(&self.0.runtime));
        let starts = self.0.parts.iter().zip(&mark.parts).map(|(&p, &(from, _))| (p, from)).collect();
        std::thread::Builder::new()
            .name("fluvio reader".into())
            .spawn(move || consume(&runtime, &config, starts, RetryMode::TryUntil(READER_RETRIES), records))
            .map_err(|e| LogError::io("starting a Fluvio reader", e))?;
        Ok(Box::new(FluvioReader {
            shared: Arc::clone(&self.0),
            arriving,
            skip: offset - mark.position,
            merge: Merge::at(&mark),
        }))
    }

    fn shared(&self) -> bool {
        true
    }

    fn share(&self) -> Option<Share> {
        self.0.share
    }

    /// The partitions' ends are looked up (a look-up that started after
    /// this call serves it: of many callers at once, a fleet reconnecting,
    /// one asks the cluster and the others wait for its answer), then the
    /// merge is waited for until it has handed out every record before
    /// them (at most 10 s).
    fn latest_offset(&self) -> Result<u64, LogError> {
        let called = std::time::Instant::now();
        let shared = &self.0;
        let ends = blocking(&shared.runtime, || async {
            let mut ends = shared.ends.lock().await;
            if let Some((started, end)) = &ends.last
                && *started >= called
            {
                return Ok(end.clone());
            }
            let started = std::time::Instant::now();
            let fluvio = match ends.fluvio.take() {
                Some(fluvio) => fluvio,
                None => connect(&shared.config).await?,
            };
            let end = partition_ends(&fluvio, &shared.config.topic, &shared.parts).await?;
            *ends = EndLookup { fluvio: Some(fluvio), last: Some((started, end.clone())) };
            Ok::<_, LogError>(end)
        })?;
        if !shared.wait_covered(&ends) {
            tracing::warn!(?ends, "the merge of the partitions did not reach their ends in time");
        }
        Ok(self.durable_offset())
    }

    fn durable_offset(&self) -> u64 {
        self.0.durable.offset()
    }

    fn first_offset(&self) -> Result<u64, LogError> {
        Ok(0)
    }

    fn durable_ingest_ms(&self) -> Option<u64> {
        self.0.durable.ingest_ms()
    }

    fn subscribe(&self, wake: Box<dyn Fn() + Send + Sync>) {
        self.0.durable.subscribe(wake);
    }

    fn trim(&self, _before: u64, _until_ms: u64) -> Result<usize, LogError> {
        Ok(0)
    }
}

struct FluvioReader {
    shared: Arc<Shared>,
    arriving: Receiver<Arrival>,
    merge: Merge,
    /// Records of the merge to pass over before the first handed out.
    skip: u64,
}

impl LogReader for FluvioReader {
    fn read(&mut self, max: usize, out: &mut Vec<(u64, Record)>) -> Result<usize, LogError> {
        let durable = self.shared.durable.offset();
        let mut read = 0;
        while read < max && self.merge.position < durable {
            if let Some((offset, record)) = self.merge.pop() {
                if self.skip > 0 {
                    self.skip -= 1;
                } else {
                    out.push((offset, record));
                    read += 1;
                }
                continue;
            }
            // Durable, so on its way: wait for it.
            match self.arriving.recv_timeout(READ_PATIENCE) {
                Ok(Ok((partition, offset, flags, record))) => self.merge.take(partition, offset, flags, record),
                Ok(Err(error)) => return Err(error),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(fluvio_error(
                        "reading the Fluvio log",
                        format!("offset {} is durable but did not arrive within 30 s", self.merge.position),
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(fluvio_error("reading the Fluvio log", "the consumer stopped"));
                }
            }
        }
        Ok(read)
    }

    fn position(&self) -> u64 {
        self.merge.position + self.skip
    }

    fn floor(&self) -> Option<u64> {
        // The floor first: it was published after the end it bounds.
        let floor = self.shared.durable.floor();
        (self.position() >= self.shared.durable.offset() && floor > 0).then_some(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stamp: u64, byte: u8) -> Record {
        Record { ingest_ms: stamp, payload: Payload::Encoded(vec![byte]) }
    }

    /// Everything the merge can hand out now: (offset, time, payload byte).
    fn drain(merge: &mut Merge) -> Vec<(u64, u64, u8)> {
        std::iter::from_fn(|| merge.pop())
            .map(|(offset, r)| match r.payload {
                Payload::Encoded(bytes) => (offset, r.ingest_ms, bytes[0]),
                _ => (offset, r.ingest_ms, 0),
            })
            .collect()
    }

    /// Two partitions' records, as `(partition, offset, flags, stamp, byte)`.
    const TWO: [(u32, u64, u8, u64, u8); 9] = [
        (0, 0, 0, 10, 1),
        (0, 1, COMMIT_END, 10, 2),
        (1, 0, COMMIT_END | MARKER, 10, 0),
        (1, 1, 0, 7, 3),
        (1, 2, COMMIT_END, 7, 4),
        (0, 2, COMMIT_END | MARKER, 7, 0),
        (0, 5, COMMIT_END, 12, 5),
        (1, 3, COMMIT_END | MARKER, 12, 0),
        (1, 4, COMMIT_END, 30, 6),
    ];

    #[test]
    fn the_merge_is_the_same_whatever_order_the_partitions_arrive_in() {
        let mut expected = None;
        for order in [[0, 1, 2, 3, 4, 5, 6, 7, 8], [2, 3, 4, 7, 8, 0, 1, 5, 6], [0, 2, 1, 3, 5, 4, 6, 7, 8]] {
            let mut merge = Merge::start(2);
            let mut out = Vec::new();
            for i in order {
                let (p, offset, flags, stamp, byte) = TWO[i];
                merge.take(p, offset, flags, record(stamp, byte));
                out.extend(drain(&mut merge));
            }
            // Partition 1's commit at stamp 7 comes after partition 0's at
            // 10, so it is at 11; partition 0 lost offsets 3 and 4 with
            // its SPU, which take no place; 6 at 30 waits for partition 0.
            assert_eq!(out, [(0, 10, 1), (1, 10, 2), (2, 11, 3), (3, 11, 4), (4, 12, 5)]);
            let state = (merge.position, merge.coverage());
            assert_eq!(state, (5, vec![(6, 6), (5, 4)]));
            assert_eq!(*expected.get_or_insert(state.clone()), state);
        }
    }

    #[test]
    fn records_without_their_commit_end_wait_for_one() {
        let mut merge = Merge::start(1);
        merge.take(0, 0, 0, record(5, 1));
        merge.take(0, 1, 0, record(5, 2));
        assert_eq!(drain(&mut merge), [], "the commit may have more records at 5");
        // Another writer's commit end, or its marker, makes them readable.
        merge.take(0, 2, COMMIT_END | MARKER, record(3, 0));
        assert_eq!(drain(&mut merge), [(0, 5, 1), (1, 5, 2)]);
        assert_eq!(merge.complete_before(), 6);
    }

    #[test]
    fn a_merge_started_at_a_mark_goes_on_exactly_as_the_first() {
        let mut whole = Merge::start(2);
        let mut marks = vec![whole.mark()];
        let mut first = Vec::new();
        for (p, offset, flags, stamp, byte) in TWO {
            whole.take(p, offset, flags, record(stamp, byte));
            while let Some(popped) = whole.pop() {
                first.push(popped);
                marks.push(whole.mark());
            }
        }
        for mark in marks {
            let mut again = Merge::at(&mark);
            let mut out = Vec::new();
            for (p, offset, flags, stamp, byte) in TWO {
                // A consumer started at the mark's offsets sees these.
                if offset >= mark.parts[p as usize].0 {
                    again.take(p, offset, flags, record(stamp, byte));
                    out.extend(std::iter::from_fn(|| again.pop()));
                }
            }
            assert_eq!(out, first[mark.position as usize..], "from {mark:?}");
        }
    }

    #[test]
    fn a_commit_goes_in_rounds_of_at_most_a_batch_per_partition_in_order() {
        let record = |p: u32, i: u8, bytes: usize| (p, vec![i], vec![i; bytes]);
        let small = ROUND_BYTES / 4;
        let buffered = vec![
            record(0, 1, small),
            record(1, 2, small),
            record(0, 3, small),
            record(0, 4, small),
            record(0, 5, small),
            record(1, 6, ROUND_BYTES * 2),
            record(0, 7, 10),
        ];
        let rounds: Vec<Vec<u8>> = rounds(buffered, 2)
            .into_iter()
            .map(|round| round.into_iter().map(|(key, _, marker)| if marker { 0 } else { key[0] }).collect())
            .collect();
        // Partition 0: three records fill a round, the next two go in the
        // second; partition 1's record larger than a round goes alone.
        assert_eq!(rounds, [vec![1, 2, 3, 4], vec![5, 6, 7]]);
    }

    #[test]
    fn a_source_stays_in_one_partition_and_a_marker_in_its_own() {
        let fridge = b"fridge-0042";
        assert_eq!(partition_of(fridge, 8), partition_of(fridge, 8));
        assert!(partition_of(fridge, 8) < 8);
        assert_eq!(partition_of(fridge, 1), 0);
        for p in 0..8 {
            assert_eq!(partition_of(&marker_key(p), 8), p);
        }
        let spread: std::collections::BTreeSet<u32> =
            (0..100).map(|i| partition_of(format!("fridge-{i:04}").as_bytes(), 4)).collect();
        assert_eq!(spread.len(), 4, "a fleet uses every partition");
    }

    #[test]
    fn a_reader_hands_out_the_merge_up_to_the_durable_end() {
        let shared = Arc::new(Shared {
            config: FluvioLogConfig {
                endpoint: "127.0.0.1:9".into(),
                topic: "unused".into(),
                partitions: 2,
                replication: 1,
                tls: None,
            },
            runtime: runtime().expect("a runtime"),
            partitions: 2,
            parts: vec![0, 1],
            share: None,
            durable: DurableEnd::new(4, Some(11)),
            index: Mutex::new(vec![Merge::start(2).mark()]),
            coverage: (Mutex::new(Vec::new()), Condvar::new()),
            ends: tokio::sync::Mutex::new(EndLookup::default()),
        });
        let (records, arriving) = sync_channel(64);
        let mut reader = FluvioReader { shared, arriving, merge: Merge::start(2), skip: 1 };
        for (p, offset, flags, stamp, byte) in TWO {
            records.send(Ok((p, offset, flags, record(stamp, byte)))).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(reader.position(), 1);
        assert_eq!(reader.read(100, &mut out).unwrap(), 3);
        assert_eq!(reader.read(100, &mut out).unwrap(), 0, "at the durable end");
        let read: Vec<(u64, u64)> = out.iter().map(|(offset, r)| (*offset, r.ingest_ms)).collect();
        assert_eq!(read, [(1, 10), (2, 11), (3, 11)]);
        assert_eq!(reader.position(), 4);
    }
}
