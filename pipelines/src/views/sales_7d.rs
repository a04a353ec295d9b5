//! `sales_7d(fridge_id, sku) → units`: units taken minus units returned
//! with an event time in the 7 days (168 hours) up to the fridge's latest
//! event time seen so far, that is in `(latest − 168 h, latest]`.
//!
//! "Latest" counts every event the fridge itself sent (telemetry included),
//! not back-office events about it. A row exists while the window holds at
//! least one take or return of the SKU; its units may be 0, or negative
//! when a return falls inside the window and its take before it.
//!
//! State is bounded by the window itself: a fridge's latest event time only
//! grows, so a movement that has left the window can never enter it again
//! and is forgotten, and one that arrives already outside it is ignored.

use std::collections::BTreeMap;

use differential_dataflow::collection::VecCollection;
use serde::{Deserialize, Serialize};

use crate::event::DAY_US;
use crate::operators::{FridgeState, OperatorHooks, by_fridge_in_time_order};
use crate::views::inventory::InventoryKey;
use crate::{Event, Payload, Time};

/// The length of the sales window (µs).
pub const SALES_WINDOW_US: i64 = 7 * DAY_US;

/// What a fridge event tells the sales window: its event time and, for a
/// take or return, `(sku, signed units)`.
type Sighting = (i64, Option<(String, i64)>);

fn sighting(event: &Event) -> Option<(String, Sighting)> {
    if event.kind().is_back_office() {
        return None;
    }
    let movement = match &event.payload {
        Payload::ItemTaken { sku, qty, .. } => Some((sku.clone(), *qty)),
        Payload::ItemReturned { sku, qty, .. } => Some((sku.clone(), -*qty)),
        _ => None,
    };
    Some((event.source_id.clone(), (event.event_time, movement)))
}

/// One fridge's sales window.
#[derive(Default, Serialize, Deserialize)]
struct Window {
    latest: Option<i64>,
    /// `(event_time, sku) → (units, movements)` inside the window.
    movements: BTreeMap<(i64, String), (i64, i64)>,
    /// `sku → (units, movements)` summed over the window.
    totals: BTreeMap<String, (i64, i64)>,
}

impl Window {
    fn add(&mut self, changed: &mut BTreeMap<String, Option<i64>>, sku: &str, units: i64, movements: i64) {
        let total = self.totals.entry(sku.to_owned()).or_insert((0, 0));
        changed.entry(sku.to_owned()).or_insert((total.1 > 0).then_some(total.0));
        total.0 += units;
        total.1 += movements;
        if total.1 == 0 {
            self.totals.remove(sku);
        }
    }
}

impl FridgeState for Window {
    type Input = Sighting;
    type Output = (InventoryKey, i64);
    type Shared = ();

    fn apply(
        &mut self,
        fridge: &str,
        _time: Time,
        inputs: &[(Self::Input, isize)],
        _shared: &(),
        out: &mut Vec<(Self::Output, isize)>,
    ) {
        let Some(newest) = inputs.iter().map(|((at, _), _)| *at).max() else { return };
        let latest = self.latest.map_or(newest, |l| l.max(newest));
        self.latest = Some(latest);
        let opens = latest.saturating_sub(SALES_WINDOW_US);
        let mut changed: BTreeMap<String, Option<i64>> = BTreeMap::new();
        for ((at, movement), diff) in inputs {
            if let Some((sku, units)) = movement
                && *at > opens
            {
                let (units, count) = (units * *diff as i64, *diff as i64);
                let entry = self.movements.entry((*at, sku.clone())).or_insert((0, 0));
                entry.0 += units;
                entry.1 += count;
                self.add(&mut changed, sku, units, count);
            }
        }
        // Movements that the advancing window has left behind.
        let kept = self.movements.split_off(&(opens + 1, String::new()));
        for ((_, sku), (units, count)) in std::mem::replace(&mut self.movements, kept) {
            self.add(&mut changed, &sku, -units, -count);
        }
        for (sku, before) in changed {
            let after = self.totals.get(&sku).map(|(units, _)| *units);
            if before != after {
                let key = (fridge.to_owned(), sku);
                if let Some(units) = before {
                    out.push(((key.clone(), units), -1));
                }
                if let Some(units) = after {
                    out.push(((key, units), 1));
                }
            }
        }
    }

    fn held(&self) -> usize {
        self.movements.len() + self.totals.len()
    }
}

/// Seven-day sales of every `(fridge, sku)`, maintained incrementally.
pub fn sales_7d<'s>(
    events: VecCollection<'s, Time, Event>,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, (InventoryKey, i64)> {
    by_fridge_in_time_order(events.flat_map(|event| sighting(&event)), "sales_7d.window", Window::default, hooks)
}

/// The batch reference of [`sales_7d`].
pub fn sales_7d_reference(events: &[Event]) -> BTreeMap<InventoryKey, i64> {
    let mut latest: BTreeMap<String, i64> = BTreeMap::new();
    for (fridge, (at, _)) in events.iter().filter_map(sighting) {
        let entry = latest.entry(fridge).or_insert(at);
        *entry = (*entry).max(at);
    }
    let mut units = BTreeMap::new();
    for (fridge, (at, movement)) in events.iter().filter_map(sighting) {
        if let Some((sku, qty)) = movement
            && at > latest[&fridge] - SALES_WINDOW_US
        {
            *units.entry((fridge, sku)).or_insert(0) += qty;
        }
    }
    units
}

view_with_exact_reference!(
    /// The `sales_7d` view.
    Sales7d,
    sales_7d_reference
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Temperature;
    use crate::event::HOUR_US;
    use crate::views::ViewConfig;
    use crate::views::tests::{keyed, run_all};

    fn at(seq: u64, hour: i64, payload: Payload) -> Event {
        Event { source_id: "FR-1".into(), incarnation: 0, seq, event_time: hour * HOUR_US, payload }
    }

    fn take(seq: u64, hour: i64, qty: i64) -> Event {
        at(seq, hour, Payload::ItemTaken { session_id: format!("s{seq}"), sku: "cola".into(), qty })
    }

    fn sales(arrivals: Vec<(Time, Vec<Event>)>) -> BTreeMap<InventoryKey, i64> {
        keyed(&run_all(2, arrivals, ViewConfig::default(), |views| views.sales_7d))
    }

    #[test]
    fn the_window_is_the_168_hours_up_to_the_latest_event_and_a_backlog_fills_it_in() {
        let cola = || ("FR-1".to_owned(), "cola".to_owned());
        let telemetry = at(9, 200, Payload::Telemetry { temperature_c: Temperature(3.0), door_open: false });
        // Latest event at hour 200: the window is (32, 200].
        let early = vec![take(1, 32, 5), take(2, 33, 2), take(3, 150, 1), telemetry.clone()];
        assert_eq!(sales_7d_reference(&early), BTreeMap::from([(cola(), 3)]));
        assert_eq!(sales(vec![(1, early.clone())]), BTreeMap::from([(cola(), 3)]));
        // Offline for two days: the backlog (hours 160 to 207) arrives later and moves the window to (39, 207].
        let backlog = vec![
            take(10, 160, 4),
            at(11, 170, Payload::ItemReturned { session_id: "s10".into(), sku: "cola".into(), qty: 1 }),
            take(12, 207, 1),
        ];
        let mut all = early.clone();
        all.extend(backlog.clone());
        assert_eq!(sales_7d_reference(&all), BTreeMap::from([(cola(), 1 + 4 - 1 + 1)]));
        assert_eq!(sales(vec![(1, early), (2, backlog)]), sales_7d_reference(&all));
    }
}
