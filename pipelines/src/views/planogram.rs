//! `planogram(fridge_id, sku) → par, min, perishable`: what each fridge
//! carries, from the latest PlanogramSet of each pair (by event time, then
//! seq). Restock orders and cold-chain write-offs read it; `par` 0 means the
//! fridge no longer carries the SKU.

use std::collections::BTreeMap;

use differential_dataflow::collection::VecCollection;
use serde::{Deserialize, Serialize};

use crate::{Event, Payload, Time};

/// `(fridge_id, sku)`.
pub type SlotKey = (String, String);

/// One planogram slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Slot {
    /// Units the fridge holds when full; 0: no longer carried.
    pub par: i64,
    /// Never fall below this before reordering.
    pub min: i64,
    /// Written off by a cold-chain excursion.
    pub perishable: bool,
}

/// A PlanogramSet: `(event_time, seq, slot)`, ordered so the latest is the largest.
type Version = (i64, u64, Slot);

fn version(event: &Event) -> Option<(SlotKey, Version)> {
    match &event.payload {
        Payload::PlanogramSet { fridge_id, sku, par, min, perishable } => Some((
            (fridge_id.clone(), sku.clone()),
            (event.event_time, event.seq, Slot { par: *par, min: *min, perishable: *perishable }),
        )),
        _ => None,
    }
}

/// The current slot of every `(fridge, sku)` ever planned.
pub fn planogram<'s>(events: VecCollection<'s, Time, Event>) -> VecCollection<'s, Time, (SlotKey, Slot)> {
    events.flat_map(|event| version(&event)).reduce_named("LatestPlanogram", |_key, input, output| {
        if let Some(((_, _, slot), _)) = input.last() {
            output.push((*slot, 1));
        }
    })
}

/// The batch reference of [`planogram`].
pub fn planogram_reference(events: &[Event]) -> BTreeMap<SlotKey, Slot> {
    let mut latest: BTreeMap<SlotKey, Version> = BTreeMap::new();
    for (key, v) in events.iter().filter_map(version) {
        let entry = latest.entry(key).or_insert(v);
        *entry = (*entry).max(v);
    }
    latest.into_iter().map(|(key, (_, _, slot))| (key, slot)).collect()
}
