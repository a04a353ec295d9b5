//! Where results go: Parquet logs that analysts query (`events/`,
//! `rejected/`, `views/<view>/`), written exactly once, and webhooks to
//! procurement, accounting and alerts, delivered at least once with
//! stable ids.
//!
//! Every sink of view changes implements [`ViewSink`]; the server holds a
//! list of them and treats them alike.

pub mod parquet;
pub mod webhooks;

use coldstream_pipelines::Time;
use coldstream_pipelines::views::ViewBatch;

pub use parquet::{ParquetConfig, SinkError};

/// A consumer of the views' changes.
///
/// Changes arrive in batches of any logical times; `advance` then says
/// that every change before a time has arrived, so the sink may act on
/// them (write a file, send a message). A checkpoint holds each sink's
/// [`ViewSink::snapshot`] under its [`ViewSink::name`], taken right after
/// an `advance` to the checkpoint's sink frontier; a restart gives it back
/// through [`ViewSink::restore`] and replays the changes from the
/// dataflow's checkpoint on, which may repeat changes before that
/// frontier: the sink drops those.
pub trait ViewSink: Send {
    /// The sink's name: keys its state in checkpoints. Unique in a server.
    fn name(&self) -> &'static str;

    /// Takes a batch of changes.
    fn push(&mut self, batch: &ViewBatch);

    /// Takes a batch of changes that no other sink needs after this one:
    /// a sink that keeps the records may keep these without copying them.
    fn take(&mut self, batch: ViewBatch) {
        self.push(&batch);
    }

    /// Every change before `frontier` has arrived; `closing` when the
    /// dataflow has stopped and nothing more will come.
    fn advance(&mut self, frontier: Time, closing: bool) -> Result<(), SinkError>;

    /// The sink's state for a checkpoint, right after `advance(frontier)`.
    fn snapshot(&mut self, frontier: Time) -> Result<Vec<u8>, SinkError>;

    /// Takes back a snapshot taken at `frontier`.
    fn restore(&mut self, snapshot: &[u8], frontier: Time) -> Result<(), SinkError>;

    /// Changes before this time were already acted on before this start
    /// (a replay passes them again).
    fn resumes_at(&self) -> Time {
        0
    }
}
