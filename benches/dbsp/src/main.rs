//! Feldera's engine, the `dbsp` crate, computing coldstream's inventory and
//! restock lines incrementally over the compare bench's workload.
//!
//! `coldstream-dbsp ROWS --workers N --lead-time-days D` reads the rows the
//! compare bench wrote (one per event that matters to these views, tagged
//! with its hour of event time), feeds them one hour per transaction, and
//! prints JSON to stdout: the time each hour took, the restock lines at the
//! end of every day and the final inventory. The compare bench checks both
//! against coldstream's.
//!
//! The circuit is what the natural SQL compiles to: the latest count, the
//! latest planogram and each fridge's latest event are running maxima
//! (`chain_aggregate`, O(1) per key); on-hand stock joins movements with the
//! latest count; units sold join sales with the fridge's latest event time
//! and keep the last seven days; restock lines outer-join the planogram with
//! stock and sales. Fridge ids and SKUs are interned to integers before the
//! first hour is timed.

mod rows;

use std::collections::BTreeMap;
use std::time::Instant;

use dbsp::typed_batch::IndexedZSetReader;
use dbsp::typed_batch::SpineSnapshot;
use dbsp::utils::{Tup2, Tup3, Tup4};
use dbsp::{IndexedZSetHandle, OrdIndexedZSet, OrdZSet, OutputHandle, RootCircuit, Runtime, ZWeight};
use rows::{Hour, Rows, Shelf};
use serde_json::json;

const WEEK_US: i64 = 7 * 24 * 3_600_000_000;

/// `(event time, seq, qty)` of a stock count.
type Count = Tup3<i64, u64, i64>;
/// `(event time, seq, par, min)` of a planogram entry.
type Plan = Tup4<i64, u64, i64, i64>;
/// `(event time, change in stock, whether it is a sale or a return)`.
type Move = Tup3<i64, i64, bool>;

struct Inputs {
    counts: IndexedZSetHandle<Shelf, Count>,
    plans: IndexedZSetHandle<Shelf, Plan>,
    moves: IndexedZSetHandle<Shelf, Move>,
    active: IndexedZSetHandle<u32, i64>,
}

/// A transaction may take several steps; these keep every step's changes.
struct Outputs {
    inventory: OutputHandle<SpineSnapshot<OrdIndexedZSet<Shelf, i64>>>,
    lines: OutputHandle<SpineSnapshot<OrdZSet<Tup2<Shelf, i64>>>>,
}

fn circuit(circuit: &mut RootCircuit, lead_time_days: i64) -> (Inputs, Outputs) {
    let (counts, counts_in) = circuit.add_input_indexed_zset::<Shelf, Count>();
    let (plans, plans_in) = circuit.add_input_indexed_zset::<Shelf, Plan>();
    let (moves, moves_in) = circuit.add_input_indexed_zset::<Shelf, Move>();
    let (active, active_in) = circuit.add_input_indexed_zset::<u32, i64>();

    let latest_count = counts.chain_aggregate(|count, _| *count, |acc, count, _| acc.max(*count));
    let latest_plan = plans.chain_aggregate(|plan, _| *plan, |acc, plan, _| acc.max(*plan));
    let latest = active.chain_aggregate(|time, _| *time, |acc, time, _| acc.max(*time));

    // On hand: the latest count plus the movements after it, or every
    // movement on a shelf never counted (the default count is at time 0).
    let after_count = moves
        .outer_join_default(&latest_count, |shelf, Tup3(time, delta, _), Tup3(counted_at, _, _)| {
            Tup2(*shelf, if time > counted_at { *delta } else { 0 })
        })
        .map_index(|Tup2(shelf, delta)| (*shelf, *delta));
    let counted = latest_count.map_index(|(shelf, Tup3(_, _, qty))| (*shelf, *qty));
    let on_hand = after_count.plus(&counted).aggregate_linear(|delta: &i64| *delta);

    // Units sold in the seven days up to the fridge's latest event.
    let sales = moves.flat_map_index(|(Tup2(fridge, sku), Tup3(time, delta, sale))| {
        sale.then_some((*fridge, Tup2(*time, Tup2(*sku, -*delta))))
    });
    let sold = sales
        .join_generic::<_, _, OrdIndexedZSet<Shelf, i64>, _>(&latest, |fridge, Tup2(time, Tup2(sku, units)), latest| {
            (*time > latest - WEEK_US).then_some((Tup2(*fridge, *sku), *units))
        })
        .aggregate_linear(|units: &i64| *units);

    let stock_and_sales = on_hand
        .outer_join_default(&sold, |shelf, stock, units| Tup2(*shelf, Tup2(*stock, *units)))
        .map_index(|Tup2(shelf, both)| (*shelf, *both));
    let lines = latest_plan
        .outer_join_default(&stock_and_sales, move |shelf, Tup4(_, _, par, min), Tup2(stock, units)| {
            let demand = -(-(units * lead_time_days)).div_euclid(7);
            let line = if *par > 0 && *stock <= (*min).max(demand) { par - stock } else { 0 };
            Tup2(*shelf, line)
        })
        .filter(|Tup2(_, line)| *line > 0);

    (
        Inputs { counts: counts_in, plans: plans_in, moves: moves_in, active: active_in },
        Outputs { inventory: on_hand.accumulate_output(), lines: lines.accumulate_output() },
    )
}

/// Adds each step's changes to a running collection.
fn apply(into: &mut BTreeMap<Tup2<Shelf, i64>, ZWeight>, changes: impl Iterator<Item = (Tup2<Shelf, i64>, ZWeight)>) {
    for (record, weight) in changes {
        let count = into.entry(record).or_insert(0);
        *count += weight;
        if *count == 0 {
            into.remove(&record);
        }
    }
}

fn feed(inputs: &Inputs, hour: &mut Hour) {
    inputs.counts.append(&mut hour.counts);
    inputs.plans.append(&mut hour.plans);
    inputs.moves.append(&mut hour.moves);
    inputs.active.append(&mut hour.active);
}

struct Args {
    rows: String,
    workers: usize,
    lead_time_days: i64,
}

fn args() -> Result<Args, String> {
    let mut given = std::env::args().skip(1);
    let mut args = Args { rows: String::new(), workers: 1, lead_time_days: 2 };
    while let Some(arg) = given.next() {
        let mut value = |name: &str| given.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--workers" => args.workers = value("--workers")?.parse().map_err(|_| "--workers is a number")?,
            "--lead-time-days" => {
                args.lead_time_days = value("--lead-time-days")?.parse().map_err(|_| "--lead-time-days is a number")?
            }
            path if args.rows.is_empty() => args.rows = path.to_owned(),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    if args.rows.is_empty() {
        return Err("usage: coldstream-dbsp ROWS [--workers N] [--lead-time-days D]".into());
    }
    Ok(args)
}

fn main() {
    if let Err(error) = run() {
        eprintln!("coldstream-dbsp: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let Rows { events, mut hours, fridges, skus } = Rows::read(&args.rows)?;
    let lead_time_days = args.lead_time_days;
    let (mut handle, (inputs, outputs)) = Runtime::init_circuit(args.workers, move |c| Ok(circuit(c, lead_time_days)))?;

    let name = |Tup2(fridge, sku): Shelf| (fridges[fridge as usize].as_str(), skus[sku as usize].as_str());
    let mut inventory = BTreeMap::new();
    let mut lines = BTreeMap::new();
    let mut hour_ms = Vec::with_capacity(hours.len());
    let mut lines_by_day = serde_json::Map::new();
    let started = Instant::now();
    for (index, hour) in hours.iter_mut().enumerate() {
        let began = Instant::now();
        feed(&inputs, hour);
        handle.transaction()?;
        apply(&mut inventory, outputs.inventory.concat().iter().map(|(shelf, qty, w)| (Tup2(shelf, qty), w)));
        apply(&mut lines, outputs.lines.concat().iter().map(|(line, (), w)| (line, w)));
        hour_ms.push(began.elapsed().as_secs_f64() * 1e3);
        if (index + 1) % 24 == 0 {
            let day: Vec<_> =
                lines.keys().map(|Tup2(shelf, qty)| json!([name(*shelf).0, name(*shelf).1, qty])).collect();
            lines_by_day.insert(((index + 1) / 24).to_string(), day.into());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    handle.kill().map_err(|_| "a dbsp worker panicked")?;

    let inventory: Vec<_> =
        inventory.keys().map(|Tup2(shelf, qty)| json!([name(*shelf).0, name(*shelf).1, qty])).collect();
    let report = json!({
        "workers": args.workers,
        "events": events,
        "seconds": seconds,
        "hour_ms": hour_ms,
        "lines_by_day": lines_by_day,
        "inventory": inventory,
    });
    println!("{report}");
    Ok(())
}
