//! Deterministic replay: a second server that processes a copy of the same
//! log writes exactly the same changes, at the same logical times, to every
//! view's changelog (restock order ids included).

use std::path::Path;
use std::time::Duration;

use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sinks::parquet::view_tables;
use coldstream_sources::simulator::{self as simulate, RunSpec};

use crate::support::{query_csv, start};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Every change of every view, sorted by time and then every column.
async fn changelogs(dir: &Path) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for (view, schema) in view_tables() {
        let columns: Vec<String> = schema.fields().iter().map(|f| format!("\"{}\"", f.name())).collect();
        let sql = format!("SELECT * FROM {view} ORDER BY \"time\", {}", columns.join(", "));
        all.push((view.to_owned(), query_csv(dir, &sql).await));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_the_same_log_twice_gives_the_same_changes_at_the_same_times() {
    let first = tempfile::tempdir().unwrap();
    let server = start(first.path()).await;
    let now_us = chrono::Utc::now().timestamp_micros();
    let spec = FleetSpec {
        seed: 11,
        fridges: 4,
        events: 8_000,
        start_us: FleetSpec::start_before(now_us, 4, 8_000),
        bad_rate: 0.0,
        skus: None,
    };
    let run = RunSpec {
        target: format!("http://{}", server.addr()),
        tokens: crate::support::tokens(),
        tls: None,
        rate: None,
        batch: 250,
        progress: false,
    };
    simulate::run(Fleet::new(&spec), &run, spec.events).await.unwrap();
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    server.shutdown().await.unwrap();

    let second = tempfile::tempdir().unwrap();
    copy_dir(&first.path().join("log"), &second.path().join("log"));
    let server = start(second.path()).await;
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    server.shutdown().await.unwrap();

    let (original, replayed) = (changelogs(first.path()).await, changelogs(second.path()).await);
    for ((view, a), (_, b)) in original.iter().zip(&replayed) {
        assert_eq!(a, b, "the {view} changelog differs on replay");
    }
    for view in ["inventory", "sessions", "revenue", "sales_7d", "restock_orders"] {
        let (_, csv) = original.iter().find(|(name, _)| name == view).unwrap();
        assert!(csv.lines().count() > 10, "{view} should have changes:\n{csv}");
    }
}
