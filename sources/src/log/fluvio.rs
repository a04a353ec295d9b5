//! The event log on a Fluvio topic (`[log] kind = "fluvio"`), built with
//! the `fluvio` feature.
//!
//! The topic has one partition: coldstream's offsets are the partition's.
//! Each record is keyed by its source (the fridge or back-office id), and
//! its value is `flags: u8 | ingest_ms: u64 | payload` (little-endian), the
//! flag `COMMIT_END` marking the last record of a commit. [`EventLog::append`]
//! keeps records in memory; [`EventLog::sync`] sends them, the last one
//! flagged, and returns once Fluvio has acknowledged every one at the
//! topic's replication (`Isolation::ReadCommitted`, no retries, so that no
//! record is written twice); only then are they durable here.
//!
//! A reader hands out records only up to the last commit end it has seen,
//! so it never shows part of a commit, and a time is complete once a reader
//! is at a commit boundary, as on the embedded log. A writer that stopped
//! in the middle of a commit leaves records without a commit end; the next
//! writer seals them with an empty record that ends their commit, so that
//! readers move on (the events in them were never acknowledged; a fridge
//! sends them again, and the seq rules answer duplicates).
//!
//! Retention is Fluvio's own (the topic's retention settings): a trim here
//! removes nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use fluvio::consumer::ConsumerConfigExtBuilder;
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
}

/// The writing side of a log on a Fluvio topic.
pub struct FluvioLog {
    config: FluvioLogConfig,
    runtime: Arc<tokio::runtime::Runtime>,
    producer: TopicProducerPool,
    /// Appended, not yet sent: key and value.
    buffered: Vec<(Vec<u8>, Vec<u8>)>,
    end_offset: u64,
    last_ingest_ms: Option<u64>,
    shared: Arc<Shared>,
    /// Why the last sync failed; the next append finds the end again first.
    failed: Option<String>,
}

struct Shared {
    config: FluvioLogConfig,
    runtime: Arc<tokio::runtime::Runtime>,
    /// After the last durable commit.
    durable: DurableEnd,
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
    Fluvio::connect_with_config(&FluvioClusterConfig::new(config.endpoint.clone()))
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
    /// missing, and finds the log's end, sealing a commit a stopped writer
    /// left open.
    pub fn open(config: FluvioLogConfig) -> Result<Self, LogError> {
        let runtime = runtime()?;
        let (producer, end_offset, last_ingest_ms) = blocking(&runtime, || async {
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
            let producer = producer(&fluvio, &config.topic).await?;
            let (end, last) = Self::seal(&producer, &fluvio, &config.topic).await?;
            Ok::<_, LogError>((producer, end, last))
        })?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            runtime: Arc::clone(&runtime),
            durable: DurableEnd::new(end_offset, last_ingest_ms),
        });
        Ok(FluvioLog {
            config,
            runtime,
            producer,
            buffered: Vec::new(),
            end_offset,
            last_ingest_ms,
            shared,
            failed: None,
        })
    }

    /// The end of the partition and its last ingest time, after sealing a
    /// commit left without its end.
    async fn seal(producer: &TopicProducerPool, fluvio: &Fluvio, topic: &str) -> Result<(u64, Option<u64>), LogError> {
        match last_record(fluvio, topic).await? {
            None => Ok((0, None)),
            Some((offset, flags, record)) if flags & COMMIT_END != 0 => Ok((offset + 1, Some(record.ingest_ms))),
            Some((offset, _, record)) => {
                tracing::warn!(topic, offset, "sealing a commit that a stopped writer left open");
                let value = encode_value(COMMIT_END, record.ingest_ms, &[]);
                let sent = producer.send(Vec::<u8>::new(), value).await.map_err(|e| fluvio_error("sealing", e))?;
                producer.flush().await.map_err(|e| fluvio_error("sealing", e))?;
                let sealed = sent.wait().await.map_err(|e| fluvio_error("sealing", e))?;
                Ok((sealed.offset() as u64 + 1, Some(record.ingest_ms)))
            }
        }
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
        if self.failed.is_some() {
            // What was sent of a failed commit may be in the topic: find the end again.
            let (config, producer) = (&self.config, &self.producer);
            let (end, last) = blocking(&self.runtime, || async move {
                let fluvio = connect(config).await?;
                Self::seal(producer, &fluvio, &config.topic).await
            })?;
            self.end_offset = end;
            self.last_ingest_ms = last;
            self.shared.durable.publish(end, last);
            self.failed = None;
        }
        if let Some(too_large) = payloads.iter().find(|p| p.len() > MAX_RECORD_BYTES) {
            return Err(LogError::TooLarge(too_large.len()));
        }
        let floor = match self.last_ingest_ms {
            Some(last) if !self.buffered.is_empty() => last,
            Some(last) => last + 1,
            None => 0,
        };
        let ingest_ms = ingest_ms.max(floor);
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
        if let Some(reason) = &self.failed {
            return Err(LogError::Failed(reason.clone()));
        }
        let Some(last) = self.buffered.last_mut() else { return Ok(()) };
        last.1[0] |= COMMIT_END;
        let records = std::mem::take(&mut self.buffered);
        let first = self.end_offset - records.len() as u64;
        let producer = &self.producer;
        let sent = blocking(&self.runtime, || async move {
            let mut outputs = Vec::with_capacity(records.len());
            for (key, value) in records {
                outputs.push(producer.send(key, value).await.map_err(|e| fluvio_error("sending to Fluvio", e))?);
            }
            producer.flush().await.map_err(|e| fluvio_error("flushing to Fluvio", e))?;
            let mut offsets = Vec::with_capacity(outputs.len());
            for output in outputs {
                offsets.push(output.wait().await.map_err(|e| fluvio_error("waiting for Fluvio's ack", e))?.offset());
            }
            Ok::<_, LogError>(offsets)
        });
        let offsets = match sent {
            Ok(offsets) => offsets,
            Err(error) => {
                self.failed = Some(error.to_string());
                return Err(error);
            }
        };
        if offsets.first().is_some_and(|&o| o as u64 != first) {
            let error = fluvio_error(
                &format!("topic {}", self.config.topic),
                format!("records went to offset {} instead of {first}: another writer appends to it", offsets[0]),
            );
            self.failed = Some(error.to_string());
            return Err(error);
        }
        self.shared.durable.publish(self.end_offset, self.last_ingest_ms);
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

impl FluvioLog {
    /// Readers of a log on Fluvio that another process writes: a watcher
    /// follows the topic's commit ends to know what is durable.
    pub fn follow(config: FluvioLogConfig) -> Result<Arc<dyn OpenReader>, LogError> {
        let runtime = runtime()?;
        let (end, last) = blocking(&runtime, || async {
            let fluvio = connect(&config).await?;
            Ok::<_, LogError>(match last_record(&fluvio, &config.topic).await? {
                Some((offset, flags, record)) if flags & COMMIT_END != 0 => (offset + 1, Some(record.ingest_ms)),
                // A commit under way, or left open: the watcher finds its end.
                _ => (0, None),
            })
        })?;
        let shared = Arc::new(Shared { config, runtime, durable: DurableEnd::new(end, last) });
        let watched = Arc::downgrade(&shared);
        let (records, arriving) = sync_channel(4096);
        let (config, runtime) = (shared.config.clone(), Arc::clone(&shared.runtime));
        std::thread::Builder::new()
            .name("fluvio watcher".into())
            .spawn(move || consume(&runtime, &config, end, records))
            .map_err(|e| LogError::io("starting the Fluvio watcher", e))?;
        std::thread::Builder::new()
            .name("fluvio commits".into())
            .spawn(move || {
                while let Ok(item) = arriving.recv() {
                    let Some(shared) = watched.upgrade() else { return };
                    let Ok((offset, flags, record)) = item else { continue };
                    if flags & COMMIT_END != 0 {
                        shared.durable.publish(offset + 1, Some(record.ingest_ms));
                    }
                }
            })
            .map_err(|e| LogError::io("starting the Fluvio watcher", e))?;
        Ok(Arc::new(FluvioReaders(shared)))
    }
}

type Arrival = Result<(u64, u8, Record), LogError>;

/// Streams the partition from `from` into `out` until `out` is dropped.
fn consume(runtime: &tokio::runtime::Runtime, config: &FluvioLogConfig, from: u64, out: SyncSender<Arrival>) {
    let failed = runtime.block_on(async {
        let fluvio = connect(config).await?;
        let start = Offset::absolute(from as i64).map_err(|e| fluvio_error("a Fluvio offset", e))?;
        let consumer = ConsumerConfigExtBuilder::default()
            .topic(config.topic.clone())
            .partition(0)
            .offset_start(start)
            .isolation(Isolation::ReadCommitted)
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

impl OpenReader for FluvioReaders {
    fn open(&self, offset: u64) -> Result<Box<dyn LogReader>, LogError> {
        let durable = self.durable_offset();
        if offset > durable {
            return Err(LogError::OutOfRange { requested: offset, end: durable });
        }
        let (records, arriving) = sync_channel(8192);
        let (config, runtime) = (self.0.config.clone(), Arc::clone(&self.0.runtime));
        std::thread::Builder::new()
            .name("fluvio reader".into())
            .spawn(move || consume(&runtime, &config, offset, records))
            .map_err(|e| LogError::io("starting a Fluvio reader", e))?;
        Ok(Box::new(FluvioReader { shared: Arc::clone(&self.0), arriving, held: VecDeque::new(), position: offset }))
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
    /// Records received and not handed out yet.
    held: VecDeque<(u64, Record)>,
    position: u64,
}

impl LogReader for FluvioReader {
    fn read(&mut self, max: usize, out: &mut Vec<(u64, Record)>) -> Result<usize, LogError> {
        let durable = self.shared.durable.offset();
        let mut read = 0;
        while read < max && self.position < durable {
            if let Some((offset, _)) = self.held.front()
                && *offset != self.position
            {
                return Err(LogError::Corrupt {
                    file: format!("Fluvio topic {}", self.shared.config.topic),
                    position: self.position,
                    reason: format!("the next record is at offset {offset}"),
                });
            }
            if !self.held.is_empty() {
                let (offset, record) = self.held.pop_front().expect("just looked");
                out.push((offset, record));
                self.position += 1;
                read += 1;
                continue;
            }
            // Durable, so on its way: wait for it.
            match self.arriving.recv_timeout(READ_PATIENCE) {
                Ok(Ok((offset, _, record))) if offset >= self.position => self.held.push_back((offset, record)),
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
        self.position
    }
}
