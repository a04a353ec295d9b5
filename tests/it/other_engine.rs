//! The Parquet files are a public interface: another engine (DuckDB, from
//! PyPI) reads them and recomputes inventory, cold-chain write-offs
//! included, from `events/` alone, and gets exactly what `inventory_now`
//! says. CI installs DuckDB; elsewhere the test
//! says it is skipped when DuckDB is missing.

use std::process::Command;
use std::time::Duration;

use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sources::simulator as simulate;

use crate::support::{query_csv, start};

/// Inventory by DOMAIN.md's rules (counts, movements, write-offs after
/// 30-minute warm runs of the SKUs perishable at that moment), written
/// independently in DuckDB's SQL.
const DUCKDB_INVENTORY: &str = r#"
import sys, duckdb
root = sys.argv[1]
con = duckdb.connect()
con.execute(f"CREATE VIEW ev AS SELECT * FROM read_parquet('{root}/events/*/*.parquet', hive_partitioning = true)")
rows = con.execute("""
WITH runs AS (
  SELECT fridge_id, event_time AS t, temperature_c > 5.0 AS warm,
         sum(CASE WHEN temperature_c > 5.0 THEN 0 ELSE 1 END)
           OVER (PARTITION BY fridge_id ORDER BY event_time, seq ROWS UNBOUNDED PRECEDING) AS run
  FROM ev WHERE kind = 'telemetry'),
excursions AS (
  SELECT fridge_id, min(t) AS first_t FROM runs WHERE warm
  GROUP BY fridge_id, run HAVING max(t) - min(t) >= INTERVAL 30 MINUTE),
plan_at AS (
  SELECT x.fridge_id, p.sku, x.first_t + INTERVAL 30 MINUTE AS t, p.perishable,
         row_number() OVER (PARTITION BY x.fridge_id, x.first_t, p.sku
                            ORDER BY p.event_time DESC, p.seq DESC) AS rn
  FROM excursions x JOIN ev p ON p.kind = 'planogram_set' AND p.fridge_id = x.fridge_id
                              AND p.event_time <= x.first_t + INTERVAL 30 MINUTE),
write_offs AS (
  SELECT fridge_id, sku, t, 0 AS seq, 0 AS qty FROM plan_at WHERE rn = 1 AND perishable),
counts AS (
  SELECT fridge_id, sku, t, qty, row_number() OVER (PARTITION BY fridge_id, sku ORDER BY t DESC, seq DESC) AS rn
  FROM (SELECT fridge_id, sku, event_time AS t, seq, qty FROM ev WHERE kind = 'stock_counted'
        UNION ALL SELECT fridge_id, sku, t, seq, qty FROM write_offs)),
latest AS (SELECT fridge_id, sku, t, qty FROM counts WHERE rn = 1),
moves AS (
  SELECT fridge_id, sku, event_time AS t, CASE kind WHEN 'item_taken' THEN -qty ELSE qty END AS delta
  FROM ev WHERE kind IN ('item_taken', 'item_returned', 'restock_delivered')),
keys AS (SELECT fridge_id, sku FROM latest UNION SELECT fridge_id, sku FROM moves)
SELECT k.fridge_id, k.sku,
       coalesce(l.qty, 0) + coalesce((SELECT sum(m.delta) FROM moves m
           WHERE m.fridge_id = k.fridge_id AND m.sku = k.sku AND (l.t IS NULL OR m.t > l.t)), 0) AS on_hand
FROM keys k LEFT JOIN latest l ON k.fridge_id = l.fridge_id AND k.sku = l.sku
ORDER BY 1, 2""").fetchall()
print("fridge_id,sku,on_hand")
for fridge, sku, on_hand in rows:
    print(f"{fridge},{sku},{on_hand}")
print("events", con.execute("SELECT count(*) FROM ev").fetchone()[0], file=sys.stderr)
"#;

fn duckdb_available() -> bool {
    Command::new("python3").args(["-c", "import duckdb"]).output().is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_recomputes_the_same_inventory_from_the_parquet_events() {
    if !duckdb_available() {
        assert!(std::env::var_os("CI").is_none(), "CI must install DuckDB (python3 -m pip install duckdb)");
        eprintln!("skipped: DuckDB is not installed (python3 -m pip install duckdb)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let spec =
        FleetSpec { seed: 3, fridges: 6, events: 6_000, start_us: 1_772_323_200_000_000, bad_rate: 0.002, skus: None };
    let run = crate::support::run_spec(format!("http://{}", server.addr()), None, 200);
    let summary = simulate::run(Fleet::new(&spec), &run, spec.events).await.unwrap();
    assert!(summary.delivered.rejected > 0, "the fleet should have sent some bad events");
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    server.shutdown().await.unwrap();

    let output = Command::new("python3").args(["-c", DUCKDB_INVENTORY]).arg(dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let by_duckdb = String::from_utf8(output.stdout).unwrap();
    let events_by_duckdb = String::from_utf8(output.stderr).unwrap();
    assert_eq!(events_by_duckdb.trim(), format!("events {}", summary.delivered.accepted));
    let excursions = query_csv(dir.path(), "SELECT COUNT(*) AS n FROM excursions_now").await;
    assert_ne!(excursions, "n\n0\n", "the fleet should have had a cold-chain excursion to write off");
    let ours = query_csv(dir.path(), "SELECT * FROM inventory_now ORDER BY fridge_id, sku").await;
    assert!(ours.lines().count() > 20, "{ours}");
    assert_eq!(ours, by_duckdb);
}
