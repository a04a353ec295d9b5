//! The alternatives of `cargo bench --bench compare` compute what coldstream
//! computes: on the same events, the single-threaded loop gives every row
//! of every view that coldstream's dataflow gives (also on late, warm
//! delivery, where both equal the batch references), and the DataFusion
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
use coldstream_pipelines::views::{
    ViewConfig, alerts_reference, excursions_reference, inventory_reference, restock_lines_reference,
    revenue_reference, sales_7d_reference, sessions_reference,
};
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
    let (inventory, lines) = (views.rows().inventory_by_shelf(), views.lines());
    assert!(inventory.len() > 20 && lines.len() > 5, "{} inventory rows, {} lines", inventory.len(), lines.len());
    assert_eq!(lines, restock_lines_reference(&events, 2));

    let looped = cost_loop(&hours);
    assert_eq!(looped.differences(&views.rows()), Vec::<String>::new());

    let dir = tempfile::tempdir().unwrap();
    let (mut archive, _) = EventArchive::open(dir.path(), ParquetConfig::default()).unwrap();
    for (offset, event) in events.iter().enumerate() {
        archive.push_event(offset as u64, 1_000 + offset as u64 / 500, event.clone()).unwrap();
    }
    archive.flush(events.len() as u64).unwrap();
    let (sql_lines, _) = recompute::restock_lines(dir.path()).await.unwrap();
    assert_eq!(sql_lines, lines);
}

/// The single-threaded loop's views after `hours`.
fn cost_loop(hours: &[Vec<Event>]) -> cost::Rows {
    cost::Streaming::over_hours(hours, &ViewConfig::default()).views()
}

#[test]
fn on_late_warm_delivery_the_loop_gives_every_row_of_every_view_that_coldstream_gives() {
    let hours = workload::late_and_warm(6, 4, 3);
    let events: Vec<Event> = hours.iter().flatten().cloned().collect();
    let arrivals = hours.iter().enumerate().map(|(hour, batch)| (hour as Time + 1, batch.clone())).collect();
    let mut views = consolidated::Consolidated::default();
    for batch in run_views(2, arrivals, ViewConfig::default()) {
        views.add(batch);
    }
    let ours = views.rows();
    let looped = cost_loop(&hours);
    assert_eq!(looped.differences(&ours), Vec::<String>::new());

    // Both are the batch references' answer, and the workload exercises them.
    let config = ViewConfig::default();
    assert_eq!(looped.inventory_by_shelf(), inventory_reference(&events));
    assert_eq!(looped.sessions, sessions_reference(&events, &config).into_iter().collect());
    assert_eq!(looped.revenue, revenue_reference(&events, &config).into_iter().collect());
    assert_eq!(looped.sales_7d, sales_7d_reference(&events).into_iter().collect());
    assert_eq!(looped.excursions, excursions_reference(&events).into_iter().collect());
    assert_eq!(looped.restock_lines.iter().cloned().collect::<cost::ByShelf>(), restock_lines_reference(&events, 2));
    assert_eq!(looped.alerts, alerts_reference(&events));
    let late = hours.windows(2).any(|pair| {
        let newest = pair[0].iter().map(|e| e.event_time).max().unwrap_or(i64::MIN);
        pair[1].iter().any(|e| e.event_time < newest - 30 * 60_000_000)
    });
    assert!(late, "some events arrive more than 30 minutes behind newer ones");
    for (view, rows) in looped.counts() {
        assert!(rows > 0, "{view} has rows");
    }
    let negative = looped.alerts.iter().filter(|a| a.kind() == "inventory.negative").count();
    assert!(looped.excursions.len() >= 2 && negative < looped.alerts.len(), "{:?}", looped.counts());
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

    let mut inventory = cost_loop(&hours).inventory_by_shelf();
    inventory.retain(|_, qty| *qty != 0);
    assert!(inventory.len() > 10);
    assert_eq!(inventory_from_rows(&text), inventory);
}
