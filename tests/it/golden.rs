//! Golden SQL: every `queries/*.sql` run over a fixed fixture must print
//! exactly `queries/expected/<name>.csv`. After an intended change,
//! regenerate the expected files with
//! `COLDSTREAM_BLESS=1 cargo test --test it golden` and review the diff.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use coldstream::checkpoint::CheckpointStore;
use coldstream::pipeline::{CheckpointPolicy, Pipeline, PipelineSpec, ResumePoint};
use coldstream::server::Progress;
use coldstream::view_sink::ViewSinks;
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_pipelines::views::ViewConfig;
use coldstream_sinks::ParquetConfig;
use coldstream_sinks::parquet::{EventArchive, ViewChangelogs};
use coldstream_sources::ingest::SeqSnapshot;
use coldstream_sources::log::embedded::{EmbeddedConfig, EmbeddedLog};
use coldstream_sources::log::{EventLog, Record};

use crate::support::query_csv;

/// 6 fridges, 24,000 events from 2026-03-01 00:00 UTC (about a day and a
/// half each), arriving in event time order in batches of 100 at 1 ms
/// apart: archived, and written to a log that the server's own pipeline
/// reads into the changelogs.
pub(crate) fn fixture(dir: &Path) {
    fixture_with(dir, ViewConfig::default());
}

/// The fixture, with the views computed with `views`.
pub(crate) fn fixture_with(dir: &Path, views: ViewConfig) {
    let spec =
        FleetSpec { seed: 42, fridges: 6, events: 24_000, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let mut events = Fleet::new(&spec).all_events();
    events.sort_by_key(|event| event.event_time);
    let config = ParquetConfig::default();
    let (mut archive, resume) = EventArchive::open(dir, config.clone()).unwrap();
    assert!(resume.is_none());
    let mut log = EmbeddedLog::open(dir.join("log"), EmbeddedConfig::default()).unwrap();
    for (batch, chunk) in events.chunks(100).enumerate() {
        let time = 1_000 + batch as u64;
        for (i, event) in chunk.iter().enumerate() {
            archive.push_event((batch * 100 + i) as u64, time, event.clone()).unwrap();
        }
        let payloads: Vec<Vec<u8>> = chunk.iter().map(Record::accepted).collect();
        log.append(time, &payloads).unwrap();
        log.sync().unwrap();
    }
    archive.flush(events.len() as u64).unwrap();
    let pipeline = Pipeline::start(PipelineSpec {
        log: log.readers(),
        resume: ResumePoint::start_of_log(&views),
        views,
        workers: 2,
        cluster: Default::default(),
        sinks: ViewSinks::new(vec![Box::new(ViewChangelogs::open(dir, config).unwrap())]),
        checkpoints: CheckpointPolicy {
            store: CheckpointStore::open(dir, 1).unwrap(),
            every_ms: u64::MAX,
            every_records: u64::MAX,
            seqs: Box::new(SeqSnapshot::default),
            retention_ms: None,
        },
        progress: Arc::new(Progress::default()),
        failures: Default::default(),
    })
    .unwrap();
    pipeline.stop().unwrap();
}

pub(crate) fn queries() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("queries"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
}

/// Every view of the list is read by at least one golden query.
#[test]
fn every_view_has_a_golden_query() {
    let texts: Vec<String> = queries().iter().map(|file| std::fs::read_to_string(file).unwrap()).collect();
    for view in coldstream_pipelines::views::NAMES {
        assert!(
            texts.iter().any(|sql| sql.contains(view)),
            "no query in queries/ reads the view {view}: add one with its expected output"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_queries_match_their_expected_output() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let bless = std::env::var_os("COLDSTREAM_BLESS").is_some();
    let files = queries();
    assert!(files.len() >= 2, "queries/ should hold the canned queries");
    let mut failures = Vec::new();
    for file in files {
        let sql = std::fs::read_to_string(&file).unwrap();
        let actual = query_csv(dir.path(), &sql).await;
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let expected_path = file.parent().unwrap().join("expected").join(format!("{stem}.csv"));
        if bless {
            std::fs::create_dir_all(expected_path.parent().unwrap()).unwrap();
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing; run with COLDSTREAM_BLESS=1", expected_path.display()));
        if actual != expected {
            failures.push(format!("{stem}:\n--- expected\n{expected}--- actual\n{actual}"));
        }
        assert!(actual.lines().count() > 1, "{stem} returned no rows on the fixture");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
