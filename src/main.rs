//! The `coldstream` command line: one subcommand per file in `commands/`,
//! over the server library.

mod commands;

use clap::Parser;

/// Stream processing for fleets of smart fridges.
#[derive(Parser)]
#[command(name = "coldstream", version, about)]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = cli.command.run() {
        let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
        eprintln!("error: {}", chain.join(": ").split_whitespace().collect::<Vec<_>>().join(" "));
        std::process::exit(1);
    }
}
