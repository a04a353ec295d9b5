//! `restock_orders(fridge_id) → lines [(sku, qty)]`.
//!
//! Only SKUs the fridge carries count (planogram `par` > 0). For each,
//! `reorder_point = max(min, ceil(sales_7d / 7 × lead_time_days))`; a line
//! exists when `on_hand ≤ reorder_point` and `par − on_hand > 0`, for
//! `par − on_hand` units. A SKU with no inventory row has 0 on hand; one
//! with no sales row has sold 0.
//!
//! A fridge has an open order while it has at least one line. The order's
//! id is derived from the fridge and the logical time at which it opened,
//! `RO-<fridge_id>-<opened_at_ms>`, so a replay of the log gives every
//! order the same id; line changes update the same order, and the order
//! closes when its last line disappears. The next line opens a new order.

use std::collections::BTreeMap;

use differential_dataflow::collection::VecCollection;
use serde::{Deserialize, Serialize};

use crate::operators::{FridgeState, HeldRecords, by_fridge_in_time_order};
use crate::views::inventory::{InventoryKey, inventory_reference};
use crate::views::planogram::{Slot, SlotKey, planogram_reference};
use crate::views::sales_7d::sales_7d_reference;
use crate::{Event, Time};

/// One line of an open restock order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RestockLine {
    /// `RO-<fridge_id>-<opened_at>`.
    pub order_id: String,
    /// The logical time (ms) at which the order opened.
    pub opened_at: Time,
    /// Units to deliver: `par − on_hand`.
    pub qty: i64,
}

/// The id of the order `fridge` opened at logical time `opened_at`.
pub fn order_id(fridge: &str, opened_at: Time) -> String {
    format!("RO-{fridge}-{opened_at}")
}

/// The line for one carried SKU, if it needs one.
fn line(slot: Slot, on_hand: i64, sold_7d: i64, lead_time_days: i64) -> Option<i64> {
    // ceil(sold / 7 × lead), exact in integers for any sign.
    let demand = -(-(sold_7d * lead_time_days)).div_euclid(7);
    let reorder_point = slot.min.max(demand);
    let qty = slot.par - on_hand;
    (slot.par > 0 && on_hand <= reorder_point && qty > 0).then_some(qty)
}

/// The lines every fridge needs now: `((fridge, sku), qty)`.
pub fn restock_lines<'s>(
    planogram: VecCollection<'s, Time, (SlotKey, Slot)>,
    inventory: VecCollection<'s, Time, (InventoryKey, i64)>,
    sales_7d: VecCollection<'s, Time, (InventoryKey, i64)>,
    lead_time_days: i64,
) -> VecCollection<'s, Time, (InventoryKey, i64)> {
    let carried = planogram.filter(|(_, slot)| slot.par > 0);
    let stocked = carried.clone().join_map(inventory.clone(), |key, slot, on_hand| (key.clone(), (*slot, *on_hand)));
    let never_stocked = carried.antijoin(inventory.map(|(key, _)| key)).map(|(key, slot)| (key, (slot, 0)));
    let slots = stocked.concat(never_stocked);
    let selling =
        slots.clone().join_map(sales_7d.clone(), |key, &(slot, on_hand), &sold| (key.clone(), (slot, on_hand, sold)));
    let not_selling =
        slots.antijoin(sales_7d.map(|(key, _)| key)).map(|(key, (slot, on_hand))| (key, (slot, on_hand, 0)));
    selling
        .concat(not_selling)
        .flat_map(move |(key, (slot, on_hand, sold))| line(slot, on_hand, sold, lead_time_days).map(|qty| (key, qty)))
}

/// One fridge's order: how many lines it has and when it opened.
#[derive(Default)]
struct Order {
    lines: isize,
    opened_at: Option<Time>,
}

impl FridgeState for Order {
    type Input = (String, i64);
    type Output = (String, Time);
    type Shared = ();

    fn apply(
        &mut self,
        fridge: &str,
        time: Time,
        inputs: &[(Self::Input, isize)],
        _shared: &(),
        out: &mut Vec<(Self::Output, isize)>,
    ) {
        self.lines += inputs.iter().map(|(_, diff)| diff).sum::<isize>();
        match (self.opened_at, self.lines > 0) {
            (None, true) => {
                self.opened_at = Some(time);
                out.push(((fridge.to_owned(), time), 1));
            }
            (Some(opened_at), false) => {
                self.opened_at = None;
                out.push(((fridge.to_owned(), opened_at), -1));
            }
            _ => {}
        }
    }

    fn held(&self) -> usize {
        usize::from(self.opened_at.is_some())
    }
}

/// Every line of every open order, keyed by `(fridge, sku)`.
pub fn restock_orders<'s>(
    lines: VecCollection<'s, Time, (InventoryKey, i64)>,
    held: HeldRecords,
) -> VecCollection<'s, Time, (InventoryKey, RestockLine)> {
    let by_fridge = lines.map(|((fridge, sku), qty)| (fridge, (sku, qty)));
    let open = by_fridge_in_time_order(by_fridge.clone(), "RestockOrders", Order::default, held);
    by_fridge.join_map(open, |fridge, (sku, qty), &opened_at| {
        ((fridge.clone(), sku.clone()), RestockLine { order_id: order_id(fridge, opened_at), opened_at, qty: *qty })
    })
}

/// The batch reference of [`restock_lines`]: what every fridge needs,
/// given every event.
pub fn restock_lines_reference(events: &[Event], lead_time_days: i64) -> BTreeMap<InventoryKey, i64> {
    let inventory = inventory_reference(events);
    let sales = sales_7d_reference(events);
    planogram_reference(events)
        .into_iter()
        .filter_map(|(key, slot)| {
            let on_hand = inventory.get(&key).copied().unwrap_or(0);
            let sold = sales.get(&key).copied().unwrap_or(0);
            line(slot, on_hand, sold, lead_time_days).map(|qty| (key, qty))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Payload;
    use crate::event::MINUTE_US;
    use crate::views::ViewConfig;
    use crate::views::tests::run_all;

    fn at(seq: u64, minute: i64, payload: Payload) -> Event {
        let source = if matches!(payload, Payload::PlanogramSet { .. }) { "bo" } else { "FR-1" };
        Event { source_id: source.into(), seq, event_time: minute * MINUTE_US, payload }
    }

    fn take(seq: u64, qty: i64) -> Event {
        at(seq, seq as i64, Payload::ItemTaken { session_id: format!("s{seq}"), sku: "cola".into(), qty })
    }

    fn line(order_id: &str, opened_at: Time, qty: i64) -> (InventoryKey, RestockLine) {
        (("FR-1".into(), "cola".into()), RestockLine { order_id: order_id.into(), opened_at, qty })
    }

    #[test]
    fn an_order_opens_grows_and_is_closed_by_its_restock() {
        let plan = at(
            1,
            0,
            Payload::PlanogramSet { fridge_id: "FR-1".into(), sku: "cola".into(), par: 10, min: 3, perishable: false },
        );
        let count = at(1, 0, Payload::StockCounted { sku: "cola".into(), qty: 20 });
        let arrivals = vec![
            // 20 on hand, above par: nothing to order.
            (1, vec![plan, count]),
            // 16 sold this week: ceil(16 / 7 × 2) = 5 beats min 3, and 4 on hand is at or below it.
            (2, vec![take(2, 8), take(3, 8)]),
            // One more sold: the same order now wants 7.
            (3, vec![take(4, 1)]),
            // The restocker brings 7: 10 on hand, above the reorder point, so the order closes.
            (4, vec![at(5, 5, Payload::RestockDelivered { order_id: "RO-FR-1-2".into(), sku: "cola".into(), qty: 7 })]),
            // 23 sold: reorder point ceil(46 / 7) = 7, 4 on hand: a new order.
            (5, vec![take(6, 6)]),
        ];
        let changes = run_all(1, arrivals, ViewConfig::default(), |views| views.restock_orders);
        assert_eq!(
            changes,
            vec![
                (line("RO-FR-1-2", 2, 6), 2, 1),
                (line("RO-FR-1-2", 2, 6), 3, -1),
                (line("RO-FR-1-2", 2, 7), 3, 1),
                (line("RO-FR-1-2", 2, 7), 4, -1),
                (line("RO-FR-1-5", 5, 6), 5, 1),
            ]
        );
    }

    #[test]
    fn the_reorder_point_is_inclusive_and_par_zero_means_not_carried() {
        let slot = Slot { par: 10, min: 3, perishable: false };
        assert_eq!(super::line(slot, 3, 0, 2), Some(7));
        assert_eq!(super::line(slot, 4, 0, 2), None);
        // ceil(15 / 7 × 2) = ceil(4.29) = 5.
        assert_eq!(super::line(slot, 5, 15, 2), Some(5));
        assert_eq!(super::line(slot, 6, 15, 2), None);
        // Returns outnumbering takes do not lower the point below min.
        assert_eq!(super::line(slot, 3, -9, 2), Some(7));
        assert_eq!(super::line(Slot { par: 0, ..slot }, -2, 50, 2), None);
    }
}
