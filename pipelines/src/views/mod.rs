//! The views of DOMAIN.md, one file each, every dataflow beside its batch
//! reference implementation, and [`all`], which builds every view from
//! the event collection the way the server runs them.
//!
//! The set of views is declared once, in [`for_each_view!`]: the
//! [`Views`] and [`ViewBatch`] types, [`NAMES`], [`for_each`] and every
//! consumer elsewhere (the Parquet changelogs, the SQL tables, the chaos
//! harness, the checkpoint fingerprint, the tests) are generated from that
//! list or iterate it. A view's own file says what it computes and how its
//! batch reference is compared with it ([`View`]).

/// Declares `$marker`, the [`View`] of a view whose batch reference,
/// `$reference(events)`, computes its whole records.
macro_rules! view_with_exact_reference {
    ($(#[$doc:meta])* $marker:ident, $reference:path, with config) => {
        $(#[$doc])*
        pub struct $marker;

        impl crate::views::View for $marker {
            type Reference = <Self as crate::views::Listed>::Record;

            fn reference(
                events: &[crate::Event],
                config: &crate::views::ViewConfig,
            ) -> std::collections::BTreeSet<Self::Reference> {
                $reference(events, config).into_iter().collect()
            }

            fn project(record: &Self::Record) -> Self::Reference {
                record.clone()
            }
        }
    };
    ($(#[$doc:meta])* $marker:ident, $reference:path) => {
        $(#[$doc])*
        pub struct $marker;

        impl crate::views::View for $marker {
            type Reference = <Self as crate::views::Listed>::Record;

            fn reference(
                events: &[crate::Event],
                _config: &crate::views::ViewConfig,
            ) -> std::collections::BTreeSet<Self::Reference> {
                $reference(events).into_iter().collect()
            }

            fn project(record: &Self::Record) -> Self::Reference {
                record.clone()
            }
        }
    };
}

pub mod alerts;
pub mod cold_chain;
pub mod inventory;
pub mod planogram;
pub mod restock;
pub mod sales_7d;
pub mod sessions;

use std::collections::BTreeSet;
use std::fmt::Debug;

use differential_dataflow::ExchangeData;
use differential_dataflow::collection::{AsCollection, VecCollection};
use differential_dataflow::hashable::Hashable;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

pub use alerts::{Alert, Alerts, alerts, alerts_reference};
pub use cold_chain::{Excursion, ExcursionKey, Excursions, cold_chain, excursions, excursions_reference};
pub use inventory::{Inventory, InventoryKey, inventory, inventory_reference, write_offs_reference};
pub use planogram::{Slot, SlotKey, planogram, planogram_reference};
pub use restock::{RestockLine, RestockOrders, order_id, restock_lines_reference, restock_orders};
pub use sales_7d::{SALES_WINDOW_US, Sales7d, sales_7d, sales_7d_reference};
pub use sessions::{
    Revenue, RevenueKey, SessionKey, SessionRow, SessionStatus, Sessions, revenue_reference, sessions_and_revenue,
    sessions_reference,
};

use crate::operators::OperatorHooks;
use crate::{Event, Time};

/// The list of views: calls `$callback!` with one `name: Marker => Record`
/// line per view, each with its doc comment. Everything that needs the
/// whole set is generated from this one list; adding a view adds a line
/// here.
///
/// `Marker` is the view's type in this module (it implements [`View`]);
/// `name` is its field in [`Views`], its changelog folder and its SQL
/// table; `Record` is one row of it.
#[macro_export]
macro_rules! for_each_view {
    ($callback:ident) => {
        $callback! {
            /// `inventory(fridge_id, sku) → on_hand`.
            inventory: Inventory => ($crate::views::InventoryKey, i64),
            /// `sessions(fridge_id, session_id) → row`.
            sessions: Sessions => ($crate::views::SessionKey, $crate::views::SessionRow),
            /// `revenue(fridge_id, hour) → (captured_cents, sessions, units)`.
            revenue: Revenue => ($crate::views::RevenueKey, (i64, i64, i64)),
            /// `sales_7d(fridge_id, sku) → units`.
            sales_7d: Sales7d => ($crate::views::InventoryKey, i64),
            /// `excursions(fridge_id, start) → (end, max_temperature_c)`.
            excursions: Excursions => ($crate::views::ExcursionKey, $crate::views::Excursion),
            /// Lines of open restock orders, by `(fridge_id, sku)`.
            restock_orders: RestockOrders => ($crate::views::InventoryKey, $crate::views::RestockLine),
            /// Raised alerts.
            alerts: Alerts => $crate::views::Alert,
        }
    };
}

/// A view's place in the list: generated for every view of
/// [`for_each_view!`], so a view that is not listed cannot implement
/// [`View`].
pub trait Listed: Sized + 'static {
    /// The view's name: its field in [`Views`], its folder under `views/`
    /// and its SQL table.
    const NAME: &'static str;
    /// One record of the view.
    type Record: ExchangeData + Hashable + Send;
    /// The view's collection among all of them.
    fn pick(views: Views<'_>) -> VecCollection<'_, Time, Self::Record>;
    /// A batch of this view's changes.
    fn batch(changes: Changes<Self::Record>) -> ViewBatch;
    /// The changes of `batch`, if it is this view's.
    fn changes(batch: &ViewBatch) -> Option<&Changes<Self::Record>>;
    /// The changes of `batch` if it is this view's; `batch` back otherwise.
    fn take(batch: ViewBatch) -> Result<Changes<Self::Record>, ViewBatch>;
}

/// One view, as its tests and its checks see it: what its batch
/// reference computes, and how a record of the dataflow compares with it.
pub trait View: Listed {
    /// What the batch reference knows of one record. Most views' reference
    /// computes whole records; a restock line's order id depends on the
    /// logical time an order opened, which a batch over events cannot
    /// know, so its reference gives the quantity per shelf.
    type Reference: Ord + Clone + Debug;

    /// The reference: the view's final state over `events`, in any order.
    fn reference(events: &[Event], config: &ViewConfig) -> BTreeSet<Self::Reference>;

    /// The part of `record` the reference computes.
    fn project(record: &Self::Record) -> Self::Reference;
}

/// Something done once per view, with the view's type: [`for_each`]
/// calls it for every view in list order.
pub trait ForEachView {
    /// Called for the view `V`.
    fn view<V: View>(&mut self);
}

/// Settings of the views.
#[derive(Clone, Debug)]
pub struct ViewConfig {
    /// How far (µs) behind a fridge's latest event its state is kept.
    pub horizon_us: i64,
    /// Lead time of a restock delivery, in days (the reorder point).
    pub lead_time_days: i64,
    /// A reorder point other than the built-in one (a UDF).
    pub reorder_point: Option<crate::views::restock::ReorderPolicy>,
    /// How long (µs) after its DoorClosed a session waits for its payment
    /// result, whatever the horizon.
    pub payment_wait_us: i64,
    /// Where the per-fridge operators count what they hold, and their checkpoints.
    pub hooks: OperatorHooks,
    /// Whether the log has several writers, so that the seq rule is applied
    /// again where it is read ([`crate::dedup`]); a log with one writer has
    /// applied it when it was written.
    pub deduplicate: bool,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            horizon_us: 6 * crate::event::HOUR_US,
            lead_time_days: 2,
            reorder_point: None,
            payment_wait_us: 72 * crate::event::HOUR_US,
            hooks: OperatorHooks::default(),
            deduplicate: false,
        }
    }
}

/// A collection of `(key, value)` rows.
pub type Keyed<'s, K, V> = VecCollection<'s, Time, (K, V)>;

/// Output changes: `(record, logical time, diff)`.
pub type Changes<D> = Vec<(D, Time, isize)>;

macro_rules! define_views {
    ($($(#[$doc:meta])* $field:ident: $marker:ident => $record:ty,)*) => {
        /// Every view of DOMAIN.md over one event collection.
        pub struct Views<'s> {
            $($(#[$doc])* pub $field: VecCollection<'s, Time, $record>,)*
        }

        /// A batch of output changes of one view.
        #[derive(Clone, Debug)]
        pub enum ViewBatch {
            $($(#[$doc])* $marker(Changes<$record>),)*
        }

        /// Every view's name, in list order.
        pub const NAMES: &[&str] = &[$(stringify!($field)),*];

        $(
            impl Listed for $marker {
                const NAME: &'static str = stringify!($field);
                type Record = $record;
                fn pick(views: Views<'_>) -> VecCollection<'_, Time, $record> {
                    views.$field
                }
                fn batch(changes: Changes<$record>) -> ViewBatch {
                    ViewBatch::$marker(changes)
                }
                fn changes(batch: &ViewBatch) -> Option<&Changes<$record>> {
                    match batch {
                        ViewBatch::$marker(changes) => Some(changes),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
                fn take(batch: ViewBatch) -> Result<Changes<$record>, ViewBatch> {
                    match batch {
                        ViewBatch::$marker(changes) => Ok(changes),
                        #[allow(unreachable_patterns)]
                        other => Err(other),
                    }
                }
            }
        )*

        /// Calls `visitor` once for every view, in list order.
        pub fn for_each(visitor: &mut impl ForEachView) {
            $(visitor.view::<$marker>();)*
        }

        impl ViewBatch {
            /// The name of the view whose changes these are.
            pub fn view(&self) -> &'static str {
                match self {
                    $(ViewBatch::$marker(_) => stringify!($field),)*
                }
            }

            /// How many changes the batch holds.
            pub fn len(&self) -> usize {
                match self {
                    $(ViewBatch::$marker(changes) => changes.len(),)*
                }
            }

            /// Whether the batch holds no change.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }
        }

        impl Views<'_> {
            /// Hands every batch of output changes to `send`, and returns one
            /// probe over all the outputs: a time is final in every view once
            /// the probe has passed it.
            pub fn deliver(self, send: impl Fn(ViewBatch) + Clone + 'static) -> ProbeHandle<Time> {
                let probe = ProbeHandle::new();
                $({
                    let send = send.clone();
                    self.$field
                        .inspect_batch(move |_, changes| send(ViewBatch::$marker(changes.to_vec())))
                        .probe_with(&probe);
                })*
                probe
            }
        }
    };
}

for_each_view!(define_views);

/// Every view's own reading of the events, as [`split`] gives them.
struct Inputs<'s> {
    readings: Keyed<'s, String, cold_chain::Reading>,
    heard: Keyed<'s, String, inventory::Heard>,
    sightings: Keyed<'s, String, sessions::Sighting>,
    prices: VecCollection<'s, Time, sessions::PriceChange>,
    sales: Keyed<'s, String, sales_7d::Sighting>,
    plans: Keyed<'s, String, restock::Reading>,
}

/// The updates of one output of [`split`] at the time being read.
type Updates<D> = Vec<(D, Time, isize)>;

/// A view's reading of an event, as an update at the event's time.
fn at_time<D>(read: Option<D>, at: Time, diff: isize) -> Option<(D, Time, isize)> {
    read.map(|read| (read, at, diff))
}

/// Reads each event once and gives every view what it reads of it, in one
/// operator: each view's projection of the event, and nothing of an event
/// it does not read. The projections that borrow the event, copying only
/// the fields they keep, come first; then one takes the event itself and
/// keeps its strings: the cold chain's reading of a telemetry event, or
/// the sessions' reading of any other event (none for most of them). So
/// an event is never copied whole.
fn split<'s>(events: VecCollection<'s, Time, Event>) -> Inputs<'s> {
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
    use timely::progress::operate::FrontierInterest;

    let mut builder = OperatorBuilder::new("Split".to_owned(), events.inner.scope());
    let mut input = builder.new_input(events.inner, Pipeline);
    builder.set_notify_for(0, FrontierInterest::Never);
    let (mut readings_out, readings) = builder.new_output::<Updates<_>>();
    let (mut heard_out, heard) = builder.new_output::<Updates<_>>();
    let (mut sightings_out, sightings) = builder.new_output::<Updates<_>>();
    let (mut prices_out, prices) = builder.new_output::<Updates<_>>();
    let (mut sales_out, sales) = builder.new_output::<Updates<_>>();
    let (mut plans_out, plans) = builder.new_output::<Updates<_>>();
    builder.build(move |_| {
        let (mut readings, mut heard, mut sightings) = (Vec::new(), Vec::new(), Vec::new());
        let (mut prices, mut sales, mut plans) = (Vec::new(), Vec::new(), Vec::new());
        move |_frontiers| {
            let (mut readings_out, mut heard_out) = (readings_out.activate(), heard_out.activate());
            let (mut sightings_out, mut prices_out) = (sightings_out.activate(), prices_out.activate());
            let (mut sales_out, mut plans_out) = (sales_out.activate(), plans_out.activate());
            input.for_each_time(|time, containers| {
                for (event, at, diff) in containers.flat_map(|container| container.drain(..)) {
                    heard.extend(at_time(inventory::stock(&event), at, diff));
                    sales.extend(at_time(sales_7d::sighting(&event), at, diff));
                    plans.extend(at_time(restock::plan(&event), at, diff));
                    prices.extend(at_time(sessions::price(&event), at, diff));
                    if matches!(event.payload, crate::Payload::Telemetry { .. }) {
                        readings.extend(at_time(cold_chain::reading(event), at, diff));
                    } else {
                        sightings.extend(at_time(sessions::sighting(event), at, diff));
                    }
                }
                readings_out.give(&time, &mut readings);
                heard_out.give(&time, &mut heard);
                sightings_out.give(&time, &mut sightings);
                prices_out.give(&time, &mut prices);
                sales_out.give(&time, &mut sales);
                plans_out.give(&time, &mut plans);
                // What a container holds after it is given is unspecified.
                readings.clear();
                heard.clear();
                sightings.clear();
                prices.clear();
                sales.clear();
                plans.clear();
            });
        }
    });
    Inputs {
        readings: readings.as_collection(),
        heard: heard.as_collection(),
        sightings: sightings.as_collection(),
        prices: prices.as_collection(),
        sales: sales.as_collection(),
        plans: plans.as_collection(),
    }
}

/// Builds every view from `events`.
///
/// The events are first split into each view's reading of them ([`split`]),
/// so that a view receives only what it keeps of the events it reads:
/// telemetry, most of the traffic, reaches the cold chain and the sales
/// clock only, as a reading and an event time.
pub fn all<'s>(events: VecCollection<'s, Time, Event>, config: &ViewConfig) -> Views<'s> {
    let Inputs { readings, heard, sightings, prices, sales, plans } = split(events);
    let (excursions, settled) = cold_chain::cold_chain_of(readings, config.horizon_us, &config.hooks);
    let inventory = inventory::inventory_of(heard, excursions.clone(), settled, config.horizon_us, &config.hooks);
    let (sessions, revenue) =
        sessions::sessions_and_revenue_of(sightings, prices, config.horizon_us, config.payment_wait_us, &config.hooks);
    let sales_7d = sales_7d::sales_7d_of(sales, &config.hooks);
    let restock_orders = restock::restock_orders_of(
        plans,
        inventory.clone(),
        sales_7d.clone(),
        config.lead_time_days,
        config.reorder_point.clone(),
        &config.hooks,
    );
    let alerts = alerts(inventory.clone(), excursions.clone());
    Views { inventory, sessions, revenue, sales_7d, excursions, restock_orders, alerts }
}

/// Builds every view from the log's accepted events, each with its log
/// offset: on a log with several writers the copies it may hold are
/// dropped first ([`crate::dedup`]), then [`all`].
pub fn from_log<'s>(records: VecCollection<'s, Time, (u64, Event)>, config: &ViewConfig) -> Views<'s> {
    let events = if config.deduplicate {
        crate::dedup::deduplicated(records, &config.hooks)
    } else {
        records.map(|(_, event)| event)
    };
    all(events, config)
}

/// The ids of every per-fridge operator [`from_log`] builds, sorted: what a
/// checkpoint holds state for. Read off a dataflow built for the purpose
/// (and never run), so the list cannot fall behind the views' code.
pub fn stateful_operators(config: &ViewConfig) -> Vec<String> {
    use differential_dataflow::input::Input;
    let checkpoints = crate::checkpoint::Checkpoints::default();
    let hooks = OperatorHooks { checkpoints: checkpoints.clone(), ..OperatorHooks::default() };
    let config = ViewConfig { hooks, ..config.clone() };
    timely::execute_directly(move |worker| {
        worker.dataflow::<Time, _, _>(|scope| {
            let (_input, records) = scope.new_collection::<(u64, Event), isize>();
            from_log(records, &config).deliver(|_| {});
        });
    });
    checkpoints.operators()
}

#[cfg(test)]
mod tests;
