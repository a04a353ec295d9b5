//! Every decoder of bytes from outside, fed arbitrary bytes (and valid
//! files with bytes flipped) for a bounded number of cases: each answers
//! with an error or a value, never a panic.

use coldstream_pipelines::Payload;
use coldstream_sinks::parquet::archive::read_events;
use coldstream_sinks::parquet::{EventArchive, ParquetConfig, list_parts};
use coldstream_sinks::webhooks::Outbox;
use coldstream_sources::auth::Principal;
use coldstream_sources::convert::accept;
use coldstream_sources::log::embedded::{EmbeddedConfig, EmbeddedLog};
use coldstream_sources::log::{EventLog, Payload as Stored, Record};
use coldstream_sources::proto;
use proptest::prelude::*;

use crate::support::event;

fn read_all(log: &EmbeddedLog) {
    if let Ok(mut reader) = log.readers().open(0) {
        let mut records = Vec::new();
        while let Ok(n) = reader.read(64, &mut records) {
            if n == 0 {
                break;
            }
            for (_, record) in records.drain(..) {
                let _ = record.decode();
            }
        }
    }
}

/// A segment of a few real records.
fn real_segment() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).unwrap();
    let events: Vec<Vec<u8>> = (1..=4)
        .map(|seq| {
            Record::accepted(&event("FR-1", seq, 1, Payload::StockCounted { sku: "cola".into(), qty: seq as i64 }))
        })
        .collect();
    log.append(5, &events).unwrap();
    log.sync().unwrap();
    std::fs::read(dir.path().join(format!("{:020}.log", 0))).unwrap()
}

fn flipped(mut bytes: Vec<u8>, flips: &[(usize, u8)]) -> Vec<u8> {
    for (at, mask) in flips {
        if !bytes.is_empty() {
            let at = at % bytes.len();
            bytes[at] ^= mask | 1;
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn log_segments_of_any_bytes_open_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2048), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        for segment in [bytes, flipped(real_segment(), &flips)] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(format!("{:020}.log", 0)), &segment).unwrap();
            if let Ok(log) = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()) {
                read_all(&log);
            }
        }
    }

    #[test]
    fn log_records_of_any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Record { ingest_ms: 1, payload: Stored::Encoded(bytes) }.decode();
    }

    #[test]
    fn outboxes_of_any_bytes_open_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("outbox.log"), &bytes).unwrap();
        if let Ok(outbox) = Outbox::open(dir.path()) {
            let _ = outbox.pending().count();
        }
    }

    #[test]
    fn any_wire_event_is_accepted_or_rejected_with_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        use prost::Message;
        if let Ok(wire) = proto::Event::decode(bytes.as_slice()) {
            for principal in [Principal::Fridge("FR-1".into()), Principal::BackOffice("bo".into())] {
                if let Err(rejection) = accept(&wire, &principal, 1_700_000_000_000_000) {
                    prop_assert!(!rejection.message.is_empty());
                }
            }
        }
        let _ = proto::FridgeMessage::decode(bytes.as_slice());
        let _ = proto::PublishRequest::decode(bytes.as_slice());
    }

    #[test]
    fn parquet_files_of_any_bytes_are_read_or_refused(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), junk in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("part.parquet");
        std::fs::write(&file, &junk).unwrap();
        let _ = read_events(&file);
        std::fs::write(&file, flipped(real_parquet(), &flips)).unwrap();
        let _ = read_events(&file);
    }
}

/// A real `events/` file.
fn real_parquet() -> Vec<u8> {
    use std::sync::OnceLock;
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (mut archive, _) = EventArchive::open(dir.path(), ParquetConfig::default()).unwrap();
        for seq in 1..=20 {
            let taken =
                event("FR-1", seq, 1, Payload::ItemTaken { session_id: "s".into(), sku: "cola".into(), qty: 1 });
            archive.push_event(seq - 1, 7, taken).unwrap();
        }
        archive.flush(20).unwrap();
        let (path, _, _) = list_parts(&dir.path().join("events")).unwrap().remove(0);
        std::fs::read(path).unwrap()
    })
    .clone()
}
