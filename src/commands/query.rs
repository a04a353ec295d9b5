//! `coldstream query`: SQL over the Parquet logs.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use coldstream::query::{self, Format};

use super::{DataArgs, init_logging, runtime};

/// The statement, where to run it and how to print the answer.
#[derive(clap::Args)]
pub struct Args {
    /// A data directory; give several (the processes of a cluster, or
    /// several regions) to read them as one set of tables with a `data_region`
    /// column [default: ./coldstream-data].
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Read the SQL from a file (`-` for standard input).
    #[arg(short = 'f', long = "file", conflicts_with = "sql")]
    pub file: Option<PathBuf>,
    /// Loads a UDF (a library `coldstream udf build` made) for the
    /// statement; repeat for several.
    #[arg(long)]
    pub udf: Vec<PathBuf>,
    /// The SQL statement.
    pub sql: Option<String>,
}

/// Runs the statement and prints its rows.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging("warn");
    let sql = match (args.file, args.sql) {
        (Some(path), _) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading SQL from standard input")?;
            text
        }
        (Some(path), _) => std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
        (None, Some(sql)) => sql,
        (None, None) => bail!("give a SQL statement or -f FILE"),
    };
    let data = if args.data.is_empty() { vec![DataArgs::default().dir()] } else { args.data };
    let output = runtime()?.block_on(async {
        let one_line = |e: datafusion::error::DataFusionError| anyhow::anyhow!(query::one_line(&e));
        let ctx = query::context_of(&data).await.map_err(one_line)?;
        let udfs = coldstream::udf::load_all(&args.udf)?;
        query::register_udfs(&ctx, &udfs);
        let batches = query::run(&ctx, &sql).await.map_err(one_line)?;
        query::render(&batches, args.format).map_err(one_line)
    })?;
    print!("{output}");
    if !output.ends_with('\n') {
        println!();
    }
    Ok(())
}
