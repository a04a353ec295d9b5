//! The COST baseline: inventory and restock lines computed by one thread of
//! plain Rust over the events, with hash maps, from scratch. The rules are
//! DOMAIN.md's without cold-chain write-offs (the comparison workload has no
//! excursions, so they never apply).

use std::collections::{BTreeMap, HashMap};

use coldstream_pipelines::{Event, Payload};

/// `(fridge_id, sku) → value`.
pub type ByShelf = BTreeMap<(String, String), i64>;

const WEEK_US: i64 = 7 * 24 * 3_600_000_000;

/// Inventory and restock lines (`par − on_hand` units) after `events`.
pub fn inventory_and_restock(events: &[Event], lead_time_days: i64) -> (ByShelf, ByShelf) {
    // Latest count and latest planogram per shelf, latest event per fridge.
    let mut counts: HashMap<(&str, &str), (i64, u64, i64)> = HashMap::new();
    let mut plans: HashMap<(&str, &str), (i64, u64, i64, i64)> = HashMap::new();
    let mut latest: HashMap<&str, i64> = HashMap::new();
    for event in events {
        match &event.payload {
            Payload::StockCounted { sku, qty } => {
                let count = (event.event_time, event.seq, *qty);
                let entry = counts.entry((&event.source_id, sku)).or_insert(count);
                if count > *entry {
                    *entry = count;
                }
            }
            Payload::PlanogramSet { fridge_id, sku, par, min, .. } => {
                let plan = (event.event_time, event.seq, *par, *min);
                let entry = plans.entry((fridge_id, sku)).or_insert(plan);
                if plan > *entry {
                    *entry = plan;
                }
            }
            _ => {}
        }
        if !event.kind().is_back_office() {
            let at = latest.entry(&event.source_id).or_insert(event.event_time);
            *at = (*at).max(event.event_time);
        }
    }
    // Movements after the count, and sales inside each fridge's window.
    let mut on_hand: HashMap<(&str, &str), i64> = counts.iter().map(|(k, c)| (*k, c.2)).collect();
    let mut sold: HashMap<(&str, &str), i64> = HashMap::new();
    for event in events {
        let (sku, delta) = match &event.payload {
            Payload::ItemTaken { sku, qty, .. } => (sku, -qty),
            Payload::ItemReturned { sku, qty, .. } | Payload::RestockDelivered { sku, qty, .. } => (sku, *qty),
            _ => continue,
        };
        let key = (event.source_id.as_str(), sku.as_str());
        let counted_at = counts.get(&key).map(|c| c.0);
        let shelf = on_hand.entry(key).or_insert(0);
        if counted_at.is_none_or(|t| event.event_time > t) {
            *shelf += delta;
        }
        if !matches!(event.payload, Payload::RestockDelivered { .. })
            && latest.get(key.0).is_some_and(|l| event.event_time > l - WEEK_US)
        {
            *sold.entry(key).or_insert(0) -= delta;
        }
    }
    let mut lines = ByShelf::new();
    for (key, (_, _, par, min)) in &plans {
        let stock = on_hand.get(key).copied().unwrap_or(0);
        let units = sold.get(key).copied().unwrap_or(0);
        let demand = -(-(units * lead_time_days)).div_euclid(7);
        if *par > 0 && stock <= (*min).max(demand) && par - stock > 0 {
            lines.insert((key.0.to_owned(), key.1.to_owned()), par - stock);
        }
    }
    let inventory = on_hand.into_iter().map(|((f, s), v)| ((f.to_owned(), s.to_owned()), v)).collect();
    (inventory, lines)
}
