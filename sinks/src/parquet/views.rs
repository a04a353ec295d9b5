//! The changelog of every view: their columns (a public interface,
//! documented in the README) and [`ViewChangelogs`], which routes each
//! batch of view changes to its changelog.
//!
//! The set of changelogs is generated from the list of views
//! (`coldstream_pipelines::for_each_view!`): a view without a
//! [`ChangeRow`] here does not compile.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use coldstream_pipelines::Time;
use coldstream_pipelines::views::{self, Alert, Listed, SessionRow, SessionStatus, ViewBatch};

use super::changelog::{Cell, ChangeRow, Changelog, Value, changelog_schema};
use super::schema::utc;
use super::{ParquetConfig, SinkError};
use crate::ViewSink;

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn int(name: &str) -> Field {
    Field::new(name, DataType::Int64, false)
}

fn micros(name: &str, nullable: bool) -> Field {
    Field::new(name, utc(TimeUnit::Microsecond), nullable)
}

/// `(fridge_id, sku) → value` records, as two strings and an integer.
fn shelf_cells<'a>(((fridge, sku), value): &'a ((String, String), i64), out: &mut Vec<Cell<'a>>) {
    out.extend([Cell::Str(Some(fridge)), Cell::Str(Some(sku)), Cell::Int(Some(*value))]);
}

fn shelf_decode(row: &[Value]) -> Option<((String, String), i64)> {
    Some(((row[0].str()?.to_owned(), row[1].str()?.to_owned()), row[2].int()?))
}

impl ChangeRow for views::Inventory {
    fn columns() -> Vec<Field> {
        vec![text("fridge_id"), text("sku"), int("on_hand")]
    }
    fn cells<'a>(record: &'a Self::Record, out: &mut Vec<Cell<'a>>) {
        shelf_cells(record, out);
    }
    fn decode(row: &[Value]) -> Option<Self::Record> {
        shelf_decode(row)
    }
}

impl ChangeRow for views::Sessions {
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
    fn cells<'a>(((fridge, session), row): &'a Self::Record, out: &mut Vec<Cell<'a>>) {
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
    fn decode(row: &[Value]) -> Option<Self::Record> {
        let status = SessionStatus::ALL.into_iter().find(|status| Some(status.as_str()) == row[2].str())?;
        let session = SessionRow {
            status,
            expected_cents: row[3].nullable_int()?,
            captured_cents: row[4].nullable_int()?,
            units: row[5].int()?,
            closed_at: row[6].nullable_int()?,
        };
        Some(((row[0].str()?.to_owned(), row[1].str()?.to_owned()), session))
    }
}

impl ChangeRow for views::Revenue {
    fn columns() -> Vec<Field> {
        vec![text("fridge_id"), micros("hour", false), int("captured_cents"), int("sessions"), int("units")]
    }
    fn cells<'a>(((fridge, hour), (cents, sessions, units)): &'a Self::Record, out: &mut Vec<Cell<'a>>) {
        out.extend([
            Cell::Str(Some(fridge)),
            Cell::Int(Some(*hour)),
            Cell::Int(Some(*cents)),
            Cell::Int(Some(*sessions)),
            Cell::Int(Some(*units)),
        ]);
    }
    fn decode(row: &[Value]) -> Option<Self::Record> {
        Some(((row[0].str()?.to_owned(), row[1].int()?), (row[2].int()?, row[3].int()?, row[4].int()?)))
    }
}

impl ChangeRow for views::Sales7d {
    fn columns() -> Vec<Field> {
        vec![text("fridge_id"), text("sku"), int("units")]
    }
    fn cells<'a>(record: &'a Self::Record, out: &mut Vec<Cell<'a>>) {
        shelf_cells(record, out);
    }
    fn decode(row: &[Value]) -> Option<Self::Record> {
        shelf_decode(row)
    }
}

impl ChangeRow for views::Excursions {
    fn columns() -> Vec<Field> {
        vec![
            text("fridge_id"),
            micros("start", false),
            micros("end", false),
            Field::new("max_temperature_c", DataType::Float32, false),
        ]
    }
    fn cells<'a>(((fridge, start), (end, max)): &'a Self::Record, out: &mut Vec<Cell<'a>>) {
        out.extend([Cell::Str(Some(fridge)), Cell::Int(Some(*start)), Cell::Int(Some(*end)), Cell::Float(Some(max.0))]);
    }
    fn decode(row: &[Value]) -> Option<Self::Record> {
        let max = coldstream_pipelines::Temperature(row[3].float()?);
        Some(((row[0].str()?.to_owned(), row[1].int()?), (row[2].int()?, max)))
    }
}

impl ChangeRow for views::RestockOrders {
    fn columns() -> Vec<Field> {
        vec![
            text("fridge_id"),
            text("order_id"),
            Field::new("opened_at", utc(TimeUnit::Millisecond), false),
            text("sku"),
            int("qty"),
        ]
    }
    fn cells<'a>(((fridge, sku), line): &'a Self::Record, out: &mut Vec<Cell<'a>>) {
        out.extend([
            Cell::Str(Some(fridge)),
            Cell::Str(Some(&line.order_id)),
            Cell::Int(Some(line.opened_at as i64)),
            Cell::Str(Some(sku)),
            Cell::Int(Some(line.qty)),
        ]);
    }
    fn decode(row: &[Value]) -> Option<Self::Record> {
        let line = views::RestockLine {
            order_id: row[1].str()?.to_owned(),
            opened_at: u64::try_from(row[2].int()?).ok()?,
            qty: row[4].int()?,
        };
        Some(((row[0].str()?.to_owned(), row[3].str()?.to_owned()), line))
    }
}

impl ChangeRow for views::Alerts {
    fn columns() -> Vec<Field> {
        vec![text("type"), text("fridge_id"), Field::new("sku", DataType::Utf8, true), micros("excursion_start", true)]
    }
    fn cells<'a>(alert: &'a Self::Record, out: &mut Vec<Cell<'a>>) {
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
    fn decode(row: &[Value]) -> Option<Self::Record> {
        let fridge_id = row[1].str()?.to_owned();
        let alert = match (row[2].nullable_str()?, row[3].nullable_int()?) {
            (Some(sku), None) => Alert::InventoryNegative { fridge_id, sku: sku.to_owned() },
            (None, Some(start)) => Alert::ColdchainExcursion { fridge_id, start },
            _ => return None,
        };
        (alert.kind() == row[0].str()?).then_some(alert)
    }
}

/// One view's changelog, whatever its record type.
trait ViewChangelog: Send {
    fn view(&self) -> &'static str;
    fn covered(&self) -> Time;
    /// Buffers the batch if it is this view's; hands it back otherwise.
    fn push(&mut self, batch: ViewBatch) -> Result<(), ViewBatch>;
    fn snapshot(&mut self, frontier: Time) -> Result<Vec<u8>, SinkError>;
    fn restore(&mut self, snapshot: &[u8], frontier: Time) -> Result<(), SinkError>;
    fn advance(&mut self, frontier: Time, force: bool) -> Result<(), SinkError>;
}

impl<R: ChangeRow> ViewChangelog for Changelog<R> {
    fn view(&self) -> &'static str {
        R::NAME
    }

    fn covered(&self) -> Time {
        Changelog::covered(self)
    }

    fn push(&mut self, batch: ViewBatch) -> Result<(), ViewBatch> {
        for (record, time, diff) in R::take(batch)? {
            Changelog::push(self, record, time, diff as i64);
        }
        Ok(())
    }

    fn snapshot(&mut self, frontier: Time) -> Result<Vec<u8>, SinkError> {
        Ok(bincode::serialize(&self.checkpoint(frontier)?).expect("in-memory rows always encode"))
    }

    fn restore(&mut self, snapshot: &[u8], frontier: Time) -> Result<(), SinkError> {
        let changes = bincode::deserialize(snapshot).map_err(|e| {
            SinkError::Checkpoint(format!("the buffered changes of view {} do not decode: {e}", R::NAME))
        })?;
        Changelog::restore(self, changes, frontier);
        Ok(())
    }

    fn advance(&mut self, frontier: Time, force: bool) -> Result<(), SinkError> {
        Changelog::advance(self, frontier, force).map(|_| ())
    }
}

macro_rules! changelogs {
    ($($(#[$doc:meta])* $field:ident: $marker:ident => $record:ty,)*) => {
        /// Every view's SQL table name and changelog schema.
        pub fn view_tables() -> Vec<(&'static str, SchemaRef)> {
            vec![$((<views::$marker as Listed>::NAME, changelog_schema::<views::$marker>()),)*]
        }

        /// Every view's changelog, in list order.
        fn open_all(root: &Path, config: &ParquetConfig) -> Result<Vec<Box<dyn ViewChangelog>>, SinkError> {
            Ok(vec![$(Box::new(Changelog::<views::$marker>::open(root, config.clone())?),)*])
        }
    };
}

coldstream_pipelines::for_each_view!(changelogs);

/// The changelogs of every view, advanced together.
pub struct ViewChangelogs {
    logs: Vec<Box<dyn ViewChangelog>>,
}

impl ViewChangelogs {
    /// Opens every changelog under the data directory `root`.
    pub fn open(root: &Path, config: ParquetConfig) -> Result<Self, SinkError> {
        Ok(ViewChangelogs { logs: open_all(root, &config)? })
    }

    /// Every view's changes before this logical time are in files: the
    /// lowest of the changelogs' covered times.
    pub fn covered(&self) -> u64 {
        self.logs.iter().map(|log| log.covered()).min().unwrap_or(0)
    }

    /// Buffers a batch of changes in its view's changelog.
    pub fn push(&mut self, batch: ViewBatch) {
        let mut batch = Some(batch);
        for log in &mut self.logs {
            match batch.take().map(|batch| log.push(batch)) {
                Some(Err(other)) => batch = Some(other),
                _ => return,
            }
        }
    }

    /// The changes before `frontier` that are not in files yet, by view
    /// name, encoded for a checkpoint. A changelog holding many is written
    /// out first, so a checkpoint stays small.
    pub fn snapshot(&mut self, frontier: u64) -> Result<Vec<u8>, SinkError> {
        let mut buffered = BTreeMap::new();
        for log in &mut self.logs {
            buffered.insert(log.view().to_owned(), log.snapshot(frontier)?);
        }
        Ok(bincode::serialize(&buffered).expect("in-memory rows always encode"))
    }

    /// Takes back the changes a [`ViewChangelogs::snapshot`] at `frontier`
    /// held; changes before `frontier` that arrive again are dropped.
    pub fn restore(&mut self, snapshot: &[u8], frontier: u64) -> Result<(), SinkError> {
        let buffered: BTreeMap<String, Vec<u8>> = bincode::deserialize(snapshot)
            .map_err(|e| SinkError::Checkpoint(format!("the changelogs' buffered changes do not decode: {e}")))?;
        for log in &mut self.logs {
            let Some(changes) = buffered.get(log.view()) else {
                return Err(SinkError::Checkpoint(format!(
                    "the checkpoint holds no buffered changes of view {}; run `coldstream rebuild`",
                    log.view()
                )));
            };
            log.restore(changes, frontier)?;
        }
        Ok(())
    }

    /// Advances every changelog to `frontier` (see [`Changelog::advance`]).
    pub fn advance(&mut self, frontier: u64, force: bool) -> Result<(), SinkError> {
        for log in &mut self.logs {
            log.advance(frontier, force)?;
        }
        Ok(())
    }
}

impl ViewSink for ViewChangelogs {
    fn name(&self) -> &'static str {
        "changelogs"
    }

    fn push(&mut self, batch: &ViewBatch) {
        ViewChangelogs::push(self, batch.clone());
    }

    fn take(&mut self, batch: ViewBatch) {
        ViewChangelogs::push(self, batch);
    }

    fn advance(&mut self, frontier: Time, closing: bool) -> Result<(), SinkError> {
        ViewChangelogs::advance(self, frontier, closing)
    }

    fn snapshot(&mut self, frontier: Time) -> Result<Vec<u8>, SinkError> {
        ViewChangelogs::snapshot(self, frontier)
    }

    fn restore(&mut self, snapshot: &[u8], frontier: Time) -> Result<(), SinkError> {
        ViewChangelogs::restore(self, snapshot, frontier)
    }

    fn resumes_at(&self) -> Time {
        self.covered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parquet::changelog::{changes_batch, decode_rows};

    /// Every view's rows read back into the records they were written from.
    fn round_trip<R: ChangeRow>(records: Vec<R::Record>) {
        let schema = changelog_schema::<R>();
        let changes: Vec<_> = records.iter().cloned().map(|record| (record, 7, 1)).collect();
        let batch = changes_batch::<R>(&schema, &changes).expect("builds");
        assert_eq!(decode_rows::<R>(&batch).expect("decodes"), records, "{}", R::NAME);
    }

    #[test]
    fn every_view_row_reads_back_into_its_record() {
        let shelf = || ("FR-1".to_owned(), "cola".to_owned());
        round_trip::<views::Inventory>(vec![(shelf(), -3), (shelf(), 12)]);
        round_trip::<views::Sales7d>(vec![(shelf(), 40)]);
        round_trip::<views::Sessions>(vec![
            (
                ("FR-1".into(), "s1".into()),
                SessionRow {
                    status: SessionStatus::ALL[0],
                    expected_cents: None,
                    captured_cents: Some(5),
                    units: 2,
                    closed_at: None,
                },
            ),
            (
                ("FR-1".into(), "s2".into()),
                SessionRow {
                    status: *SessionStatus::ALL.last().expect("statuses"),
                    expected_cents: Some(450),
                    captured_cents: None,
                    units: 1,
                    closed_at: Some(1_700_000_000_000_000),
                },
            ),
        ]);
        round_trip::<views::Revenue>(vec![(("FR-1".into(), 3_600_000_000), (900, 2, 3))]);
        round_trip::<views::Excursions>(vec![(
            ("FR-1".into(), 1_000_000),
            (2_800_000_000, coldstream_pipelines::Temperature(9.5)),
        )]);
        let line = views::RestockLine { order_id: views::order_id("FR-1", 42), opened_at: 42, qty: 6 };
        round_trip::<views::RestockOrders>(vec![(shelf(), line)]);
        round_trip::<views::Alerts>(vec![
            Alert::InventoryNegative { fridge_id: "FR-1".into(), sku: "cola".into() },
            Alert::ColdchainExcursion { fridge_id: "FR-2".into(), start: 5 },
        ]);
    }
}
