//! `events/` and `rejected/`: the raw archive of the log, partitioned by
//! day (`dt=YYYY-MM-DD`: the event date for events, the receive date for
//! rejections).
//!
//! Rows are written in log order, a batch at a time, into one open file per
//! table and day, all named after the log range `first..end` they cover
//! when the range is committed. Files of
//! one range are committed before the next range starts, so after a crash
//! only the last range can be incomplete: [`EventArchive::open`] reports it,
//! the caller reads that range from the log again, and [`EventArchive::flush`]
//! writes the files that are missing and skips those that exist.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
    TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::DateTime;
use coldstream_pipelines::{Event, Payload};

use super::{OpenPart, ParquetConfig, SinkError, list_parts, part_name, remove_leftovers, schema};

/// A rejected event as the dead letter keeps it.
#[derive(Clone, Debug)]
pub struct RejectedRow {
    /// When the gateway received it (ms since the epoch).
    pub received_ms: u64,
    /// Who sent it: the authenticated principal.
    pub principal: String,
    /// The source it claimed, if any.
    pub source_id: Option<String>,
    /// Its seq, if any.
    pub seq: Option<u64>,
    /// Its event time, if any (µs since the epoch).
    pub event_time_us: Option<i64>,
    /// Its payload kind, if known.
    pub kind: Option<String>,
    /// The machine-readable reason.
    pub reason_code: String,
    /// The human-readable reason.
    pub reason: String,
    /// The event as received, in text form.
    pub event: String,
}

/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;

/// The day partition folder of a day number (days since the epoch).
fn day_folder(day: i64) -> String {
    let date = DateTime::from_timestamp_micros(day.saturating_mul(DAY_US))
        .map_or_else(|| "1970-01-01".to_owned(), |t| t.format("%Y-%m-%d").to_string());
    format!("dt={date}")
}

/// Rows are written into the open parts once this many are buffered.
const BATCH_ROWS: usize = 8 * 1024;

/// The open parts of one table in the range being written, one per day.
struct DayParts {
    dir: PathBuf,
    schema: SchemaRef,
    parts: BTreeMap<i64, OpenPart>,
}

impl DayParts {
    fn new(dir: PathBuf, schema: &SchemaRef) -> Self {
        DayParts { dir, schema: Arc::clone(schema), parts: BTreeMap::new() }
    }

    /// Writes rows, grouped by their day (`day_of`), each group as one
    /// batch (`batch`) into that day's part.
    fn write<T>(
        &mut self,
        rows: &[T],
        day_of: impl Fn(&T) -> i64,
        batch: impl Fn(&[&T]) -> Result<RecordBatch, SinkError>,
        config: &ParquetConfig,
    ) -> Result<(), SinkError> {
        let mut by_day: BTreeMap<i64, Vec<&T>> = BTreeMap::new();
        for row in rows {
            by_day.entry(day_of(row)).or_default().push(row);
        }
        for (day, rows) in by_day {
            let batch = batch(&rows)?;
            let part = match self.parts.entry(day) {
                Entry::Occupied(part) => part.into_mut(),
                Entry::Vacant(slot) => {
                    slot.insert(OpenPart::create(&self.dir.join(day_folder(day)), Arc::clone(&self.schema), config)?)
                }
            };
            part.write(&batch)?;
        }
        Ok(())
    }

    fn bytes(&self) -> usize {
        self.parts.values().map(OpenPart::bytes).sum()
    }

    /// Commits every day's part as `name`; returns how many were new.
    fn commit(&mut self, name: &str) -> Result<usize, SinkError> {
        let mut written = 0;
        for (_, part) in std::mem::take(&mut self.parts) {
            written += usize::from(part.commit(name)?);
        }
        Ok(written)
    }
}

/// The crash-safe writer of `events/` and `rejected/`. Rows are written
/// into open part files a batch at a time as they are read, so the archive
/// holds at most a batch of rows in memory, whatever the size of a range.
pub struct EventArchive {
    events_parts: DayParts,
    rejected_parts: DayParts,
    config: ParquetConfig,
    events: Vec<(u64, Event)>,
    rejected: Vec<RejectedRow>,
    first_offset: Option<u64>,
    oldest: Option<Instant>,
}

impl EventArchive {
    /// Opens the archive under the data directory `root`. Returns it with the
    /// last committed range `(first, end)`, if any: the caller re-reads that
    /// range from the log and flushes it again before going on from `end`.
    pub fn open(root: &Path, config: ParquetConfig) -> Result<(Self, Option<(u64, u64)>), SinkError> {
        let events_dir = root.join("events");
        let rejected_dir = root.join("rejected");
        remove_leftovers(&events_dir)?;
        remove_leftovers(&rejected_dir)?;
        let last = list_parts(&events_dir)?
            .into_iter()
            .chain(list_parts(&rejected_dir)?)
            .map(|(_, from, to)| (from, to))
            .max();
        let archive = EventArchive {
            events_parts: DayParts::new(events_dir, &schema::EVENTS),
            rejected_parts: DayParts::new(rejected_dir, &schema::REJECTED),
            config,
            events: Vec::new(),
            rejected: Vec::new(),
            first_offset: None,
            oldest: None,
        };
        Ok((archive, last))
    }

    fn note(&mut self, offset: u64) {
        self.first_offset.get_or_insert(offset);
        self.oldest.get_or_insert_with(Instant::now);
    }

    /// Buffers an accepted event read at `offset` with its ingest time,
    /// writing the buffer into the open parts once a batch has gathered.
    pub fn push_event(&mut self, offset: u64, ingest_ms: u64, event: Event) -> Result<(), SinkError> {
        self.note(offset);
        self.events.push((ingest_ms, event));
        if self.events.len() >= BATCH_ROWS {
            self.write_events()?;
        }
        Ok(())
    }

    /// Buffers a rejected event read at `offset`.
    pub fn push_rejected(&mut self, offset: u64, row: RejectedRow) -> Result<(), SinkError> {
        self.note(offset);
        self.rejected.push(row);
        if self.rejected.len() >= BATCH_ROWS {
            self.write_rejected()?;
        }
        Ok(())
    }

    fn write_events(&mut self) -> Result<(), SinkError> {
        let day_of = |row: &(u64, Event)| row.1.event_time.div_euclid(DAY_US);
        self.events_parts.write(&self.events, day_of, events_batch, &self.config)?;
        self.events.clear();
        Ok(())
    }

    fn write_rejected(&mut self) -> Result<(), SinkError> {
        let day_of = |row: &RejectedRow| (row.received_ms as i64 * 1000).div_euclid(DAY_US);
        self.rejected_parts.write(&self.rejected, day_of, rejected_batch, &self.config)?;
        self.rejected.clear();
        Ok(())
    }

    /// Whether the range is big or old enough to be committed.
    pub fn is_due(&self) -> bool {
        self.oldest.is_some_and(|t| t.elapsed() >= self.config.roll_age)
            || self.events_parts.bytes() + self.rejected_parts.bytes() >= self.config.roll_bytes
    }

    /// The offset of the first record of the range, if any.
    pub fn buffered_from(&self) -> Option<u64> {
        self.first_offset
    }

    /// Whether the range holds anything.
    pub fn is_empty(&self) -> bool {
        self.first_offset.is_none()
    }

    /// Commits the range as `first..end_offset`, where `end_offset` is the
    /// offset after its last record. Returns the number of files written.
    pub fn flush(&mut self, end_offset: u64) -> Result<usize, SinkError> {
        let Some(first) = self.first_offset else { return Ok(0) };
        self.write_events()?;
        self.write_rejected()?;
        let name = part_name(first, end_offset);
        let written = self.events_parts.commit(&name)? + self.rejected_parts.commit(&name)?;
        self.first_offset = None;
        self.oldest = None;
        Ok(written)
    }
}

/// Payload columns, null where the kind has none.
#[derive(Default)]
struct PayloadColumns {
    session_id: StringBuilder,
    sku: StringBuilder,
    qty: Int64Builder,
    amount_cents: Int64Builder,
    price_cents: Int64Builder,
    temperature_c: Float32Builder,
    door_open: BooleanBuilder,
    order_id: StringBuilder,
    reason: StringBuilder,
    par: Int64Builder,
    min: Int64Builder,
    perishable: BooleanBuilder,
    region: StringBuilder,
    site: StringBuilder,
}

/// The payload's fields, by column.
#[derive(Default)]
struct Fields<'a> {
    session_id: Option<&'a str>,
    sku: Option<&'a str>,
    qty: Option<i64>,
    amount_cents: Option<i64>,
    price_cents: Option<i64>,
    temperature_c: Option<f32>,
    door_open: Option<bool>,
    order_id: Option<&'a str>,
    reason: Option<&'a str>,
    par: Option<i64>,
    min: Option<i64>,
    perishable: Option<bool>,
    region: Option<&'a str>,
    site: Option<&'a str>,
}

fn fields(payload: &Payload) -> Fields<'_> {
    match payload {
        Payload::Telemetry { temperature_c, door_open } => {
            Fields { temperature_c: Some(temperature_c.0), door_open: Some(*door_open), ..Fields::default() }
        }
        Payload::DoorOpened { session_id } | Payload::DoorClosed { session_id } => {
            Fields { session_id: Some(session_id), ..Fields::default() }
        }
        Payload::ItemTaken { session_id, sku, qty } | Payload::ItemReturned { session_id, sku, qty } => {
            Fields { session_id: Some(session_id), sku: Some(sku), qty: Some(*qty), ..Fields::default() }
        }
        Payload::PaymentAuthorized { session_id, amount_cents }
        | Payload::PaymentCaptured { session_id, amount_cents } => {
            Fields { session_id: Some(session_id), amount_cents: Some(*amount_cents), ..Fields::default() }
        }
        Payload::PaymentDeclined { session_id, reason } => {
            Fields { session_id: Some(session_id), reason: Some(reason), ..Fields::default() }
        }
        Payload::RestockDelivered { order_id, sku, qty } => {
            Fields { order_id: Some(order_id), sku: Some(sku), qty: Some(*qty), ..Fields::default() }
        }
        Payload::StockCounted { sku, qty } => Fields { sku: Some(sku), qty: Some(*qty), ..Fields::default() },
        Payload::PriceChanged { sku, price_cents, .. } => {
            Fields { sku: Some(sku), price_cents: Some(*price_cents), ..Fields::default() }
        }
        Payload::FridgeRegistered { region, site, .. } => {
            Fields { region: Some(region), site: Some(site), ..Fields::default() }
        }
        Payload::PlanogramSet { sku, par, min, perishable, .. } => Fields {
            sku: Some(sku),
            par: Some(*par),
            min: Some(*min),
            perishable: Some(*perishable),
            ..Fields::default()
        },
    }
}

impl PayloadColumns {
    fn push(&mut self, f: Fields<'_>) {
        self.session_id.append_option(f.session_id);
        self.sku.append_option(f.sku);
        self.qty.append_option(f.qty);
        self.amount_cents.append_option(f.amount_cents);
        self.price_cents.append_option(f.price_cents);
        self.temperature_c.append_option(f.temperature_c);
        self.door_open.append_option(f.door_open);
        self.order_id.append_option(f.order_id);
        self.reason.append_option(f.reason);
        self.par.append_option(f.par);
        self.min.append_option(f.min);
        self.perishable.append_option(f.perishable);
        self.region.append_option(f.region);
        self.site.append_option(f.site);
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.session_id.finish()),
            Arc::new(self.sku.finish()),
            Arc::new(self.qty.finish()),
            Arc::new(self.amount_cents.finish()),
            Arc::new(self.price_cents.finish()),
            Arc::new(self.temperature_c.finish()),
            Arc::new(self.door_open.finish()),
            Arc::new(self.order_id.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.par.finish()),
            Arc::new(self.min.finish()),
            Arc::new(self.perishable.finish()),
            Arc::new(self.region.finish()),
            Arc::new(self.site.finish()),
        ]
    }
}

/// Events as a batch of the `events/` schema.
pub fn events_batch(rows: &[&(u64, Event)]) -> Result<RecordBatch, SinkError> {
    let mut source_id = StringBuilder::new();
    let mut seq = UInt64Builder::with_capacity(rows.len());
    let mut fridge_id = StringBuilder::new();
    let mut event_time = TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
    let mut ingest_time = TimestampMillisecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
    let mut kind = StringBuilder::new();
    let mut payload = PayloadColumns::default();
    let mut incarnation = UInt64Builder::with_capacity(rows.len());
    for (ingest_ms, event) in rows.iter().map(|r| (&r.0, &r.1)) {
        incarnation.append_value(event.incarnation);
        source_id.append_value(&event.source_id);
        seq.append_value(event.seq);
        fridge_id.append_option(event.fridge_id());
        event_time.append_value(event.event_time);
        ingest_time.append_value(*ingest_ms as i64);
        kind.append_value(event.kind().as_str());
        payload.push(fields(&event.payload));
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(source_id.finish()),
        Arc::new(seq.finish()),
        Arc::new(fridge_id.finish()),
        Arc::new(event_time.finish()),
        Arc::new(ingest_time.finish()),
        Arc::new(kind.finish()),
    ];
    columns.extend(payload.finish());
    columns.push(Arc::new(incarnation.finish()));
    RecordBatch::try_new(Arc::clone(&schema::EVENTS), columns)
        .map_err(|source| SinkError::Arrow { table: "events".into(), source })
}

/// Rejections as a batch of the `rejected/` schema.
pub fn rejected_batch(rows: &[&RejectedRow]) -> Result<RecordBatch, SinkError> {
    let mut received_at = TimestampMillisecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
    let mut principal = StringBuilder::new();
    let mut source_id = StringBuilder::new();
    let mut seq = UInt64Builder::with_capacity(rows.len());
    let mut event_time = TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
    let mut kind = StringBuilder::new();
    let mut reason_code = StringBuilder::new();
    let mut reason = StringBuilder::new();
    let mut event = StringBuilder::new();
    for row in rows {
        received_at.append_value(row.received_ms as i64);
        principal.append_value(&row.principal);
        source_id.append_option(row.source_id.as_deref());
        seq.append_option(row.seq);
        event_time.append_option(row.event_time_us);
        kind.append_option(row.kind.as_deref());
        reason_code.append_value(&row.reason_code);
        reason.append_value(&row.reason);
        event.append_value(&row.event);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(received_at.finish()),
        Arc::new(principal.finish()),
        Arc::new(source_id.finish()),
        Arc::new(seq.finish()),
        Arc::new(event_time.finish()),
        Arc::new(kind.finish()),
        Arc::new(reason_code.finish()),
        Arc::new(reason.finish()),
        Arc::new(event.finish()),
    ];
    RecordBatch::try_new(Arc::clone(&schema::REJECTED), columns)
        .map_err(|source| SinkError::Arrow { table: "rejected".into(), source })
}

/// The log ranges the archive holds, in offset order: each range's part
/// files in `events/` and the number of `rejected/` rows it has.
#[derive(Debug, Default)]
pub struct ArchivedRanges {
    /// `(from, to) → (events/ files, rejected rows)`.
    pub ranges: BTreeMap<(u64, u64), (Vec<PathBuf>, usize)>,
}

impl ArchivedRanges {
    /// Lists the archive under the data directory `root`.
    pub fn list(root: &Path) -> Result<ArchivedRanges, SinkError> {
        let mut ranges: BTreeMap<(u64, u64), (Vec<PathBuf>, usize)> = BTreeMap::new();
        for (path, from, to) in list_parts(&root.join("events"))? {
            ranges.entry((from, to)).or_default().0.push(path);
        }
        for (path, from, to) in list_parts(&root.join("rejected"))? {
            let file =
                std::fs::File::open(&path).map_err(|e| SinkError::io(format!("opening {}", path.display()), e))?;
            let reader = parquet::file::reader::SerializedFileReader::new(file)
                .map_err(|source| SinkError::Parquet { file: path.display().to_string(), source })?;
            let rows = parquet::file::reader::FileReader::metadata(&reader).file_metadata().num_rows() as usize;
            ranges.entry((from, to)).or_default().1 += rows;
        }
        for files in ranges.values_mut() {
            files.0.sort();
        }
        Ok(ArchivedRanges { ranges })
    }

    /// The offset after the last archived record (0 for an empty archive).
    pub fn end(&self) -> u64 {
        self.ranges.keys().next_back().map_or(0, |&(_, to)| to)
    }

    /// Checks that the ranges follow each other from offset 0 without a gap
    /// or an overlap; names the first file that does not fit.
    pub fn check_contiguous(&self) -> Result<(), SinkError> {
        let mut expected = 0;
        for ((from, to), (files, _)) in &self.ranges {
            if *from != expected {
                let file = files.first().map_or_else(|| part_name(*from, *to), |f| f.display().to_string());
                return Err(SinkError::Checkpoint(format!(
                    "the archive is not contiguous: {file} starts at offset {from}, but the previous range ends at {expected}"
                )));
            }
            expected = *to;
        }
        Ok(())
    }
}

/// Reads one `events/` file back as `(ingest_ms, event)`, in file order.
pub fn read_events(path: &Path) -> Result<Vec<(u64, Event)>, SinkError> {
    // The Parquet reader can panic on a damaged file (found by the fuzz
    // tests); such a file is refused like any other damage.
    std::panic::catch_unwind(|| read_events_unguarded(path)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(SinkError::Checkpoint(format!("{}: the Parquet reader failed on a damaged file: {reason}", path.display())))
    })
}

fn read_events_unguarded(path: &Path) -> Result<Vec<(u64, Event)>, SinkError> {
    use arrow::array::{
        Array, BooleanArray, Float32Array, Int64Array, StringArray, TimestampMicrosecondArray,
        TimestampMillisecondArray, UInt64Array,
    };
    let name = path.display().to_string();
    let parquet_error = |source| SinkError::Parquet { file: name.clone(), source };
    let file = std::fs::File::open(path).map_err(|e| SinkError::io(format!("opening {}", path.display()), e))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error)?
        .with_batch_size(8192)
        .build()
        .map_err(parquet_error)?;
    let bad = |what: &str| SinkError::Checkpoint(format!("{}: {what}", path.display()));
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| SinkError::Arrow { table: "events".into(), source })?;
        macro_rules! column {
            ($name:literal, $ty:ty) => {
                batch
                    .column_by_name($name)
                    .and_then(|c| c.as_any().downcast_ref::<$ty>())
                    .ok_or_else(|| bad(concat!("column ", $name, " is missing or of another type")))?
            };
        }
        let source_id = column!("source_id", StringArray);
        let seq = column!("seq", UInt64Array);
        let fridge_id = column!("fridge_id", StringArray);
        let event_time = column!("event_time", TimestampMicrosecondArray);
        let ingest_time = column!("ingest_time", TimestampMillisecondArray);
        let kind = column!("kind", StringArray);
        let session_id = column!("session_id", StringArray);
        let sku = column!("sku", StringArray);
        let qty = column!("qty", Int64Array);
        let amount_cents = column!("amount_cents", Int64Array);
        let price_cents = column!("price_cents", Int64Array);
        let temperature_c = column!("temperature_c", Float32Array);
        let door_open = column!("door_open", BooleanArray);
        let order_id = column!("order_id", StringArray);
        let reason = column!("reason", StringArray);
        let par = column!("par", Int64Array);
        let min = column!("min", Int64Array);
        let perishable = column!("perishable", BooleanArray);
        let region = column!("region", StringArray);
        let site = column!("site", StringArray);
        // Files written before incarnations existed have no such column.
        let incarnation = batch.column_by_name("incarnation").and_then(|c| c.as_any().downcast_ref::<UInt64Array>());
        for i in 0..batch.num_rows() {
            let text = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_owned());
            let need = |v: Option<String>, col: &str| v.ok_or_else(|| bad(&format!("row {i}: {col} is null")));
            let int = |a: &Int64Array, col: &str| {
                if a.is_null(i) { Err(bad(&format!("row {i}: {col} is null"))) } else { Ok(a.value(i)) }
            };
            let flag = |a: &BooleanArray, col: &str| {
                if a.is_null(i) { Err(bad(&format!("row {i}: {col} is null"))) } else { Ok(a.value(i)) }
            };
            let payload = match kind.value(i) {
                "telemetry" => Payload::Telemetry {
                    temperature_c: coldstream_pipelines::Temperature(temperature_c.value(i)),
                    door_open: flag(door_open, "door_open")?,
                },
                "door_opened" => Payload::DoorOpened { session_id: need(text(session_id), "session_id")? },
                "door_closed" => Payload::DoorClosed { session_id: need(text(session_id), "session_id")? },
                "item_taken" => Payload::ItemTaken {
                    session_id: need(text(session_id), "session_id")?,
                    sku: need(text(sku), "sku")?,
                    qty: int(qty, "qty")?,
                },
                "item_returned" => Payload::ItemReturned {
                    session_id: need(text(session_id), "session_id")?,
                    sku: need(text(sku), "sku")?,
                    qty: int(qty, "qty")?,
                },
                "payment_authorized" => Payload::PaymentAuthorized {
                    session_id: need(text(session_id), "session_id")?,
                    amount_cents: int(amount_cents, "amount_cents")?,
                },
                "payment_captured" => Payload::PaymentCaptured {
                    session_id: need(text(session_id), "session_id")?,
                    amount_cents: int(amount_cents, "amount_cents")?,
                },
                "payment_declined" => Payload::PaymentDeclined {
                    session_id: need(text(session_id), "session_id")?,
                    reason: need(text(reason), "reason")?,
                },
                "restock_delivered" => Payload::RestockDelivered {
                    order_id: need(text(order_id), "order_id")?,
                    sku: need(text(sku), "sku")?,
                    qty: int(qty, "qty")?,
                },
                "stock_counted" => Payload::StockCounted { sku: need(text(sku), "sku")?, qty: int(qty, "qty")? },
                "price_changed" => Payload::PriceChanged {
                    sku: need(text(sku), "sku")?,
                    price_cents: int(price_cents, "price_cents")?,
                    fridge_id: text(fridge_id),
                },
                "fridge_registered" => Payload::FridgeRegistered {
                    fridge_id: need(text(fridge_id), "fridge_id")?,
                    region: need(text(region), "region")?,
                    site: need(text(site), "site")?,
                },
                "planogram_set" => Payload::PlanogramSet {
                    fridge_id: need(text(fridge_id), "fridge_id")?,
                    sku: need(text(sku), "sku")?,
                    par: int(par, "par")?,
                    min: int(min, "min")?,
                    perishable: flag(perishable, "perishable")?,
                },
                other => return Err(bad(&format!("row {i}: unknown kind {other:?}"))),
            };
            let event = Event {
                source_id: source_id.value(i).to_owned(),
                incarnation: incarnation.filter(|c| c.is_valid(i)).map_or(0, |c| c.value(i)),
                seq: seq.value(i),
                event_time: event_time.value(i),
                payload,
            };
            rows.push((ingest_time.value(i) as u64, event));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use coldstream_pipelines::fleet::{Fleet, FleetSpec};
    use coldstream_pipelines::{Payload, Temperature};

    use super::*;

    /// One event of every payload kind; the match makes a new kind a
    /// compile error here until it is added.
    fn one_of_each() -> Vec<Payload> {
        let all = vec![
            Payload::Telemetry { temperature_c: Temperature(-1.5), door_open: true },
            Payload::DoorOpened { session_id: "s1".into() },
            Payload::ItemTaken { session_id: "s1".into(), sku: "cola".into(), qty: 2 },
            Payload::ItemReturned { session_id: "s1".into(), sku: "cola".into(), qty: 1 },
            Payload::DoorClosed { session_id: "s1".into() },
            Payload::PaymentAuthorized { session_id: "s1".into(), amount_cents: 180 },
            Payload::PaymentCaptured { session_id: "s1".into(), amount_cents: 180 },
            Payload::PaymentDeclined { session_id: "s2".into(), reason: "insufficient funds".into() },
            Payload::RestockDelivered { order_id: "RO-FR-1-5".into(), sku: "cola".into(), qty: 12 },
            Payload::StockCounted { sku: "cola".into(), qty: 0 },
            Payload::PriceChanged { sku: "cola".into(), price_cents: 190, fridge_id: Some("FR-1".into()) },
            Payload::PriceChanged { sku: "cola".into(), price_cents: 180, fridge_id: None },
            Payload::FridgeRegistered { fridge_id: "FR-1".into(), region: "eu-west".into(), site: "site-1".into() },
            Payload::PlanogramSet { fridge_id: "FR-1".into(), sku: "cola".into(), par: 12, min: 3, perishable: false },
        ];
        for payload in &all {
            match payload {
                Payload::Telemetry { .. }
                | Payload::DoorOpened { .. }
                | Payload::ItemTaken { .. }
                | Payload::ItemReturned { .. }
                | Payload::DoorClosed { .. }
                | Payload::PaymentAuthorized { .. }
                | Payload::PaymentCaptured { .. }
                | Payload::PaymentDeclined { .. }
                | Payload::RestockDelivered { .. }
                | Payload::StockCounted { .. }
                | Payload::PriceChanged { .. }
                | Payload::FridgeRegistered { .. }
                | Payload::PlanogramSet { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_payload_kind_reads_back_from_the_archive_as_it_was_written() {
        let spec = FleetSpec {
            seed: 3,
            fridges: 3,
            events: 3_000,
            start_us: 1_767_225_600_000_000,
            bad_rate: 0.0,
            skus: None,
        };
        let mut events = Fleet::new(&spec).all_events();
        events.extend(one_of_each().into_iter().enumerate().map(|(i, payload)| Event {
            source_id: "FR-1".into(),
            incarnation: 0,
            seq: 1_000_000 + i as u64,
            event_time: spec.start_us + i as i64,
            payload,
        }));
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut archive, resume) = EventArchive::open(dir.path(), ParquetConfig::default()).expect("opens");
        assert!(resume.is_none());
        let mut written: Vec<(u64, Event)> = Vec::new();
        for (offset, event) in events.into_iter().enumerate() {
            let ingest_ms = 5_000 + offset as u64 / 100;
            archive.push_event(offset as u64, ingest_ms, event.clone()).expect("buffers");
            written.push((ingest_ms, event));
        }
        archive.flush(written.len() as u64).expect("flushes");
        let mut read = Vec::new();
        for (path, from, to) in list_parts(&dir.path().join("events")).expect("lists") {
            assert_eq!((from, to), (0, written.len() as u64), "{}", path.display());
            read.extend(read_events(&path).expect("reads"));
        }
        written.sort();
        read.sort();
        assert_eq!(read, written);
        let kinds: std::collections::BTreeSet<_> = read.iter().map(|(_, event)| event.kind()).collect();
        assert_eq!(kinds.len(), 13, "every kind is in the round trip: {kinds:?}");
    }

    #[test]
    fn a_range_is_written_as_it_is_read_and_appears_only_when_committed() {
        let spec = FleetSpec {
            seed: 4,
            fridges: 2,
            events: 3 * BATCH_ROWS as u64,
            start_us: 1_767_225_600_000_000,
            bad_rate: 0.0,
            skus: None,
        };
        let events = Fleet::new(&spec).all_events();
        let dir = tempfile::tempdir().expect("temp dir");
        let open_parts = || super::super::temporary_files(&dir.path().join("events"));
        let (mut archive, _) = EventArchive::open(dir.path(), ParquetConfig::default()).expect("opens");
        for (offset, event) in events.iter().enumerate() {
            archive.push_event(offset as u64, 5_000, event.clone()).expect("buffers");
        }
        assert!(archive.events.len() < BATCH_ROWS, "{} events held in memory", archive.events.len());
        assert!(open_parts() >= 1, "the range is in open parts");
        assert!(list_parts(&dir.path().join("events")).expect("lists").is_empty(), "and not yet in a part");
        archive.flush(events.len() as u64).expect("commits");
        assert_eq!(open_parts(), 0);
        let mut read = Vec::new();
        for (path, _, _) in list_parts(&dir.path().join("events")).expect("lists") {
            read.extend(read_events(&path).expect("reads").into_iter().map(|(_, event)| event));
        }
        let (mut read, mut events) = (read, events);
        read.sort_by_key(|e| (e.source_id.clone(), e.seq));
        events.sort_by_key(|e| (e.source_id.clone(), e.seq));
        assert_eq!(read, events, "every event once");
    }
}
