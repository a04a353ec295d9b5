//! Bounded state: a fixed fleet runs for many simulated days through every
//! view, and after each day the records held in differential's
//! arrangements, the records held by the per-fridge event-time operators
//! and the process's resident memory are printed. Every operator keeps
//! only what lies within its horizon (telemetry runs, the 7-day sales
//! window, open sessions, stock movements since the fold point), so once
//! the 7-day window is full all three columns should level off.
//!
//! `cargo bench --bench bounded_state -- [days] [fridges] [skus]` (default
//! 30 days, 20 fridges carrying 6 to 10 SKUs each; about 3,960 events per
//! fridge per simulated day). Each five minutes of event time arrive as
//! one logical time, fridges in order: a batch of the size the pipeline's
//! own reads make, so that what is measured is the state and not one
//! hour of the whole fleet's events in flight. The last two columns divide the
//! resident memory and the operators' records by the (fridge, SKU) pairs
//! on the planograms.

use std::time::Instant;

use coldstream_pipelines::event::{DAY_US, MINUTE_US};
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_pipelines::operators::{HeldRecords, OperatorHooks};
use coldstream_pipelines::views::{ViewConfig, all};
use coldstream_pipelines::{Event, Payload, Time};
use differential_dataflow::input::Input;

/// The `coldstream` binary's allocator, so that the dataflow is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let days: i64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(30);
    let fridges: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let skus: Option<usize> = args.get(2).and_then(|a| a.parse().ok());
    let carried = skus.map_or("6 to 10".to_owned(), |n| n.to_string());
    println!("machine: {}", coldstream::machine::describe());
    println!(
        "workload: {fridges} fridges carrying {carried} SKUs, {days} simulated days, seed 7, 2 workers, default horizon (6 h)"
    );
    println!(
        "{:>4} {:>11} {:>16} {:>16} {:>9} {:>8} {:>9} {:>12}",
        "day", "events", "arranged records", "operator records", "RSS MiB", "secs", "KiB/pair", "records/pair"
    );

    let arranged = HeldRecords::default();
    let operators = HeldRecords::default();
    let started = Instant::now();
    timely::execute(timely::Config::process(2), move |worker| {
        arranged.track_arrangements(worker);
        let hooks = OperatorHooks { held: operators.clone(), ..OperatorHooks::default() };
        let config = ViewConfig { hooks, ..ViewConfig::default() };
        let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            (input, all(events, &config).deliver(|_| ()))
        });
        let leader = worker.index() == 0;
        let start_us = 1_767_225_600_000_000; // 2026-01-01 00:00 UTC
        let spec = FleetSpec {
            seed: 7,
            fridges,
            events: fridges as u64 * 200 * 24 * days as u64,
            start_us,
            bad_rate: 0.0,
            skus,
        };
        let mut fleet = leader.then(|| Fleet::new(&spec));
        let mut fed = 0usize;
        let pairs = fleet.as_ref().map_or(0, |fleet| {
            fleet.back_office.iter().filter(|e| matches!(e.payload, Payload::PlanogramSet { .. })).count()
        });
        if let Some(fleet) = &fleet {
            fed += fleet.back_office.len();
            for event in &fleet.back_office {
                input.insert(event.clone());
            }
        }
        const STEP_US: i64 = 5 * MINUTE_US;
        for step in 0..days * DAY_US / STEP_US {
            let time = step as Time + 1;
            input.advance_to(time);
            if let Some(fleet) = &mut fleet {
                for fridge in &mut fleet.fridges {
                    for event in fridge.events_until(start_us + (step + 1) * STEP_US) {
                        input.insert(event);
                        fed += 1;
                    }
                }
            }
            input.advance_to(time + 1);
            input.flush();
            worker.step_while(|| probe.less_than(&(time + 1)));
            if leader && (step + 1) * STEP_US % DAY_US == 0 {
                let rss = coldstream::machine::rss_mib().unwrap_or(f64::NAN);
                let held = operators.get();
                println!(
                    "{:>4} {:>11} {:>16} {:>16} {:>9.0} {:>8.1} {:>9.1} {:>12.0}",
                    (step + 1) * STEP_US / DAY_US,
                    fed,
                    arranged.get(),
                    held,
                    rss,
                    started.elapsed().as_secs_f64(),
                    rss * 1024.0 / pairs as f64,
                    held as f64 / pairs as f64
                );
            }
        }
    })
    .expect("timely starts its workers");
}
