//! Per-stage throughput on deterministic data: the embedded log's append
//! (with an fsync per group commit, and without), and the dataflow of
//! every view fed in arrival batches on 1 and 2 workers.
//!
//! `cargo bench --bench stages` prints one line per experiment with the
//! machine it ran on. Numbers are events per second, best of 3 runs.

use std::time::{Duration, Instant};

use coldstream::simulate::{Fleet, FleetSpec};
use coldstream_pipelines::harness::run_views;
use coldstream_pipelines::views::ViewConfig;
use coldstream_sources::convert::encode;
use coldstream_sources::log::EventLog;
use coldstream_sources::log::embedded::{EmbeddedConfig, EmbeddedLog};
use prost::Message;

const EVENTS: u64 = 200_000;

fn best_of<F: FnMut() -> Duration>(runs: usize, mut run: F) -> Duration {
    (0..runs).map(|_| run()).min().unwrap_or_default()
}

fn report(name: &str, events: usize, took: Duration) {
    println!(
        "{name:<44} {:>12.0} events/s  ({events} events in {:.3} s)",
        events as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
}

fn main() {
    println!("machine: {}", coldstream::machine::describe());
    let spec = FleetSpec { seed: 1, fridges: 50, events: EVENTS, start_us: 1_772_323_200_000_000, bad_rate: 0.0 };
    let events = Fleet::new(&spec).all_events();
    println!("workload: {} events from 50 simulated fridges (seed 1)", events.len());

    let payloads: Vec<Vec<u8>> = events.iter().map(|e| encode(e).encode_to_vec()).collect();
    for (name, sync_every_batch) in
        [("log append, fsync per 500-event commit", true), ("log append, one fsync at the end", false)]
    {
        let took = best_of(3, || {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let mut log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).expect("open the log");
            let start = Instant::now();
            for (i, chunk) in payloads.chunks(500).enumerate() {
                log.append(i as u64, chunk).expect("append");
                if sync_every_batch {
                    log.sync().expect("sync");
                }
            }
            log.sync().expect("sync");
            start.elapsed()
        });
        report(name, payloads.len(), took);
    }

    let arrivals: Vec<(u64, Vec<_>)> =
        events.chunks(5_000).enumerate().map(|(i, chunk)| (i as u64 + 1, chunk.to_vec())).collect();
    for workers in [1, 2] {
        let took = best_of(3, || {
            let start = Instant::now();
            let changes = run_views(workers, arrivals.clone(), ViewConfig::default());
            assert!(!changes.is_empty());
            start.elapsed()
        });
        report(&format!("every view, {workers} worker(s), 5000-event batches"), events.len(), took);
    }
}
