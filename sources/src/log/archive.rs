//! A read-only log over an archive of the log: ranges of offsets, each
//! holding the accepted events of its records with their ingest times and
//! a count of the rejections among them.
//!
//! The archiver writes such ranges to Parquet (`events/`, `rejected/`);
//! served as a log, they let `coldstream rebuild` run the very dataflow the
//! server runs, at the same logical times, after retention has removed the
//! log itself. Accepted events come out already decoded
//! ([`Payload::Event`]); a rejection keeps its offset as
//! [`Payload::Skipped`]. Where the ranges are stored is up to an
//! [`ArchiveStore`].

use std::sync::Arc;

use coldstream_pipelines::Event;

use super::{LogError, LogReader, OpenReader, Payload, Record};

/// One archived range: the records at offsets `from..to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedRange {
    /// The first offset.
    pub from: u64,
    /// The offset after the last.
    pub to: u64,
}

/// What an archived range holds.
#[derive(Clone, Debug, Default)]
pub struct RangeContents {
    /// The accepted events, with their ingest times, in any order.
    pub events: Vec<(u64, Event)>,
    /// How many of the range's records were rejections.
    pub rejected: usize,
}

/// Where an archive's ranges are kept.
pub trait ArchiveStore: Send + Sync + 'static {
    /// The ranges, in offset order, following each other from offset 0.
    fn ranges(&self) -> &[ArchivedRange];
    /// What the range at `index` of [`ArchiveStore::ranges`] holds.
    fn load(&self, index: usize) -> Result<RangeContents, LogError>;
}

/// The archive as a read-only log. Cloning shares it.
pub struct ArchiveLog<S>(Arc<Archive<S>>);

impl<S> Clone for ArchiveLog<S> {
    fn clone(&self) -> Self {
        ArchiveLog(Arc::clone(&self.0))
    }
}

struct Archive<S> {
    store: S,
    end: u64,
    last_ingest_ms: Option<u64>,
}

impl<S: ArchiveStore> ArchiveLog<S> {
    /// Serves `store`; its ranges must run from offset 0 without a gap.
    pub fn open(store: S) -> Result<ArchiveLog<S>, LogError> {
        let mut end = 0;
        for range in store.ranges() {
            if range.from != end || range.to < range.from {
                return Err(LogError::Corrupt {
                    file: "the archive".into(),
                    position: range.from,
                    reason: format!(
                        "range {}..{} does not follow the one before, which ends at {end}",
                        range.from, range.to
                    ),
                });
            }
            end = range.to;
        }
        let last_ingest_ms = match store.ranges().len() {
            0 => None,
            len => store.load(len - 1)?.events.iter().map(|(ingest_ms, _)| *ingest_ms).max(),
        };
        Ok(ArchiveLog(Arc::new(Archive { store, end, last_ingest_ms })))
    }

    /// The offset after the last archived record.
    pub fn end(&self) -> u64 {
        self.0.end
    }

    /// The records of the range at `index`, in offset order: the events in
    /// ingest-time order (the order the log had them in), then one skipped
    /// record per rejection at the range's last time.
    fn records(&self, index: usize) -> Result<Vec<Record>, LogError> {
        let range = &self.0.store.ranges()[index];
        let RangeContents { mut events, rejected } = self.0.store.load(index)?;
        // A range split over several files (day partitions) is in ingest
        // order once sorted by it; the sort is stable within one time.
        events.sort_by_key(|(ingest_ms, _)| *ingest_ms);
        let count = (range.to - range.from) as usize;
        if events.len() + rejected != count {
            tracing::warn!(
                from = range.from,
                to = range.to,
                events = events.len(),
                rejected,
                "an archive range does not hold one row per offset"
            );
        }
        let last = events.last().map_or(0, |(ingest_ms, _)| *ingest_ms);
        let mut records: Vec<Record> = events
            .into_iter()
            .map(|(ingest_ms, event)| Record { ingest_ms, payload: Payload::Event(Box::new(event)) })
            .collect();
        // Rejections carry nothing the views read; they keep the offsets.
        records.resize(count, Record { ingest_ms: last, payload: Payload::Skipped });
        Ok(records)
    }
}

impl<S: ArchiveStore> OpenReader for ArchiveLog<S> {
    fn open(&self, offset: u64) -> Result<Box<dyn LogReader>, LogError> {
        if offset > self.0.end {
            return Err(LogError::OutOfRange { requested: offset, end: self.0.end });
        }
        let index = self.0.store.ranges().iter().position(|range| range.to > offset).unwrap_or(usize::MAX);
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

    fn trim(&self, _before: u64, _until_ms: u64) -> Result<usize, LogError> {
        Ok(0)
    }
}

struct ArchiveReader<S> {
    log: ArchiveLog<S>,
    /// The next range to load.
    index: usize,
    /// The loaded range's records from `position` on, reversed.
    buffered: Vec<Record>,
    position: u64,
}

impl<S: ArchiveStore> LogReader for ArchiveReader<S> {
    fn read(&mut self, max: usize, out: &mut Vec<(u64, Record)>) -> Result<usize, LogError> {
        let mut read = 0;
        while read < max {
            let Some(record) = self.buffered.pop() else {
                let Some(range) = self.log.0.store.ranges().get(self.index) else { break };
                let mut records = self.log.records(self.index)?;
                records.drain(..(self.position - range.from) as usize);
                records.reverse();
                self.buffered = records;
                self.index += 1;
                continue;
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::conformance;

    /// Ranges kept in memory.
    struct InMemory(Vec<(ArchivedRange, RangeContents)>, Vec<ArchivedRange>);

    impl ArchiveStore for InMemory {
        fn ranges(&self) -> &[ArchivedRange] {
            &self.1
        }
        fn load(&self, index: usize) -> Result<RangeContents, LogError> {
            Ok(self.0[index].1.clone())
        }
    }

    /// An archive of `commits`, cut into ranges at every other commit, as
    /// the archiver cuts at commit boundaries.
    fn archive_of(commits: &[(u64, Vec<Event>)]) -> Arc<dyn OpenReader> {
        let mut ranges = Vec::new();
        let mut offset = 0;
        for pair in commits.chunks(2) {
            let mut contents = RangeContents::default();
            for (ingest_ms, events) in pair {
                contents.events.extend(events.iter().map(|event| (*ingest_ms, event.clone())));
            }
            let from = offset;
            offset += contents.events.len() as u64;
            ranges.push((ArchivedRange { from, to: offset }, contents));
        }
        let listed = ranges.iter().map(|(range, _)| range.clone()).collect();
        Arc::new(ArchiveLog::open(InMemory(ranges, listed)).expect("contiguous"))
    }

    #[test]
    fn the_archive_passes_the_read_half_of_the_conformance_suite() {
        conformance::run_read_half(&|_name: &str, commits: &[(u64, Vec<Event>)]| archive_of(commits));
    }

    #[test]
    fn rejections_keep_their_offsets() {
        let event = conformance::event(1);
        let contents = RangeContents { events: vec![(7, event.clone())], rejected: 2 };
        let range = ArchivedRange { from: 0, to: 3 };
        let log = ArchiveLog::open(InMemory(vec![(range.clone(), contents)], vec![range])).expect("opens");
        let mut reader = log.open(0).expect("opens a reader");
        let mut out = Vec::new();
        assert_eq!(reader.read(10, &mut out).expect("reads"), 3);
        let payloads: Vec<Payload> = out.into_iter().map(|(_, record)| record.payload).collect();
        assert_eq!(payloads, [Payload::Event(Box::new(event)), Payload::Skipped, Payload::Skipped]);
        assert_eq!(log.durable_ingest_ms(), Some(7));
    }

    #[test]
    fn a_gap_between_ranges_is_refused() {
        let ranges = vec![ArchivedRange { from: 0, to: 2 }, ArchivedRange { from: 3, to: 5 }];
        let store = InMemory(ranges.iter().map(|r| (r.clone(), RangeContents::default())).collect(), ranges);
        let refused = ArchiveLog::open(store).err().expect("a gap");
        assert!(refused.to_string().contains("does not follow"), "{refused}");
    }
}
