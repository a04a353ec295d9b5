//! The changelog of every view: their columns (a public interface,
//! documented in the README) and [`ViewChangelogs`], which routes each
//! batch of view changes to its changelog.

use std::path::Path;

use serde::{Deserialize, Serialize};

use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use coldstream_pipelines::views::{
    Alert, Excursion, ExcursionKey, InventoryKey, RestockLine, RevenueKey, SessionKey, SessionRow, ViewBatch,
};

use super::changelog::{Cell, ChangeRow, Changelog, changelog_schema};
use super::schema::utc;
use super::{ParquetConfig, SinkError};

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn int(name: &str) -> Field {
    Field::new(name, DataType::Int64, false)
}

fn micros(name: &str, nullable: bool) -> Field {
    Field::new(name, utc(TimeUnit::Microsecond), nullable)
}

/// Wraps a row type with the name of its view, so that two views with the
/// same record type (inventory and sales_7d) get their own changelogs.
macro_rules! view_row {
    ($name:ident, $record:ty, $view:literal) => {
        #[doc = concat!("A record of `", $view, "`.")]
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub $record);
    };
}

view_row!(InventoryRow, (InventoryKey, i64), "inventory");
view_row!(SessionsRow, (SessionKey, SessionRow), "sessions");
view_row!(RevenueRow, (RevenueKey, (i64, i64, i64)), "revenue");
view_row!(SalesRow, (InventoryKey, i64), "sales_7d");
view_row!(ExcursionRow, (ExcursionKey, Excursion), "excursions");
view_row!(RestockRow, (InventoryKey, RestockLine), "restock_orders");
view_row!(AlertRow, Alert, "alerts");

impl ChangeRow for InventoryRow {
    const VIEW: &'static str = "inventory";
    fn columns() -> Vec<Field> {
        vec![text("fridge_id"), text("sku"), int("on_hand")]
    }
    fn cells<'a>(&'a self, out: &mut Vec<Cell<'a>>) {
        let ((fridge, sku), on_hand) = &self.0;
        out.extend([Cell::Str(Some(fridge)), Cell::Str(Some(sku)), Cell::Int(Some(*on_hand))]);
    }
}

impl ChangeRow for SessionsRow {
    const VIEW: &'static str = "sessions";
    fn columns() -> Vec<Field> {
        vec![
            text("fridge_id"),
            text("session_id"),
            text("status"),
            Field::new("expected_cents", DataType::Int64, true),
            Field::new("captured_cents", DataType::Int64, true),
            int("units"),
            micros("closed_at", true),
        ]
    }
    fn cells<'a>(&'a self, out: &mut Vec<Cell<'a>>) {
        let ((fridge, session), row) = &self.0;
        out.extend([
            Cell::Str(Some(fridge)),
            Cell::Str(Some(session)),
            Cell::Str(Some(row.status.as_str())),
            Cell::Int(row.expected_cents),
            Cell::Int(row.captured_cents),
            Cell::Int(Some(row.units)),
            Cell::Int(row.closed_at),
        ]);
    }
}

impl ChangeRow for RevenueRow {
    const VIEW: &'static str = "revenue";
    fn columns() -> Vec<Field> {
        vec![text("fridge_id"), micros("hour", false), int("captured_cents"), int("sessions"), int("units")]
    }
    fn cells<'a>(&'a self, out: &mut Vec<Cell<'a>>) {
        let ((fridge, hour), (cents, sessions, units)) = &self.0;
        out.extend([
            Cell::Str(Some(fridge)),
            Cell::Int(Some(*hour)),
            Cell::Int(Some(*cents)),
            Cell::Int(Some(*sessions)),
            Cell::Int(Some(*units)),
        ]);
    }
}

impl ChangeRow for SalesRow {
    const VIEW: &'static str = "sales_7d";
    fn columns() -> Vec<Field> {
        vec![text("fridge_id"), text("sku"), int("units")]
    }
    fn cells<'a>(&'a self, out: &mut Vec<Cell<'a>>) {
        let ((fridge, sku), units) = &self.0;
        out.extend([Cell::Str(Some(fridge)), Cell::Str(Some(sku)), Cell::Int(Some(*units))]);
    }
}

impl ChangeRow for ExcursionRow {
    const VIEW: &'static str = "excursions";
    fn columns() -> Vec<Field> {
        vec![
            text("fridge_id"),
            micros("start", false),
            micros("end", false),
            Field::new("max_temperature_c", DataType::Float32, false),
        ]
    }
    fn cells<'a>(&'a self, out: &mut Vec<Cell<'a>>) {
        let ((fridge, start), (end, max)) = &self.0;
        out.extend([Cell::Str(Some(fridge)), Cell::Int(Some(*start)), Cell::Int(Some(*end)), Cell::Float(Some(max.0))]);
    }
}

impl ChangeRow for RestockRow {
    const VIEW: &'static str = "restock_orders";
    fn columns() -> Vec<Field> {
        vec![
            text("fridge_id"),
            text("order_id"),
            Field::new("opened_at", utc(TimeUnit::Millisecond), false),
            text("sku"),
            int("qty"),
        ]
    }
    fn cells<'a>(&'a self, out: &mut Vec<Cell<'a>>) {
        let ((fridge, sku), line) = &self.0;
        out.extend([
            Cell::Str(Some(fridge)),
            Cell::Str(Some(&line.order_id)),
            Cell::Int(Some(line.opened_at as i64)),
            Cell::Str(Some(sku)),
            Cell::Int(Some(line.qty)),
        ]);
    }
}

impl ChangeRow for AlertRow {
    const VIEW: &'static str = "alerts";
    fn columns() -> Vec<Field> {
        vec![text("type"), text("fridge_id"), Field::new("sku", DataType::Utf8, true), micros("excursion_start", true)]
    }
    fn cells<'a>(&'a self, out: &mut Vec<Cell<'a>>) {
        let alert = &self.0;
        let (sku, start) = match alert {
            Alert::InventoryNegative { sku, .. } => (Some(sku.as_str()), None),
            Alert::ColdchainExcursion { start, .. } => (None, Some(*start)),
        };
        out.extend([
            Cell::Str(Some(alert.kind())),
            Cell::Str(Some(alert.fridge_id())),
            Cell::Str(sku),
            Cell::Int(start),
        ]);
    }
}

/// Every view's SQL table name and changelog schema.
pub fn view_tables() -> Vec<(&'static str, SchemaRef)> {
    vec![
        (InventoryRow::VIEW, changelog_schema::<InventoryRow>()),
        (SessionsRow::VIEW, changelog_schema::<SessionsRow>()),
        (RevenueRow::VIEW, changelog_schema::<RevenueRow>()),
        (SalesRow::VIEW, changelog_schema::<SalesRow>()),
        (ExcursionRow::VIEW, changelog_schema::<ExcursionRow>()),
        (RestockRow::VIEW, changelog_schema::<RestockRow>()),
        (AlertRow::VIEW, changelog_schema::<AlertRow>()),
    ]
}

/// The changelogs of every view, advanced together.
pub struct ViewChangelogs {
    inventory: Changelog<InventoryRow>,
    sessions: Changelog<SessionsRow>,
    revenue: Changelog<RevenueRow>,
    sales_7d: Changelog<SalesRow>,
    excursions: Changelog<ExcursionRow>,
    restock_orders: Changelog<RestockRow>,
    alerts: Changelog<AlertRow>,
}

fn push_all<R: ChangeRow, D>(log: &mut Changelog<R>, changes: Vec<(D, u64, isize)>, wrap: fn(D) -> R) {
    for (record, time, diff) in changes {
        log.push(wrap(record), time, diff as i64);
    }
}

impl ViewChangelogs {
    /// Opens every changelog under the data directory `root`.
    pub fn open(root: &Path, config: ParquetConfig) -> Result<Self, SinkError> {
        Ok(ViewChangelogs {
            inventory: Changelog::open(root, config.clone())?,
            sessions: Changelog::open(root, config.clone())?,
            revenue: Changelog::open(root, config.clone())?,
            sales_7d: Changelog::open(root, config.clone())?,
            excursions: Changelog::open(root, config.clone())?,
            restock_orders: Changelog::open(root, config.clone())?,
            alerts: Changelog::open(root, config)?,
        })
    }

    /// Every view's changes before this logical time are in files: the
    /// lowest of the changelogs' covered times.
    pub fn covered(&self) -> u64 {
        [
            self.inventory.covered(),
            self.sessions.covered(),
            self.revenue.covered(),
            self.sales_7d.covered(),
            self.excursions.covered(),
            self.restock_orders.covered(),
            self.alerts.covered(),
        ]
        .into_iter()
        .min()
        .unwrap_or(0)
    }

    /// Buffers a batch of changes in its view's changelog.
    pub fn push(&mut self, batch: ViewBatch) {
        match batch {
            ViewBatch::Inventory(changes) => push_all(&mut self.inventory, changes, InventoryRow),
            ViewBatch::Sessions(changes) => push_all(&mut self.sessions, changes, SessionsRow),
            ViewBatch::Revenue(changes) => push_all(&mut self.revenue, changes, RevenueRow),
            ViewBatch::Sales7d(changes) => push_all(&mut self.sales_7d, changes, SalesRow),
            ViewBatch::Excursions(changes) => push_all(&mut self.excursions, changes, ExcursionRow),
            ViewBatch::RestockOrders(changes) => push_all(&mut self.restock_orders, changes, RestockRow),
            ViewBatch::Alerts(changes) => push_all(&mut self.alerts, changes, AlertRow),
        }
    }

    /// The changes before `frontier` that are not in files yet, encoded for
    /// a checkpoint. A changelog holding many is written out first, so a
    /// checkpoint stays small.
    pub fn snapshot(&mut self, frontier: u64) -> Result<Vec<u8>, SinkError> {
        let buffered = (
            self.inventory.checkpoint(frontier)?,
            self.sessions.checkpoint(frontier)?,
            self.revenue.checkpoint(frontier)?,
            self.sales_7d.checkpoint(frontier)?,
            self.excursions.checkpoint(frontier)?,
            self.restock_orders.checkpoint(frontier)?,
            self.alerts.checkpoint(frontier)?,
        );
        Ok(bincode::serialize(&buffered).expect("in-memory rows always encode"))
    }

    /// Takes back the changes a [`ViewChangelogs::snapshot`] at `frontier`
    /// held; changes before `frontier` that arrive again are dropped.
    pub fn restore(&mut self, snapshot: &[u8], frontier: u64) -> Result<(), SinkError> {
        type Buffered = (
            Vec<(InventoryRow, u64, i64)>,
            Vec<(SessionsRow, u64, i64)>,
            Vec<(RevenueRow, u64, i64)>,
            Vec<(SalesRow, u64, i64)>,
            Vec<(ExcursionRow, u64, i64)>,
            Vec<(RestockRow, u64, i64)>,
            Vec<(AlertRow, u64, i64)>,
        );
        let buffered: Buffered = bincode::deserialize(snapshot)
            .map_err(|e| SinkError::Checkpoint(format!("the changelogs' buffered changes do not decode: {e}")))?;
        self.inventory.restore(buffered.0, frontier);
        self.sessions.restore(buffered.1, frontier);
        self.revenue.restore(buffered.2, frontier);
        self.sales_7d.restore(buffered.3, frontier);
        self.excursions.restore(buffered.4, frontier);
        self.restock_orders.restore(buffered.5, frontier);
        self.alerts.restore(buffered.6, frontier);
        Ok(())
    }

    /// Advances every changelog to `frontier` (see [`Changelog::advance`]).
    pub fn advance(&mut self, frontier: u64, force: bool) -> Result<(), SinkError> {
        self.inventory.advance(frontier, force)?;
        self.sessions.advance(frontier, force)?;
        self.revenue.advance(frontier, force)?;
        self.sales_7d.advance(frontier, force)?;
        self.excursions.advance(frontier, force)?;
        self.restock_orders.advance(frontier, force)?;
        self.alerts.advance(frontier, force)?;
        Ok(())
    }
}
