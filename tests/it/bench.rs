//! `coldstream bench` end to end, briefly.

use crate::support::binary;

#[test]
fn the_bench_reports_throughput_latency_cpu_and_memory_as_a_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = binary()
        .args(["bench", "--data", dir.path().join("data").to_str().unwrap(), "--duration", "3"])
        .args(["--rate", "5000", "--fridges", "10", "--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("events/s end to end") && stdout.contains("p99.9"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["events"].as_u64().unwrap() >= 10_000, "{report}");
    assert!(report["events_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 0.0);
    assert!(report["machine"].as_str().unwrap().contains("cores"));
    let all = report["latency"].as_array().unwrap().iter().find(|l| l["of"] == "all").unwrap().clone();
    assert!(all["count"].as_u64().unwrap() > 0, "webhooks were measured: {report}");
    let (p50, p99, p999, max) = (
        all["p50_ms"].as_u64().unwrap(),
        all["p99_ms"].as_u64().unwrap(),
        all["p999_ms"].as_u64().unwrap(),
        all["max_ms"].as_u64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= p999 && p999 <= max, "{all}");
    // Each stage measured, in the order a change passes them.
    assert!(stdout.contains("latency by stage"), "{stdout}");
    let stages: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|l| l["of"].as_str().unwrap()).collect();
    assert_eq!(stages, ["commit → views computed", "views → outbox", "outbox → receiver"], "{report}");
    for stage in report["stages"].as_array().unwrap() {
        assert!(stage["count"].as_u64().unwrap() > 0, "{stage}");
        assert!(stage["p99_ms"].as_u64().unwrap() <= all["max_ms"].as_u64().unwrap() + 1_000, "{stage}");
    }
}

/// A pipeline component that stops (here the view sink, whose folder is
/// replaced by a file when it first rolls its files, 30 s in) ends the
/// bench with the reason while the fleet still sends, instead of a wait
/// for views that can no longer move.
#[test]
fn a_component_that_stops_ends_the_bench_with_the_reason() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut bench = binary()
        .args(["bench", "--data", data.to_str().unwrap(), "--duration", "120"])
        .args(["--rate", "2000", "--fridges", "10"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let views = data.join("views");
    let deadline = Instant::now() + Duration::from_secs(100);
    while !views.join("inventory").exists() {
        assert!(Instant::now() < deadline, "the bench never wrote views/");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Moved aside in one step (removing it could race with the sink's
    // writes into it), then replaced by a file.
    std::fs::rename(&views, dir.path().join("views-moved")).unwrap();
    std::fs::write(&views, b"not a folder").unwrap();
    // Long before the fleet's 120 s are up.
    let deadline = Instant::now() + Duration::from_secs(80);
    let status = loop {
        if let Some(status) = bench.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = bench.kill();
            panic!("the bench went on after its view sink stopped");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = bench.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "a bench whose pipeline stopped succeeded: {stderr}");
    assert!(stderr.contains("error: the pipeline stopped: the view sink stopped"), "{stderr}");
}
