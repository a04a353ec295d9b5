//! coldstream side by side with what a team would otherwise use, on the same
//! generated events in the same run, and the latency-throughput curve:
//!
//! 1. coldstream's dataflow (every view) fed one hour of fleet events at a
//!    time, on 2 workers and on 1;
//! 2. the COST baseline: one thread of hand-written Rust with hash maps
//!    keeping all seven views up to date event by event, with coldstream's
//!    rules (late events, retractions, the horizon); checked row for row
//!    against coldstream on the workload and on the same fleet's events
//!    with warm readings, shuffled and one in 20 an hour late;
//! 3. Feldera's engine, the `dbsp` crate (`benches/dbsp`, built on first
//!    use), computing inventory and restock lines incrementally, one hour
//!    of events per transaction, on 2 workers and on 1;
//! 4. DataFusion SQL (`queries/restock_from_events.sql`) recomputing the
//!    restock lines over the `events/` Parquet archive as the history grows
//!    from 1 to 30 days, against coldstream's (and dbsp's) time to take in
//!    one more hour;
//! 5. `coldstream bench --curve` (flat out, then 10, 25, 50, 75 %).
//!
//! Every alternative's restock lines (and dbsp's inventory, and every view
//! of the loop) are checked against coldstream's; a difference stops the
//! run. The table
//! is printed and written, with the curve, to `--out` (default
//! `target/compare`): `compare.json`, `curve.svg`, `curve.json`.
//!
//! `cargo bench --bench compare -- [--days 30] [--fridges 50] [--duration 10] [--no-curve] [--no-dbsp] [--out DIR]`

#[path = "alternatives/consolidated.rs"]
mod consolidated;
#[path = "alternatives/cost.rs"]
mod cost;
#[path = "alternatives/feldera.rs"]
mod feldera;
#[path = "alternatives/recompute.rs"]
mod recompute;
#[path = "alternatives/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coldstream_pipelines::views::{ViewConfig, all};
use coldstream_pipelines::{Event, Time};
use coldstream_sinks::ParquetConfig;
use coldstream_sinks::parquet::EventArchive;
use consolidated::Consolidated;
use cost::{ByShelf, Rows};
use differential_dataflow::input::Input;
use serde_json::json;

/// The `coldstream` binary's allocator, so that the dataflow is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The history lengths (days) at which the alternatives are compared.
const CHECK_DAYS: [i64; 6] = [1, 2, 4, 8, 15, 30];

struct Args {
    days: i64,
    fridges: usize,
    duration: f64,
    curve: bool,
    dbsp: bool,
    out: PathBuf,
}

fn args() -> Args {
    let mut args =
        Args { days: 30, fridges: 50, duration: 10.0, curve: true, dbsp: true, out: PathBuf::from("target/compare") };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = |name: &str| given.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--days" => args.days = value("--days").parse().expect("--days is a whole number of days"),
            "--fridges" => args.fridges = value("--fridges").parse().expect("--fridges is a number"),
            "--duration" => args.duration = value("--duration").parse().expect("--duration is seconds"),
            "--out" => args.out = PathBuf::from(value("--out")),
            "--no-curve" => args.curve = false,
            "--no-dbsp" => args.dbsp = false,
            _ => {} // cargo's own `--bench`
        }
    }
    args
}

/// What coldstream's dataflow did with the workload.
struct Streamed {
    /// Time to take in each hour of events (every view up to date).
    per_hour: Vec<Duration>,
    /// Restock lines at the end of each of `CHECK_DAYS`.
    lines_at: BTreeMap<i64, ByShelf>,
    /// Every view's rows at the end.
    rows: Rows,
    total: Duration,
}

/// Feeds the workload to every view, one hour of events per logical time.
fn stream(hours: &Arc<Vec<Vec<Event>>>, workers: usize) -> Streamed {
    let (send, batches) = channel();
    let send = Mutex::new(send);
    let batches = Arc::new(Mutex::new(Some(batches)));
    let hours = Arc::clone(hours);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let send = send.lock().expect("no worker panics holding the sender").clone();
        let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let probe = all(events, &ViewConfig::default()).deliver(move |batch| {
                let _ = send.send(batch);
            });
            (input, probe)
        });
        let leader = worker.index() == 0;
        let batches = if leader { batches.lock().expect("no worker panics").take() } else { None };
        let mut views = Consolidated::default();
        let mut streamed =
            Streamed { per_hour: Vec::new(), lines_at: BTreeMap::new(), rows: Rows::default(), total: Duration::ZERO };
        let started = Instant::now();
        let mut checked = Duration::ZERO;
        for (hour, events) in hours.iter().enumerate() {
            let began = Instant::now();
            let time = hour as Time + 1;
            input.advance_to(time);
            if leader {
                for event in events {
                    input.insert(event.clone());
                }
            }
            input.advance_to(time + 1);
            input.flush();
            worker.step_while(|| probe.less_than(&(time + 1)));
            if let Some(batches) = &batches {
                // Consolidating for the comparison is not coldstream's work.
                let hour_took = began.elapsed();
                let checking = Instant::now();
                for batch in batches.try_iter() {
                    views.add(batch);
                }
                let day = (hour as i64 + 1) / 24;
                if (hour + 1) % 24 == 0 && CHECK_DAYS.contains(&day) {
                    streamed.lines_at.insert(day, views.lines());
                }
                checked += checking.elapsed();
                streamed.per_hour.push(hour_took);
            }
        }
        streamed.total = started.elapsed() - checked;
        streamed.rows = views.rows();
        streamed
    })
    .expect("timely starts its workers");
    let mut results = guards.join().into_iter().map(|r| r.expect("a worker finished"));
    results.next().expect("the leader's result")
}

/// The loop over `hours`, best of three runs: its time and its views.
fn cost_loop(hours: &[Vec<Event>]) -> (Duration, Rows) {
    let mut best = (Duration::MAX, Rows::default());
    for _ in 0..3 {
        let started = Instant::now();
        let views = cost::Streaming::over_hours(hours, &ViewConfig::default());
        let took = started.elapsed();
        if took < best.0 {
            best = (took, views.views());
        }
    }
    best
}

/// How many coldstream workers match one thread of the loop, as measured
/// on 1 and 2.
fn workers_to_match(single: f64, one: f64, two: f64) -> String {
    if one >= single {
        "one coldstream worker matches the single-threaded loop".to_owned()
    } else if two >= single {
        "two coldstream workers match the single-threaded loop; one does not".to_owned()
    } else {
        format!(
            "two coldstream workers do not match the single-threaded loop: one thread of it is {:.1}x one worker and {:.1}x two",
            single / one,
            single / two
        )
    }
}

/// The first few shelves where `theirs` differs from `ours`.
fn differences(ours: &ByShelf, theirs: &ByShelf) -> String {
    let shelves: std::collections::BTreeSet<_> = ours.keys().chain(theirs.keys()).collect();
    let differ = shelves.into_iter().filter(|shelf| ours.get(*shelf) != theirs.get(*shelf));
    let shown: Vec<_> =
        differ.take(5).map(|shelf| format!("{shelf:?}: {:?} vs {:?}", ours.get(shelf), theirs.get(shelf))).collect();
    shown.join("; ")
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let args = args();
    let machine = coldstream::machine::describe();
    println!("machine: {machine}");
    let hours = Arc::new(workload::hours(args.fridges, args.days, 7));
    let events: Vec<Event> = hours.iter().flatten().cloned().collect();
    let n = events.len();
    println!(
        "workload: {} fridges, {} days of event time, {n} events (seed 7, no cold-chain excursions), one hour of events per batch",
        args.fridges, args.days
    );

    // 1. coldstream, every view, incrementally.
    let two = stream(&hours, 2);
    let one = stream(&hours, 1);
    for (workers, run) in [(2, &two), (1, &one)] {
        println!(
            "coldstream, {workers} worker(s): {n} events in {:.2} s = {:.0} events/s (every view up to date after each hour)",
            run.total.as_secs_f64(),
            n as f64 / run.total.as_secs_f64()
        );
    }
    anyhow::ensure!(one.rows == two.rows, "1 and 2 workers disagree");

    // 2. The COST baseline, on the workload and on late, warm delivery.
    let (loop_time, loop_rows) = cost_loop(&hours);
    let differ = two.rows.differences(&loop_rows);
    anyhow::ensure!(differ.is_empty(), "the single-threaded loop's views differ from coldstream's: {differ:?}");
    let counts: Vec<String> = loop_rows.counts().iter().map(|(view, n)| format!("{view} {n}")).collect();
    println!(
        "single-threaded loop (all seven views, event by event): {:.2} s = {:.0} events/s; every row the same as coldstream's ({})",
        loop_time.as_secs_f64(),
        n as f64 / loop_time.as_secs_f64(),
        counts.join(", ")
    );
    let late = Arc::new(workload::late_and_warm(args.fridges, args.days.min(8), 7));
    let late_n: usize = late.iter().map(Vec::len).sum();
    let (late_two, late_one) = (stream(&late, 2), stream(&late, 1));
    let (late_loop, late_rows) = cost_loop(&late);
    let differ = late_two.rows.differences(&late_rows);
    anyhow::ensure!(differ.is_empty(), "on late, warm delivery the loop's views differ from coldstream's: {differ:?}");
    anyhow::ensure!(late_one.rows == late_two.rows, "on late, warm delivery 1 and 2 workers disagree");
    anyhow::ensure!(!late_rows.excursions.is_empty(), "the late, warm workload has excursions");
    let late_rate = |d: Duration| late_n as f64 / d.as_secs_f64();
    println!(
        "late, warm delivery ({} days, {late_n} events, {} excursions): loop {:.0} events/s, coldstream 2 workers {:.0}, 1 worker {:.0}; every row the same",
        args.days.min(8),
        late_rows.excursions.len(),
        late_rate(late_loop),
        late_rate(late_two.total),
        late_rate(late_one.total)
    );

    // 3. dbsp, incrementally, on the same events.
    let scratch = tempfile::tempdir()?;
    let dbsp = if args.dbsp {
        let binary = feldera::build()?;
        let rows = scratch.path().join("dbsp-rows.tsv");
        feldera::write_rows(&hours, &rows)?;
        // dbsp reports no row for a shelf with nothing on it.
        let mut stocked = two.rows.inventory_by_shelf();
        stocked.retain(|_, qty| *qty != 0);
        let mut runs = Vec::new();
        for workers in [2, 1] {
            let run = feldera::run(&binary, &rows, workers, 2)?;
            for (day, lines) in &two.lines_at {
                let theirs = run.lines_by_day.get(day).cloned().unwrap_or_default();
                anyhow::ensure!(
                    &theirs == lines,
                    "dbsp's restock lines after day {day} differ from coldstream's: {}",
                    differences(lines, &theirs)
                );
            }
            anyhow::ensure!(
                run.inventory == stocked,
                "dbsp's inventory differs from coldstream's: {}",
                differences(&stocked, &run.inventory)
            );
            println!(
                "dbsp, {workers} worker(s): {n} events in {:.2} s = {:.0} events/s (inventory and restock up to date after each hour); same inventory and restock lines",
                run.total.as_secs_f64(),
                n as f64 / run.total.as_secs_f64()
            );
            runs.push(run);
        }
        let one = runs.pop();
        runs.pop().zip(one)
    } else {
        None
    };

    // 4. DataFusion recompute as the history grows.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (mut archive, _) = EventArchive::open(scratch.path(), ParquetConfig::default())?;
    let mut offset = 0u64;
    let mut recompute = Vec::new();
    for (day, day_hours) in hours.chunks(24).enumerate() {
        let day = day as i64 + 1;
        for (hour, events) in day_hours.iter().enumerate() {
            let ingest_ms = ((day - 1) * 24 + hour as i64 + 1) as u64;
            for event in events {
                archive.push_event(offset, ingest_ms, event.clone()).expect("the event is archived");
                offset += 1;
            }
        }
        archive.flush(offset)?;
        if !CHECK_DAYS.contains(&day) || day > args.days {
            continue;
        }
        let mut took = Vec::new();
        for _ in 0..3 {
            let (lines, time) = runtime.block_on(recompute::restock_lines(scratch.path()))?;
            anyhow::ensure!(
                Some(&lines) == two.lines_at.get(&day),
                "DataFusion's restock lines after day {day} differ from coldstream's"
            );
            took.push(time);
        }
        let hours_of_day = ((day - 1) * 24) as usize..(day * 24) as usize;
        let (sql, incremental) = (median(took), median(two.per_hour[hours_of_day.clone()].to_vec()));
        let dbsp_hour = dbsp.as_ref().map(|(two, _)| median(two.per_hour[hours_of_day].to_vec()));
        let versus_dbsp = dbsp_hour.map(|d| format!(", dbsp one more hour {:>6.1} ms", ms(d))).unwrap_or_default();
        println!(
            "day {day:>2}: {offset:>9} events archived; DataFusion recompute {:>8.1} ms, coldstream one more hour {:>6.1} ms ({:.0}x){versus_dbsp}",
            ms(sql),
            ms(incremental),
            ms(sql) / ms(incremental).max(1e-3)
        );
        recompute.push(json!({
            "day": day,
            "events": offset,
            "datafusion_ms": ms(sql),
            "coldstream_hour_ms": ms(incremental),
            "dbsp_hour_ms": dbsp_hour.map(ms),
        }));
    }

    // 5. The latency-throughput curve.
    std::fs::create_dir_all(&args.out)?;
    let curve = if args.curve {
        // `coldstream bench --curve`, the engineers' own command, with its
        // standard workload (200 fridges, seed 1, one worker per core).
        let path = args.out.join("curve.svg");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_coldstream"))
            .args(["bench", "--duration", &args.duration.to_string(), "--curve"])
            .arg(&path)
            .arg("--data")
            .arg(scratch.path().join("bench"))
            .status()?;
        if !status.success() {
            anyhow::bail!("coldstream bench --curve failed: {status}");
        }
        serde_json::from_str(&std::fs::read_to_string(path.with_extension("json"))?)?
    } else {
        serde_json::Value::Null
    };

    let per_second = |d: Duration| n as f64 / d.as_secs_f64();
    println!("\n{:<58} {:>14} {:>18}", "engine", "events/s", "coldstream (2 workers) is");
    let mut engines = vec![
        ("coldstream, every view, 2 workers", per_second(two.total)),
        ("coldstream, every view, 1 worker", per_second(one.total)),
        ("hand-written loop, 1 thread, every view", per_second(loop_time)),
    ];
    if let Some((dbsp_two, dbsp_one)) = &dbsp {
        engines.push(("dbsp, 2 workers, inventory and restock only", per_second(dbsp_two.total)));
        engines.push(("dbsp, 1 worker, inventory and restock only", per_second(dbsp_one.total)));
    }
    for (name, rate) in engines {
        println!("{name:<58} {rate:>14.0} {:>17.2}x", per_second(two.total) / rate);
    }
    println!("{}", workers_to_match(per_second(loop_time), per_second(one.total), per_second(two.total)));
    let summary = json!({
        "machine": machine,
        "workload": { "fridges": args.fridges, "days": args.days, "events": n, "seed": 7 },
        "coldstream_events_per_second": { "workers_2": per_second(two.total), "workers_1": per_second(one.total) },
        "single_thread_loop_events_per_second": per_second(loop_time),
        "late_and_warm": {
            "events": late_n,
            "single_thread_loop_events_per_second": late_rate(late_loop),
            "coldstream_events_per_second": { "workers_2": late_rate(late_two.total), "workers_1": late_rate(late_one.total) },
        },
        "dbsp_events_per_second": dbsp.as_ref().map(|(two, one)| json!({ "workers_2": per_second(two.total), "workers_1": per_second(one.total) })),
        "datafusion_recompute": recompute,
        "curve": curve,
    });
    let path = args.out.join("compare.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    println!("written: {}", path.display());
    Ok(())
}
