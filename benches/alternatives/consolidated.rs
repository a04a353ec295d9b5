//! coldstream's views, consolidated from their changes as they arrive, to
//! compare with the alternatives' answers.

use std::collections::{BTreeMap, BTreeSet};

use coldstream_pipelines::views::ViewBatch;

use super::cost::{ByShelf, Rows};

/// `record → count` of one view.
type Counts<R> = BTreeMap<R, isize>;

/// Every view's records with their counts; restock lines as `(shelf, units)`.
#[derive(Default)]
pub struct Consolidated {
    inventory: Counts<((String, String), i64)>,
    sessions: Counts<((String, String), coldstream_pipelines::views::SessionRow)>,
    revenue: Counts<(coldstream_pipelines::views::RevenueKey, (i64, i64, i64))>,
    sales_7d: Counts<((String, String), i64)>,
    excursions: Counts<((String, i64), coldstream_pipelines::views::Excursion)>,
    lines: Counts<((String, String), i64)>,
    alerts: Counts<coldstream_pipelines::views::Alert>,
}

fn apply<R: Ord + Clone>(into: &mut Counts<R>, changes: impl IntoIterator<Item = (R, isize)>) {
    for (record, diff) in changes {
        let count = into.entry(record.clone()).or_insert(0);
        *count += diff;
        if *count == 0 {
            into.remove(&record);
        }
    }
}

fn plain<R, T>(changes: Vec<(R, T, isize)>) -> impl Iterator<Item = (R, isize)> {
    changes.into_iter().map(|(record, _, diff)| (record, diff))
}

fn present<R: Ord + Clone>(view: &Counts<R>) -> BTreeSet<R> {
    view.iter().filter(|(_, count)| **count > 0).map(|(record, _)| record.clone()).collect()
}

impl Consolidated {
    /// Adds the changes of a batch.
    pub fn add(&mut self, batch: ViewBatch) {
        match batch {
            ViewBatch::Inventory(changes) => apply(&mut self.inventory, plain(changes)),
            ViewBatch::Sessions(changes) => apply(&mut self.sessions, plain(changes)),
            ViewBatch::Revenue(changes) => apply(&mut self.revenue, plain(changes)),
            ViewBatch::Sales7d(changes) => apply(&mut self.sales_7d, plain(changes)),
            ViewBatch::Excursions(changes) => apply(&mut self.excursions, plain(changes)),
            ViewBatch::RestockOrders(changes) => {
                apply(&mut self.lines, changes.into_iter().map(|((key, line), _, diff)| ((key, line.qty), diff)))
            }
            ViewBatch::Alerts(changes) => apply(&mut self.alerts, plain(changes)),
        }
    }

    /// Every view's present rows.
    pub fn rows(&self) -> Rows {
        Rows {
            inventory: present(&self.inventory),
            sessions: present(&self.sessions),
            revenue: present(&self.revenue),
            sales_7d: present(&self.sales_7d),
            excursions: present(&self.excursions),
            restock_lines: present(&self.lines),
            alerts: present(&self.alerts),
        }
    }

    /// The restock lines: `(fridge, sku) → units`.
    pub fn lines(&self) -> ByShelf {
        present(&self.lines).into_iter().collect()
    }
}
