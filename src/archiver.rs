//! The archiver: tails the log into `events/` and `rejected/`, in ranges
//! of log offsets that end where a commit does, so that a restart rewrites
//! the range a crash left incomplete exactly as it was and resumes after
//! it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coldstream_pipelines::dedup::Positions;
use coldstream_sinks::parquet::{EventArchive, RejectedRow};
use coldstream_sources::log::{Entry, LogReader, OpenReader};
use coldstream_sources::proto::RejectReason;

use crate::server::{Progress, ServerError};

/// The dead-letter row of a rejected log entry.
fn rejected_row(received_ms: u64, rejected: coldstream_sources::proto::RejectedEvent) -> RejectedRow {
    let event = rejected.event.unwrap_or_default();
    let code = RejectReason::try_from(rejected.code).unwrap_or(RejectReason::Unspecified);
    RejectedRow {
        received_ms,
        principal: rejected.principal,
        source_id: Some(event.source_id.clone()).filter(|s| !s.is_empty()),
        seq: Some(event.seq).filter(|&s| s > 0),
        event_time_us: Some(event.event_time_us).filter(|&t| t != 0),
        kind: coldstream_sources::convert::wire_kind(&event).map(str::to_owned),
        reason_code: code.as_str_name().trim_start_matches("REJECT_REASON_").to_ascii_lowercase(),
        reason: rejected.message,
        event: format!("{event:?}"),
    }
}

/// Writes what the archive buffered, up to `end`, and notes where the
/// range it wrote starts.
fn commit(archive: &mut EventArchive, end: u64, progress: &Progress) -> Result<(), ServerError> {
    let first = archive.buffered_from();
    archive.flush(end)?;
    if let Some(first) = first {
        progress.archive_committed.store(first, Ordering::Release);
    }
    Ok(())
}

/// A reader at `start`, and on a log with several writers the position of
/// every source before it, so that the copies such a log may hold are
/// archived once ([`coldstream_pipelines::dedup`]). Such a log is read
/// from its start, which also derives its times exactly.
fn reader_at(readers: &dyn OpenReader, start: u64) -> Result<(Box<dyn LogReader>, Option<Positions>), ServerError> {
    if !readers.shared() {
        return Ok((readers.open(start)?, None));
    }
    let mut positions = Positions::default();
    let mut reader = readers.open(0)?;
    let mut records = Vec::with_capacity(4096);
    while reader.position() < start {
        records.clear();
        let limit = (start - reader.position()).min(4096) as usize;
        if reader.read(limit, &mut records)? == 0 {
            break;
        }
        for (_, record) in records.drain(..) {
            if let Ok(Entry::Accepted(event)) = record.decode() {
                positions.admits(&event);
            }
        }
    }
    Ok((reader, Some(positions)))
}

/// Tails the log into `events/` and `rejected/`.
pub fn archive_log(
    readers: &dyn OpenReader,
    mut archive: EventArchive,
    resume: Option<(u64, u64)>,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<(), ServerError> {
    let this = std::thread::current();
    readers.subscribe(Box::new(move || this.unpark()));
    let (start, redo_until) = match resume {
        Some((first, end)) => (first, Some(end)),
        None => (0, None),
    };
    let (mut reader, mut positions) = reader_at(readers, start.min(readers.durable_offset()))?;
    let mut records = Vec::with_capacity(4096);
    let mut last_ms = None;
    loop {
        records.clear();
        let limit = match redo_until {
            Some(end) if reader.position() < end => (end - reader.position()).min(4096) as usize,
            _ => 4096,
        };
        let read = reader.read(limit, &mut records)?;
        for (offset, record) in records.drain(..) {
            // A range ends only where a commit does (the time changes), so
            // the log after the archive starts with a whole commit.
            let redoing = redo_until.is_some_and(|end| offset < end);
            if !redoing && last_ms.is_some_and(|t| t != record.ingest_ms) && archive.is_due() {
                commit(&mut archive, offset, progress)?;
            }
            last_ms = Some(record.ingest_ms);
            let ingest_ms = record.ingest_ms;
            match record.decode() {
                Ok(Entry::Accepted(event)) => {
                    if positions.as_mut().is_none_or(|positions| positions.admits(&event)) {
                        archive.push_event(offset, ingest_ms, event)?;
                    }
                }
                Ok(Entry::Rejected(rejected)) => archive.push_rejected(offset, rejected_row(ingest_ms, rejected))?,
                Ok(Entry::Skipped) => {}
                Err(error) => tracing::warn!(offset, %error, "skipping a log record"),
            }
        }
        let position = reader.position();
        // The range left incomplete by a crash is rewritten exactly as it
        // was; otherwise the durable end is a commit boundary.
        if redo_until == Some(position) || (position >= readers.durable_offset() && archive.is_due()) {
            commit(&mut archive, position, progress)?;
        }
        progress.archived.store(position, Ordering::Release);
        if read == 0 {
            if stop.load(Ordering::SeqCst) && position >= readers.durable_offset() {
                commit(&mut archive, position, progress)?;
                return Ok(());
            }
            std::thread::park_timeout(Duration::from_millis(200));
        }
    }
}
