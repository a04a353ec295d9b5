//! `coldstream udf`: writes and builds UDFs written for Arroyo.

use std::path::PathBuf;

/// What to do.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// The UDF helpers.
#[derive(clap::Subcommand)]
pub enum Action {
    /// Writes a new UDF crate (`#[udf] fn NAME(x: i64) -> i64`) to edit.
    New {
        /// The function's name in SQL (lowercase letters, digits, `_`).
        name: String,
        /// Where to write it [default: ./NAME].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Builds a UDF crate (release) and writes its manifest from its
    /// source; prints the library to load (`coldstream query --udf`,
    /// `[sql] udfs`).
    Build {
        /// The crate.
        dir: PathBuf,
        /// Cargo's target directory [default: DIR/target]; UDFs that share
        /// one build arrow 51 once.
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
}

/// Runs the helper.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::New { name, dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            coldstream::udf::scaffold(&dir, &name)?;
            println!("wrote {}; build it with `coldstream udf build {}`", dir.display(), dir.display());
        }
        Action::Build { dir, target_dir } => {
            let library = coldstream::udf::build(&dir, target_dir.as_deref())?;
            println!("{}", library.display());
        }
    }
    Ok(())
}
