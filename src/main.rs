//! The `coldstream` command line: one subcommand per file in `commands/`,
//! over the server library.

mod commands;

use clap::Parser;

/// The process's allocator. Every thread of the pipeline allocates and
/// frees small records all the time (decoded events, view changes, webhook
/// bodies); glibc's allocator spent about a quarter of the CPU on it at half
/// the flat-out rate (see "The allocator" in the README). A UDF's
/// library frees only memory the host took from the C allocator for it
/// (see `udf.rs`), so the host's own allocator is free to be another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stream processing for fleets of smart fridges.
#[derive(Parser)]
#[command(name = "coldstream", version, about)]
struct Cli {
    /// How log lines on stderr are written: `human`, or `json` (one
    /// object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value = "human", env = "COLDSTREAM_LOG_FORMAT")]
    log_format: commands::LogFormat,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() {
    let cli = Cli::parse();
    let _ = commands::LOG_FORMAT.set(cli.log_format);
    if let Err(error) = cli.command.run() {
        let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
        eprintln!("error: {}", chain.join(": ").split_whitespace().collect::<Vec<_>>().join(" "));
        std::process::exit(1);
    }
}
