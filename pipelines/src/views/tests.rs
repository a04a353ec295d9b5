//! Every view of [`all`] against its batch reference, on random fleets
//! whose events arrive shuffled (hours and days late) or, for the bounded
//! state, late by at most the horizon; the same changes at the same times
//! when the same arrivals are replayed; and, since webhooks act on
//! intermediate changes, the accumulated output at every arrival time
//! against the reference over what has arrived so far.
//!
//! Each check runs every view of [`for_each_view!`] through [`for_each`]:
//! a new view is checked without a line here.

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::ExchangeData;
use differential_dataflow::collection::VecCollection;
use differential_dataflow::hashable::Hashable;
use proptest::prelude::*;

use super::*;
use crate::event::{DAY_US, HOUR_US};
use crate::fleet_gen::{fleet, late_by_at_most, shuffled, with_offline_fridge};
use crate::harness::{consolidate, final_state, run_view, run_views};

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

/// `V`'s changes among `batches`, consolidated and sorted by time.
fn changes_of<V: View>(batches: &[ViewBatch]) -> Changes<V::Record> {
    consolidate(batches.iter().filter_map(V::changes).flatten().cloned().collect())
}

/// The accumulated state of `changes` with a time at or before `until`,
/// projected onto what the reference computes; a record that is there
/// more than once, or fewer than zero times, is an error.
fn state_until<V: View>(changes: &[(V::Record, Time, isize)], until: Time) -> Result<BTreeSet<V::Reference>, String> {
    let mut counts: BTreeMap<&V::Record, isize> = BTreeMap::new();
    for (record, _, diff) in changes.iter().filter(|(_, time, _)| *time <= until) {
        *counts.entry(record).or_insert(0) += diff;
    }
    let mut state = BTreeSet::new();
    for (record, count) in counts {
        match count {
            0 => {}
            1 => {
                state.insert(V::project(record));
            }
            _ => return Err(format!("{}: {record:?} is there {count} times", V::NAME)),
        }
    }
    Ok(state)
}

/// Every view's final state equals its reference over `events`.
struct FinalStates<'a> {
    batches: &'a [ViewBatch],
    events: &'a [Event],
    config: &'a ViewConfig,
    failures: Vec<String>,
}

impl ForEachView for FinalStates<'_> {
    fn view<V: View>(&mut self) {
        let changes = changes_of::<V>(self.batches);
        match state_until::<V>(&changes, Time::MAX) {
            Ok(state) => {
                let reference = V::reference(self.events, self.config);
                if state != reference {
                    let extra: Vec<_> = state.difference(&reference).take(3).collect();
                    let missing: Vec<_> = reference.difference(&state).take(3).collect();
                    self.failures.push(format!("{}: extra {extra:?}, missing {missing:?}", V::NAME));
                }
            }
            Err(failure) => self.failures.push(failure),
        }
    }
}

/// Runs every view over `arrivals` and compares each final state with
/// its reference over `events`.
fn every_view_is_exact(
    workers: usize,
    events: &[Event],
    arrivals: Vec<(Time, Vec<Event>)>,
    config: ViewConfig,
) -> Result<(), TestCaseError> {
    let batches = run_views(workers, arrivals, config.clone());
    let mut check = FinalStates { batches: &batches, events, config: &config, failures: Vec::new() };
    for_each(&mut check);
    prop_assert!(check.failures.is_empty(), "{}", check.failures.join("\n"));
    restock_orders_have_one_id_per_fridge(&changes_of::<RestockOrders>(&batches))
}

/// The open lines of a fridge share one order, whose id names the fridge
/// and the time it opened.
fn restock_orders_have_one_id_per_fridge(changes: &Changes<(InventoryKey, RestockLine)>) -> Result<(), TestCaseError> {
    let mut orders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((fridge, _), line) in final_state(changes).into_keys() {
        prop_assert_eq!(&line.order_id, &order_id(&fridge, line.opened_at));
        orders.entry(fridge).or_default().insert(line.order_id);
    }
    prop_assert!(orders.values().all(|ids| ids.len() == 1), "a fridge with two open orders: {:?}", orders);
    Ok(())
}

/// At every arrival time, every view's accumulated output equals its
/// reference over the events arrived so far.
struct AtEveryTime<'a> {
    batches: &'a [ViewBatch],
    arrivals: &'a [(Time, Vec<Event>)],
    config: &'a ViewConfig,
    failures: Vec<String>,
}

impl ForEachView for AtEveryTime<'_> {
    fn view<V: View>(&mut self) {
        let changes = changes_of::<V>(self.batches);
        let mut arrived = Vec::new();
        for (time, batch) in self.arrivals {
            arrived.extend(batch.iter().cloned());
            let reference = V::reference(&arrived, self.config);
            match state_until::<V>(&changes, *time) {
                Ok(state) if state == reference => {}
                Ok(state) => {
                    let extra: Vec<_> = state.difference(&reference).take(3).collect();
                    let missing: Vec<_> = reference.difference(&state).take(3).collect();
                    self.failures.push(format!("{} at time {time}: extra {extra:?}, missing {missing:?}", V::NAME));
                    return;
                }
                Err(failure) => {
                    self.failures.push(format!("{failure} at time {time}"));
                    return;
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Inventory (write-offs included), sessions, revenue, 7-day sales,
    /// excursions, restock lines and alerts equal their references over
    /// the whole history, however it arrives.
    #[test]
    fn every_view_equals_its_reference((events, arrivals) in shuffled(fleet(90)), workers in 1usize..=2) {
        every_view_is_exact(workers, &events, arrivals, unbounded())?;
    }

    /// Webhooks are derived from intermediate changes: a line that is
    /// briefly wrong and then corrected would send a spurious message. So
    /// at every arrival time, not only at the end, each view must equal
    /// the reference over what has arrived.
    #[test]
    fn every_view_equals_its_reference_at_every_arrival_time(
        (_, arrivals) in shuffled(fleet(90)),
        workers in 1usize..=2,
    ) {
        let config = unbounded();
        let batches = run_views(workers, arrivals.clone(), config.clone());
        let mut check = AtEveryTime { batches: &batches, arrivals: &arrivals, config: &config, failures: Vec::new() };
        for_each(&mut check);
        prop_assert!(check.failures.is_empty(), "{}", check.failures.join("\n"));
    }

    /// With a 6-hour horizon, events up to 5 hours late behind their
    /// fridge still give the exact answer in every view.
    #[test]
    fn a_bounded_horizon_is_exact_for_events_within_it(
        (events, arrivals) in late_by_at_most(fleet(90), 5 * HOUR_US),
        workers in 1usize..=2,
    ) {
        let config = ViewConfig { horizon_us: 6 * HOUR_US, ..ViewConfig::default() };
        every_view_is_exact(workers, &events, arrivals, config)?;
    }

    /// A fridge that was offline for days and uploads its backlog after the
    /// rest of the fleet has moved on is late only against the others, not
    /// against itself: with the default 6-hour horizon every view is exact.
    #[test]
    fn an_offline_fridges_backlog_is_applied_in_full(
        (events, arrivals) in with_offline_fridge(fleet(90)),
        workers in 1usize..=2,
    ) {
        every_view_is_exact(workers, &events, arrivals, ViewConfig::default())?;
    }

    /// Replaying the same arrivals gives the same changes at the same
    /// logical times, order ids included, on one worker or two.
    #[test]
    fn replay_gives_the_same_changes_at_the_same_times((_, arrivals) in shuffled(fleet(90))) {
        let first = every_change(run_views(2, arrivals.clone(), ViewConfig::default()));
        prop_assert_eq!(&first, &every_change(run_views(2, arrivals.clone(), ViewConfig::default())));
        prop_assert_eq!(&first, &every_change(run_views(1, arrivals, ViewConfig::default())));
    }
}

/// Every change of every view, as `((view, record), time, diff)`.
struct EveryChange<'a> {
    batches: &'a [ViewBatch],
    changes: Changes<(&'static str, String)>,
}

impl ForEachView for EveryChange<'_> {
    fn view<V: View>(&mut self) {
        let changes = changes_of::<V>(self.batches).into_iter();
        self.changes.extend(changes.map(|(record, time, diff)| ((V::NAME, format!("{record:?}")), time, diff)));
    }
}

/// Every change of every view, consolidated.
fn every_change(batches: Vec<ViewBatch>) -> Changes<(&'static str, String)> {
    let mut every = EveryChange { batches: &batches, changes: Vec::new() };
    for_each(&mut every);
    consolidate(every.changes)
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
    run_views(workers, arrivals, config);
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
        let whole = every_change(run_views(after, arrivals.clone(), ViewConfig::default()));
        let state = checkpoint_at(before, arrivals.clone(), at);
        prop_assert_eq!(state.time, at);
        let tail: Vec<_> = arrivals.into_iter().filter(|(time, _)| *time >= at).collect();
        let checkpoints = crate::checkpoint::Checkpoints::new(Some(state), |_| {});
        let config = ViewConfig { hooks: OperatorHooks { checkpoints, ..Default::default() }, ..Default::default() };
        let resumed = every_change(run_views(after, tail, config));
        let expected: Vec<_> = whole.into_iter().filter(|(_, time, _)| *time >= at).collect();
        prop_assert_eq!(resumed, expected);
    }
}

/// The names in [`NAMES`] are the views' own, in list order.
#[test]
fn the_list_names_every_view_once() {
    struct Names(Vec<&'static str>);
    impl ForEachView for Names {
        fn view<V: View>(&mut self) {
            self.0.push(V::NAME);
        }
    }
    let mut names = Names(Vec::new());
    for_each(&mut names);
    assert_eq!(names.0, NAMES);
    assert_eq!(NAMES.iter().collect::<BTreeSet<_>>().len(), NAMES.len(), "two views share a name: {NAMES:?}");
}

/// The operators a checkpoint holds are read off the dataflow itself, and
/// a checkpoint that lacks one of them is refused instead of starting it
/// empty.
#[test]
fn a_checkpoint_without_one_of_the_operators_is_refused() {
    let operators = stateful_operators(&ViewConfig::default());
    assert_eq!(
        operators,
        ["cold_chain.runs", "inventory.stock", "restock.lines", "sales_7d.window", "sessions.sessions"],
        "the per-fridge operators' ids are part of every checkpoint's fingerprint"
    );
    let shared = stateful_operators(&ViewConfig { deduplicate: true, ..ViewConfig::default() });
    assert!(shared.iter().any(|o| o == crate::dedup::OPERATOR), "a shared log's views keep positions: {shared:?}");
    let mut state = checkpoint_at(1, vec![(1_000, Vec::new())], 1_000);
    assert_eq!(state.operators.keys().cloned().collect::<Vec<_>>(), operators);
    state.operators.remove("restock.lines");
    let checkpoints = crate::checkpoint::Checkpoints::new(Some(state), |_| {});
    let config = ViewConfig {
        hooks: OperatorHooks { checkpoints: checkpoints.clone(), ..Default::default() },
        ..Default::default()
    };
    run_views(1, vec![(1_000, Vec::new())], config);
    let failure = checkpoints.failure().expect("a missing operator is a failure");
    assert!(failure.contains("restock.lines"), "{failure}");
}

/// The horizon's edge, as the README states it: an event exactly the
/// horizon behind the newest event of its kind from its fridge is applied,
/// one a microsecond further behind is not, in inventory, sessions and
/// the cold chain alike.
#[test]
fn an_event_exactly_the_horizon_behind_is_applied_and_one_microsecond_more_is_not() {
    use crate::{Payload, Temperature};
    let config = ViewConfig { horizon_us: HOUR_US, ..ViewConfig::default() };
    let newest = 10 * HOUR_US;
    let edge = newest - HOUR_US;
    let event = |seq, event_time, payload| Event { source_id: "FR-1".into(), incarnation: 0, seq, event_time, payload };
    let count = |sku: &str| Payload::StockCounted { sku: sku.into(), qty: 5 };
    let take = |session: &str| Payload::ItemTaken { session_id: session.into(), sku: "cola".into(), qty: 1 };
    let reading = |celsius| Payload::Telemetry { temperature_c: Temperature(celsius), door_open: false };
    let first = vec![
        event(1, newest, count("cola")),
        event(2, newest, Payload::DoorOpened { session_id: "new".into() }),
        event(3, edge + 40 * 60_000_000, reading(9.0)),
        event(4, newest, reading(3.0)),
    ];
    let late = vec![
        event(5, edge, count("water")),
        event(6, edge - 1, count("juice")),
        event(7, edge, take("at-edge")),
        event(8, edge - 1, take("beyond")),
        event(9, edge, reading(9.0)),
        event(10, edge - 1, reading(9.5)),
    ];
    let arrivals = vec![(1, first), (2, late)];
    let inventory = final_state(&run_all(1, arrivals.clone(), config.clone(), |views| views.inventory));
    let skus: Vec<&str> = inventory.keys().map(|((_, sku), _)| sku.as_str()).collect();
    assert_eq!(skus, ["cola", "water"], "the count one µs beyond the horizon is not applied");
    let sessions = final_state(&run_all(1, arrivals.clone(), config.clone(), |views| views.sessions));
    let ids: Vec<&str> = sessions.keys().map(|((_, id), _)| id.as_str()).collect();
    assert_eq!(ids, ["at-edge", "new"], "the take one µs beyond the horizon is not applied");
    let excursions = final_state(&run_all(1, arrivals, config, |views| views.excursions));
    let found: Vec<(i64, f32)> = excursions.keys().map(|((_, start), (_, max))| (*start, max.0)).collect();
    assert_eq!(found, [(edge, 9.0)], "the warm reading one µs beyond the horizon is not applied");
}
