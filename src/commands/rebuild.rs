//! `coldstream rebuild`: every view recomputed from the Parquet archive.

use super::{ConfigArgs, init_logging, runtime};

/// The server's configuration, whose views are rebuilt.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Rebuilds and says what it did.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging("info");
    let config = args.config.load()?;
    let rebuilt = runtime()?.block_on(coldstream::rebuild::rebuild(&config))?;
    println!(
        "rebuilt every view of {} from {} archived log records in {:.1} s; the log resumes at offset {} (checkpoint at {} ms); the old changelogs are in views.before-rebuild/",
        config.data_dir.display(),
        rebuilt.records,
        rebuilt.elapsed.as_secs_f64(),
        rebuilt.offset,
        rebuilt.time
    );
    Ok(())
}
