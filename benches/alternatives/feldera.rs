//! Feldera's engine, the `dbsp` crate, over the same workload. It lives in
//! its own crate, `benches/dbsp`, because it takes about 15 minutes to build:
//! this module writes the workload's rows for it, builds it, runs it in a
//! child process and reads back its JSON report.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use coldstream_pipelines::{Event, Payload};

use super::cost::ByShelf;

/// What dbsp did with the workload.
pub struct Run {
    pub total: Duration,
    /// Time to take in each hour of events.
    pub per_hour: Vec<Duration>,
    /// Restock lines at the end of each day (1-based).
    pub lines_by_day: BTreeMap<i64, ByShelf>,
    /// Final inventory, shelves with no stock left out.
    pub inventory: ByShelf,
}

/// Writes the rows `benches/dbsp` reads (see its `rows.rs`): one per event
/// that matters to inventory and restock, tagged with its hour.
pub fn write_rows(hours: &[Vec<Event>], path: &Path) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "events {}", hours.iter().map(Vec::len).sum::<usize>())?;
    for (hour, events) in hours.iter().enumerate() {
        for event in events {
            let active = u8::from(!event.kind().is_back_office());
            let (time, seq) = (event.event_time, event.seq);
            let fridge = event.source_id.as_str();
            let (kind, fridge, sku, a, b) = match &event.payload {
                Payload::StockCounted { sku, qty } => ("C", fridge, sku.as_str(), *qty, 0),
                Payload::PlanogramSet { fridge_id, sku, par, min, .. } => {
                    ("P", fridge_id.as_str(), sku.as_str(), *par, *min)
                }
                Payload::ItemTaken { sku, qty, .. } => ("T", fridge, sku.as_str(), *qty, 0),
                Payload::ItemReturned { sku, qty, .. } => ("R", fridge, sku.as_str(), *qty, 0),
                Payload::RestockDelivered { sku, qty, .. } => ("D", fridge, sku.as_str(), *qty, 0),
                _ if active == 1 => ("A", fridge, "", 0, 0),
                _ => continue,
            };
            writeln!(out, "{hour}\t{kind}\t{fridge}\t{sku}\t{time}\t{seq}\t{a}\t{b}\t{active}")?;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Builds `benches/dbsp` in release mode under the target directory and
/// returns its binary.
pub fn build() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("dbsp");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("building benches/dbsp (about 15 minutes the first time) into {}", target.display());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(root.join("benches/dbsp/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()?;
    anyhow::ensure!(status.success(), "building benches/dbsp failed: {status}");
    Ok(target.join("release/coldstream-dbsp"))
}

/// Runs the dbsp circuit over `rows` on `workers` threads.
pub fn run(binary: &Path, rows: &Path, workers: usize, lead_time_days: i64) -> anyhow::Result<Run> {
    let output = Command::new(binary)
        .arg(rows)
        .args(["--workers", &workers.to_string(), "--lead-time-days", &lead_time_days.to_string()])
        .output()?;
    anyhow::ensure!(output.status.success(), "coldstream-dbsp failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let shelves = |value: &serde_json::Value| -> anyhow::Result<ByShelf> {
        let mut shelves = ByShelf::new();
        for row in value.as_array().into_iter().flatten() {
            let (fridge, sku, qty) = (row[0].as_str(), row[1].as_str(), row[2].as_i64());
            let (Some(fridge), Some(sku), Some(qty)) = (fridge, sku, qty) else {
                anyhow::bail!("coldstream-dbsp wrote a malformed row {row}");
            };
            shelves.insert((fridge.to_owned(), sku.to_owned()), qty);
        }
        Ok(shelves)
    };
    let ms = |value: &serde_json::Value| Duration::from_secs_f64(value.as_f64().unwrap_or_default() / 1e3);
    let mut lines_by_day = BTreeMap::new();
    for (day, lines) in report["lines_by_day"].as_object().into_iter().flatten() {
        lines_by_day.insert(day.parse()?, shelves(lines)?);
    }
    Ok(Run {
        total: Duration::from_secs_f64(report["seconds"].as_f64().unwrap_or_default()),
        per_hour: report["hour_ms"].as_array().into_iter().flatten().map(ms).collect(),
        lines_by_day,
        inventory: shelves(&report["inventory"])?,
    })
}
