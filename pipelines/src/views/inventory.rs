//! `inventory(fridge_id, sku) → on_hand`.
//!
//! The latest StockCounted for a key (by event time, then seq) sets the
//! count; movements with a later event time are added to it (restock `+`,
//! take `−`, return `+`). Without a count the key starts at 0. Movements at
//! or before the count are already in it, so a count that arrives late
//! correctly supersedes earlier movements, whatever the arrival order.
//!
//! A cold-chain write-off is a count of 0 at its event time (the
//! excursion's start + 30 min) for every SKU the fridge's planogram marks
//! perishable at that moment (its latest PlanogramSet at or before it). It
//! sorts before any real StockCounted at the same event time (as if its seq
//! were 0), so an audit taken at that very instant wins over the write-off.
//!
//! State is bounded by the horizon: each fridge folds everything more than
//! the horizon behind its latest stock event into one base value per SKU
//! (the on-hand as of that point), which later events can only build on.
//! Events older than the fold point are beyond the horizon and not applied.

use std::collections::BTreeMap;

use differential_dataflow::collection::VecCollection;
use serde::{Deserialize, Serialize};

use crate::operators::{FridgeState, OperatorHooks, beyond_horizon, by_fridge_in_time_order};
use crate::vec_map::VecMap;
use crate::views::Keyed;
use crate::views::cold_chain::{EXCURSION_AFTER_US, Excursion, ExcursionKey};
use crate::{Event, Payload, Time};

/// `(fridge_id, sku)`.
pub type InventoryKey = (String, String);

/// A stock movement: `(event_time, signed quantity)`.
type Movement = (i64, i64);
/// A stock count: `(event_time, seq, qty)`, ordered so the latest is the largest.
type Count = (i64, u64, i64);
/// A planogram version's perishable flag: `(event_time, seq, perishable)`.
type Perishable = (i64, u64, bool);

fn movement(event: &Event) -> Option<(InventoryKey, Movement)> {
    let (sku, delta) = match &event.payload {
        Payload::RestockDelivered { sku, qty, .. } => (sku, *qty),
        Payload::ItemTaken { sku, qty, .. } => (sku, -*qty),
        Payload::ItemReturned { sku, qty, .. } => (sku, *qty),
        _ => return None,
    };
    Some(((event.source_id.clone(), sku.clone()), (event.event_time, delta)))
}

fn count(event: &Event) -> Option<(InventoryKey, Count)> {
    match &event.payload {
        Payload::StockCounted { sku, qty } => {
            Some(((event.source_id.clone(), sku.clone()), (event.event_time, event.seq, *qty)))
        }
        _ => None,
    }
}

fn perishable(event: &Event) -> Option<(InventoryKey, Perishable)> {
    match &event.payload {
        Payload::PlanogramSet { fridge_id, sku, perishable, .. } => {
            Some(((fridge_id.clone(), sku.clone()), (event.event_time, event.seq, *perishable)))
        }
        _ => None,
    }
}

/// What a fridge's shelf hears, each at an event time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stock {
    /// A restock, take or return of `sku`.
    Moved(String, i64),
    /// A StockCounted of `sku`: `(seq, qty)`.
    Counted(String, u64, i64),
    /// A cold-chain write-off of the fridge's perishable SKUs.
    WrittenOff,
    /// The fridge's excursions that start before this time are final.
    Settled,
    /// A PlanogramSet of `sku`: `(seq, perishable)`.
    Planned(String, u64, bool),
}

/// What a fridge's shelves hear of an event: `(event_time, what)`.
pub(crate) type Heard = (i64, Stock);

pub(crate) fn stock(event: &Event) -> Option<(String, Heard)> {
    if let Some(((fridge, sku), (at, delta))) = movement(event) {
        return Some((fridge, (at, Stock::Moved(sku, delta))));
    }
    if let Some(((fridge, sku), (at, seq, qty))) = count(event) {
        return Some((fridge, (at, Stock::Counted(sku, seq, qty))));
    }
    perishable(event).map(|((fridge, sku), (at, seq, flag))| (fridge, (at, Stock::Planned(sku, seq, flag))))
}

/// Adds `diff` to a multiset entry, removing it at zero.
fn bump<K: Ord + Clone>(set: &mut VecMap<K, isize>, key: K, diff: isize) {
    let n = set.value_mut(&key);
    *n += diff;
    if *n == 0 {
        set.remove(&key);
    }
}

/// One SKU of a fridge: what lies behind the fold point as one value, and
/// the events since, each set a sorted vector of exactly its entries (a
/// handful each; a `BTreeMap` would allocate a node of hundreds of bytes
/// for the first).
#[derive(Default, Serialize, Deserialize)]
struct Shelf {
    /// On-hand from everything folded; `None` if nothing was.
    base: Option<i64>,
    counts: VecMap<Count, isize>,
    /// `event_time → (Σ quantity, records)`.
    movements: VecMap<i64, (i64, isize)>,
    /// Planogram versions since the fold point, and the last one before it.
    plan: VecMap<Perishable, isize>,
    /// The on-hand currently in the output.
    shown: Option<i64>,
}

impl Shelf {
    fn perishable_at(&self, at: i64) -> bool {
        self.plan.up_to(&(at, u64::MAX, true)).next_back().is_some_and(|((_, _, flag), _)| *flag)
    }

    /// On-hand from the events before `until`, or `None` if there are none.
    fn on_hand(&self, write_offs: &VecMap<i64, isize>, until: i64) -> Option<i64> {
        let counted = self.counts.below(&(until, 0, i64::MIN)).next_back().map(|(count, _)| *count);
        let written_off = write_offs.below(&until).rev().find(|(at, _)| self.perishable_at(**at));
        let latest = counted.max(written_off.map(|(at, _)| (*at, 0, 0)));
        let moved = |from: Option<i64>| -> (i64, bool) {
            let range = self.movements.below(&until).filter(|(at, _)| from.is_none_or(|f| **at > f));
            range.fold((0, false), |(sum, _), (_, (delta, _))| (sum + delta, true))
        };
        match latest {
            Some((at, _, qty)) => Some(qty + moved(Some(at)).0),
            None => {
                let (sum, any) = moved(None);
                (self.base.is_some() || any).then(|| self.base.unwrap_or(0) + sum)
            }
        }
    }

    /// Folds the events before `floor` into the base.
    fn fold(&mut self, write_offs: &VecMap<i64, isize>, floor: i64) {
        self.base = self.on_hand(write_offs, floor);
        self.counts = self.counts.split_off(&(floor, 0, i64::MIN));
        self.movements = self.movements.split_off(&floor);
        let mut kept = self.plan.split_off(&(floor, 0, false));
        if let Some((last, n)) = self.plan.pop_last() {
            *kept.value_mut(&last) = n;
        }
        self.plan = kept;
    }

    fn held(&self) -> usize {
        1 + self.counts.len() + self.movements.len() + self.plan.len()
    }
}

/// One fridge's stock within the horizon.
#[derive(Serialize, Deserialize)]
struct Fridge {
    horizon_us: i64,
    latest: i64,
    /// Stock events before this time are folded into the shelves' bases.
    floor: i64,
    shelves: BTreeMap<String, Shelf>,
    /// Write-off times since the fold point.
    write_offs: VecMap<i64, isize>,
    /// Whether the fridge ever had an excursion.
    warmed: bool,
    /// Before this time the fridge's excursions are final (from the cold chain).
    settled: VecMap<i64, isize>,
}

/// Stock events a fridge whose excursions do not settle may hold before
/// its stock folds at the horizon regardless.
pub const MAX_UNSETTLED_STOCK_EVENTS: usize = 20_000;

/// SKUs tracked per fridge, at most: a fridge holds dozens, and one that
/// invents SKU strings must not grow state (and alerts) without bound. The
/// stock of further SKUs is archived but not tracked.
pub const MAX_SKUS_PER_FRIDGE: usize = 1000;

impl Fridge {
    /// Where the shelves may fold up to: the horizon behind the latest stock
    /// event, but never past an excursion that could still change.
    ///
    /// A fridge whose excursions never settle (its telemetry stopped, or it
    /// stays warm) would hold every stock event; once it holds
    /// [`MAX_UNSETTLED_STOCK_EVENTS`] of them it folds at the horizon all
    /// the same, and a write-off behind that point is no longer applied.
    fn fold_point(&self) -> i64 {
        let horizon = self.latest.saturating_sub(self.horizon_us);
        if self.held() > MAX_UNSETTLED_STOCK_EVENTS {
            return horizon;
        }
        match self.settled.keys().next_back() {
            Some(&settled) => horizon.min(settled),
            None if self.warmed => i64::MIN,
            None => horizon,
        }
    }

    fn held(&self) -> usize {
        self.shelves.values().map(Shelf::held).sum::<usize>() + self.write_offs.len() + self.settled.len()
    }
}

impl FridgeState for Fridge {
    type Input = (i64, Stock);
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
        let mut touched: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
        let mut every_shelf = false;
        let newest_before = self.latest;
        for ((at, stock), diff) in inputs {
            let stock_event = matches!(stock, Stock::Moved(..) | Stock::Counted(..));
            let beyond = *at < self.floor || (stock_event && beyond_horizon(*at, newest_before, self.horizon_us));
            if beyond && !matches!(stock, Stock::Planned(..) | Stock::Settled) {
                continue;
            }
            if let Stock::Moved(sku, _) | Stock::Counted(sku, ..) = stock
                && !self.shelves.contains_key(sku)
                && self.shelves.len() >= MAX_SKUS_PER_FRIDGE
            {
                continue;
            }
            match stock {
                Stock::Moved(sku, delta) => {
                    let moved = self.shelves.entry(sku.clone()).or_default().movements.value_mut(at);
                    moved.0 += delta * *diff as i64;
                    moved.1 += diff;
                    if moved.1 == 0 {
                        self.shelves.get_mut(sku).map(|shelf| shelf.movements.remove(at));
                    }
                    touched.insert(sku);
                }
                Stock::Counted(sku, seq, qty) => {
                    bump(&mut self.shelves.entry(sku.clone()).or_default().counts, (*at, *seq, *qty), *diff);
                    touched.insert(sku);
                }
                Stock::WrittenOff => {
                    bump(&mut self.write_offs, *at, *diff);
                    self.warmed = true;
                    every_shelf = true;
                }
                Stock::Settled => bump(&mut self.settled, *at, *diff),
                Stock::Planned(sku, seq, flag) => {
                    bump(&mut self.shelves.entry(sku.clone()).or_default().plan, (*at, *seq, *flag), *diff);
                    every_shelf = true;
                }
            }
            if matches!(stock, Stock::Moved(..) | Stock::Counted(..)) {
                self.latest = self.latest.max(*at);
            }
        }
        let skus: Vec<String> = if every_shelf {
            self.shelves.keys().cloned().collect()
        } else {
            touched.into_iter().map(str::to_owned).collect()
        };
        for sku in skus {
            let Some(shelf) = self.shelves.get_mut(&sku) else { continue };
            let now = shelf.on_hand(&self.write_offs, i64::MAX);
            if now != shelf.shown {
                let key = (fridge.to_owned(), sku.clone());
                if let Some(old) = shelf.shown {
                    out.push(((key.clone(), old), -1));
                }
                if let Some(new) = now {
                    out.push(((key, new), 1));
                }
                shelf.shown = now;
            }
        }

        let floor = self.fold_point();
        if floor >= self.floor.saturating_add(self.horizon_us / 8) {
            for shelf in self.shelves.values_mut() {
                shelf.fold(&self.write_offs, floor);
            }
            self.write_offs = self.write_offs.split_off(&floor);
            self.floor = floor;
        }
    }

    fn held(&self) -> usize {
        Fridge::held(self)
    }
}

/// The on-hand stock of every `(fridge, sku)` that has seen a movement, a
/// count or a write-off, maintained incrementally from the fridges' stock
/// events, the planograms and the excursions; state more than `horizon_us`
/// behind a fridge's latest stock event, and before its `settled`
/// excursions, is folded into one value per SKU.
pub fn inventory<'s>(
    events: VecCollection<'s, Time, Event>,
    excursions: VecCollection<'s, Time, (ExcursionKey, Excursion)>,
    settled: VecCollection<'s, Time, (String, i64)>,
    horizon_us: i64,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, (InventoryKey, i64)> {
    inventory_of(events.flat_map(|event| stock(&event)), excursions, settled, horizon_us, hooks)
}

/// [`inventory`] of what the fridges' shelves hear of their events ([`stock`]).
pub(crate) fn inventory_of<'s>(
    heard: Keyed<'s, String, Heard>,
    excursions: VecCollection<'s, Time, (ExcursionKey, Excursion)>,
    settled: VecCollection<'s, Time, (String, i64)>,
    horizon_us: i64,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, (InventoryKey, i64)> {
    let write_offs = excursions.map(|((fridge, start), _)| (fridge, (start + EXCURSION_AFTER_US, Stock::WrittenOff)));
    let settled = settled.map(|(fridge, at)| (fridge, (at, Stock::Settled)));
    let stock = heard.concat(write_offs).concat(settled);
    let new_state = move || Fridge {
        horizon_us,
        latest: i64::MIN,
        floor: i64::MIN,
        shelves: BTreeMap::new(),
        write_offs: VecMap::default(),
        warmed: false,
        settled: VecMap::default(),
    };
    by_fridge_in_time_order(stock, "inventory.stock", new_state, hooks)
}

/// Every cold-chain write-off, `((fridge, sku), event_time)`, computed
/// from the full list of events.
pub fn write_offs_reference(events: &[Event]) -> Vec<(InventoryKey, i64)> {
    let versions: Vec<(InventoryKey, Perishable)> = events.iter().filter_map(perishable).collect();
    let mut all = Vec::new();
    for (fridge, start) in crate::views::cold_chain::excursions_reference(events).into_keys() {
        let at = start + EXCURSION_AFTER_US;
        let mut in_effect: BTreeMap<&str, Perishable> = BTreeMap::new();
        for ((owner, sku), version) in &versions {
            if *owner == fridge && version.0 <= at {
                let entry = in_effect.entry(sku).or_insert(*version);
                *entry = (*entry).max(*version);
            }
        }
        for (sku, (_, _, flag)) in in_effect {
            if flag {
                all.push(((fridge.clone(), sku.to_owned()), at));
            }
        }
    }
    all
}

/// The batch reference: inventory computed from the full list of events.
pub fn inventory_reference(events: &[Event]) -> BTreeMap<InventoryKey, i64> {
    let mut latest: BTreeMap<InventoryKey, Count> = BTreeMap::new();
    let write_offs = write_offs_reference(events).into_iter().map(|(key, at)| (key, (at, 0, 0)));
    for (key, c) in events.iter().filter_map(count).chain(write_offs) {
        let entry = latest.entry(key).or_insert(c);
        if c > *entry {
            *entry = c;
        }
    }
    let mut on_hand: BTreeMap<InventoryKey, i64> =
        latest.iter().map(|(key, &(_, _, qty))| (key.clone(), qty)).collect();
    for (key, (moved_at, delta)) in events.iter().filter_map(movement) {
        let counted_at = latest.get(&key).map(|&(t, _, _)| t);
        if counted_at.is_none_or(|t| moved_at > t) {
            *on_hand.entry(key).or_insert(0) += delta;
        } else {
            on_hand.entry(key).or_insert(0);
        }
    }
    on_hand
}

view_with_exact_reference!(
    /// The `inventory` view.
    Inventory,
    inventory_reference
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::HeldRecords;
    use crate::views::ViewConfig;
    use crate::views::tests::{keyed, run_all};

    fn dataflow_state(workers: usize, arrivals: Vec<(Time, Vec<Event>)>) -> BTreeMap<InventoryKey, i64> {
        keyed(&run_all(workers, arrivals, ViewConfig::default(), |views| views.inventory))
    }

    fn event(seq: u64, minute: i64, payload: Payload) -> Event {
        Event { source_id: "FR-1".into(), incarnation: 0, seq, event_time: minute * crate::event::MINUTE_US, payload }
    }

    #[test]
    fn a_stock_count_that_arrives_after_later_movements_supersedes_the_earlier_ones() {
        let taken = event(1, 10, Payload::ItemTaken { session_id: "s".into(), sku: "cola".into(), qty: 2 });
        let counted = event(2, 20, Payload::StockCounted { sku: "cola".into(), qty: 7 });
        let returned = event(3, 30, Payload::ItemReturned { session_id: "s".into(), sku: "cola".into(), qty: 1 });
        let at_count = event(4, 20, Payload::RestockDelivered { order_id: "o".into(), sku: "cola".into(), qty: 5 });
        let all = vec![taken.clone(), counted.clone(), returned.clone(), at_count.clone()];
        // 7 counted at minute 20; the take (10) and the restock at the count's own time are in it; +1 returned.
        let expected = BTreeMap::from([(("FR-1".to_owned(), "cola".to_owned()), 8)]);
        assert_eq!(inventory_reference(&all), expected);
        // The count arrives last, after the movements it supersedes.
        let arrivals = vec![(1, vec![taken, returned, at_count]), (2, vec![counted])];
        assert_eq!(dataflow_state(1, arrivals), expected);
    }

    /// Ten days of hourly takes, a delivery and an audit every day, through a
    /// 2-hour horizon: each SKU keeps one folded value and the last hours of
    /// events, the answer stays exact, and a take days late is not applied.
    #[test]
    fn stock_behind_the_horizon_folds_into_one_value_per_sku() {
        let mut all = Vec::new();
        let mut seq = 0;
        let mut arrivals: Vec<(Time, Vec<Event>)> = Vec::new();
        for hour in 0..240i64 {
            let mut batch = Vec::new();
            for sku in ["cola", "salad"] {
                seq += 1;
                let take = Payload::ItemTaken { session_id: format!("s{hour}"), sku: sku.into(), qty: 1 };
                batch.push(event(seq, hour * 60 + 5, take));
                if hour % 24 == 6 {
                    seq += 1;
                    let delivered = Payload::RestockDelivered { order_id: "o".into(), sku: sku.into(), qty: 30 };
                    batch.push(event(seq, hour * 60 + 10, delivered));
                }
                if hour % 24 == 20 && sku == "cola" {
                    seq += 1;
                    batch.push(event(seq, hour * 60 + 15, Payload::StockCounted { sku: sku.into(), qty: 12 }));
                }
            }
            all.extend(batch.iter().cloned());
            arrivals.push((hour as Time + 1, batch));
        }
        seq += 1;
        let late = event(seq, 30, Payload::ItemTaken { session_id: "late".into(), sku: "salad".into(), qty: 4 });
        arrivals.push((1_000, vec![late]));

        let held = HeldRecords::default();
        let counter = held.clone();
        let changes = crate::harness::run_view(1, arrivals, move |events: VecCollection<'_, Time, Event>| {
            let nothing = events.clone().filter(|_| false).map(|_| ((String::new(), 0), (0, crate::Temperature(0.0))));
            let settled = events.clone().filter(|_| false).map(|_| (String::new(), 0));
            inventory(
                events,
                nothing,
                settled,
                2 * crate::event::HOUR_US,
                &OperatorHooks { held: held.clone(), ..OperatorHooks::default() },
            )
        });
        let on_hand = keyed(&changes);
        assert_eq!(on_hand, inventory_reference(&all), "the late take is beyond the horizon");
        // cola: counted 12 at hour 236 (day 9, 20:15), then 3 takes.
        assert_eq!(on_hand[&("FR-1".to_owned(), "cola".to_owned())], 9);
        // Per SKU: the folded value and at most about three hours of events.
        assert!(counter.get() <= 2 * (1 + 4) + 2, "{} records held", counter.get());
    }

    /// A fridge that invents a new SKU string with every take keeps at most
    /// [`MAX_SKUS_PER_FRIDGE`] shelves (and so as many alerts).
    #[test]
    fn a_fridge_inventing_skus_is_tracked_for_at_most_the_cap() {
        let takes: Vec<Event> = (0..3 * MAX_SKUS_PER_FRIDGE as u64)
            .map(|n| event(n + 1, 1, Payload::ItemTaken { session_id: "s".into(), sku: format!("sku-{n}"), qty: 1 }))
            .collect();
        let shown = dataflow_state(1, vec![(1, takes)]);
        assert_eq!(shown.len(), MAX_SKUS_PER_FRIDGE);
    }

    /// A fridge whose telemetry stopped at the start never settles, yet its
    /// stock still folds once it holds the cap of unsettled stock events:
    /// takes every minute for weeks hold the cap, not the weeks.
    #[test]
    fn stock_still_folds_when_the_fridge_sends_no_telemetry() {
        let minutes = MAX_UNSETTLED_STOCK_EVENTS as i64 + 6_000;
        let takes: Vec<Event> = (0..minutes)
            .map(|m| event(m as u64 + 1, m, Payload::ItemTaken { session_id: "s".into(), sku: "cola".into(), qty: 1 }))
            .collect();
        let arrivals: Vec<(Time, Vec<Event>)> =
            takes.chunks(2_000).enumerate().map(|(i, chunk)| (i as Time + 1, chunk.to_vec())).collect();
        let held = HeldRecords::default();
        let counter = held.clone();
        let changes = crate::harness::run_view(1, arrivals, move |events: VecCollection<'_, Time, Event>| {
            let nothing = events.clone().filter(|_| false).map(|_| ((String::new(), 0), (0, crate::Temperature(0.0))));
            // The cold chain's one record for a fridge whose readings stopped: nothing settled.
            let settled = events.clone().filter(|e| e.seq == 1).map(|_| ("FR-1".to_owned(), i64::MIN));
            inventory(
                events,
                nothing,
                settled,
                2 * crate::event::HOUR_US,
                &OperatorHooks { held: held.clone(), ..OperatorHooks::default() },
            )
        });
        assert_eq!(keyed(&changes), inventory_reference(&takes));
        assert!(counter.get() <= (MAX_UNSETTLED_STOCK_EVENTS + 2_000 + 2) as i64, "{} records held", counter.get());
    }

    #[test]
    fn movements_that_cancel_out_leave_zero_on_hand() {
        let all = vec![
            event(1, 1, Payload::ItemTaken { session_id: "s".into(), sku: "cola".into(), qty: 2 }),
            event(2, 2, Payload::ItemReturned { session_id: "s".into(), sku: "cola".into(), qty: 2 }),
        ];
        let expected = BTreeMap::from([(("FR-1".to_owned(), "cola".to_owned()), 0)]);
        assert_eq!(inventory_reference(&all), expected);
        assert_eq!(dataflow_state(2, vec![(5, all)]), expected);
    }
}
