//! The embedded log: the conformance suite, and recovery of a torn tail.

use std::fs::OpenOptions;

use coldstream_sources::log::embedded::{EmbeddedConfig, EmbeddedLog};
use coldstream_sources::log::{EventLog, LogError, Payload, conformance};

#[test]
fn embedded_log_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let small_segments = EmbeddedConfig { segment_bytes: 4096 };
    let factory = |name: &str| -> Result<Box<dyn EventLog>, LogError> {
        Ok(Box::new(EmbeddedLog::open(dir.path().join(name), small_segments.clone())?))
    };
    conformance::run_all(&factory);
    conformance::run_read_half(&conformance::written(&factory));
    let rolled = std::fs::read_dir(dir.path().join("offsets")).unwrap().count();
    assert!(rolled > 1, "the suite should have spanned several segments, saw {rolled}");
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
