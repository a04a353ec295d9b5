//! The behaviour every [`EventLog`] implementation must show, as a suite
//! that any implementation's tests run against their own factory.
//!
//! The factory opens the log named `name`, creating it if needed; opening the
//! same name again must reopen the same log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{EventLog, LogError, Record};

/// Opens (or reopens) the log with the given name.
pub type Factory<'a> = &'a dyn Fn(&str) -> Result<Box<dyn EventLog>, LogError>;

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
        assert_eq!(record.payload, expected[i]);
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
    assert_eq!(records.iter().map(|(_, r)| r.payload.clone()).collect::<Vec<_>>(), payloads(0..6));
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
            assert_eq!(record.payload, expected[from as usize]);
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
