//! The views of DOMAIN.md, one file each, every dataflow beside its batch
//! reference implementation.

pub mod inventory;

pub use inventory::{InventoryKey, inventory, inventory_reference};
