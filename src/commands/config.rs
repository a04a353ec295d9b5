//! `coldstream config`: configuration helpers.

use clap::Subcommand;

/// What to do with the configuration.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// A configuration helper.
#[derive(Subcommand)]
pub enum Action {
    /// Prints a complete configuration with every default, commented.
    Default,
}

/// Runs the helper.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::Default => print!("{}", coldstream::config::DEFAULT_TOML),
    }
    Ok(())
}
