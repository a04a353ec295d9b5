//! The embedded log: the conformance suite, and recovery of a torn tail.

use std::fs::OpenOptions;

use coldstream_sources::log::embedded::{EmbeddedConfig, EmbeddedLog};
use coldstream_sources::log::{EventLog, LogError, Payload, conformance};

/// Embedded logs named after their folder in `dir`, with 4 KiB segments so
/// that the suite spans several.
fn small_segments(dir: &std::path::Path) -> impl Fn(&str) -> Result<Box<dyn EventLog>, LogError> + '_ {
    move |name| Ok(Box::new(EmbeddedLog::open(dir.join(name), EmbeddedConfig { segment_bytes: 4096 })?))
}

#[test]
fn embedded_log_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let factory = small_segments(dir.path());
    conformance::run_all(&factory);
    conformance::run_read_half(&conformance::written(&factory));
    let rolled = std::fs::read_dir(dir.path().join("offsets")).unwrap().count();
    assert!(rolled > 1, "the suite should have spanned several segments, saw {rolled}");
}

#[test]
fn a_follower_in_another_process_passes_the_read_half() {
    let dir = tempfile::tempdir().unwrap();
    let factory = small_segments(dir.path());
    let written = conformance::written(&factory);
    conformance::run_read_half(&|name: &str, commits: &conformance::Commits| {
        // The writer is dropped: the follower sees only what DURABLE says.
        drop(written(name, commits));
        EmbeddedLog::follow(dir.path().join(name)).unwrap()
    });
}

#[test]
fn a_follower_reads_up_to_the_last_sync_and_is_woken_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).unwrap();
    log.append(5, &[vec![1; 10], vec![2; 10]]).unwrap();
    log.sync().unwrap();
    let follower = EmbeddedLog::follow(dir.path()).unwrap();
    let (woken, wakes) = std::sync::mpsc::channel();
    let woken = std::sync::Mutex::new(woken);
    follower.subscribe(Box::new(move || {
        let _ = woken.lock().unwrap().send(());
    }));
    assert_eq!((follower.durable_offset(), follower.durable_ingest_ms()), (2, Some(5)));
    let mut reader = follower.open(0).unwrap();
    let mut out = Vec::new();
    assert_eq!(reader.read(10, &mut out).unwrap(), 2);
    // Written but not synced: in the file, and not for a follower to read.
    log.append(9, &[vec![3; 10]]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(reader.read(10, &mut out).unwrap(), 0, "read past the durable end");
    assert_eq!(follower.durable_offset(), 2);
    log.sync().unwrap();
    wakes.recv_timeout(std::time::Duration::from_secs(30)).expect("the follower wakes its subscribers");
    assert_eq!(reader.read(10, &mut out).unwrap(), 1);
    assert_eq!((out[2].0, out[2].1.ingest_ms), (2, 9));
    assert_eq!(follower.trim(3, u64::MAX).unwrap(), 0, "a follower trims nothing");
    std::fs::write(dir.path().join("a-file"), b"").unwrap();
    let wrong = EmbeddedLog::follow(dir.path().join("a-file")).err().expect("not a directory");
    assert!(wrong.to_string().contains("a-file"), "{wrong}");
    // A log its writer has not created yet reads as empty, and is followed once it is.
    let later = dir.path().join("later");
    let follower = EmbeddedLog::follow(&later).unwrap();
    let mut reader = follower.open(0).unwrap();
    assert_eq!(reader.read(10, &mut out).unwrap(), 0);
    let mut log = EmbeddedLog::open(&later, EmbeddedConfig::default()).unwrap();
    log.append(3, &[vec![7; 10]]).unwrap();
    log.sync().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while follower.durable_offset() < 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    out.clear();
    assert_eq!(reader.read(10, &mut out).unwrap(), 1);
}

fn records(log: &EmbeddedLog) -> Vec<Vec<u8>> {
    let mut reader = log.readers().open(0).unwrap();
    let mut out = Vec::new();
    while reader.read(100, &mut out).unwrap() > 0 {}
    out.into_iter()
        .map(|(_, r)| match r.payload {
            Payload::Encoded(bytes) => bytes,
            other => panic!("the embedded log stores bytes, not {other:?}"),
        })
        .collect()
}

#[test]
fn a_torn_tail_is_truncated_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
    {
        let mut log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).unwrap();
        log.append(5, &payloads).unwrap();
        log.sync().unwrap();
    }
    // Cut the last record in half, as a crash in the middle of a write would.
    let segment = dir.path().join(format!("{:020}.log", 0));
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    let length = file.metadata().unwrap().len();
    file.set_len(length - 58).unwrap();
    drop(file);

    let mut log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).unwrap();
    assert_eq!(log.end_offset(), 9);
    assert_eq!(records(&log), payloads[..9].to_vec());
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), 9 * 116);

    // The log goes on from there.
    log.append(6, &[b"after".to_vec()]).unwrap();
    log.sync().unwrap();
    assert_eq!(records(&log).last().unwrap(), b"after");
}

#[test]
fn a_corrupted_last_record_is_dropped_not_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).unwrap();
        log.append(5, &[b"first".to_vec(), b"second".to_vec()]).unwrap();
        log.sync().unwrap();
    }
    let segment = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).unwrap();
    assert_eq!(records(&log), vec![b"first".to_vec()]);
}

#[test]
fn a_corrupt_record_in_the_middle_of_the_active_segment_is_refused_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
    {
        let mut log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).unwrap();
        log.append(5, &payloads).unwrap();
        log.sync().unwrap();
    }
    // Flip one payload byte of the fourth record: six acked records follow it.
    let segment = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[3 * 116 + 16 + 50] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let error = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).err().expect("refused");
    assert!(matches!(error, LogError::Corrupt { position: 348, .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("00000000000000000000.log") && message.contains("348"), "{message}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nothing was truncated");
}

#[test]
fn a_failed_fsync_cuts_the_segment_back_to_what_was_durable_and_appending_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).unwrap();
    log.append(5, &[b"durable".to_vec()]).unwrap();
    log.sync().unwrap();
    log.fail_next_syncs(1);
    log.append(6, &[b"never durable".to_vec()]).unwrap();
    assert!(log.sync().is_err());
    assert_eq!(log.readers().durable_offset(), 1);
    // The next append recovers first: the failed record is gone from the file.
    log.append(7, &[b"after".to_vec()]).unwrap();
    log.sync().unwrap();
    assert_eq!(records(&log), vec![b"durable".to_vec(), b"after".to_vec()]);
    drop(log);
    // A restart (no reboot) reads exactly the durable records.
    let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).unwrap();
    assert_eq!(records(&log), vec![b"durable".to_vec(), b"after".to_vec()]);
    let segment = dir.path().join(format!("{:020}.log", 0));
    assert_eq!(std::fs::metadata(segment).unwrap().len(), 2 * 16 + 7 + 5);
}
