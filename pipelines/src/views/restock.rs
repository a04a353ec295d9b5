//! `restock_orders(fridge_id) → lines [(sku, qty)]`.
//!
//! Only SKUs the fridge carries count (planogram `par` > 0). For each,
//! `reorder_point = max(min, ceil(sales_7d / 7 × lead_time_days))`, or what
//! a [`ReorderPolicy`] (a UDF) computes from the same inputs; a line
//! exists when `on_hand ≤ reorder_point` and `par − on_hand > 0`, for
//! `par − on_hand` units. A SKU with no inventory row has 0 on hand; one
//! with no sales row has sold 0.
//!
//! A fridge has an open order while it has at least one line. The order's
//! id is derived from the fridge and the logical time at which it opened,
//! `RO-<fridge_id>-<opened_at_ms>`, so a replay of the log gives every
//! order the same id; line changes update the same order, and the order
//! closes when its last line disappears. The next line opens a new order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use differential_dataflow::collection::VecCollection;
use serde::{Deserialize, Serialize};

use crate::operators::{FridgeState, OperatorHooks, by_fridge_in_time_order};
use crate::views::Keyed;
use crate::views::inventory::{InventoryKey, inventory_reference};
use crate::views::planogram::{Slot, planogram_reference};
use crate::views::sales_7d::sales_7d_reference;
use crate::{Event, Payload, Time};

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

/// What a reorder policy is given for one carried SKU of a fridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReorderInputs {
    /// The planogram's par.
    pub par: i64,
    /// The planogram's min.
    pub min: i64,
    /// Units on the shelf.
    pub on_hand: i64,
    /// Units sold in the last 7 days.
    pub sales_7d: i64,
    /// `views.lead_time_days`.
    pub lead_time_days: i64,
}

/// A reorder point that replaces the built-in one (a UDF): it must be a
/// function of its inputs alone, so that a replay gives the same orders.
#[derive(Clone)]
pub struct ReorderPolicy {
    /// Names it in logs and in the checkpoints' fingerprint (a UDF's name
    /// and content hash): a changed policy asks for a rebuild.
    pub id: String,
    /// The reorder point, or why there is none (the built-in one is used
    /// then, and the reason logged).
    pub reorder_point: Arc<dyn Fn(ReorderInputs) -> Result<i64, String> + Send + Sync>,
}

impl std::fmt::Debug for ReorderPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReorderPolicy({})", self.id)
    }
}

/// The built-in reorder point: `max(min, ceil(sales_7d / 7 × lead_time_days))`.
pub fn builtin_reorder_point(inputs: ReorderInputs) -> i64 {
    // ceil(sold / 7 × lead), exact in integers for any sign.
    let demand = -(-(inputs.sales_7d * inputs.lead_time_days)).div_euclid(7);
    inputs.min.max(demand)
}

/// The line for one carried SKU, if it needs one.
fn line(slot: Slot, on_hand: i64, sold_7d: i64, lead_time_days: i64, policy: Option<&ReorderPolicy>) -> Option<i64> {
    let qty = slot.par - on_hand;
    if slot.par <= 0 || qty <= 0 {
        return None;
    }
    let inputs = ReorderInputs { par: slot.par, min: slot.min, on_hand, sales_7d: sold_7d, lead_time_days };
    let reorder_point = match policy {
        None => builtin_reorder_point(inputs),
        Some(policy) => (policy.reorder_point)(inputs).unwrap_or_else(|error| {
            tracing::warn!(policy = %policy.id, %error, ?inputs, "the reorder policy failed; using the built-in reorder point");
            builtin_reorder_point(inputs)
        }),
    };
    (on_hand <= reorder_point).then_some(qty)
}

/// What restock reads of one SKU of a fridge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) enum Reading {
    /// A PlanogramSet: `(event_time, seq, slot)`.
    Plan(String, (i64, u64, Slot)),
    /// A row of `inventory`.
    OnHand(String, i64),
    /// A row of `sales_7d`.
    Sold(String, i64),
}

/// One SKU of a fridge, as restock sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Shelf {
    /// The latest planogram version.
    plan: Option<(i64, u64, Slot)>,
    /// The `inventory` row's value (0 without one).
    on_hand: i64,
    /// The `sales_7d` row's value (0 without one).
    sold: i64,
    /// The line in the output, if any.
    line: Option<i64>,
}

/// One fridge's shelves and its open order.
#[derive(Debug, Serialize, Deserialize)]
struct Restock {
    lead_time_days: i64,
    /// The reorder policy, if not the built-in one: a setting, not state.
    #[serde(skip)]
    policy: Option<ReorderPolicy>,
    shelves: BTreeMap<String, Shelf>,
    /// Lines in the output.
    lines: usize,
    /// The logical time the open order opened at, if one is open.
    opened_at: Option<Time>,
}

impl Restock {
    fn give(fridge: &str, sku: &str, opened_at: Time, qty: i64, diff: isize, out: &mut Vec<RestockChange>) {
        let line = RestockLine { order_id: order_id(fridge, opened_at), opened_at, qty };
        out.push((((fridge.to_owned(), sku.to_owned()), line), diff));
    }
}

type RestockChange = ((InventoryKey, RestockLine), isize);

impl FridgeState for Restock {
    type Input = Reading;
    type Output = (InventoryKey, RestockLine);
    type Shared = ();

    fn apply(
        &mut self,
        fridge: &str,
        time: Time,
        inputs: &[(Reading, isize)],
        _shared: &(),
        out: &mut Vec<RestockChange>,
    ) {
        let mut touched = BTreeSet::new();
        for (reading, diff) in inputs {
            let (Reading::Plan(sku, _) | Reading::OnHand(sku, _) | Reading::Sold(sku, _)) = reading;
            let shelf = self.shelves.entry(sku.clone()).or_default();
            match reading {
                // Events are only ever added: the latest version stays the latest.
                Reading::Plan(_, version) if *diff > 0 => shelf.plan = shelf.plan.max(Some(*version)),
                Reading::Plan(..) => {}
                Reading::OnHand(_, units) => shelf.on_hand += units * *diff as i64,
                Reading::Sold(_, units) => shelf.sold += units * *diff as i64,
            }
            touched.insert(sku);
        }
        let mut changed = Vec::new();
        for sku in touched {
            let Some(shelf) = self.shelves.get_mut(sku) else { continue };
            let policy = self.policy.as_ref();
            let now =
                shelf.plan.and_then(|(_, _, slot)| line(slot, shelf.on_hand, shelf.sold, self.lead_time_days, policy));
            if now != shelf.line {
                changed.push((sku, shelf.line, now));
                self.lines = self.lines + usize::from(now.is_some()) - usize::from(shelf.line.is_some());
                shelf.line = now;
            }
            if shelf.plan.is_none() && shelf.on_hand == 0 && shelf.sold == 0 {
                self.shelves.remove(sku);
            }
        }
        match (self.opened_at, self.lines > 0) {
            (Some(opened_at), open) => {
                for (sku, before, after) in changed {
                    if let Some(qty) = before {
                        Restock::give(fridge, sku, opened_at, qty, -1, out);
                    }
                    if let Some(qty) = after {
                        Restock::give(fridge, sku, opened_at, qty, 1, out);
                    }
                }
                if !open {
                    self.opened_at = None;
                }
            }
            (None, true) => {
                self.opened_at = Some(time);
                for (sku, shelf) in &self.shelves {
                    if let Some(qty) = shelf.line {
                        Restock::give(fridge, sku, time, qty, 1, out);
                    }
                }
            }
            (None, false) => {}
        }
    }

    fn held(&self) -> usize {
        self.shelves.len() + usize::from(self.opened_at.is_some())
    }

    fn restored(&mut self, fresh: &Self) {
        self.policy = fresh.policy.clone();
    }
}

/// Every line of every open order, keyed by `(fridge, sku)`, from the
/// back-office events (for the planogram) and the `inventory` and
/// `sales_7d` views.
pub fn restock_orders<'s>(
    back_office: VecCollection<'s, Time, Event>,
    inventory: VecCollection<'s, Time, (InventoryKey, i64)>,
    sales_7d: VecCollection<'s, Time, (InventoryKey, i64)>,
    lead_time_days: i64,
    policy: Option<ReorderPolicy>,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, (InventoryKey, RestockLine)> {
    restock_orders_of(back_office.flat_map(|event| plan(&event)), inventory, sales_7d, lead_time_days, policy, hooks)
}

/// What restock reads of a back-office event: a PlanogramSet's slot.
pub(crate) fn plan(event: &Event) -> Option<(String, Reading)> {
    match &event.payload {
        Payload::PlanogramSet { fridge_id, sku, par, min, perishable } => {
            let slot = Slot { par: *par, min: *min, perishable: *perishable };
            Some((fridge_id.clone(), Reading::Plan(sku.clone(), (event.event_time, event.seq, slot))))
        }
        _ => None,
    }
}

/// [`restock_orders`] of the planograms' slots ([`plan`]).
pub(crate) fn restock_orders_of<'s>(
    plans: Keyed<'s, String, Reading>,
    inventory: VecCollection<'s, Time, (InventoryKey, i64)>,
    sales_7d: VecCollection<'s, Time, (InventoryKey, i64)>,
    lead_time_days: i64,
    policy: Option<ReorderPolicy>,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, (InventoryKey, RestockLine)> {
    let on_hand = inventory.map(|((fridge, sku), units)| (fridge, Reading::OnHand(sku, units)));
    let sold = sales_7d.map(|((fridge, sku), units)| (fridge, Reading::Sold(sku, units)));
    let new_state =
        move || Restock { lead_time_days, policy: policy.clone(), shelves: BTreeMap::new(), lines: 0, opened_at: None };
    by_fridge_in_time_order(plans.concat(on_hand).concat(sold), "restock.lines", new_state, hooks)
}

/// The lines every fridge needs, by the batch reference: what every fridge needs,
/// given every event.
pub fn restock_lines_reference(events: &[Event], lead_time_days: i64) -> BTreeMap<InventoryKey, i64> {
    let inventory = inventory_reference(events);
    let sales = sales_7d_reference(events);
    planogram_reference(events)
        .into_iter()
        .filter_map(|(key, slot)| {
            let on_hand = inventory.get(&key).copied().unwrap_or(0);
            let sold = sales.get(&key).copied().unwrap_or(0);
            line(slot, on_hand, sold, lead_time_days, None).map(|qty| (key, qty))
        })
        .collect()
}

/// The `restock_orders` view: its reference gives the quantity per shelf,
/// since an order's id is the logical time it opened, which a batch over
/// the events cannot know.
pub struct RestockOrders;

impl crate::views::View for RestockOrders {
    type Reference = (InventoryKey, i64);

    fn reference(events: &[Event], config: &crate::views::ViewConfig) -> BTreeSet<Self::Reference> {
        restock_lines_reference(events, config.lead_time_days).into_iter().collect()
    }

    fn project((key, line): &Self::Record) -> Self::Reference {
        (key.clone(), line.qty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MINUTE_US;
    use crate::views::ViewConfig;
    use crate::views::tests::run_all;

    fn at(seq: u64, minute: i64, payload: Payload) -> Event {
        let source = if matches!(payload, Payload::PlanogramSet { .. }) { "bo" } else { "FR-1" };
        Event { source_id: source.into(), incarnation: 0, seq, event_time: minute * MINUTE_US, payload }
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
        assert_eq!(super::line(slot, 3, 0, 2, None), Some(7));
        assert_eq!(super::line(slot, 4, 0, 2, None), None);
        // ceil(15 / 7 × 2) = ceil(4.29) = 5.
        assert_eq!(super::line(slot, 5, 15, 2, None), Some(5));
        assert_eq!(super::line(slot, 6, 15, 2, None), None);
        // Returns outnumbering takes do not lower the point below min.
        assert_eq!(super::line(slot, 3, -9, 2, None), Some(7));
        assert_eq!(super::line(Slot { par: 0, ..slot }, -2, 50, 2, None), None);
    }
}
