//! `inventory(fridge_id, sku) → on_hand`.
//!
//! The latest StockCounted for a key (by event time, then seq) sets the
//! count; movements with a later event time are added to it (restock `+`,
//! take `−`, return `+`). Without a count the key starts at 0. Movements at
//! or before the count are already in it, so a count that arrives late
//! correctly supersedes earlier movements, whatever the arrival order.
//!
//! A cold-chain write-off is a count of 0 at its event time. It sorts
//! before any real StockCounted at the same event time (as if its seq were
//! 0), so an audit taken at that very instant wins over the write-off.

use std::collections::BTreeMap;

use differential_dataflow::collection::VecCollection;

use crate::{Event, Payload, Time};

/// `(fridge_id, sku)`.
pub type InventoryKey = (String, String);

/// A stock movement: `(event_time, signed quantity)`.
type Movement = (i64, i64);
/// A stock count: `(event_time, seq, qty)`, ordered so the latest is the largest.
type Count = (i64, u64, i64);

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

/// The on-hand stock of every `(fridge, sku)` that has seen a movement, a
/// count or a write-off, maintained incrementally. `write_offs` holds
/// `(key, event_time)` of each cold-chain write-off.
pub fn inventory<'s>(
    events: VecCollection<'s, Time, Event>,
    write_offs: VecCollection<'s, Time, (InventoryKey, i64)>,
) -> VecCollection<'s, Time, (InventoryKey, i64)> {
    let counts = events.clone().flat_map(|event| count(&event)).concat(write_offs.map(|(key, at)| (key, (at, 0, 0))));
    let movements = events.flat_map(|event| movement(&event));

    // The latest count of each key: values arrive sorted, so the last wins.
    let latest = counts.reduce_named("LatestCount", |_key, input, output| {
        if let Some((count, _)) = input.last() {
            output.push((**count, 1));
        }
    });

    let after_count = movements
        .clone()
        .join_map(latest.clone(), |key, &(moved_at, delta), &(counted_at, _, _)| {
            (key.clone(), moved_at, counted_at, delta)
        })
        .filter(|(_, moved_at, counted_at, _)| moved_at > counted_at)
        .map(|(key, _, _, delta)| (key, delta));
    let uncounted = movements.antijoin(latest.clone().map(|(key, _)| key)).map(|(key, (_, delta))| (key, delta));
    let base = latest.map(|(key, (_, _, qty))| (key, qty));

    // Sum through the difference type. The first component counts the
    // contributing records, so a key whose movements cancel out still shows
    // an on-hand of 0 instead of vanishing.
    after_count
        .concat(uncounted)
        .concat(base)
        .explode(|(key, delta)| Some((key, (1isize, delta as isize))))
        .count()
        .map(|(key, (_, total))| (key, total as i64))
}

/// The batch reference: inventory computed from the full list of events.
pub fn inventory_reference(events: &[Event]) -> BTreeMap<InventoryKey, i64> {
    let mut latest: BTreeMap<InventoryKey, Count> = BTreeMap::new();
    let write_offs =
        crate::views::cold_chain::write_offs_reference(events).into_iter().map(|(key, at)| (key, (at, 0, 0)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::ViewConfig;
    use crate::views::tests::{keyed, run_all};

    fn dataflow_state(workers: usize, arrivals: Vec<(Time, Vec<Event>)>) -> BTreeMap<InventoryKey, i64> {
        keyed(&run_all(workers, arrivals, ViewConfig::default(), |views| views.inventory))
    }

    fn event(seq: u64, minute: i64, payload: Payload) -> Event {
        Event { source_id: "FR-1".into(), seq, event_time: minute * crate::event::MINUTE_US, payload }
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
