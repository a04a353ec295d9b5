//! Cold chain: `excursions(fridge_id, start) → end, max_temperature_c`, and
//! the write-offs they cause.
//!
//! A fridge's telemetry, ordered by event time (then seq), splits into runs
//! of consecutive readings above 5.0 °C; any reading at or below 5.0 °C ends
//! a run. A run is an excursion once its last reading is at least 30
//! minutes after its first. Late telemetry simply re-splits the runs, so an
//! excursion can grow, shrink, split or vanish as a backlog arrives.
//!
//! From the first reading + 30 minutes, every SKU the fridge's planogram
//! marks perishable at that moment is written off: inventory treats the
//! write-off as a StockCounted of 0 at that event time.
//!
//! State is bounded: each fridge keeps its readings only back to the last
//! cool reading before `horizon` behind its latest reading. Excursions
//! wholly before that point are final and forgotten by the operator (they
//! stay in the output); a reading that arrives even later than that is
//! still archived in `events/` but no longer changes excursions. That
//! point is published per fridge as `settled`: no excursion starting
//! before it can change, so inventory may fold its write-offs.

use std::collections::BTreeMap;
use std::ops::Bound;

use differential_dataflow::collection::VecCollection;
use serde::{Deserialize, Serialize};

use crate::event::MINUTE_US;
use crate::operators::{FridgeState, OperatorHooks, beyond_horizon, by_fridge_in_time_order};
use crate::views::Keyed;
use crate::{Event, Payload, Temperature, Time};

/// Readings above this temperature (°C) are warm.
pub const WARM_ABOVE_C: f32 = 5.0;
/// A warm run counts as an excursion once it lasts this long (µs).
pub const EXCURSION_AFTER_US: i64 = 30 * MINUTE_US;

/// `(fridge_id, first warm reading's event time)`.
pub type ExcursionKey = (String, i64);
/// `(last warm reading's event time, the run's highest temperature)`.
pub type Excursion = (i64, Temperature);

/// Where a reading sits in its fridge's order: `(event_time, seq)`.
type Position = (i64, u64);

/// What the cold chain reads of a telemetry event: where it sits and its temperature.
pub(crate) type Reading = (Position, Temperature);

pub(crate) fn reading(event: Event) -> Option<(String, Reading)> {
    match event.payload {
        Payload::Telemetry { temperature_c, .. } => {
            Some((event.source_id, ((event.event_time, event.seq), temperature_c)))
        }
        _ => None,
    }
}

fn warm(temperature: Temperature) -> bool {
    temperature.0 > WARM_ABOVE_C
}

/// Splits readings in (event time, seq) order into excursions, each keyed
/// by the position of its first reading.
fn runs<'a>(readings: impl Iterator<Item = (&'a Position, &'a Temperature)>) -> Vec<(Position, Excursion)> {
    let mut found = Vec::new();
    let mut current: Option<(Position, i64, Temperature)> = None;
    let close = |run: Option<(Position, i64, Temperature)>, found: &mut Vec<(Position, Excursion)>| {
        if let Some((start, end, max)) = run
            && end - start.0 >= EXCURSION_AFTER_US
        {
            found.push((start, (end, max)));
        }
    };
    for (&position, &temperature) in readings {
        if warm(temperature) {
            current = Some(match current {
                Some((start, _, max)) => (start, position.0, max.max(temperature)),
                None => (position, position.0, temperature),
            });
        } else {
            close(current.take(), &mut found);
        }
    }
    close(current, &mut found);
    found
}

/// One fridge's telemetry within the horizon.
#[derive(Serialize, Deserialize)]
struct Telemetry {
    horizon_us: i64,
    latest: i64,
    /// Readings before this position are forgotten.
    floor: Option<Position>,
    readings: BTreeMap<Position, Temperature>,
    /// The excursions currently in the output, by first reading.
    found: BTreeMap<Position, Excursion>,
    /// Whether the fridge's first `settled` record is out.
    announced: bool,
}

/// A change of the telemetry operator.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum ColdChain {
    Excursion(ExcursionKey, Excursion),
    /// `(fridge, event time)` before which the fridge's excursions are final.
    Settled(String, i64),
}

impl Telemetry {
    /// A run that stays warm past the horizon (an unplugged fridge, a stuck
    /// sensor): its readings behind `boundary` can no longer change, since
    /// a reading behind the horizon is not applied, so they fold into the
    /// run's first reading (carrying their highest temperature) and its
    /// last one behind the horizon. The excursion they give is the same;
    /// the state, and the work of each new reading, stay within the horizon
    /// however long the fridge stays warm.
    fn fold_warm_run_behind(&mut self, boundary: Position) {
        let behind: Vec<(Position, Temperature)> =
            self.readings.range(..boundary).map(|(p, t)| (*p, *t)).skip_while(|(_, t)| !warm(*t)).collect();
        let [(first, _), .., (_, _)] = behind.as_slice() else { return };
        if behind.len() <= 2 {
            return;
        }
        let max = behind.iter().map(|(_, t)| *t).max().expect("a warm run");
        for (position, _) in &behind[1..behind.len() - 1] {
            self.readings.remove(position);
        }
        self.readings.insert(*first, max);
    }
}

impl FridgeState for Telemetry {
    type Input = (Position, Temperature);
    type Output = ColdChain;
    type Shared = ();

    fn apply(
        &mut self,
        fridge: &str,
        _time: Time,
        inputs: &[(Self::Input, isize)],
        _shared: &(),
        out: &mut Vec<(Self::Output, isize)>,
    ) {
        let mut touched: Option<(Position, Position)> = None;
        let newest_before = self.latest;
        for &((position, temperature), _) in inputs {
            if self.floor.is_some_and(|floor| position < floor)
                || beyond_horizon(position.0, newest_before, self.horizon_us)
            {
                continue;
            }
            self.readings.insert(position, temperature);
            self.latest = self.latest.max(position.0);
            touched = Some(touched.map_or((position, position), |(lo, hi)| (lo.min(position), hi.max(position))));
        }
        let Some((first, last)) = touched else { return };
        if !self.announced {
            // Until a cool reading falls behind the horizon, nothing is settled.
            self.announced = true;
            out.push((ColdChain::Settled(fridge.to_owned(), i64::MIN), 1));
        }

        // Only the runs between the cool readings around the new ones change.
        let cool = |(_, t): &(&Position, &Temperature)| !warm(**t);
        let lo = self.readings.range(..first).rev().find(cool).map(|(p, _)| *p);
        let hi = self.readings.range((Bound::Excluded(last), Bound::Unbounded)).find(cool).map(|(p, _)| *p);
        let range = (lo.map_or(Bound::Unbounded, Bound::Excluded), hi.map_or(Bound::Unbounded, Bound::Excluded));
        let now: BTreeMap<Position, Excursion> = runs(self.readings.range(range)).into_iter().collect();
        let before: Vec<(Position, Excursion)> = self.found.range(range).map(|(p, e)| (*p, *e)).collect();
        for (start, excursion) in &before {
            if now.get(start) != Some(excursion) {
                out.push((ColdChain::Excursion((fridge.to_owned(), start.0), *excursion), -1));
                self.found.remove(start);
            }
        }
        for (start, excursion) in now {
            if self.found.insert(start, excursion) != Some(excursion) {
                out.push((ColdChain::Excursion((fridge.to_owned(), start.0), excursion), 1));
            }
        }

        // Forget everything before the last cool reading behind the horizon.
        let boundary = (self.latest.saturating_sub(self.horizon_us), 0);
        if let Some(keep) = self.readings.range(..boundary).rev().find(cool).map(|(p, _)| *p)
            && self.floor.is_none_or(|floor| keep > floor)
        {
            self.readings = self.readings.split_off(&keep);
            self.found = self.found.split_off(&keep);
            let old = self.floor.replace(keep).map_or(i64::MIN, |old| old.0);
            out.push((ColdChain::Settled(fridge.to_owned(), old), -1));
            out.push((ColdChain::Settled(fridge.to_owned(), keep.0), 1));
        }
        self.fold_warm_run_behind(boundary);
    }

    fn held(&self) -> usize {
        self.readings.len() + self.found.len()
    }
}

/// Every excursion, maintained incrementally; readings more than
/// `horizon_us` behind their fridge's latest reading are forgotten.
pub fn excursions<'s>(
    events: VecCollection<'s, Time, Event>,
    horizon_us: i64,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, (ExcursionKey, Excursion)> {
    cold_chain(events, horizon_us, hooks).0
}

/// [`excursions`], and per fridge the `settled` event time before which
/// its excursions can no longer change (one record per fridge, moving
/// forward as its telemetry does).
pub fn cold_chain<'s>(
    events: VecCollection<'s, Time, Event>,
    horizon_us: i64,
    hooks: &OperatorHooks,
) -> (Keyed<'s, ExcursionKey, Excursion>, Keyed<'s, String, i64>) {
    cold_chain_of(events.flat_map(reading), horizon_us, hooks)
}

/// [`cold_chain`] of the fridges' readings ([`reading`]).
pub(crate) fn cold_chain_of<'s>(
    readings: Keyed<'s, String, Reading>,
    horizon_us: i64,
    hooks: &OperatorHooks,
) -> (Keyed<'s, ExcursionKey, Excursion>, Keyed<'s, String, i64>) {
    let new_state = move || Telemetry {
        horizon_us,
        latest: i64::MIN,
        floor: None,
        readings: BTreeMap::new(),
        found: BTreeMap::new(),
        announced: false,
    };
    let changes = by_fridge_in_time_order(readings, "cold_chain.runs", new_state, hooks);
    let excursions = changes.clone().flat_map(|change| match change {
        ColdChain::Excursion(key, excursion) => Some((key, excursion)),
        ColdChain::Settled(..) => None,
    });
    let settled = changes.flat_map(|change| match change {
        ColdChain::Settled(fridge, at) => Some((fridge, at)),
        ColdChain::Excursion(..) => None,
    });
    (excursions, settled)
}

/// The batch reference of [`excursions`].
pub fn excursions_reference(events: &[Event]) -> BTreeMap<ExcursionKey, Excursion> {
    let mut by_fridge: BTreeMap<String, BTreeMap<Position, Temperature>> = BTreeMap::new();
    for (fridge, (position, temperature)) in events.iter().cloned().filter_map(reading) {
        by_fridge.entry(fridge).or_default().insert(position, temperature);
    }
    let mut all = BTreeMap::new();
    for (fridge, readings) in by_fridge {
        for (start, excursion) in runs(readings.iter()) {
            all.insert((fridge.clone(), start.0), excursion);
        }
    }
    all
}

view_with_exact_reference!(
    /// The `excursions` view.
    Excursions,
    excursions_reference
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::{DAY_US, HOUR_US};
    use crate::harness::{final_state, run_view};
    use crate::operators::HeldRecords;
    use crate::views::tests::{keyed, run_all};
    use crate::views::{ViewConfig, inventory_reference};

    fn telemetry(seq: u64, minute: i64, celsius: f32) -> Event {
        Event {
            source_id: "FR-1".into(),
            incarnation: 0,
            seq,
            event_time: minute * MINUTE_US,
            payload: Payload::Telemetry { temperature_c: Temperature(celsius), door_open: false },
        }
    }

    fn by_dataflow(workers: usize, arrivals: Vec<(Time, Vec<Event>)>) -> BTreeMap<ExcursionKey, Excursion> {
        let view = run_view(workers, arrivals, |events: VecCollection<'_, Time, Event>| {
            excursions(events, DAY_US, &OperatorHooks::default())
        });
        final_state(&view).into_keys().collect()
    }

    #[test]
    fn twenty_nine_minutes_is_not_an_excursion_and_thirty_is() {
        let short: Vec<Event> = (0..=29).map(|m| telemetry(m as u64 + 1, m, 7.5)).collect();
        assert!(excursions_reference(&short).is_empty());
        let long: Vec<Event> = (0..=30).map(|m| telemetry(m as u64 + 1, m, 6.0 + m as f32 / 10.0)).collect();
        let expected = BTreeMap::from([(("FR-1".to_owned(), 0), (30 * MINUTE_US, Temperature(9.0)))]);
        assert_eq!(excursions_reference(&long), expected);
        assert_eq!(by_dataflow(1, vec![(1, long)]), expected);
    }

    /// Salad is perishable, cola is not; both start at 10.
    fn shelf() -> Vec<Event> {
        let plan = |seq, sku: &str, perishable| Event {
            source_id: "bo".into(),
            incarnation: 0,
            seq,
            event_time: 0,
            payload: Payload::PlanogramSet { fridge_id: "FR-1".into(), sku: sku.into(), par: 12, min: 3, perishable },
        };
        let count = |seq, sku: &str| Event {
            source_id: "FR-1".into(),
            incarnation: 0,
            seq,
            event_time: MINUTE_US,
            payload: Payload::StockCounted { sku: sku.into(), qty: 10 },
        };
        vec![plan(1, "salad", true), plan(2, "cola", false), count(1000, "salad"), count(1001, "cola")]
    }

    fn on_hand(events: &[Event]) -> (i64, i64) {
        let stock = inventory_reference(events);
        (stock[&("FR-1".to_owned(), "salad".to_owned())], stock[&("FR-1".to_owned(), "cola".to_owned())])
    }

    #[test]
    fn a_29_minute_excursion_writes_nothing_off_and_a_30_minute_one_writes_off_the_perishables() {
        let warm =
            |minutes: i64| -> Vec<Event> { (0..=minutes).map(|m| telemetry(m as u64 + 1, 10 + m, 7.5)).collect() };
        let mut short = shelf();
        short.extend(warm(29));
        assert_eq!(on_hand(&short), (10, 10));

        let mut long = shelf();
        long.extend(warm(30));
        // A customer takes a salad after the write-off (minute 10 + 30): it counts against the 0.
        long.push(Event {
            source_id: "FR-1".into(),
            incarnation: 0,
            seq: 500,
            event_time: 45 * MINUTE_US,
            payload: Payload::ItemTaken { session_id: "s".into(), sku: "salad".into(), qty: 1 },
        });
        assert_eq!(on_hand(&long), (-1, 10));
        let mut reversed = long.clone();
        reversed.reverse();
        let state = keyed(&run_all(2, vec![(1, reversed)], ViewConfig::default(), |views| views.inventory));
        assert_eq!(state, inventory_reference(&long));
    }

    #[test]
    fn a_late_cool_reading_splits_an_excursion() {
        let warm: Vec<Event> = (0..=40).map(|m| telemetry(m as u64 + 1, m, 8.0)).collect();
        let cool = telemetry(100, 20, 4.0);
        let arrivals = vec![(1, warm.clone()), (2, vec![cool.clone()])];
        let mut all = warm;
        all.push(cool);
        // 0..=19 and 21..=40 are both shorter than 30 minutes.
        assert!(excursions_reference(&all).is_empty());
        assert!(by_dataflow(2, arrivals).is_empty());
    }

    #[test]
    fn telemetry_state_stays_bounded_over_many_days() {
        // Ten days of a reading every minute, with a 40-minute warm spell each day at noon.
        let readings: Vec<Event> = (0..10 * 24 * 60)
            .map(|m| telemetry(m as u64 + 1, m, if (720..760).contains(&(m % 1440)) { 8.0 } else { 3.0 }))
            .collect();
        let held = HeldRecords::default();
        let counter = held.clone();
        let arrivals: Vec<(Time, Vec<Event>)> =
            readings.chunks(60).enumerate().map(|(i, hour)| (i as Time + 1, hour.to_vec())).collect();
        let found: BTreeMap<ExcursionKey, Excursion> =
            final_state(&run_view(1, arrivals, move |events: VecCollection<'_, Time, Event>| {
                excursions(events, 2 * HOUR_US, &OperatorHooks { held: held.clone(), ..OperatorHooks::default() })
            }))
            .into_keys()
            .collect();
        assert_eq!(found, excursions_reference(&readings));
        assert_eq!(found.len(), 10);
        // About two hours of minute readings and no finished excursion, not ten days of them.
        assert!(counter.get() <= 2 * 60 + 60 + 2, "{} records held", counter.get());
    }

    #[test]
    fn a_fridge_that_stays_warm_for_days_holds_only_the_horizon_and_its_excursion_is_exact() {
        // Unplugged for ten days: a reading every minute, warm and rising slowly, then cool again.
        let warm_minutes = 10 * 24 * 60;
        let mut readings: Vec<Event> =
            (0..warm_minutes).map(|m| telemetry(m as u64 + 1, m, 6.0 + (m % 997) as f32 / 100.0)).collect();
        readings.push(telemetry(warm_minutes as u64 + 1, warm_minutes, 3.0));
        let held = HeldRecords::default();
        let counter = held.clone();
        let arrivals: Vec<(Time, Vec<Event>)> =
            readings.chunks(60).enumerate().map(|(i, hour)| (i as Time + 1, hour.to_vec())).collect();
        let found: BTreeMap<ExcursionKey, Excursion> =
            final_state(&run_view(1, arrivals, move |events: VecCollection<'_, Time, Event>| {
                excursions(events, 2 * HOUR_US, &OperatorHooks { held: held.clone(), ..OperatorHooks::default() })
            }))
            .into_keys()
            .collect();
        assert_eq!(found, excursions_reference(&readings), "one excursion, its end and maximum exact");
        assert_eq!(found.len(), 1);
        assert!(counter.get() <= 2 * 60 + 60 + 4, "{} records held", counter.get());
    }

    fn readings() -> impl Strategy<Value = Vec<Event>> {
        prop::collection::vec((0usize..2, 0i64..120, prop_oneof![Just(4.0f32), Just(5.0), Just(6.5), Just(9.0)]), 0..80)
            .prop_map(|raw| {
                let mut seqs = [0u64; 2];
                raw.into_iter()
                    .map(|(fridge, minute, celsius)| {
                        seqs[fridge] += 1;
                        let mut event = telemetry(seqs[fridge], minute * 2, celsius);
                        event.source_id = format!("FR-{fridge}");
                        event
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn dense_telemetry_equals_the_reference((events, arrivals) in crate::fleet_gen::shuffled(readings()), workers in 1usize..=2) {
            prop_assert_eq!(by_dataflow(workers, arrivals), excursions_reference(&events));
        }
    }
}
