//! The behaviour every [`EventLog`] implementation must show, as a suite
//! that any implementation's tests run against their own factory.
//!
//! The factory opens the log named `name`, creating it if needed; opening the
//! same name again must reopen the same log.
//!
//! A read-only log (one that serves records written elsewhere) runs the
//! read half, [`run_read_half`], against a factory that makes a log
//! holding given commits of events; a writable log runs both halves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use coldstream_pipelines::{Event, Payload as Happened};

use super::{Entry, EventLog, LogError, OpenReader, Payload, Record};

/// Opens (or reopens) the log with the given name.
pub type Factory<'a> = &'a dyn Fn(&str) -> Result<Box<dyn EventLog>, LogError>;

/// Batches of events, each committed together at an ingest time, the
/// times increasing.
pub type Commits = [(u64, Vec<Event>)];

/// Makes a log named `name` holding the commits.
pub type ReadFactory<'a> = &'a dyn Fn(&str, &Commits) -> Arc<dyn OpenReader>;

/// A read check of the suite.
pub type ReadCheck = fn(ReadFactory<'_>);

/// The read half: every check a read-only log must pass, by name.
pub const READ_CHECKS: &[(&str, ReadCheck)] = &[
    ("events_read_back_in_order_at_their_ingest_times", events_read_back_in_order),
    ("readers_open_at_any_offset_of_the_commits", readers_open_at_any_commit_offset),
    ("an_empty_log_has_nothing_to_read", an_empty_log_has_nothing_to_read),
    ("a_reader_of_a_share_sees_every_offset_and_time", a_reader_of_a_share_sees_every_offset_and_time),
];

/// Runs the read half, each check on a fresh log.
pub fn run_read_half(factory: ReadFactory<'_>) {
    for (name, check) in READ_CHECKS {
        eprintln!("log conformance (read half): {name}");
        check(factory);
    }
}

/// A read-only factory over a writable log: appends each commit's events
/// as accepted log entries and syncs; for running the read half on it.
pub fn written<'a>(factory: Factory<'a>) -> impl Fn(&str, &Commits) -> Arc<dyn OpenReader> + 'a {
    move |name, commits| {
        let mut log = factory(name).expect("open");
        for (ingest_ms, events) in commits {
            let payloads: Vec<Vec<u8>> = events.iter().map(Record::accepted).collect();
            log.append(*ingest_ms, &payloads).expect("append");
            log.sync().expect("sync");
        }
        log.readers()
    }
}

/// A fridge event with sequence number `seq`.
pub fn event(seq: u64) -> Event {
    Event {
        source_id: format!("FR-{:06}", seq % 7),
        incarnation: 0,
        seq,
        event_time: 1_700_000_000_000_000 + seq as i64 * 1_000_000,
        payload: Happened::ItemTaken {
            session_id: format!("s{}", seq / 3),
            sku: "cola-330".into(),
            qty: 1 + (seq % 3) as i64,
        },
    }
}

/// Commits of `sizes` events each, at ingest times 1,000 ms apart.
fn commits(sizes: &[u64]) -> Vec<(u64, Vec<Event>)> {
    let mut seq = 0;
    sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let events = (0..*size).map(|_| {
                seq += 1;
                event(seq)
            });
            (10_000 + i as u64 * 1_000, events.collect())
        })
        .collect()
}

fn read_from(readers: &dyn OpenReader, from: u64) -> Vec<(u64, Record)> {
    let mut reader = readers.open(from).expect("open a reader");
    let mut out = Vec::new();
    while reader.read(7, &mut out).expect("read") > 0 {}
    assert_eq!(reader.position(), from + out.len() as u64);
    out
}

/// Every event of `commits` with its ingest time, in order.
fn flattened(commits: &[(u64, Vec<Event>)]) -> Vec<(u64, Event)> {
    commits.iter().flat_map(|(time, events)| events.iter().map(|event| (*time, event.clone()))).collect()
}

/// Events with their times, each commit's in the order of their sources
/// (stable, so each source's keep their order): what a log must keep of
/// the order it was given.
fn by_commit_and_source(mut events: Vec<(u64, Event)>) -> Vec<(u64, Event)> {
    events.sort_by(|(a_time, a), (b_time, b)| (a_time, &a.source_id).cmp(&(b_time, &b.source_id)));
    events
}

fn decoded(records: Vec<(u64, Record)>) -> Vec<(u64, Event)> {
    records
        .into_iter()
        .map(|(_, record)| {
            let time = record.ingest_ms;
            match record.decode().expect("decodes") {
                Entry::Accepted(event) => (time, event),
                other => panic!("not an accepted event: {other:?}"),
            }
        })
        .collect()
}

fn events_read_back_in_order(factory: ReadFactory<'_>) {
    let commits = commits(&[3, 1, 20, 5]);
    let readers = factory("read-order", &commits);
    let expected = flattened(&commits);
    let records = read_from(readers.as_ref(), 0);
    assert_eq!(records.len(), expected.len());
    for (i, ((offset, record), (time, _))) in records.iter().zip(&expected).enumerate() {
        assert_eq!(*offset, i as u64);
        assert_eq!(record.ingest_ms, *time);
    }
    // Every event of a commit, each source's in the order they were given
    // (a log of several partitions orders a commit's sources by partition).
    assert_eq!(by_commit_and_source(decoded(records)), by_commit_and_source(expected));
    assert_eq!(readers.durable_offset(), 29);
    assert_eq!(readers.durable_ingest_ms(), Some(13_000));
    assert_eq!(readers.first_offset().expect("first offset"), 0);
}

fn readers_open_at_any_commit_offset(factory: ReadFactory<'_>) {
    let commits = commits(&[4, 4, 4, 4, 4]);
    let readers = factory("read-offsets", &commits);
    let whole = read_from(readers.as_ref(), 0);
    assert_eq!(by_commit_and_source(decoded(whole.clone())), by_commit_and_source(flattened(&commits)));
    for from in [0u64, 1, 3, 4, 11, 19, 20] {
        let records = read_from(readers.as_ref(), from);
        assert_eq!(records.len() as u64, 20 - from, "reading from {from}");
        assert_eq!(records, whole[from as usize..], "reading from {from}: the same records at the same offsets");
    }
    assert!(readers.open(21).is_err(), "an offset past the end is refused");
}

/// A reader that wants every `peers`-th record (one worker's share) gets
/// every offset and ingest time, the wanted records whole and the others
/// without their bytes, whatever batch sizes it reads in.
fn a_reader_of_a_share_sees_every_offset_and_time(factory: ReadFactory<'_>) {
    let commits = commits(&[3, 1, 20, 5, 40]);
    let readers = factory("read-share", &commits);
    let whole = read_from(readers.as_ref(), 0);
    for (peers, index, batch) in [(2u64, 0u64, 7usize), (2, 1, 5), (3, 2, 64), (1, 0, 1)] {
        let mut reader = readers.open(0).expect("open a reader");
        let mut out = Vec::new();
        while reader.read_some(batch, &|offset| offset % peers == index, &mut out).expect("read") > 0 {}
        assert_eq!(out.len(), whole.len(), "{peers} peers, worker {index}");
        for ((offset, record), (whole_offset, whole_record)) in out.iter().zip(&whole) {
            assert_eq!((offset, record.ingest_ms), (whole_offset, whole_record.ingest_ms));
            if offset % peers == index {
                assert_eq!(record, whole_record, "the record at {offset} is wanted");
            } else {
                assert_eq!(record.payload, Payload::Skipped, "the record at {offset} is not wanted");
            }
        }
    }
}

fn an_empty_log_has_nothing_to_read(factory: ReadFactory<'_>) {
    let readers = factory("read-empty", &[]);
    assert_eq!(readers.durable_offset(), 0);
    assert_eq!(readers.durable_ingest_ms(), None);
    assert!(read_from(readers.as_ref(), 0).is_empty());
    assert!(readers.open(1).is_err(), "an offset past the end is refused");
}

/// One check of the suite.
pub type Check = fn(Factory<'_>);

/// Every check of the suite, by name, for reporting.
pub const CHECKS: &[(&str, Check)] = &[
    ("records_read_back_in_order_with_their_ingest_times", records_read_back_in_order),
    ("unsynced_records_are_invisible", unsynced_records_are_invisible),
    ("reopen_keeps_synced_records", reopen_keeps_synced_records),
    ("readers_open_at_any_offset", readers_open_at_any_offset),
    ("ingest_times_increase_from_commit_to_commit", ingest_times_never_decrease),
    ("subscribers_are_woken_on_sync", subscribers_are_woken_on_sync),
    ("readers_follow_a_growing_log", readers_follow_a_growing_log),
];

/// Runs every check, each on a fresh log.
pub fn run_all(factory: Factory<'_>) {
    for (name, check) in CHECKS {
        eprintln!("log conformance: {name}");
        check(factory);
    }
}

fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("record-{i}").repeat(1 + (i as usize % 7)).into_bytes()).collect()
}

fn read_all(log: &dyn EventLog, from: u64) -> Vec<(u64, Record)> {
    let mut reader = log.readers().open(from).expect("open a reader");
    let mut out = Vec::new();
    while reader.read(1000, &mut out).expect("read") > 0 {}
    out
}

fn records_read_back_in_order(factory: Factory<'_>) {
    let mut log = factory("order").expect("open");
    assert_eq!(log.append(1_000, &payloads(0..10)).expect("append"), 0);
    assert_eq!(log.append(1_005, &payloads(10..25)).expect("append"), 10);
    log.sync().expect("sync");
    let records = read_all(log.as_ref(), 0);
    assert_eq!(records.len(), 25);
    let expected = payloads(0..25);
    for (i, (offset, record)) in records.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        assert_eq!(record.payload, Payload::Encoded(expected[i].clone()));
        assert_eq!(record.ingest_ms, if i < 10 { 1_000 } else { 1_005 });
    }
    assert_eq!(log.end_offset(), 25);
    assert_eq!(log.readers().durable_ingest_ms(), Some(1_005));
    assert_eq!(log.last_ingest_ms(), Some(1_005));
}

fn unsynced_records_are_invisible(factory: Factory<'_>) {
    let mut log = factory("unsynced").expect("open");
    log.append(1, &payloads(0..3)).expect("append");
    log.sync().expect("sync");
    log.append(2, &payloads(3..5)).expect("append");
    assert_eq!(log.readers().durable_offset(), 3);
    assert_eq!(log.readers().durable_ingest_ms(), Some(1));
    assert_eq!(read_all(log.as_ref(), 0).len(), 3);
    log.sync().expect("sync");
    assert_eq!(read_all(log.as_ref(), 0).len(), 5);
}

fn reopen_keeps_synced_records(factory: Factory<'_>) {
    {
        let mut log = factory("reopen").expect("open");
        log.append(7, &payloads(0..4)).expect("append");
        log.sync().expect("sync");
    }
    let mut log = factory("reopen").expect("reopen");
    assert_eq!(log.end_offset(), 4);
    assert_eq!(log.last_ingest_ms(), Some(7));
    assert_eq!(log.append(9, &payloads(4..6)).expect("append"), 4);
    log.sync().expect("sync");
    let records = read_all(log.as_ref(), 0);
    let expected: Vec<Payload> = payloads(0..6).into_iter().map(Payload::Encoded).collect();
    assert_eq!(records.into_iter().map(|(_, r)| r.payload).collect::<Vec<_>>(), expected);
}

fn readers_open_at_any_offset(factory: Factory<'_>) {
    let mut log = factory("offsets").expect("open");
    for batch in 0..20u32 {
        log.append(u64::from(batch), &payloads(batch * 50..(batch + 1) * 50)).expect("append");
        log.sync().expect("sync");
    }
    let expected = payloads(0..1000);
    for from in [0u64, 1, 49, 50, 333, 999, 1000] {
        let records = read_all(log.as_ref(), from);
        assert_eq!(records.len() as u64, 1000 - from, "reading from {from}");
        if let Some((offset, record)) = records.first() {
            assert_eq!(*offset, from);
            assert_eq!(record.payload, Payload::Encoded(expected[from as usize].clone()));
        }
    }
    assert!(log.readers().open(1001).is_err(), "an offset past the end is refused");
}

fn ingest_times_never_decrease(factory: Factory<'_>) {
    let mut log = factory("monotonic").expect("open");
    log.append(500, &payloads(0..2)).expect("append");
    log.append(400, &payloads(2..4)).expect("append");
    log.sync().expect("sync");
    log.append(300, &payloads(4..6)).expect("append");
    log.sync().expect("sync");
    let times: Vec<u64> = read_all(log.as_ref(), 0).iter().map(|(_, r)| r.ingest_ms).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "ingest times went backwards: {times:?}");
    assert!(times[4] > times[3], "a commit's time must be above the previous commit's: {times:?}");
}

fn subscribers_are_woken_on_sync(factory: Factory<'_>) {
    let mut log = factory("wake").expect("open");
    let woken = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&woken);
    log.readers().subscribe(Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    log.append(1, &payloads(0..1)).expect("append");
    log.sync().expect("sync");
    assert!(woken.load(Ordering::SeqCst) >= 1);
}

fn readers_follow_a_growing_log(factory: Factory<'_>) {
    let mut log = factory("follow").expect("open");
    let mut reader = log.readers().open(0).expect("open a reader");
    let mut out = Vec::new();
    assert_eq!(reader.read(10, &mut out).expect("read"), 0);
    for round in 0..5u32 {
        log.append(u64::from(round), &payloads(round * 3..round * 3 + 3)).expect("append");
        log.sync().expect("sync");
        while reader.read(2, &mut out).expect("read") > 0 {}
        assert_eq!(reader.position(), u64::from(round * 3 + 3));
    }
    assert_eq!(out.len(), 15);
}
