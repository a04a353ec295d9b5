//! The alternatives of `cargo bench --bench compare` compute what coldstream
//! computes: on the same events, the single-threaded loop gives the same
//! inventory and restock lines as coldstream's dataflow, and the DataFusion
//! SQL over the archived events gives the same restock lines.

#[path = "../../benches/alternatives/cost.rs"]
mod cost;
#[path = "../../benches/alternatives/recompute.rs"]
mod recompute;
#[path = "../../benches/alternatives/workload.rs"]
mod workload;

use std::collections::BTreeMap;

use coldstream_pipelines::harness::run_views;
use coldstream_pipelines::views::{ViewBatch, ViewConfig, restock_lines_reference};
use coldstream_pipelines::{Event, Payload, Time};
use coldstream_sinks::ParquetConfig;
use coldstream_sinks::parquet::EventArchive;

fn rows<K: Ord + Clone>(changes: &BTreeMap<(K, i64), isize>) -> BTreeMap<K, i64> {
    changes.iter().filter(|(_, count)| **count > 0).map(|((key, value), _)| (key.clone(), *value)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alternatives_compute_the_same_inventory_and_restock_lines() {
    let hours = workload::hours(4, 3, 11);
    let events: Vec<Event> = hours.iter().flatten().cloned().collect();
    assert!(
        !events.iter().any(|e| matches!(e.payload, Payload::Telemetry { temperature_c, .. } if temperature_c.0 > 5.0)),
        "the workload has no warm readings"
    );
    let arrivals = hours.iter().enumerate().map(|(hour, batch)| (hour as Time + 1, batch.clone())).collect();
    let (mut inventory, mut lines) = (BTreeMap::new(), BTreeMap::new());
    for batch in run_views(2, arrivals, ViewConfig::default()) {
        match batch {
            ViewBatch::Inventory(changes) => {
                for (row, _, diff) in changes {
                    *inventory.entry(row).or_insert(0) += diff;
                }
            }
            ViewBatch::RestockOrders(changes) => {
                for ((key, line), _, diff) in changes {
                    *lines.entry((key, line.qty)).or_insert(0) += diff;
                }
            }
            _ => {}
        }
    }
    let (inventory, lines) = (rows(&inventory), rows(&lines));
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
