//! The alternatives of `cargo bench --bench compare` compute what coldstream
//! computes: on the same events, the single-threaded loop gives the same
//! inventory and restock lines as coldstream's dataflow, and the DataFusion
//! SQL over the archived events gives the same restock lines; the rows
//! written for dbsp carry every event that matters to them.

#[path = "../../benches/alternatives/consolidated.rs"]
mod consolidated;
#[path = "../../benches/alternatives/cost.rs"]
mod cost;
// Only the rows writer runs here: building dbsp itself takes 15 minutes.
#[allow(dead_code)]
#[path = "../../benches/alternatives/feldera.rs"]
mod feldera;
#[path = "../../benches/alternatives/recompute.rs"]
mod recompute;
#[path = "../../benches/alternatives/workload.rs"]
mod workload;

use std::collections::BTreeMap;

use coldstream_pipelines::harness::run_views;
use coldstream_pipelines::views::{ViewConfig, restock_lines_reference};
use coldstream_pipelines::{Event, Payload, Time};
use coldstream_sinks::ParquetConfig;
use coldstream_sinks::parquet::EventArchive;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alternatives_compute_the_same_inventory_and_restock_lines() {
    let hours = workload::hours(4, 3, 11);
    let events: Vec<Event> = hours.iter().flatten().cloned().collect();
    assert!(
        !events.iter().any(|e| matches!(e.payload, Payload::Telemetry { temperature_c, .. } if temperature_c.0 > 5.0)),
        "the workload has no warm readings"
    );
    let arrivals = hours.iter().enumerate().map(|(hour, batch)| (hour as Time + 1, batch.clone())).collect();
    let mut views = consolidated::Consolidated::default();
    for batch in run_views(2, arrivals, ViewConfig::default()) {
        views.add(batch);
    }
    let (inventory, lines) = (views.inventory(), views.lines());
    assert!(inventory.len() > 20 && lines.len() > 5, "{} inventory rows, {} lines", inventory.len(), lines.len());
    assert_eq!(lines, restock_lines_reference(&events, 2));

    let (loop_inventory, loop_lines) = cost::inventory_and_restock(&events, 2);
    assert_eq!(loop_inventory, inventory);
    assert_eq!(loop_lines, lines);

    let dir = tempfile::tempdir().unwrap();
    let (mut archive, _) = EventArchive::open(dir.path(), ParquetConfig::default()).unwrap();
    for (offset, event) in events.iter().enumerate() {
        archive.push_event(offset as u64, 1_000 + offset as u64 / 500, event.clone());
    }
    archive.flush(events.len() as u64).unwrap();
    let (sql_lines, _) = recompute::restock_lines(dir.path()).await.unwrap();
    assert_eq!(sql_lines, lines);
}

/// Inventory folded from the rows `feldera::write_rows` wrote, the way the
/// dbsp circuit reads them: the latest count, plus the movements after it.
fn inventory_from_rows(text: &str) -> cost::ByShelf {
    let mut counts: BTreeMap<(String, String), (i64, i64, i64)> = BTreeMap::new();
    let mut moves: Vec<((String, String), i64, i64)> = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 9, "{line}");
        let shelf = (fields[2].to_owned(), fields[3].to_owned());
        let (time, seq, a): (i64, i64, i64) =
            (fields[4].parse().unwrap(), fields[5].parse().unwrap(), fields[6].parse().unwrap());
        match fields[1] {
            "C" => {
                let latest = counts.entry(shelf).or_insert((time, seq, a));
                *latest = (*latest).max((time, seq, a));
            }
            "T" => moves.push((shelf, time, -a)),
            "R" | "D" => moves.push((shelf, time, a)),
            "P" | "A" => {}
            kind => panic!("unknown kind {kind}"),
        }
    }
    let mut inventory: cost::ByShelf = counts.iter().map(|(shelf, (_, _, qty))| (shelf.clone(), *qty)).collect();
    for (shelf, time, delta) in moves {
        if counts.get(&shelf).is_none_or(|(counted_at, ..)| time > *counted_at) {
            *inventory.entry(shelf).or_insert(0) += delta;
        }
    }
    inventory.retain(|_, qty| *qty != 0);
    inventory
}

#[test]
fn the_rows_for_dbsp_carry_every_event_that_matters_to_inventory_and_restock() {
    let hours = workload::hours(3, 2, 5);
    let events: Vec<Event> = hours.iter().flatten().cloned().collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.tsv");
    feldera::write_rows(&hours, &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().next(), Some(format!("events {}", events.len()).as_str()));

    // One row per fridge event and per planogram entry, in its hour.
    let fridge_events = events.iter().filter(|e| !e.kind().is_back_office()).count();
    let planograms = events.iter().filter(|e| matches!(e.payload, Payload::PlanogramSet { .. })).count();
    assert_eq!(text.lines().count() - 1, fridge_events + planograms);
    for (line, event) in text
        .lines()
        .skip(1)
        .zip(events.iter().filter(|e| !e.kind().is_back_office() || matches!(e.payload, Payload::PlanogramSet { .. })))
    {
        let hour: usize = line.split('\t').next().unwrap().parse().unwrap();
        assert!(hours[hour].contains(event), "{line} is not in hour {hour}");
        assert!(line.contains(&event.event_time.to_string()), "{line} vs {event:?}");
    }

    let (mut inventory, _) = cost::inventory_and_restock(&events, 2);
    inventory.retain(|_, qty| *qty != 0);
    assert!(inventory.len() > 10);
    assert_eq!(inventory_from_rows(&text), inventory);
}
