//! `webhooks_failed/`: the dead letter of webhook deliveries, one Parquet
//! file per refused delivery (they are rare), written atomically.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt16Builder};

use super::events::Message;
use crate::parquet::{ParquetConfig, SinkError, part_name, schema, write_part};

/// A delivery the receiver refused for good.
#[derive(Clone, Debug)]
pub struct FailedDelivery {
    /// What was sent.
    pub message: Message,
    /// The answer's HTTP status.
    pub status: u16,
    /// The answer's body (up to 4 KiB).
    pub answer: String,
}

/// The folder refused deliveries go to.
pub struct DeadLetter {
    dir: PathBuf,
    config: ParquetConfig,
}

impl DeadLetter {
    /// `root/webhooks_failed/`. Files a crash left half-written are
    /// removed by [`DeadLetter::open`], their one writer; readers never touch
    /// them.
    pub fn new(root: &std::path::Path, config: ParquetConfig) -> DeadLetter {
        DeadLetter { dir: root.join("webhooks_failed"), config }
    }

    /// [`DeadLetter::new`], removing what a crash left half-written.
    pub fn open(root: &std::path::Path, config: ParquetConfig) -> Result<DeadLetter, SinkError> {
        let dead_letter = DeadLetter::new(root, config);
        crate::parquet::remove_leftovers(&dead_letter.dir)?;
        Ok(dead_letter)
    }

    /// Writes one refused delivery durably.
    pub fn write(&self, failed: &FailedDelivery) -> Result<(), SinkError> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut failed_at = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut time = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut text: Vec<StringBuilder> = (0..6).map(|_| StringBuilder::new()).collect();
        let mut status = UInt16Builder::new();
        failed_at.append_value(now);
        time.append_value(failed.message.time as i64);
        status.append_value(failed.status);
        let m = &failed.message;
        for (builder, value) in
            text.iter_mut().zip([m.endpoint.as_str(), &m.id, &m.kind, &m.key, &m.body, &failed.answer])
        {
            builder.append_value(value);
        }
        let mut text = text.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef);
        let mut next = || text.next().expect("six text columns");
        let (endpoint, id, kind, key, body, answer) = (next(), next(), next(), next(), next(), next());
        let columns: Vec<ArrayRef> = vec![
            Arc::new(failed_at.finish()),
            endpoint,
            id,
            kind,
            key,
            Arc::new(time.finish()),
            body,
            Arc::new(status.finish()),
            answer,
        ];
        let batch = RecordBatch::try_new(Arc::clone(&schema::WEBHOOKS_FAILED), columns)
            .map_err(|source| SinkError::Arrow { table: "webhooks_failed".into(), source })?;
        // Named by the message (its time and id), so a second write after a
        // crash finds the file already there.
        let digits: String = m.id.chars().filter(char::is_ascii_hexdigit).take(16).collect();
        let tag = u64::from_str_radix(&digits, 16).unwrap_or(0);
        write_part(&self.dir, &part_name(m.time, tag), &batch, &self.config)?;
        Ok(())
    }
}
