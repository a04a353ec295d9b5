//! Every view of [`all`] against its batch reference, on random fleets
//! whose events arrive shuffled (hours and days late) or, for the bounded
//! state, late by at most the horizon; and the same changes at the same
//! times when the same arrivals are replayed.

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::ExchangeData;
use differential_dataflow::collection::VecCollection;
use differential_dataflow::hashable::Hashable;
use proptest::prelude::*;

use super::*;
use crate::event::{DAY_US, HOUR_US};
use crate::fleet_gen::{fleet, late_by_at_most, shuffled, with_offline_fridge};
use crate::harness::{final_state, run_view};

/// A horizon longer than any generated history: nothing is forgotten.
fn unbounded() -> ViewConfig {
    ViewConfig { horizon_us: 365 * DAY_US, ..ViewConfig::default() }
}

/// Runs [`all`] and keeps the output `pick` chooses.
pub(crate) fn run_all<D>(
    workers: usize,
    arrivals: Vec<(Time, Vec<Event>)>,
    config: ViewConfig,
    pick: fn(Views<'_>) -> VecCollection<'_, Time, D>,
) -> Vec<(D, Time, isize)>
where
    D: ExchangeData + Hashable + Send,
{
    run_view(workers, arrivals, move |events: VecCollection<'_, Time, Event>| pick(all(events, &config)))
}

/// The final state of a view whose records are `(key, value)`, one per key.
pub(crate) fn keyed<K: Ord + Clone + std::fmt::Debug, V: Ord + Clone>(
    changes: &[((K, V), Time, isize)],
) -> BTreeMap<K, V> {
    final_state(changes)
        .into_iter()
        .map(|((key, value), diff)| {
            assert_eq!(diff, 1, "{key:?} appears {diff} times");
            (key, value)
        })
        .collect()
}

fn inventory_of(workers: usize, arrivals: Vec<(Time, Vec<Event>)>, config: ViewConfig) -> BTreeMap<InventoryKey, i64> {
    keyed(&run_all(workers, arrivals, config, |v| v.inventory))
}

fn excursions_of(
    workers: usize,
    arrivals: Vec<(Time, Vec<Event>)>,
    config: ViewConfig,
) -> BTreeMap<ExcursionKey, Excursion> {
    keyed(&run_all(workers, arrivals, config, |v| v.excursions))
}

/// Open orders: the lines, and a check that each fridge's lines share one order.
fn restock_of(workers: usize, arrivals: Vec<(Time, Vec<Event>)>, config: ViewConfig) -> BTreeMap<InventoryKey, i64> {
    let lines = keyed(&run_all(workers, arrivals, config, |v| v.restock_orders));
    let mut orders: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for ((fridge, _), line) in &lines {
        assert_eq!(line.order_id, order_id(fridge, line.opened_at));
        orders.entry(fridge).or_default().insert(&line.order_id);
    }
    assert!(orders.values().all(|ids| ids.len() == 1), "a fridge with two open orders: {orders:?}");
    lines.into_iter().map(|(key, line)| (key, line.qty)).collect()
}

/// Excursions, inventory, sessions, revenue, 7-day sales and restock lines
/// of `arrivals` equal the reference over `events`.
fn every_keyed_view_is_exact(
    workers: usize,
    events: &[Event],
    arrivals: Vec<(Time, Vec<Event>)>,
    config: ViewConfig,
) -> Result<(), TestCaseError> {
    let lead = config.lead_time_days;
    prop_assert_eq!(excursions_of(workers, arrivals.clone(), config.clone()), excursions_reference(events));
    prop_assert_eq!(inventory_of(workers, arrivals.clone(), config.clone()), inventory_reference(events));
    let sessions = keyed(&run_all(workers, arrivals.clone(), config.clone(), |v| v.sessions));
    prop_assert_eq!(sessions, sessions_reference(events));
    let revenue = keyed(&run_all(workers, arrivals.clone(), config.clone(), |v| v.revenue));
    prop_assert_eq!(revenue, revenue_reference(events));
    let sales = keyed(&run_all(workers, arrivals.clone(), config.clone(), |v| v.sales_7d));
    prop_assert_eq!(sales, sales_7d_reference(events));
    prop_assert_eq!(restock_of(workers, arrivals, config), restock_lines_reference(events, lead));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn inventory_with_write_offs_equals_the_reference((events, arrivals) in shuffled(fleet(90)), workers in 1usize..=2) {
        prop_assert_eq!(inventory_of(workers, arrivals, unbounded()), inventory_reference(&events));
    }

    #[test]
    fn sessions_equal_the_reference((events, arrivals) in shuffled(fleet(90)), workers in 1usize..=2) {
        prop_assert_eq!(keyed(&run_all(workers, arrivals, unbounded(), |v| v.sessions)), sessions_reference(&events));
    }

    #[test]
    fn revenue_equals_the_reference((events, arrivals) in shuffled(fleet(90)), workers in 1usize..=2) {
        prop_assert_eq!(keyed(&run_all(workers, arrivals, unbounded(), |v| v.revenue)), revenue_reference(&events));
    }

    #[test]
    fn sales_7d_equals_the_reference((events, arrivals) in shuffled(fleet(90)), workers in 1usize..=2) {
        prop_assert_eq!(keyed(&run_all(workers, arrivals, unbounded(), |v| v.sales_7d)), sales_7d_reference(&events));
    }

    #[test]
    fn excursions_equal_the_reference((events, arrivals) in shuffled(fleet(90)), workers in 1usize..=2) {
        prop_assert_eq!(excursions_of(workers, arrivals, unbounded()), excursions_reference(&events));
    }

    #[test]
    fn restock_lines_equal_the_reference((events, arrivals) in shuffled(fleet(90)), workers in 1usize..=2) {
        let config = unbounded();
        let lead = config.lead_time_days;
        prop_assert_eq!(restock_of(workers, arrivals, config), restock_lines_reference(&events, lead));
    }

    #[test]
    fn alerts_equal_the_reference((events, arrivals) in shuffled(fleet(90)), workers in 1usize..=2) {
        let raised: BTreeSet<Alert> = final_state(&run_all(workers, arrivals, unbounded(), |v| v.alerts))
            .into_iter()
            .map(|(alert, diff)| { assert_eq!(diff, 1); alert })
            .collect();
        prop_assert_eq!(raised, alerts_reference(&events));
    }

    /// With a 6-hour horizon, events up to 5 hours late behind their
    /// fridge still give the exact answer in every view.
    #[test]
    fn a_bounded_horizon_is_exact_for_events_within_it(
        (events, arrivals) in late_by_at_most(fleet(90), 5 * HOUR_US),
        workers in 1usize..=2,
    ) {
        let config = ViewConfig { horizon_us: 6 * HOUR_US, ..ViewConfig::default() };
        every_keyed_view_is_exact(workers, &events, arrivals, config)?;
    }

    /// A fridge that was offline for days and uploads its backlog after the
    /// rest of the fleet has moved on is late only against the others, not
    /// against itself: with the default 6-hour horizon every view is exact.
    #[test]
    fn an_offline_fridges_backlog_is_applied_in_full(
        (events, arrivals) in with_offline_fridge(fleet(90)),
        workers in 1usize..=2,
    ) {
        let config = ViewConfig::default();
        every_keyed_view_is_exact(workers, &events, arrivals, config)?;
    }

    /// Replaying the same arrivals gives the same changes at the same
    /// logical times, order ids included.
    #[test]
    fn replay_gives_the_same_changes_at_the_same_times((_, arrivals) in shuffled(fleet(90))) {
        let first = run_all(2, arrivals.clone(), ViewConfig::default(), |v| v.restock_orders);
        prop_assert_eq!(&first, &run_all(2, arrivals.clone(), ViewConfig::default(), |v| v.restock_orders));
        let first = run_all(2, arrivals.clone(), ViewConfig::default(), |v| v.alerts);
        prop_assert_eq!(&first, &run_all(1, arrivals.clone(), ViewConfig::default(), |v| v.alerts));
        let first = run_all(2, arrivals.clone(), ViewConfig::default(), |v| v.sessions);
        prop_assert_eq!(&first, &run_all(1, arrivals.clone(), ViewConfig::default(), |v| v.sessions));
        let first = run_all(2, arrivals.clone(), ViewConfig::default(), |v| v.inventory);
        prop_assert_eq!(&first, &run_all(1, arrivals, ViewConfig::default(), |v| v.inventory));
    }
}

/// Every change of every view, as `(view, record, time, diff)`, consolidated.
fn every_change(batches: Vec<ViewBatch>) -> Vec<((&'static str, String), Time, isize)> {
    fn rows<D: std::fmt::Debug>(view: &'static str, changes: Changes<D>) -> Changes<(&'static str, String)> {
        changes.into_iter().map(|(record, time, diff)| ((view, format!("{record:?}")), time, diff)).collect()
    }
    let mut all = Vec::new();
    for batch in batches {
        all.extend(match batch {
            ViewBatch::Inventory(c) => rows("inventory", c),
            ViewBatch::Sessions(c) => rows("sessions", c),
            ViewBatch::Revenue(c) => rows("revenue", c),
            ViewBatch::Sales7d(c) => rows("sales_7d", c),
            ViewBatch::Excursions(c) => rows("excursions", c),
            ViewBatch::RestockOrders(c) => rows("restock_orders", c),
            ViewBatch::Alerts(c) => rows("alerts", c),
        });
    }
    crate::harness::consolidate(all)
}

/// The state of every per-fridge operator at `at`, taken on `workers` workers.
fn checkpoint_at(workers: usize, arrivals: Vec<(Time, Vec<Event>)>, at: Time) -> crate::checkpoint::DataflowState {
    let parts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&parts);
    let checkpoints = crate::checkpoint::Checkpoints::new(None, move |part| {
        sink.lock().expect("no test thread panics").push(part);
    });
    checkpoints.request(at);
    let config = ViewConfig {
        hooks: OperatorHooks { checkpoints: checkpoints.clone(), ..Default::default() },
        ..Default::default()
    };
    crate::harness::run_views(workers, arrivals, config);
    let parts = std::mem::take(&mut *parts.lock().expect("no test thread panics"));
    assert_eq!(parts.len(), checkpoints.expected_snapshots(), "one snapshot per operator and worker");
    crate::checkpoint::DataflowState::gather(at, parts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A dataflow restored from a checkpoint at `T` and fed only what
    /// arrives from `T` on makes exactly the changes the uninterrupted one
    /// makes from `T` on, whatever the worker counts before and after.
    #[test]
    fn a_restored_dataflow_continues_exactly(
        (_, arrivals) in with_offline_fridge(fleet(90)),
        split in 0.0f64..1.0,
        before in 1usize..=2,
        after in 1usize..=2,
    ) {
        let at = arrivals[((arrivals.len() as f64 * split) as usize).min(arrivals.len() - 1)].0;
        let whole = every_change(crate::harness::run_views(after, arrivals.clone(), ViewConfig::default()));
        let state = checkpoint_at(before, arrivals.clone(), at);
        prop_assert_eq!(state.time, at);
        let tail: Vec<_> = arrivals.into_iter().filter(|(time, _)| *time >= at).collect();
        let checkpoints = crate::checkpoint::Checkpoints::new(Some(state), |_| {});
        let config = ViewConfig { hooks: OperatorHooks { checkpoints, ..Default::default() }, ..Default::default() };
        let resumed = every_change(crate::harness::run_views(after, tail, config));
        let expected: Vec<_> = whole.into_iter().filter(|(_, time, _)| *time >= at).collect();
        prop_assert_eq!(resumed, expected);
    }
}
