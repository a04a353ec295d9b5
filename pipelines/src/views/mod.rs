//! The views of DOMAIN.md, one file each, every dataflow beside its batch
//! reference implementation, and [`all`], which builds every view from
//! the event collection the way the server runs them.

pub mod alerts;
pub mod cold_chain;
pub mod inventory;
pub mod planogram;
pub mod restock;
pub mod sales_7d;
pub mod sessions;

use differential_dataflow::collection::{AsCollection, VecCollection};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::Partition;

pub use alerts::{Alert, alerts, alerts_reference};
pub use cold_chain::{Excursion, ExcursionKey, cold_chain, excursions, excursions_reference};
pub use inventory::{InventoryKey, inventory, inventory_reference, write_offs_reference};
pub use planogram::{Slot, SlotKey, planogram, planogram_reference};
pub use restock::{RestockLine, order_id, restock_lines_reference, restock_orders};
pub use sales_7d::{SALES_WINDOW_US, sales_7d, sales_7d_reference};
pub use sessions::{
    RevenueKey, SessionKey, SessionRow, SessionStatus, revenue_reference, sessions_and_revenue, sessions_reference,
};

use crate::operators::OperatorHooks;
use crate::{Event, Time};

/// Settings of the views.
#[derive(Clone, Debug)]
pub struct ViewConfig {
    /// How far (µs) behind a fridge's latest event its state is kept.
    pub horizon_us: i64,
    /// Lead time of a restock delivery, in days (the reorder point).
    pub lead_time_days: i64,
    /// Where the per-fridge operators count what they hold, and their checkpoints.
    pub hooks: OperatorHooks,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig { horizon_us: 6 * crate::event::HOUR_US, lead_time_days: 2, hooks: OperatorHooks::default() }
    }
}

/// Every view of DOMAIN.md over one event collection.
pub struct Views<'s> {
    /// `inventory(fridge_id, sku) → on_hand`.
    pub inventory: VecCollection<'s, Time, (InventoryKey, i64)>,
    /// `sessions(fridge_id, session_id) → row`.
    pub sessions: VecCollection<'s, Time, (SessionKey, SessionRow)>,
    /// `revenue(fridge_id, hour) → (captured_cents, sessions, units)`.
    pub revenue: VecCollection<'s, Time, (RevenueKey, (i64, i64, i64))>,
    /// `sales_7d(fridge_id, sku) → units`.
    pub sales_7d: VecCollection<'s, Time, (InventoryKey, i64)>,
    /// `excursions(fridge_id, start) → (end, max_temperature_c)`.
    pub excursions: VecCollection<'s, Time, (ExcursionKey, Excursion)>,
    /// Lines of open restock orders, by `(fridge_id, sku)`.
    pub restock_orders: VecCollection<'s, Time, (InventoryKey, RestockLine)>,
    /// Raised alerts.
    pub alerts: VecCollection<'s, Time, Alert>,
}

/// A collection of `(key, value)` rows.
pub type Keyed<'s, K, V> = VecCollection<'s, Time, (K, V)>;

/// Output changes: `(record, logical time, diff)`.
pub type Changes<D> = Vec<(D, Time, isize)>;

/// A batch of output changes of one view.
#[derive(Clone, Debug)]
#[allow(missing_docs)] // one variant per view of [`Views`]
pub enum ViewBatch {
    Inventory(Changes<(InventoryKey, i64)>),
    Sessions(Changes<(SessionKey, SessionRow)>),
    Revenue(Changes<(RevenueKey, (i64, i64, i64))>),
    Sales7d(Changes<(InventoryKey, i64)>),
    Excursions(Changes<(ExcursionKey, Excursion)>),
    RestockOrders(Changes<(InventoryKey, RestockLine)>),
    Alerts(Changes<Alert>),
}

impl Views<'_> {
    /// Hands every batch of output changes to `send`, and returns one probe
    /// over all the outputs: a time is final in every view once the probe
    /// has passed it.
    pub fn deliver(self, send: impl Fn(ViewBatch) + Clone + 'static) -> ProbeHandle<Time> {
        let probe = ProbeHandle::new();
        macro_rules! deliver {
            ($collection:expr, $variant:ident) => {{
                let send = send.clone();
                $collection
                    .inspect_batch(move |_, changes| send(ViewBatch::$variant(changes.to_vec())))
                    .probe_with(&probe);
            }};
        }
        deliver!(self.inventory, Inventory);
        deliver!(self.sessions, Sessions);
        deliver!(self.revenue, Revenue);
        deliver!(self.sales_7d, Sales7d);
        deliver!(self.excursions, Excursions);
        deliver!(self.restock_orders, RestockOrders);
        deliver!(self.alerts, Alerts);
        probe
    }
}

/// Which views read an event: telemetry (0), a customer session (1), stock
/// (2), the back office (3).
fn route(event: &Event) -> u64 {
    match event.payload {
        crate::Payload::Telemetry { .. } => 0,
        crate::Payload::RestockDelivered { .. } | crate::Payload::StockCounted { .. } => 2,
        _ if event.kind().is_back_office() => 3,
        _ => 1,
    }
}

/// Builds every view from `events`.
///
/// The events are first split by kind, so that each view receives (and
/// copies) only the events it reads: telemetry, most of the traffic, goes
/// to the cold chain and the sales clock only.
pub fn all<'s>(events: VecCollection<'s, Time, Event>, config: &ViewConfig) -> Views<'s> {
    let mut parts = events
        .inner
        .partition(4, |(event, time, diff)| (route(&event), (event, time, diff)))
        .into_iter()
        .map(|stream| stream.as_collection());
    let mut next = || parts.next().expect("partition returns one stream per part");
    let (telemetry, customers, stock, back_office) = (next(), next(), next(), next());

    let (excursions, settled) = cold_chain(telemetry.clone(), config.horizon_us, &config.hooks);
    let inventory = inventory(
        customers.clone().concat(stock.clone()).concat(back_office.clone()),
        excursions.clone(),
        settled,
        config.horizon_us,
        &config.hooks,
    );
    let (sessions, revenue) =
        sessions_and_revenue(customers.clone().concat(back_office.clone()), config.horizon_us, &config.hooks);
    let sales_7d = sales_7d(telemetry.concat(customers).concat(stock), &config.hooks);
    let restock_orders =
        restock_orders(back_office, inventory.clone(), sales_7d.clone(), config.lead_time_days, &config.hooks);
    let alerts = alerts(inventory.clone(), excursions.clone());
    Views { inventory, sessions, revenue, sales_7d, excursions, restock_orders, alerts }
}

#[cfg(test)]
mod tests;
