//! The contracts that outlive a release: messages a fridge encoded against
//! today's `proto/`, a log record written today, and a Parquet file the
//! archive wrote today, kept as fixtures in `tests/fixtures/`. Every later
//! gateway must still decode and accept the messages, read the log record,
//! and read the file (a column added since reads as null).
//!
//! `COLDSTREAM_WRITE_FIXTURES=1 cargo test contract` writes the fixtures
//! anew; that is only right when the contract itself is meant to start
//! over (a new package version), never to make a failing check pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sources::convert::encode;
use coldstream_sources::proto::{self, FridgeMessage, LogEntry, PublishRequest, fridge_message};
use prost::Message;

use crate::support::{back_office_token, session};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/contract")
}

fn writing() -> bool {
    std::env::var_os("COLDSTREAM_WRITE_FIXTURES").is_some()
}

/// Today's messages: a fridge's `Hello` and a batch with the first event of
/// every kind a fridge sends, the back office's `PublishRequest`, and a
/// log record of an accepted event.
fn todays_messages() -> Vec<(&'static str, Vec<u8>)> {
    let spec =
        FleetSpec { seed: 3, fridges: 1, events: 4_000, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let mut fleet = Fleet::new(&spec);
    let events = fleet.fridges[0].events_until(i64::MAX);
    let mut kinds = Vec::new();
    let firsts: Vec<_> = events
        .iter()
        .filter(|e| {
            let kind = format!("{:?}", e.kind());
            let new = !kinds.contains(&kind);
            kinds.push(kind);
            new
        })
        .collect();
    let fridge = firsts[0].source_id.clone();
    let hello = FridgeMessage {
        kind: Some(fridge_message::Kind::Hello(proto::Hello { fridge_id: fridge.clone(), incarnation: 0 })),
    };
    let batch = FridgeMessage {
        kind: Some(fridge_message::Kind::Batch(proto::EventBatch {
            batch_id: 1,
            events: firsts.iter().map(|e| encode(e)).collect(),
        })),
    };
    let publish = PublishRequest {
        source_id: fleet.back_office[0].source_id.clone(),
        incarnation: 0,
        events: fleet.back_office.iter().take(50).map(encode).collect(),
    };
    let entry = LogEntry { entry: Some(proto::log_entry::Entry::Accepted(encode(firsts[1]))), incarnation: 0 };
    vec![
        ("hello.bin", hello.encode_to_vec()),
        ("batch.bin", batch.encode_to_vec()),
        ("publish.bin", publish.encode_to_vec()),
        ("log_entry.bin", entry.encode_to_vec()),
    ]
}

/// A fixture's bytes (written first, when asked to).
fn fixture(name: &str, today: &[u8]) -> Vec<u8> {
    let path = fixtures().join(name);
    if writing() {
        std::fs::create_dir_all(fixtures()).unwrap();
        std::fs::write(&path, today).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_encoded_against_the_first_contract_still_decode_and_a_live_gateway_accepts_them() {
    let today = todays_messages();
    let bytes = |name: &str| fixture(name, &today.iter().find(|(n, _)| *n == name).unwrap().1);
    // Decoded and encoded again, every fixture is the same bytes: no field
    // was renumbered, retyped or dropped.
    let hello = FridgeMessage::decode(bytes("hello.bin").as_slice()).unwrap();
    let batch = FridgeMessage::decode(bytes("batch.bin").as_slice()).unwrap();
    let publish = PublishRequest::decode(bytes("publish.bin").as_slice()).unwrap();
    let entry = LogEntry::decode(bytes("log_entry.bin").as_slice()).unwrap();
    assert_eq!(hello.encode_to_vec(), bytes("hello.bin"));
    assert_eq!(batch.encode_to_vec(), bytes("batch.bin"));
    assert_eq!(publish.encode_to_vec(), bytes("publish.bin"));
    assert_eq!(entry.encode_to_vec(), bytes("log_entry.bin"));

    // A log written today is read by later versions: the record decodes to an event.
    let Some(proto::log_entry::Entry::Accepted(logged)) = entry.entry else { panic!("an accepted event") };
    coldstream_sources::convert::decode(&logged).unwrap();

    let Some(fridge_message::Kind::Hello(hello)) = hello.kind else { panic!("a Hello") };
    let Some(fridge_message::Kind::Batch(batch)) = batch.kind else { panic!("a Batch") };
    assert!(batch.events.len() >= 5, "the batch holds every kind a fridge sends");
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let mut stream = session(&addr, &hello.fridge_id).await;
    let seqs: Vec<u64> = batch.events.iter().map(|e| e.seq).collect();
    stream.send(batch.batch_id, batch.events).await.unwrap();
    let ack = stream.ack().await.unwrap();
    assert_eq!(ack.accepted, seqs, "every event of the fixture accepted: {ack:?}");
    let channel = coldstream_sources::client::channel(&addr).await.unwrap();
    let published = publish.events.len();
    let ack = coldstream_sources::client::publish(
        channel,
        &publish.source_id,
        &back_office_token(&publish.source_id),
        publish.events,
    )
    .await
    .unwrap();
    assert_eq!(ack.accepted.len(), published, "{ack:?}");
    server.shutdown().await.unwrap();
}

/// The archive's files of today, and what `SELECT * FROM events` gave over them.
fn parquet_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet")
}

async fn write_parquet_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let today = todays_messages();
    let hello = FridgeMessage::decode(today[0].1.as_slice()).unwrap();
    let batch = FridgeMessage::decode(today[1].1.as_slice()).unwrap();
    let (Some(fridge_message::Kind::Hello(hello)), Some(fridge_message::Kind::Batch(batch))) = (hello.kind, batch.kind)
    else {
        panic!("a Hello and a Batch")
    };
    let mut stream = session(&addr, &hello.fridge_id).await;
    stream.send(1, batch.events).await.unwrap();
    stream.ack().await.unwrap();
    drop(stream);
    server.caught_up(Duration::from_secs(60)).await.unwrap();
    server.shutdown().await.unwrap();
    let target = parquet_fixtures().join("events");
    let _ = std::fs::remove_dir_all(&target);
    for day in std::fs::read_dir(dir.path().join("events")).unwrap() {
        let day = day.unwrap();
        std::fs::create_dir_all(target.join(day.file_name())).unwrap();
        for file in std::fs::read_dir(day.path()).unwrap() {
            let file = file.unwrap();
            if file.file_name().to_string_lossy().ends_with(".parquet") {
                std::fs::copy(file.path(), target.join(day.file_name()).join(file.file_name())).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_file_the_archive_wrote_under_the_first_schema_still_reads_with_new_columns_null() {
    if writing() {
        write_parquet_fixtures().await;
    }
    // Only what the fixtures hold: a data directory of the first release.
    let dir = tempfile::tempdir().unwrap();
    crate::webhooks::copy_dir(&parquet_fixtures(), dir.path());
    let ctx = coldstream::query::context_of(&[dir.path().to_path_buf()]).await.unwrap();
    let csv = |sql: String| {
        let ctx = ctx.clone();
        async move {
            let batches = coldstream::query::run(&ctx, &sql).await.unwrap();
            coldstream::query::render(&batches, coldstream::query::Format::Csv).unwrap()
        }
    };
    // Columns are only ever added: each of the file's is still there, with its type.
    let file_columns = parquet_columns(&parquet_fixtures().join("events"));
    let current = coldstream_sinks::parquet::schema::EVENTS.clone();
    for (name, data_type) in &file_columns {
        let field = current.field_with_name(name).unwrap_or_else(|_| panic!("column {name} was removed"));
        assert_eq!(field.data_type(), data_type, "column {name} changed its type");
    }
    // A column added since the file was written reads as null.
    for field in current.fields() {
        if !file_columns.iter().any(|(name, _)| name == field.name()) {
            assert!(field.is_nullable(), "an added column {} must be nullable", field.name());
            let text = csv(format!("SELECT count(*) AS n FROM events WHERE \"{}\" IS NOT NULL", field.name())).await;
            assert_eq!(text.lines().nth(1), Some("0"), "{} reads as null", field.name());
        }
    }
    // The file's columns read back as they were written.
    let columns: Vec<String> = file_columns.iter().map(|(name, _)| format!("\"{name}\"")).collect();
    let read = csv(format!("SELECT {} FROM events ORDER BY source_id, seq", columns.join(", "))).await;
    assert!(read.lines().count() > 5, "the fixture holds the batch's events:\n{read}");
    let golden = parquet_fixtures().join("events.csv");
    if writing() {
        std::fs::write(&golden, &read).unwrap();
    }
    assert_eq!(read, std::fs::read_to_string(&golden).unwrap());
}

/// The columns (and types) of the Parquet files under `dir`.
fn parquet_columns(dir: &Path) -> Vec<(String, arrow::datatypes::DataType)> {
    let day = std::fs::read_dir(dir).unwrap().next().unwrap().unwrap().path();
    let file = std::fs::read_dir(day).unwrap().next().unwrap().unwrap().path();
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file).unwrap(),
    )
    .unwrap();
    reader.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect()
}
