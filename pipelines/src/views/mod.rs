//! The views of DOMAIN.md, one file each, every dataflow beside its batch
//! reference implementation.

pub mod cold_chain;
pub mod inventory;
pub mod sessions;

pub use cold_chain::{Excursion, ExcursionKey, excursions, excursions_reference};
pub use inventory::{InventoryKey, inventory, inventory_reference};
pub use sessions::{
    RevenueKey, SessionKey, SessionRow, SessionStatus, revenue, revenue_reference, sessions, sessions_reference,
};
