//! Crashes, lost checkpoints and trimmed logs: the views come back right.

use std::path::Path;
use std::time::Duration;

use coldstream::config::{Config, EmbeddedSection, LogSection};
use coldstream::server::Server;
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sources::simulator::{self as simulate, RunSpec};

use crate::support::{self, binary};

/// A config that checkpoints every second and removes covered log
/// segments of 1 MiB at once.
fn trimming_config(dir: &Path) -> Config {
    let mut config = support::config(dir);
    config.log = LogSection::Embedded(EmbeddedSection { segment_mb: 1, retention_hours: 0, dir: None });
    config.checkpoint.interval_seconds = 1;
    config.auth.allow_dev_secret = true;
    config
}

/// Sends `events` events of fleet `seed` (its own fridges) to `target`.
pub(crate) async fn run_fleet(target: &str, seed: u64, events: u64) {
    let spec = FleetSpec { seed, fridges: 8, events, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let run = RunSpec {
        target: target.to_owned(),
        tokens: crate::support::tokens(),
        tls: None,
        rate: Some(20_000.0),
        batch: 200,
        progress: false,
    };
    simulate::run(Fleet::new(&spec), &run, spec.events).await.unwrap();
}

fn log_segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn checkpoints(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .collect();
    files.sort();
    files
}

async fn assert_views_equal_the_references(dir: &Path) {
    for coldstream::verify::ViewCheck { table: view, rows, equal } in
        coldstream::verify::views_against_references(dir).await.unwrap()
    {
        assert!(equal, "{view} ({rows} rows) differs from its batch reference");
        if view == "inventory_now" {
            assert!(rows > 0, "inventory is empty");
        }
    }
}

/// Sends fleet `seed` further, 20 000 events at a time, until retention
/// has removed the log's first segment; returns the events sent.
async fn send_until_trimmed(target: &str, dir: &Path, seed: u64) -> u64 {
    let mut sent = 0;
    while log_segments(dir).first().is_some_and(|first| first == "00000000000000000000.log") {
        assert!(
            sent < 600_000,
            "retention removed nothing: {:?}, checkpoints {:?}",
            log_segments(dir),
            checkpoints(dir)
        );
        sent += 20_000;
        run_fleet(target, seed, sent).await;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_retention_trimmed_the_log_and_tore_the_newest_checkpoint_gives_correct_views() {
    let dir = tempfile::tempdir().unwrap();
    let config = trimming_config(dir.path());
    let server = Server::start(&config).await.unwrap();
    let target = format!("http://{}", server.addr());
    let sent = send_until_trimmed(&target, dir.path(), 11).await;
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    server.shutdown().await.unwrap();
    let trimmed = log_segments(dir.path());
    assert_ne!(trimmed[0], "00000000000000000000.log", "the oldest segments are gone: {trimmed:?}");

    // The newest checkpoint is torn, as by a crash in the middle of a
    // write that somehow got renamed: the one before it is used, and it
    // still finds its log records.
    let newest = checkpoints(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();

    let server = Server::start(&config).await.unwrap();
    let target = format!("http://{}", server.addr());
    run_fleet(&target, 11, sent + 20_000).await;
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    server.shutdown().await.unwrap();
    assert_views_equal_the_references(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_usable_checkpoint_a_trimmed_log_is_a_clear_error_and_rebuild_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let config = trimming_config(dir.path());
    let server = Server::start(&config).await.unwrap();
    let sent = send_until_trimmed(&format!("http://{}", server.addr()), dir.path(), 21).await;
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    server.shutdown().await.unwrap();
    let before = support::query_csv(dir.path(), "SELECT * FROM inventory_now ORDER BY fridge_id, sku").await;

    // Every checkpoint damaged: the log alone cannot rebuild the views.
    for file in checkpoints(dir.path()) {
        std::fs::write(&file, b"COLDCKPT").unwrap();
    }
    let error = Server::start(&config).await.err().expect("refuses to start").to_string();
    assert!(error.contains("coldstream rebuild") && error.contains("checkpoints"), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");

    // The archive alone rebuilds them, and the server goes on from there.
    let data = dir.path().to_str().unwrap();
    let output = binary().args(["rebuild", "--data", data]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let after = support::query_csv(dir.path(), "SELECT * FROM inventory_now ORDER BY fridge_id, sku").await;
    assert_eq!(before, after);
    let server = Server::start(&config).await.unwrap();
    run_fleet(&format!("http://{}", server.addr()), 21, sent + 10_000).await;
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    server.shutdown().await.unwrap();
    assert_views_equal_the_references(dir.path()).await;
}

/// Runs `coldstream chaos` with `args` in a fresh folder; returns what it
/// printed, once it has passed.
fn chaos(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("chaos");
    let output = binary().args(["chaos", "--data", data.to_str().unwrap()]).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(", 0 lost, 0 repeated"), "{stdout}");
    assert!(stdout.contains("0 rows differ"), "{stdout}");
    assert!(stdout.trim_end().ends_with("PASSED"), "{stdout}");
    stdout
}

#[test]
fn the_chaos_harness_kills_and_restarts_the_server_and_finds_nothing_lost_or_repeated() {
    let stdout = chaos(&["--cycles", "4", "--events", "30000", "--seed", "3", "--max-run-ms", "1500"]);
    assert!(stdout.contains("kills: 4 SIGKILLs"), "{stdout}");
}

#[test]
fn the_chaos_harness_kills_a_gateway_or_a_pipeline_process_of_a_cluster_and_finds_nothing_lost_or_repeated() {
    let stdout =
        chaos(&["--cycles", "6", "--events", "20000", "--seed", "5", "--max-run-ms", "1500", "--processes", "2"]);
    assert!(stdout.contains("kills: 6 SIGKILLs"), "{stdout}");
    assert!(stdout.contains("cluster: killed"), "{stdout}");
}
