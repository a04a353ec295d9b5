//! `coldstream query`: SQL over the Parquet logs, through DataFusion.
//!
//! Tables: `events` and `rejected` (partitioned by `dt`), one changelog per
//! view (`inventory`, `sessions`, `revenue`, `sales_7d`, `excursions`,
//! `restock_orders`, `alerts`), and the current state of each view
//! (`<view>_now`), derived from its changelog by summing the diffs, and
//! `coldstream_status`, how fresh each view's files are. Both
//! the changelogs and the `_now` tables come from the list of views: a
//! new view has its tables without a line here.
//!
//! Several data directories (the processes of a cluster, or several
//! regions) read as one set of tables: each table is the union of the
//! directories' tables, with a `data_region` column naming where each row
//! came from (the directory's `REGION` file, which `coldstream run` writes
//! when its config names a region; else the directory's name). It is not
//! called `region`: `events` has that column already, FridgeRegistered's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use coldstream_sinks::parquet::{list_parts, schema, view_tables};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionContext};

/// The current state of a view: the records of its changelog whose diffs
/// sum above zero, with the changelog's columns but `time` and `diff`.
fn now_sql(view: &str, changelog: &Schema, region: bool) -> String {
    let change_columns: Vec<String> = schema::change_columns().iter().map(|f| f.name().clone()).collect();
    let columns: Vec<String> = changelog
        .fields()
        .iter()
        .filter(|field| !change_columns.contains(field.name()))
        .map(|field| format!("\"{}\"", field.name()))
        .chain(region.then(|| REGION_COLUMN.to_owned()))
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
    context_of(&[data_dir.to_path_buf()]).await
}

/// The column that names each row's data directory when several are read.
pub const REGION_COLUMN: &str = "data_region";

/// The name a data directory's rows carry in the `data_region` column.
pub fn region_of(data_dir: &Path) -> String {
    match std::fs::read_to_string(data_dir.join(REGION_FILE)) {
        Ok(region) if !region.trim().is_empty() => region.trim().to_owned(),
        _ => data_dir.file_name().map_or_else(|| data_dir.display().to_string(), |n| n.to_string_lossy().into_owned()),
    }
}

/// The file in a data directory that names its region.
pub const REGION_FILE: &str = "REGION";

/// A session with every coldstream table of `data_dirs` registered: one
/// directory's tables as they are, several directories' as their union
/// with a `data_region` column.
pub async fn context_of(data_dirs: &[PathBuf]) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    register_all(&ctx, data_dirs).await?;
    Ok(ctx)
}

/// A table of Parquet files under a data directory.
pub struct ParquetTable {
    /// The table's name in SQL.
    pub name: &'static str,
    /// Its folder, relative to the data directory.
    pub folder: String,
    /// The schema its files are read with (columns are only ever added).
    pub schema: SchemaRef,
    /// Whether the folder is partitioned by day (`dt=YYYY-MM-DD/`).
    pub partitioned: bool,
}

/// Every table of Parquet files: the archive, the dead letters and every
/// view's changelog.
pub fn parquet_tables() -> Vec<ParquetTable> {
    let table = |name, folder: &str, schema: &SchemaRef, partitioned| ParquetTable {
        name,
        folder: folder.to_owned(),
        schema: Arc::clone(schema),
        partitioned,
    };
    [
        table("events", "events", &schema::EVENTS, true),
        table("rejected", "rejected", &schema::REJECTED, true),
        table("webhooks_failed", "webhooks_failed", &schema::WEBHOOKS_FAILED, false),
    ]
    .into_iter()
    .chain(view_tables().into_iter().map(|(view, changelog)| ParquetTable {
        name: view,
        folder: format!("views/{view}"),
        schema: changelog,
        partitioned: false,
    }))
    .collect()
}

/// Registers every coldstream table of `data_dirs` in `ctx`, as
/// [`context_of`] does.
pub async fn register_all(ctx: &SessionContext, data_dirs: &[PathBuf]) -> Result<()> {
    if data_dirs.is_empty() {
        return Err(DataFusionError::Plan("give at least one data directory".into()));
    }
    for data_dir in data_dirs {
        if !data_dir.is_dir() {
            return Err(DataFusionError::Plan(format!(
                "{} is not a coldstream data directory (run `coldstream demo` or `coldstream run` first, or pass --data)",
                data_dir.display()
            )));
        }
    }
    let tables: Vec<(&str, String, SchemaRef, bool)> =
        parquet_tables().into_iter().map(|t| (t.name, t.folder, t.schema, t.partitioned)).collect();
    let several = data_dirs.len() > 1;
    if several {
        let catalog = ctx.catalog("datafusion").ok_or_else(|| DataFusionError::Plan("no default catalog".into()))?;
        catalog.register_schema(PARTS_SCHEMA, Arc::new(datafusion::catalog::MemorySchemaProvider::new()))?;
    }
    for (name, folder, file_schema, partitioned) in &tables {
        if !several {
            register(ctx, name, &data_dirs[0].join(folder), Arc::clone(file_schema), *partitioned).await?;
            continue;
        }
        let mut parts = Vec::new();
        for (i, data_dir) in data_dirs.iter().enumerate() {
            let part = format!("{PARTS_SCHEMA}.{name}_{i}");
            register(ctx, &part, &data_dir.join(folder), Arc::clone(file_schema), *partitioned).await?;
            let region = region_of(data_dir).replace('\'', "''");
            parts.push(format!("SELECT *, '{region}' AS {REGION_COLUMN} FROM {part}"));
        }
        let union = ctx.sql(&parts.join(" UNION ALL ")).await?.into_view();
        ctx.register_table(*name, union)?;
    }
    for (view, changelog) in view_tables() {
        let table = ctx.sql(&now_sql(view, &changelog, several)).await?.into_view();
        ctx.register_table(format!("{view}_now"), table)?;
    }
    ctx.register_table(STATUS_TABLE, Arc::new(status_table(data_dirs, several)?))?;
    Ok(())
}

/// The table that says how fresh each view's tables are.
pub const STATUS_TABLE: &str = "coldstream_status";

/// `coldstream_status`: per view (and data directory), the logical time
/// before which its changelog files hold every change (`complete_before`,
/// null before its first file), and how many files there are. A `_now`
/// table is the view as of that time.
fn status_table(data_dirs: &[PathBuf], several: bool) -> Result<MemTable> {
    use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
    let mut fields = vec![
        Field::new("view", DataType::Utf8, false),
        Field::new(
            "complete_before",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("files", DataType::Int64, false),
    ];
    if several {
        fields.push(Field::new(REGION_COLUMN, DataType::Utf8, false));
    }
    let (mut views, mut before, mut files, mut regions) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for data_dir in data_dirs {
        for (view, _) in view_tables() {
            let parts =
                list_parts(&data_dir.join("views").join(view)).map_err(|e| DataFusionError::External(Box::new(e)))?;
            views.push(view.to_owned());
            before.push(parts.iter().map(|(_, _, to)| *to as i64).max());
            files.push(parts.len() as i64);
            regions.push(region_of(data_dir));
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(views)),
        Arc::new(TimestampMillisecondArray::from(before).with_timezone("UTC")),
        Arc::new(Int64Array::from(files)),
    ];
    if several {
        columns.push(Arc::new(StringArray::from(regions)));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    MemTable::try_new(schema, vec![vec![batch]])
}

/// Makes `udfs` callable from SQL on `ctx`.
pub fn register_udfs(ctx: &SessionContext, udfs: &[Arc<crate::udf::LoadedUdf>]) {
    for udf in udfs {
        ctx.register_udf(crate::udf::scalar_udf(udf));
    }
}

/// The schema that holds each directory's own tables when several are read.
const PARTS_SCHEMA: &str = "parts";

fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// Plans one SQL statement, which must only read.
pub async fn plan(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan> {
    let plan = ctx.state().create_logical_plan(sql).await?;
    read_only().verify_plan(&plan).map_err(|refused| {
        DataFusionError::Plan(format!(
            "coldstream SQL is read-only: {}",
            refused.to_string().trim_start_matches("Error during planning: ")
        ))
    })?;
    Ok(plan)
}

/// Runs one SQL statement, which must only read.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let plan = plan(ctx, sql).await?;
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
