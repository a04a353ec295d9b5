//! `alerts`: the conditions operations must hear about, as a collection.
//!
//! - `inventory.negative` for `(fridge, sku)` while its on-hand is below 0
//!   (a data-quality signal: a missed restock event or a miscount);
//! - `coldchain.excursion` for `(fridge, start)` while that excursion
//!   exists (it may vanish if late telemetry splits the run).
//!
//! An alert is raised when its record appears and cleared when it is
//! retracted; its details live in the view it points at.

use std::collections::BTreeSet;

use differential_dataflow::collection::VecCollection;
use serde::{Deserialize, Serialize};

use crate::views::cold_chain::{Excursion, ExcursionKey, excursions_reference};
use crate::views::inventory::{InventoryKey, inventory_reference};
use crate::{Event, Time};

/// One raised alert.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Alert {
    /// A `(fridge, sku)` has negative on-hand stock.
    InventoryNegative {
        /// The fridge.
        fridge_id: String,
        /// The SKU.
        sku: String,
    },
    /// A fridge was warm for 30 minutes or more.
    ColdchainExcursion {
        /// The fridge.
        fridge_id: String,
        /// Event time (µs) of the excursion's first warm reading.
        start: i64,
    },
}

impl Alert {
    /// The alert's type, as named in webhooks and SQL.
    pub fn kind(&self) -> &'static str {
        match self {
            Alert::InventoryNegative { .. } => "inventory.negative",
            Alert::ColdchainExcursion { .. } => "coldchain.excursion",
        }
    }

    /// The fridge the alert is about.
    pub fn fridge_id(&self) -> &str {
        match self {
            Alert::InventoryNegative { fridge_id, .. } | Alert::ColdchainExcursion { fridge_id, .. } => fridge_id,
        }
    }
}

/// Every alert that is raised now.
pub fn alerts<'s>(
    inventory: VecCollection<'s, Time, (InventoryKey, i64)>,
    excursions: VecCollection<'s, Time, (ExcursionKey, Excursion)>,
) -> VecCollection<'s, Time, Alert> {
    let negative = inventory
        .filter(|(_, on_hand)| *on_hand < 0)
        .map(|((fridge_id, sku), _)| Alert::InventoryNegative { fridge_id, sku });
    let warm = excursions.map(|((fridge_id, start), _)| Alert::ColdchainExcursion { fridge_id, start });
    negative.concat(warm)
}

/// The batch reference of [`alerts`].
pub fn alerts_reference(events: &[Event]) -> BTreeSet<Alert> {
    let negative = inventory_reference(events)
        .into_iter()
        .filter(|(_, on_hand)| *on_hand < 0)
        .map(|((fridge_id, sku), _)| Alert::InventoryNegative { fridge_id, sku });
    let warm = excursions_reference(events)
        .into_keys()
        .map(|(fridge_id, start)| Alert::ColdchainExcursion { fridge_id, start });
    negative.chain(warm).collect()
}

view_with_exact_reference!(
    /// The `alerts` view.
    Alerts,
    alerts_reference
);
