//! The event log on a Fluvio topic (`[log] kind = "fluvio"`), built with
//! the `fluvio` feature.
//!
//! The topic has one partition: coldstream's offsets are the partition's.
//! Any number of gateways append to it. Each record is keyed by its source
//! (the fridge or back-office id), and its value is `flags: u8 | stamp: u64
//! | payload` (little-endian): the writer's clock in milliseconds, and the
//! flag `COMMIT_END` on the last record of each of its commits.
//! [`EventLog::append`] keeps records in memory; [`EventLog::sync`] sends
//! them, the last one flagged, and returns once Fluvio has acknowledged
//! every one at the topic's replication (`Isolation::ReadCommitted`, no
//! retries); only then does the gateway ack the fridge.
//!
//! **Times come from the log alone.** Writers' clocks disagree and their
//! commits interleave, so a record's logical time is derived along the
//! partition: `time(k) = max(stamp(k), time(k−1) + end(k−1))`, where
//! `end` is 1 after a commit's last record and 0 otherwise. Times never
//! decrease, and every record after a commit end has a time above it: a
//! reader hands out records only up to the last commit end (of any
//! writer), and a time is then complete, as on the embedded log. The
//! records of a writer that stopped before its commit ended become
//! readable with the next commit end; they were never acknowledged, and
//! the copies a fridge resends are dropped where the log is read
//! ([`coldstream_pipelines::dedup`]). A commit lost with its SPU may leave
//! offsets the partition never holds: readers hand each out as a record
//! holding nothing ([`Payload::Skipped`]), so offsets stay dense.
//!
//! A watcher thread follows the partition from its start and publishes
//! each commit end; a process opening the log waits until the watcher has
//! caught up with the records there were.
//!
//! Retention is Fluvio's own (the topic's retention settings): a trim here
//! removes nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use fluvio::consumer::{ConsumerConfigExtBuilder, RetryMode};
use fluvio::metadata::topic::TopicSpec;
use fluvio::{
    DeliverySemantic, Fluvio, FluvioClusterConfig, Isolation, Offset, RetryPolicy, TopicProducerConfigBuilder,
    TopicProducerPool,
};
use futures::StreamExt;
use prost::Message;

use super::{DurableEnd, EventLog, LogError, LogReader, MAX_RECORD_BYTES, OpenReader, Payload, Record};
use crate::proto::{LogEntry, log_entry};

/// The value's flag for the last record of a commit.
const COMMIT_END: u8 = 1;

/// Bytes before the payload in a record's value.
const HEADER_BYTES: usize = 9;

/// Reconnections a reader's consumer makes before its reader fails (the
/// watcher, which moves the log's end, tries for ever).
const READER_RETRIES: u32 = 100;

/// How long a reader waits for records it knows are durable.
const READ_PATIENCE: Duration = Duration::from_secs(30);

/// Where the log is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FluvioLogConfig {
    /// The Fluvio cluster's controller (SC), `host:port`.
    pub endpoint: String,
    /// The topic.
    pub topic: String,
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

/// The writing side of a log on a Fluvio topic.
pub struct FluvioLog {
    runtime: Arc<tokio::runtime::Runtime>,
    /// `None` after a failed commit: the next one connects afresh, since a
    /// producer whose SPU went away does not come back by itself.
    producer: Option<TopicProducerPool>,
    /// Appended, not yet sent: key and value.
    buffered: Vec<(Vec<u8>, Vec<u8>)>,
    /// After the last record this writer knows of.
    end_offset: u64,
    /// This writer's last stamp.
    last_ingest_ms: Option<u64>,
    shared: Arc<Shared>,
}

struct Shared {
    config: FluvioLogConfig,
    runtime: Arc<tokio::runtime::Runtime>,
    /// After the last commit end, and its time.
    durable: DurableEnd,
    /// Looks up the partition's end, one look-up at a time.
    ends: tokio::sync::Mutex<EndLookup>,
}

/// The partition's end as last looked up.
#[derive(Default)]
struct EndLookup {
    /// The connection; dropped when a look-up fails, and made again by the next.
    fluvio: Option<Fluvio>,
    /// When the last look-up started, and what it found.
    last: Option<(std::time::Instant, u64)>,
}

/// Derives records' times along the partition (see the module's doc).
#[derive(Clone, Copy, Debug, Default)]
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

/// The partition's last record, if any: its offset, flags and record.
async fn last_record(fluvio: &Fluvio, topic: &str) -> Result<Option<(u64, u8, Record)>, LogError> {
    let config = ConsumerConfigExtBuilder::default()
        .topic(topic.to_owned())
        .partition(0)
        .offset_start(Offset::from_end(1))
        .disable_continuous(true)
        .isolation(Isolation::ReadCommitted)
        .build()
        .map_err(|e| fluvio_error("configuring a Fluvio consumer", e))?;
    let mut stream =
        fluvio.consumer_with_config(config).await.map_err(|e| fluvio_error("reading the end of the topic", e))?;
    let mut last = None;
    while let Some(record) = stream.next().await {
        let record = record.map_err(|e| fluvio_error("reading the end of the topic", e))?;
        let offset = record.offset() as u64;
        let (flags, decoded) = decode_value(offset, record.value())?;
        last = Some((offset, flags, decoded));
    }
    Ok(last)
}

impl FluvioLog {
    /// Connects to the cluster, creates the topic (one partition) if it is
    /// missing, and follows it up to the records it holds.
    pub fn open(config: FluvioLogConfig) -> Result<Self, LogError> {
        let runtime = runtime()?;
        let producer = blocking(&runtime, || async {
            let fluvio = connect(&config).await?;
            let admin = fluvio.admin().await;
            let topics = admin
                .list::<TopicSpec, String>(vec![config.topic.clone()])
                .await
                .map_err(|e| fluvio_error("listing Fluvio topics", e))?;
            match topics.iter().find(|t| t.name == config.topic) {
                Some(topic) if topic.spec.replicas().partitions() != 1 => {
                    return Err(fluvio_error(
                        &format!("topic {}", config.topic),
                        format!(
                            "it has {} partitions; coldstream's Fluvio log is a topic of one partition",
                            topic.spec.replicas().partitions()
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    let spec = TopicSpec::new_computed(1, config.replication, None);
                    admin
                        .create(config.topic.clone(), false, spec)
                        .await
                        .map_err(|e| fluvio_error(&format!("creating topic {}", config.topic), e))?;
                }
            }
            producer(&fluvio, &config.topic).await
        })?;
        let (shared, end_offset) = Shared::watched(config, Arc::clone(&runtime))?;
        let last_ingest_ms = shared.durable.ingest_ms();
        Ok(FluvioLog { runtime, producer: Some(producer), buffered: Vec::new(), end_offset, last_ingest_ms, shared })
    }

    /// Readers of a log on Fluvio that other processes write.
    pub fn follow(config: FluvioLogConfig) -> Result<Arc<dyn OpenReader>, LogError> {
        let (shared, _) = Shared::watched(config, runtime()?)?;
        Ok(Arc::new(FluvioReaders(shared)))
    }
}

impl Shared {
    /// The log's shared state, with a watcher that follows the partition
    /// from its start and publishes every commit end; returns once the
    /// watcher has read what the partition held, with the offset after it.
    fn watched(config: FluvioLogConfig, runtime: Arc<tokio::runtime::Runtime>) -> Result<(Arc<Shared>, u64), LogError> {
        let held = blocking(&runtime, || async {
            let fluvio = connect(&config).await?;
            Ok::<_, LogError>(last_record(&fluvio, &config.topic).await?.map_or(0, |(offset, _, _)| offset + 1))
        })?;
        let shared = Arc::new(Shared {
            config,
            runtime,
            durable: DurableEnd::new(0, None),
            ends: tokio::sync::Mutex::new(EndLookup::default()),
        });
        let watched = Arc::downgrade(&shared);
        let (records, arriving) = sync_channel(4096);
        let (config, runtime) = (shared.config.clone(), Arc::clone(&shared.runtime));
        std::thread::Builder::new()
            .name("fluvio watcher".into())
            .spawn(move || consume(&runtime, &config, 0, RetryMode::TryForever, records))
            .map_err(|e| LogError::io("starting the Fluvio watcher", e))?;
        let (caught_up, read_all) = sync_channel(1);
        std::thread::Builder::new()
            .name("fluvio commits".into())
            .spawn(move || {
                let mut times = Times::default();
                let mut caught_up = Some(caught_up).filter(|_| held > 0);
                while let Ok(item) = arriving.recv() {
                    let Some(shared) = watched.upgrade() else { return };
                    let (offset, flags, record) = match item {
                        Ok(item) => item,
                        Err(error) => {
                            tracing::error!(%error, "the Fluvio watcher stopped; the log's end no longer moves");
                            return;
                        }
                    };
                    let time = times.next(flags, record.ingest_ms);
                    if flags & COMMIT_END != 0 {
                        shared.durable.advance(offset + 1, time);
                    }
                    if offset + 1 >= held
                        && let Some(done) = caught_up.take()
                    {
                        let _ = done.send(());
                    }
                }
            })
            .map_err(|e| LogError::io("starting the Fluvio watcher", e))?;
        if held > 0 && read_all.recv_timeout(READ_PATIENCE * 4).is_err() {
            return Err(fluvio_error(
                &format!("topic {}", shared.config.topic),
                format!("the {held} records it holds were not read within {} s", READ_PATIENCE.as_secs() * 4),
            ));
        }
        Ok((shared, held))
    }
}

async fn producer(fluvio: &Fluvio, topic: &str) -> Result<TopicProducerPool, LogError> {
    let config = TopicProducerConfigBuilder::default()
        .isolation(Isolation::ReadCommitted)
        .delivery_semantic(DeliverySemantic::AtLeastOnce(RetryPolicy { max_retries: 0, ..RetryPolicy::default() }))
        .linger(Duration::from_millis(0))
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
        let first = self.end_offset;
        for payload in payloads {
            self.buffered.push((key_of(payload), encode_value(0, ingest_ms, payload)));
            self.end_offset += 1;
        }
        if !payloads.is_empty() {
            self.last_ingest_ms = Some(ingest_ms);
        }
        Ok(first)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        let Some(last) = self.buffered.last_mut() else { return Ok(()) };
        last.1[0] |= COMMIT_END;
        let records = std::mem::take(&mut self.buffered);
        // After this writer's last acknowledged commit.
        let acked_end = self.end_offset - records.len() as u64;
        let (config, held) = (&self.shared.config, self.producer.take());
        let sent = blocking(&self.runtime, || async move {
            let producer = match held {
                Some(producer) => producer,
                None => producer(&connect(config).await?, &config.topic).await?,
            };
            let commit = async {
                let mut outputs = Vec::with_capacity(records.len());
                for (key, value) in records {
                    outputs.push(producer.send(key, value).await.map_err(|e| fluvio_error("sending to Fluvio", e))?);
                }
                producer.flush().await.map_err(|e| fluvio_error("flushing to Fluvio", e))?;
                let mut last = 0;
                for output in outputs {
                    last = output.wait().await.map_err(|e| fluvio_error("waiting for Fluvio's ack", e))?.offset();
                }
                Ok::<_, LogError>(last as u64)
            };
            let last = commit.await?;
            Ok::<_, LogError>((producer, last))
        });
        // What was sent of a failed commit may be in the topic, without its
        // end: the next commit end makes it readable, and the fridge's
        // copies of it are dropped where the log is read. The producer is
        // dropped with it, and the next commit connects again.
        let (producer, last) = match sent {
            Ok(sent) => sent,
            Err(error) => {
                self.end_offset = acked_end.max(self.shared.durable.offset());
                return Err(error);
            }
        };
        self.producer = Some(producer);
        self.end_offset = self.end_offset.max(last + 1);
        // Every record before this writer's acknowledged commit end is
        // committed too; the readers derive its time.
        self.shared.durable.advance(last + 1, self.last_ingest_ms.unwrap_or(0));
        Ok(())
    }

    fn end_offset(&self) -> u64 {
        self.end_offset
    }

    fn last_ingest_ms(&self) -> Option<u64> {
        self.last_ingest_ms
    }

    fn readers(&self) -> Arc<dyn OpenReader> {
        Arc::new(FluvioReaders(Arc::clone(&self.shared)))
    }
}

type Arrival = Result<(u64, u8, Record), LogError>;

/// Streams the partition from `from` into `out` until `out` is dropped.
/// The consumer reconnects by itself when the SPU goes away, `retry` times
/// (Fluvio's exponential backoff between attempts) before it gives up and
/// `out` receives the error.
fn consume(
    runtime: &tokio::runtime::Runtime,
    config: &FluvioLogConfig,
    from: u64,
    retry: RetryMode,
    out: SyncSender<Arrival>,
) {
    let failed = runtime.block_on(async {
        let fluvio = connect(config).await?;
        let start = Offset::absolute(from as i64).map_err(|e| fluvio_error("a Fluvio offset", e))?;
        let consumer = ConsumerConfigExtBuilder::default()
            .topic(config.topic.clone())
            .partition(0)
            .offset_start(start)
            .isolation(Isolation::ReadCommitted)
            .retry_mode(retry)
            .build()
            .map_err(|e| fluvio_error("configuring a Fluvio consumer", e))?;
        let mut stream =
            fluvio.consumer_with_config(consumer).await.map_err(|e| fluvio_error("consuming the topic", e))?;
        while let Some(record) = stream.next().await {
            let record = record.map_err(|e| fluvio_error("consuming the topic", e))?;
            let offset = record.offset() as u64;
            let item = decode_value(offset, record.value()).map(|(flags, r)| (offset, flags, r));
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

/// Opens readers of a log on Fluvio.
struct FluvioReaders(Arc<Shared>);

impl FluvioReaders {
    /// A reader at `offset`, consuming from `from` (the record before it,
    /// to learn the time there, or `offset` itself) with `times`.
    fn reader(&self, offset: u64, from: u64, times: Times) -> Result<Box<dyn LogReader>, LogError> {
        let durable = self.durable_offset();
        if offset > durable {
            return Err(LogError::OutOfRange { requested: offset, end: durable });
        }
        let (records, arriving) = sync_channel(8192);
        let (config, runtime) = (self.0.config.clone(), Arc::clone(&self.0.runtime));
        std::thread::Builder::new()
            .name("fluvio reader".into())
            .spawn(move || consume(&runtime, &config, from, RetryMode::TryUntil(READER_RETRIES), records))
            .map_err(|e| LogError::io("starting a Fluvio reader", e))?;
        Ok(Box::new(FluvioReader {
            shared: Arc::clone(&self.0),
            arriving,
            held: VecDeque::new(),
            position: from,
            skip: offset - from,
            times,
            gap_until: 0,
        }))
    }
}

impl OpenReader for FluvioReaders {
    /// The time at `offset` is derived from the record before it: exact
    /// unless that record's own time was raised above its stamp (two
    /// writers' commits racing with their clocks apart), when it may come
    /// out lower; the views start where a checkpoint's time says
    /// ([`OpenReader::open_at_time`]), which is exact.
    fn open(&self, offset: u64) -> Result<Box<dyn LogReader>, LogError> {
        self.reader(offset, offset.saturating_sub(1), Times::default())
    }

    fn open_at_time(&self, offset: u64, time: u64) -> Result<Box<dyn LogReader>, LogError> {
        self.reader(offset, offset, Times { floor: time })
    }

    fn shared(&self) -> bool {
        true
    }

    /// A look-up that started after this call serves it: of many callers
    /// at once (a fleet reconnecting, each fridge's Hello), one asks the
    /// cluster and the others wait for its answer.
    fn latest_offset(&self) -> Result<u64, LogError> {
        let called = std::time::Instant::now();
        let shared = &self.0;
        blocking(&shared.runtime, || async {
            let mut ends = shared.ends.lock().await;
            if let Some((started, end)) = ends.last
                && started >= called
            {
                return Ok(end);
            }
            let started = std::time::Instant::now();
            let fluvio = match ends.fluvio.take() {
                Some(fluvio) => fluvio,
                None => connect(&shared.config).await?,
            };
            let end = last_record(&fluvio, &shared.config.topic).await?.map_or(0, |(offset, _, _)| offset + 1);
            *ends = EndLookup { fluvio: Some(fluvio), last: Some((started, end)) };
            Ok(end)
        })
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
    /// Records received and not handed out yet, with their flags.
    held: VecDeque<(u64, u8, Record)>,
    /// The offset of the next record to take in.
    position: u64,
    /// Records to take in for their times only, before the first handed out.
    skip: u64,
    times: Times,
    /// The end of the last gap in the partition's offsets reported.
    gap_until: u64,
}

impl LogReader for FluvioReader {
    fn read(&mut self, max: usize, out: &mut Vec<(u64, Record)>) -> Result<usize, LogError> {
        let durable = self.shared.durable.offset();
        let mut read = 0;
        while read < max && self.position < durable {
            let next = match self.held.front() {
                Some(&(offset, _, _)) if offset > self.position => {
                    // Offsets the partition does not hold (a commit lost
                    // with its SPU, never acknowledged) are handed out as
                    // records holding nothing, at the time there, so that
                    // offsets stay dense for every reader.
                    if self.gap_until <= self.position {
                        tracing::warn!(from = self.position, to = offset, "the Fluvio partition holds no records here");
                        self.gap_until = offset;
                    }
                    Some((self.position, 0, Record { ingest_ms: 0, payload: Payload::Skipped }))
                }
                Some(_) => self.held.pop_front(),
                None => None,
            };
            if let Some((offset, flags, mut record)) = next {
                record.ingest_ms = self.times.next(flags, record.ingest_ms);
                self.position += 1;
                if self.skip > 0 {
                    self.skip -= 1;
                    continue;
                }
                out.push((offset, record));
                read += 1;
                continue;
            }
            // Durable, so on its way: wait for it.
            match self.arriving.recv_timeout(READ_PATIENCE) {
                Ok(Ok(item)) if item.0 >= self.position => self.held.push_back(item),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(error),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(fluvio_error(
                        "reading the Fluvio log",
                        format!("offset {} is durable but did not arrive within 30 s", self.position),
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
        self.position + self.skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader fed by hand: the records a consumer would deliver.
    fn reader(durable: u64, from: u64, skip: u64, times: Times) -> (FluvioReader, SyncSender<Arrival>) {
        let shared = Arc::new(Shared {
            config: FluvioLogConfig {
                endpoint: "127.0.0.1:9".into(),
                topic: "unused".into(),
                replication: 1,
                tls: None,
            },
            runtime: runtime().expect("a runtime"),
            durable: DurableEnd::new(durable, Some(0)),
            ends: tokio::sync::Mutex::new(EndLookup::default()),
        });
        let (records, arriving) = sync_channel(64);
        let reader =
            FluvioReader { shared, arriving, held: VecDeque::new(), position: from, skip, times, gap_until: 0 };
        (reader, records)
    }

    fn record(offset: u64, flags: u8, stamp: u64) -> Arrival {
        Ok((offset, flags, Record { ingest_ms: stamp, payload: Payload::Encoded(vec![offset as u8]) }))
    }

    #[test]
    fn offsets_the_partition_lacks_are_read_as_empty_records_at_the_time_there() {
        // Offsets 0..2 one commit at 10, 2..4 lost with their SPU, 4..6 a
        // commit at 5 (a writer whose clock is behind).
        let (mut reader, records) = reader(6, 0, 0, Times::default());
        for arrival in [record(0, 0, 10), record(1, COMMIT_END, 10), record(4, 0, 5), record(5, COMMIT_END, 5)] {
            records.send(arrival).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(reader.read(3, &mut out).unwrap(), 3);
        assert_eq!(reader.position(), 3);
        assert_eq!(reader.read(100, &mut out).unwrap(), 3);
        assert_eq!(reader.read(100, &mut out).unwrap(), 0, "at the durable end");
        let read: Vec<(u64, u64, bool)> =
            out.iter().map(|(offset, r)| (*offset, r.ingest_ms, matches!(r.payload, Payload::Skipped))).collect();
        assert_eq!(
            read,
            [(0, 10, false), (1, 10, false), (2, 11, true), (3, 11, true), (4, 11, false), (5, 11, false)]
        );
        assert_eq!(reader.position(), 6);
    }

    #[test]
    fn a_reader_opened_inside_a_gap_starts_where_it_was_asked() {
        // Opened at 3 with the time there known, 2..4 held by nothing.
        let (mut reader, records) = reader(6, 3, 0, Times { floor: 11 });
        for arrival in [record(4, 0, 5), record(5, COMMIT_END, 5)] {
            records.send(arrival).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(reader.read(100, &mut out).unwrap(), 3);
        let read: Vec<(u64, u64)> = out.iter().map(|(offset, r)| (*offset, r.ingest_ms)).collect();
        assert_eq!(read, [(3, 11), (4, 11), (5, 11)]);
    }
}
