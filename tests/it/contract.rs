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
    coldstream_sources::convert::decode(logged).unwrap();

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

/// Parquet files the sinks wrote under the first schemas, one folder per
/// table, and what reading them gave.
fn parquet_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet")
}

/// Runs a small fleet (a few bad events among them) into a server, writes
/// a dead letter as delivery does for a refused webhook, and keeps every
/// table's Parquet files.
async fn write_parquet_fixtures() {
    use coldstream_sinks::webhooks::{DeadLetter, Endpoint, FailedDelivery, Message as Webhook};
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::start(dir.path()).await;
    let spec =
        FleetSpec { seed: 8, fridges: 4, events: 20_000, start_us: 1_772_323_200_000_000, bad_rate: 0.01, skus: None };
    let run = crate::support::run_spec(format!("http://{}", server.addr()), None, 200);
    coldstream_sources::simulator::run(Fleet::new(&spec), &run, spec.events).await.unwrap();
    server.caught_up(Duration::from_secs(60)).await.unwrap();
    server.shutdown().await.unwrap();
    let dead_letter = DeadLetter::open(dir.path(), Default::default()).unwrap();
    let message = Webhook {
        id: "msg_00000000000000000000000000000001".into(),
        endpoint: Endpoint::Procurement,
        key: "FR-000001/RO-FR-000001-1".into(),
        kind: "restock.opened".into(),
        time: 1_772_323_200_000,
        body: r#"{"type":"restock.opened","timestamp":"2026-03-01T00:00:00.000Z","data":{}}"#.into(),
    };
    dead_letter.write(&FailedDelivery { message, status: 410, answer: "gone".into() }).unwrap();
    let _ = std::fs::remove_dir_all(parquet_fixtures());
    std::fs::create_dir_all(parquet_fixtures()).unwrap();
    for table in coldstream::query::parquet_tables() {
        let files = parquet_files(&dir.path().join(&table.folder));
        assert!(!files.is_empty(), "the fixture run wrote no file of {}", table.name);
        for file in files {
            let relative = file.strip_prefix(dir.path()).unwrap();
            let target = parquet_fixtures().join(relative);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&file, &target).unwrap();
        }
    }
}

/// The Parquet files under `dir`, at any depth, in name order.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(parquet_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_files_written_under_the_first_schemas_still_read_with_new_columns_null() {
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
            let batches = coldstream::query::run(&ctx, &sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            coldstream::query::render(&batches, coldstream::query::Format::Csv).unwrap()
        }
    };
    use sha2::Digest;
    let mut read_back = Vec::new();
    for table in coldstream::query::parquet_tables() {
        let name = table.name;
        let files = parquet_files(&parquet_fixtures().join(&table.folder));
        assert!(!files.is_empty(), "no fixture of {name}: every table keeps one");
        // Columns are only ever added: each of the files' is still there, with its type.
        let file_columns = parquet_columns(&files[0]);
        for (column, data_type) in &file_columns {
            let field = table.schema.field_with_name(column).unwrap_or_else(|_| panic!("{name}.{column} was removed"));
            assert_eq!(field.data_type(), data_type, "{name}.{column} changed its type");
        }
        // A column added since the files were written reads as null.
        for field in table.schema.fields() {
            if !file_columns.iter().any(|(column, _)| column == field.name()) {
                assert!(field.is_nullable(), "the added column {name}.{} must be nullable", field.name());
                let text =
                    csv(format!("SELECT count(*) AS n FROM {name} WHERE \"{}\" IS NOT NULL", field.name())).await;
                assert_eq!(text.lines().nth(1), Some("0"), "{name}.{} reads as null", field.name());
            }
        }
        // The files' columns read back as they were written.
        let columns: Vec<String> = file_columns.iter().map(|(column, _)| format!("\"{column}\"")).collect();
        let order: Vec<String> = (1..=columns.len()).map(|i| i.to_string()).collect();
        let read = csv(format!("SELECT {} FROM {name} ORDER BY {}", columns.join(", "), order.join(", "))).await;
        let rows = read.lines().count() - 1;
        assert!(rows > 0, "{name}'s fixture holds rows");
        read_back.push(format!("{name} {rows} {}", hex::encode(sha2::Sha256::digest(read.as_bytes()))));
    }
    // What they read as when they were written: rows and a digest of the
    // CSV, per table.
    let digests = parquet_fixtures().join("read_back.txt");
    let read_back = read_back.join("\n") + "\n";
    if writing() {
        std::fs::write(&digests, &read_back).unwrap();
    }
    assert_eq!(read_back, std::fs::read_to_string(&digests).unwrap(), "every table reads as it was written");
}

/// The columns (and types) of a Parquet file.
fn parquet_columns(file: &Path) -> Vec<(String, arrow::datatypes::DataType)> {
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file).unwrap(),
    )
    .unwrap();
    reader.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect()
}
