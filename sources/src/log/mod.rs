//! The event log: the backbone every consumer reads.
//!
//! A log is an append-only sequence of records, each with an offset (its
//! position, from 0) and the ingest time at which it was appended, which
//! becomes its logical time in the dataflows. Appends become durable, and
//! visible to readers, only at [`EventLog::sync`]. Ingest times never
//! decrease along the log, and the records of one sync (a commit) have a
//! time strictly above every earlier commit's: a reader that has read up to
//! a commit boundary knows that every later record has a later time, which
//! is what lets the dataflows' frontiers advance.
//!
//! Implementations: [`embedded`] (segment files in the data directory, the
//! default), `fluvio` (a Fluvio topic, with the `fluvio` feature), and
//! [`archive`], a read-only log over what the archiver wrote
//! to Parquet (what `coldstream rebuild` replays). Every implementation
//! passes the [`conformance`] suite (a read-only one, its read half). A
//! record's content is decoded in one place, [`Record::decode`].

pub mod archive;
pub mod conformance;
pub mod embedded;
#[cfg(feature = "fluvio")]
pub mod fluvio;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use coldstream_pipelines::Event;
use prost::Message;

use crate::proto::{LogEntry, RejectedEvent, log_entry};

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the Unix epoch at which the record was appended.
    pub ingest_ms: u64,
    /// What it holds.
    pub payload: Payload,
}

/// What a record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// An encoded `coldstream.v1.LogEntry`, as a log stores it.
    Encoded(Vec<u8>),
    /// An accepted event, already decoded: a log that keeps events as
    /// data (the Parquet archive) hands them over as they are.
    Event(Box<Event>),
    /// A record that holds nothing the views read (a rejection, which
    /// the archive keeps in `rejected/`); it keeps its offset.
    Skipped,
}

/// A record's content, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// An accepted event.
    Accepted(Event),
    /// A rejected event with its reason, for the dead letter.
    Rejected(RejectedEvent),
    /// Nothing a consumer reads.
    Skipped,
}

/// A record that does not decode; consumers skip it and say so.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a `LogEntry`.
    #[error("undecodable log record: {0}")]
    Record(#[from] prost::DecodeError),
    /// A `LogEntry` without an entry.
    #[error("empty log entry")]
    Empty,
    /// An accepted event that no longer passes the acceptance rules.
    #[error("undecodable event in the log: {0}")]
    Event(String),
}

impl Record {
    /// What the record holds: the one place log records are decoded.
    pub fn decode(self) -> Result<Entry, DecodeError> {
        match self.payload {
            Payload::Event(event) => Ok(Entry::Accepted(*event)),
            Payload::Skipped => Ok(Entry::Skipped),
            Payload::Encoded(bytes) => {
                let LogEntry { entry, incarnation } = LogEntry::decode(bytes.as_slice())?;
                match entry {
                    Some(log_entry::Entry::Accepted(wire)) => crate::convert::decode(wire)
                        .map(|event| Entry::Accepted(Event { incarnation, ..event }))
                        .map_err(|r| DecodeError::Event(r.message)),
                    Some(log_entry::Entry::Rejected(rejected)) => Ok(Entry::Rejected(rejected)),
                    None => Err(DecodeError::Empty),
                }
            }
        }
    }

    /// The payload of an accepted event, as a log stores it.
    pub fn accepted(event: &Event) -> Vec<u8> {
        LogEntry {
            entry: Some(log_entry::Entry::Accepted(crate::convert::encode(event))),
            incarnation: event.incarnation,
        }
        .encode_to_vec()
    }
}

/// A log's durable end as its readers see it, and whom to wake when it
/// moves: the one place a log implementation publishes a commit.
pub(crate) struct DurableEnd {
    offset: AtomicU64,
    /// The last durable record's ingest time plus one; 0 for an empty log.
    ingest_plus_one: AtomicU64,
    /// The least time a record after `offset` can have, where the log
    /// knows one (0: it does not).
    floor: AtomicU64,
    wakers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl DurableEnd {
    pub(crate) fn new(offset: u64, last_ingest_ms: Option<u64>) -> Self {
        DurableEnd {
            offset: AtomicU64::new(offset),
            ingest_plus_one: AtomicU64::new(last_ingest_ms.map_or(0, |t| t + 1)),
            floor: AtomicU64::new(0),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// The offset up to which records are durable (exclusive).
    pub(crate) fn offset(&self) -> u64 {
        self.offset.load(Ordering::Acquire)
    }

    /// The ingest time of the last durable record.
    pub(crate) fn ingest_ms(&self) -> Option<u64> {
        self.ingest_plus_one.load(Ordering::Acquire).checked_sub(1)
    }

    /// Like [`DurableEnd::publish`], for a log whose end is learnt from
    /// several places (its own syncs and a watcher): never moves back.
    #[cfg_attr(not(feature = "fluvio"), allow(dead_code))]
    pub(crate) fn advance(&self, offset: u64, last_ingest_ms: u64) {
        self.ingest_plus_one.fetch_max(last_ingest_ms + 1, Ordering::AcqRel);
        if self.offset.fetch_max(offset, Ordering::AcqRel) < offset {
            self.wake();
        }
    }

    /// The least time a record after the durable end can have (0 where
    /// the log knows none beyond the last record's).
    #[cfg_attr(not(feature = "fluvio"), allow(dead_code))]
    pub(crate) fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// Every record after the durable end published before this call has a
    /// time of `floor` or later (a log whose time moves without records:
    /// progress markers); wakes the subscribers when it rises.
    #[cfg_attr(not(feature = "fluvio"), allow(dead_code))]
    pub(crate) fn advance_floor(&self, floor: u64) {
        if self.floor.fetch_max(floor, Ordering::AcqRel) < floor {
            self.wake();
        }
    }

    fn wake(&self) {
        for wake in self.wakers.lock().expect("wakers are never poisoned").iter() {
            wake();
        }
    }

    /// Everything before `offset` is durable, the last record at
    /// `last_ingest_ms`: readers may read it, and subscribers are woken.
    pub(crate) fn publish(&self, offset: u64, last_ingest_ms: Option<u64>) {
        self.ingest_plus_one.store(last_ingest_ms.map_or(0, |t| t + 1), Ordering::Release);
        self.offset.store(offset, Ordering::Release);
        self.wake();
    }

    pub(crate) fn subscribe(&self, wake: Box<dyn Fn() + Send + Sync>) {
        self.wakers.lock().expect("wakers are never poisoned").push(wake);
    }
}

/// What can go wrong with a log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The operating system refused a read, write or fsync.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record that should be intact is not.
    #[error(
        "corrupt log segment {file} at byte {position}: {reason}; move the data directory aside and run `coldstream rebuild`"
    )]
    Corrupt {
        /// The segment file.
        file: String,
        /// Where the bad record starts.
        position: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// An earlier write or fsync failed; the log accepts nothing more until it is reopened.
    #[error("the log failed earlier and must be reopened: {0}")]
    Failed(String),
    /// A record is larger than the log accepts.
    #[error("record of {0} bytes is larger than the limit of {MAX_RECORD_BYTES} bytes")]
    TooLarge(usize),
    /// An offset that retention has removed.
    #[error(
        "offset {requested} was removed by log retention (the log now starts at {first}); run `coldstream rebuild` to rebuild the views from the Parquet archive"
    )]
    Trimmed {
        /// The offset asked for.
        requested: u64,
        /// The first offset the log still holds.
        first: u64,
    },
    /// An offset that the log does not hold.
    #[error("offset {requested} is not in the log (it ends at {end})")]
    OutOfRange {
        /// The offset asked for.
        requested: u64,
        /// The log's end offset.
        end: u64,
    },
}

impl LogError {
    /// Whether trying the same operation again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Io { .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LogError::Io { context: context.into(), source }
    }
}

/// The largest record a log accepts.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// The writing side of a log. There is one writer per log.
pub trait EventLog: Send {
    /// Appends records that share one ingest time, raised if needed so that
    /// times never decrease and each commit's time is above the previous
    /// commit's; returns the offset of the first. Not durable, and not
    /// visible to readers, until [`EventLog::sync`].
    fn append(&mut self, ingest_ms: u64, payloads: &[Vec<u8>]) -> Result<u64, LogError>;
    /// Makes every appended record durable and visible to readers.
    fn sync(&mut self) -> Result<(), LogError>;
    /// The offset the next appended record will get.
    fn end_offset(&self) -> u64;
    /// The ingest time of the last record, if any.
    fn last_ingest_ms(&self) -> Option<u64>;
    /// A handle for opening readers, from any thread.
    fn readers(&self) -> Arc<dyn OpenReader>;
}

/// Opens readers of a log and tells them when new records are durable.
pub trait OpenReader: Send + Sync {
    /// A reader positioned at `offset`.
    fn open(&self, offset: u64) -> Result<Box<dyn LogReader>, LogError>;
    /// A reader positioned at `offset`, where the record is known to have a
    /// time of `time` (a checkpoint's): a log whose times are derived along
    /// it (one with several writers) starts deriving from there.
    fn open_at_time(&self, offset: u64, _time: u64) -> Result<Box<dyn LogReader>, LogError> {
        self.open(offset)
    }
    /// Whether several writers append to the log (gateways sharing a
    /// Fluvio topic): then a writer's seq rules see only its own appends,
    /// and its readers apply them again ([`coldstream_pipelines::dedup`]).
    fn shared(&self) -> bool {
        false
    }
    /// The offset after the last record the log holds now, durable to its
    /// writer or not yet visible here; the durable offset for a log with
    /// one writer.
    fn latest_offset(&self) -> Result<u64, LogError> {
        Ok(self.durable_offset())
    }
    /// The offset up to which records are durable (exclusive).
    fn durable_offset(&self) -> u64;
    /// The first offset the log still holds (above 0 once retention has
    /// removed old records).
    fn first_offset(&self) -> Result<u64, LogError>;
    /// The ingest time of the last durable record, if any.
    fn durable_ingest_ms(&self) -> Option<u64>;
    /// Calls `wake` after every sync that made new records durable.
    fn subscribe(&self, wake: Box<dyn Fn() + Send + Sync>);
    /// Retention: removes what the log holds before offset `before`, as far
    /// as its storage allows and only where the records are no newer than
    /// `until_ms` (ingest time); returns how many storage units (segments)
    /// went. The caller guarantees every consumer has covered `before`. A
    /// log that cannot remove anything (a read-only one) removes nothing.
    fn trim(&self, before: u64, until_ms: u64) -> Result<usize, LogError>;
    /// What the log occupies in its storage, where this process can see
    /// it (`None` for a log held by a cluster of its own).
    fn footprint(&self) -> Option<Footprint> {
        None
    }
    /// Which share of a partitioned log's partitions this reads, when it
    /// reads one process's share of them (`None`: the whole log). A
    /// share's offsets are positions in its own sequence.
    fn share(&self) -> Option<Share> {
        None
    }
}

/// One pipeline process's share of a partitioned log: the partitions `p`
/// with `p % processes == process`, merged into a sequence of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// The process.
    pub process: usize,
    /// The processes sharing the log.
    pub processes: usize,
    /// The log's partitions.
    pub partitions: u32,
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the partitions p with p % {} = {} of {} (process {} of {})",
            self.processes, self.process, self.partitions, self.process, self.processes
        )
    }
}

/// What a log occupies on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Footprint {
    /// Bytes in every segment.
    pub bytes: u64,
    /// Segments.
    pub segments: u64,
    /// Seconds since the oldest segment was last written (how far back
    /// retention keeps the log).
    pub oldest_segment_age_seconds: f64,
}

/// Reads durable records in offset order.
pub trait LogReader: Send {
    /// Appends up to `max` durable records to `out`, each with its offset;
    /// returns how many. Returns 0 when the reader is at the durable end.
    fn read(&mut self, max: usize, out: &mut Vec<(u64, Record)>) -> Result<usize, LogError>;
    /// Like [`LogReader::read`], for a reader that decodes only the
    /// records at the offsets `wanted` accepts (one worker of several): the
    /// others come with their offset and ingest time and a
    /// [`Payload::Skipped`], so a log may check them without keeping a copy
    /// of their bytes.
    fn read_some(
        &mut self,
        max: usize,
        wanted: &dyn Fn(u64) -> bool,
        out: &mut Vec<(u64, Record)>,
    ) -> Result<usize, LogError> {
        let from = out.len();
        let read = self.read(max, out)?;
        for (offset, record) in &mut out[from..] {
            if !wanted(*offset) {
                record.payload = Payload::Skipped;
            }
        }
        Ok(read)
    }
    /// The offset of the next record this reader returns.
    fn position(&self) -> u64;
    /// At the durable end, the least time a later record can have where
    /// the log knows one above the last record's time plus one (a log
    /// whose partitions move on with progress markers); `None` otherwise.
    fn floor(&self) -> Option<u64> {
        None
    }
}
