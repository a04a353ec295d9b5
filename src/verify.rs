//! Checks a data directory against the batch references: every
//! `<view>_now` table, read back from Parquet into records, equals its
//! view's reference computed from scratch over the events in `events/`.
//! The crash harness and the tests use it; it reads only.

use std::collections::BTreeSet;
use std::path::Path;

use coldstream_pipelines::Event;
use coldstream_pipelines::views::ViewConfig;
use coldstream_sinks::SinkError;
use coldstream_sinks::parquet::{ChangeRow, decode_rows};
use datafusion::error::DataFusionError;

use crate::config::Config;
use crate::server::ServerError;

/// Why a check could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The archive could not be read.
    #[error("{0}")]
    Archive(#[from] ServerError),
    /// A query failed.
    #[error("{}", crate::query::one_line(.0))]
    Query(#[from] DataFusionError),
    /// A row is not a record of its view.
    #[error("{0}")]
    Rows(#[from] SinkError),
}

/// One view's check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewCheck {
    /// The table, `<view>_now`.
    pub table: String,
    /// Its rows.
    pub rows: usize,
    /// Whether they equal the reference.
    pub equal: bool,
}

/// Compares every `*_now` view of `data_dir` with its batch reference over
/// the events in `events/`.
pub async fn views_against_references(data_dir: &Path) -> Result<Vec<ViewCheck>, VerifyError> {
    let events: Vec<Event> = crate::rebuild::archived_events(data_dir)?.into_iter().map(|(_, event)| event).collect();
    views_against(data_dir, &events).await
}

/// [`views_against_references`] with the archived events already read.
pub async fn views_against(data_dir: &Path, events: &[Event]) -> Result<Vec<ViewCheck>, VerifyError> {
    views_of(&[data_dir.to_path_buf()], events).await
}

/// The same check over the views of several data directories read as one
/// (the processes of a cluster, each holding its own fridges).
pub async fn views_of(data_dirs: &[std::path::PathBuf], events: &[Event]) -> Result<Vec<ViewCheck>, VerifyError> {
    let ctx = crate::query::context_of(data_dirs).await?;
    let columns = if data_dirs.len() > 1 { "* EXCLUDE (data_region)" } else { "*" };
    let views = Config::default().views().expect("the default views load no UDF");
    macro_rules! against_every_view {
        ($($(#[$doc:meta])* $field:ident: $marker:ident => $record:ty,)*) => {
            vec![$(view_against::<coldstream_pipelines::views::$marker>(&ctx, columns, events, &views).await?,)*]
        };
    }
    Ok(coldstream_pipelines::for_each_view!(against_every_view))
}

/// The view `V`'s `<view>_now` table, read back into records, against the
/// batch reference over `events`.
async fn view_against<V: ChangeRow>(
    ctx: &datafusion::prelude::SessionContext,
    columns: &str,
    events: &[Event],
    views: &ViewConfig,
) -> Result<ViewCheck, VerifyError> {
    let table = format!("{}_now", V::NAME);
    let batches = crate::query::run(ctx, &format!("SELECT {columns} FROM {table}")).await?;
    let mut now = BTreeSet::new();
    for batch in &batches {
        now.extend(decode_rows::<V>(batch)?.iter().map(V::project));
    }
    let equal = now == V::reference(events, views);
    Ok(ViewCheck { table, rows: now.len(), equal })
}
