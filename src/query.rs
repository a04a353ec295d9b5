//! `coldstream query`: SQL over the Parquet logs, through DataFusion.
//!
//! Tables: `events` and `rejected` (partitioned by `dt`), one changelog per
//! view (`inventory`, `sessions`, `revenue`, `sales_7d`, `excursions`,
//! `restock_orders`, `alerts`), and the current state of each view
//! (`<view>_now`), derived from its changelog by summing the diffs. Both
//! the changelogs and the `_now` tables come from the list of views: a
//! new view has its tables without a line here.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use coldstream_sinks::parquet::{list_parts, schema, view_tables};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::{SQLOptions, SessionContext};

/// The current state of a view: the records of its changelog whose diffs
/// sum above zero, with the changelog's columns but `time` and `diff`.
fn now_sql(view: &str, changelog: &Schema) -> String {
    let change_columns: Vec<String> = schema::change_columns().iter().map(|f| f.name().clone()).collect();
    let columns: Vec<String> = changelog
        .fields()
        .iter()
        .filter(|field| !change_columns.contains(field.name()))
        .map(|field| format!("\"{}\"", field.name()))
        .collect();
    let columns = columns.join(", ");
    format!("SELECT {columns} FROM {view} GROUP BY {columns} HAVING SUM(diff) > 0")
}

/// How query results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

async fn register(
    ctx: &SessionContext,
    name: &str,
    dir: &Path,
    file_schema: SchemaRef,
    partitioned: bool,
) -> Result<()> {
    let has_files = !list_parts(dir).map_err(|e| DataFusionError::External(Box::new(e)))?.is_empty();
    if !has_files {
        let mut fields: Vec<Field> = file_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        if partitioned {
            fields.push(Field::new("dt", DataType::Utf8, false));
        }
        let table = MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]])?;
        ctx.register_table(name, Arc::new(table))?;
        return Ok(());
    }
    let mut options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    if partitioned {
        options = options.with_table_partition_cols(vec![("dt".into(), DataType::Utf8)]);
    }
    let location = format!("{}/", dir.display());
    ctx.register_listing_table(name, &location, options, Some(file_schema), None).await
}

/// A session with every coldstream table of `data_dir` registered.
pub async fn context(data_dir: &Path) -> Result<SessionContext> {
    if !data_dir.is_dir() {
        return Err(DataFusionError::Plan(format!(
            "{} is not a coldstream data directory (run `coldstream demo` or `coldstream run` first, or pass --data)",
            data_dir.display()
        )));
    }
    let ctx = SessionContext::new();
    register(&ctx, "events", &data_dir.join("events"), Arc::clone(&schema::EVENTS), true).await?;
    register(&ctx, "rejected", &data_dir.join("rejected"), Arc::clone(&schema::REJECTED), true).await?;
    let failed = Arc::clone(&schema::WEBHOOKS_FAILED);
    register(&ctx, "webhooks_failed", &data_dir.join("webhooks_failed"), failed, false).await?;
    for (view, changelog) in view_tables() {
        let now = now_sql(view, &changelog);
        register(&ctx, view, &data_dir.join("views").join(view), changelog, false).await?;
        let table = ctx.sql(&now).await?.into_view();
        ctx.register_table(format!("{view}_now"), table)?;
    }
    Ok(ctx)
}

/// What analysts' SQL may do: read. No DDL (`CREATE`, `DROP`), no DML
/// (`INSERT`, `COPY … TO`), no statements (`SET`, transactions): a query
/// over a live data directory must never write into it or change the
/// session.
fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// Runs one SQL statement, which must only read.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let plan = ctx.state().create_logical_plan(sql).await?;
    read_only().verify_plan(&plan).map_err(|refused| {
        DataFusionError::Plan(format!(
            "coldstream SQL is read-only: {}",
            refused.to_string().trim_start_matches("Error during planning: ")
        ))
    })?;
    ctx.execute_logical_plan(plan).await?.collect().await
}

/// Renders batches in `format`.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String> {
    let bytes = match format {
        Format::Table => return Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string()),
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
            for batch in batches {
                writer.write(batch)?;
            }
            writer.into_inner()
        }
        Format::Json => {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            writer.write_batches(&refs)?;
            writer.finish()?;
            writer.into_inner()
        }
    };
    String::from_utf8(bytes).map_err(|e| DataFusionError::Execution(e.to_string()))
}

/// A DataFusion error on one line, for the command line.
pub fn one_line(error: &DataFusionError) -> String {
    error.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}
