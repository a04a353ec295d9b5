//! coldstream's inventory and restock lines, consolidated from the view
//! changes as they arrive, to compare with the alternatives' answers.

use std::collections::BTreeMap;

use coldstream_pipelines::views::ViewBatch;

use super::cost::ByShelf;

/// `(record, count)` of a view.
type Counts = BTreeMap<((String, String), i64), isize>;

/// Inventory and restock lines, as counts of `((fridge, sku), value)`.
#[derive(Default)]
pub struct Consolidated {
    inventory: Counts,
    lines: Counts,
}

impl Consolidated {
    /// Adds the changes of a batch (other views' batches are ignored).
    pub fn add(&mut self, batch: ViewBatch) {
        fn apply(into: &mut Counts, record: ((String, String), i64), diff: isize) {
            let count = into.entry(record.clone()).or_insert(0);
            *count += diff;
            if *count == 0 {
                into.remove(&record);
            }
        }
        match batch {
            ViewBatch::Inventory(changes) => {
                for (row, _, diff) in changes {
                    apply(&mut self.inventory, row, diff);
                }
            }
            ViewBatch::RestockOrders(changes) => {
                for ((key, line), _, diff) in changes {
                    apply(&mut self.lines, (key, line.qty), diff);
                }
            }
            _ => {}
        }
    }

    /// The inventory: `(fridge, sku) → on hand`.
    pub fn inventory(&self) -> ByShelf {
        Self::rows(&self.inventory)
    }

    /// The restock lines: `(fridge, sku) → units`.
    pub fn lines(&self) -> ByShelf {
        Self::rows(&self.lines)
    }

    fn rows(view: &Counts) -> ByShelf {
        view.iter().filter(|(_, count)| **count > 0).map(|((key, value), _)| (key.clone(), *value)).collect()
    }
}
