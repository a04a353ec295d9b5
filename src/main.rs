//! The `coldstream` command line.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use coldstream_sources::auth::{Principal, Tokens};

use coldstream::config::{self, Config};
use coldstream::{demo, query, server, simulate};

/// Stream processing for fleets of smart fridges.
#[derive(Parser)]
#[command(name = "coldstream", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole system on one machine: server, simulated fleet, report.
    Demo {
        /// Where the demo's data goes (replaced if it holds an earlier demo).
        #[arg(long, default_value = "./coldstream-data/demo")]
        data: PathBuf,
        /// Fridge events to simulate.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Simulated fridges.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        fridges: u64,
        /// Seed of the simulated fleet.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Timely worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
    },
    /// The long-running pipeline server.
    Run {
        /// A TOML configuration file (`coldstream config default` prints one).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `data_dir`.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Overrides `listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Overrides `workers`.
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Recomputes every view from the Parquet archive in events/ (stop the
    /// server first): for a lost checkpoint or changed view settings.
    Rebuild {
        /// A TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `data_dir`.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Overrides `workers`.
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Crash test: runs the server and a simulated fleet as processes,
    /// SIGKILLs the server at random moments, restarts it, and checks that
    /// no acked event, view change or webhook was lost or repeated.
    Chaos {
        /// A fresh data directory for the run.
        #[arg(long)]
        data: PathBuf,
        /// Kill and restart cycles.
        #[arg(long, default_value_t = 10)]
        cycles: u32,
        /// Fridge events the fleet sends in all.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Seed of the fleet and of the kill times.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated fridges.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        fridges: u64,
        /// Events per second the fleet sends (default: spread over the cycles).
        #[arg(long)]
        rate: Option<f64>,
        /// Timely workers of the server.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The longest the server runs before it is killed, in ms.
        #[arg(long, default_value_t = 2500)]
        max_run_ms: u64,
    },
    /// End-to-end throughput and latency: the pipeline and local webhook
    /// receivers here, a simulated fleet in a separate process.
    Bench {
        /// Where the run's data goes (replaced if it holds an earlier bench).
        #[arg(long, default_value = "./coldstream-data/bench")]
        data: PathBuf,
        /// Seconds the fleet sends.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Events per second for the whole fleet, or `max`.
        #[arg(long, default_value = "max")]
        rate: String,
        /// Simulated fridges.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        fridges: u64,
        /// Timely worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Seed of the fleet.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Run flat out, then at 10, 25, 50 and 75 % of that rate, and draw
        /// latency against throughput to this SVG file (the reports go
        /// beside it as JSON).
        #[arg(long, conflicts_with = "rate")]
        curve: Option<PathBuf>,
    },
    /// A fleet of simulated fridges streaming to a gateway over gRPC.
    Simulate {
        /// The gateway.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// Simulated fridges.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        fridges: u64,
        /// Fridge events to send in all.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Events per second for the whole fleet, or `max`.
        #[arg(long, default_value = "max")]
        rate: String,
        /// Seed of the simulated fleet.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Event time of the first event (RFC 3339); by default early
        /// enough that the history ends before now.
        #[arg(long)]
        start: Option<String>,
        /// Events per batch, at most.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Share of events made invalid on purpose (0 to 1).
        #[arg(long, default_value_t = 0.0005)]
        bad_rate: f64,
        /// The fleet secret (or COLDSTREAM_SECRET).
        #[arg(long)]
        secret: Option<String>,
    },
    /// SQL over the Parquet logs (DataFusion).
    Query {
        /// The data directory.
        #[arg(long, default_value = "./coldstream-data/demo")]
        data: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = query::Format::Table)]
        format: query::Format,
        /// Read the SQL from a file (`-` for standard input).
        #[arg(short = 'f', long = "file", conflicts_with = "sql")]
        file: Option<PathBuf>,
        /// The SQL statement.
        sql: Option<String>,
    },
    /// Prints the bearer token of a fridge or back-office client.
    Token {
        /// A fridge id.
        #[arg(long, conflicts_with = "back_office", required_unless_present = "back_office")]
        fridge: Option<String>,
        /// A back-office client id.
        #[arg(long)]
        back_office: Option<String>,
        /// The fleet secret (or COLDSTREAM_SECRET).
        #[arg(long)]
        secret: Option<String>,
    },
    /// A webhook receiver that verifies signatures and prints each delivery.
    Receive {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: std::net::SocketAddr,
        /// The endpoint's `whsec_` secret.
        #[arg(long)]
        secret: String,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Prints a complete configuration with every default, commented.
    Default,
}

fn secret(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("COLDSTREAM_SECRET").ok()).unwrap_or_else(|| config::DEV_SECRET.to_owned())
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COLDSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
        eprintln!("error: {}", chain.join(": ").split_whitespace().collect::<Vec<_>>().join(" "));
        std::process::exit(1);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { data, events, fridges, seed, workers } => {
            init_logging("warn");
            let spec = demo::DemoSpec { data_dir: data, events, fridges: fridges as usize, seed, workers };
            runtime()?.block_on(demo::run(spec))?;
        }
        Command::Run { config, data, listen, workers } => {
            init_logging("info");
            let mut config = load_config(config, data, workers)?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let secret_from_env = std::env::var("COLDSTREAM_SECRET").is_ok();
            if config.auth.secret == config::DEV_SECRET && !secret_from_env && !config.auth.allow_dev_secret {
                bail!(
                    "no fleet secret: set auth.secret in the config or COLDSTREAM_SECRET (or auth.allow_dev_secret = true for a local trial)"
                );
            }
            runtime()?.block_on(async move {
                let started = std::time::Instant::now();
                let server = server::Server::start(&config).await?;
                // Scripts and tests read the bound address from this line.
                println!("coldstream listening on {}", server.addr());
                let ctrl_c = tokio::signal::ctrl_c();
                tokio::pin!(ctrl_c);
                tokio::select! {
                    status = server.replayed(Duration::from_secs(86_400)) => {
                        if status.is_ok() {
                            // ... and, from this one, the time it took to replay what the log held.
                            // Whoever read the address may have closed the pipe.
                            let line = format!("coldstream caught up in {} ms\n", started.elapsed().as_millis());
                            let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
                        }
                        (&mut ctrl_c).await.context("waiting for Ctrl-C")?;
                    }
                    signal = &mut ctrl_c => signal.context("waiting for Ctrl-C")?,
                }
                tracing::info!("shutting down: draining the log into every sink");
                server.shutdown().await?;
                anyhow::Ok(())
            })?;
        }
        Command::Simulate { target, fridges, events, rate, seed, start, batch, bad_rate, secret: flag } => {
            init_logging("warn");
            let rate = match rate.as_str() {
                "max" => None,
                text => match text.parse::<f64>() {
                    Ok(r) if r > 0.0 && r.is_finite() => Some(r),
                    _ => bail!("--rate must be a positive number of events per second or `max`, not {text:?}"),
                },
            };
            if !(0.0..=1.0).contains(&bad_rate) {
                bail!("--bad-rate must be between 0 and 1");
            }
            let fridges = fridges as usize;
            let start_us = match start {
                Some(text) => chrono::DateTime::parse_from_rfc3339(&text)
                    .with_context(|| format!("--start {text:?} is not an RFC 3339 time"))?
                    .timestamp_micros(),
                None => simulate::FleetSpec::start_before(chrono::Utc::now().timestamp_micros(), fridges, events),
            };
            let spec = simulate::FleetSpec { seed, fridges, events, start_us, bad_rate, skus: None };
            let run_spec = simulate::RunSpec {
                target,
                secret: secret(flag),
                rate,
                batch,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let summary = runtime()?.block_on(simulate::run(simulate::Fleet::new(&spec), &run_spec, events))?;
            println!("{summary}");
        }
        Command::Query { data, format, file, sql } => {
            init_logging("warn");
            let sql = match (file, sql) {
                (Some(path), _) if path.as_os_str() == "-" => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text).context("reading SQL from standard input")?;
                    text
                }
                (Some(path), _) => {
                    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
                }
                (None, Some(sql)) => sql,
                (None, None) => bail!("give a SQL statement or -f FILE"),
            };
            let output = runtime()?.block_on(async {
                let ctx = query::context(&data).await.map_err(|e| anyhow::anyhow!(query::one_line(&e)))?;
                let batches = query::run(&ctx, &sql).await.map_err(|e| anyhow::anyhow!(query::one_line(&e)))?;
                query::render(&batches, format).map_err(|e| anyhow::anyhow!(query::one_line(&e)))
            })?;
            print!("{output}");
            if !output.ends_with('\n') {
                println!();
            }
        }
        Command::Token { fridge, back_office, secret: flag } => {
            let principal = match (fridge, back_office) {
                (Some(id), _) => Principal::Fridge(id),
                (None, Some(id)) => Principal::BackOffice(id),
                (None, None) => bail!("give --fridge ID or --back-office ID"),
            };
            println!("{}", Tokens::new(secret(flag)).issue(&principal));
        }
        Command::Receive { listen, secret } => {
            init_logging("warn");
            let secret = coldstream_sinks::webhooks::Secret::parse(&secret).context("--secret")?;
            runtime()?.block_on(async move {
                let receiver = coldstream::receive::Receiver::start(listen, secret, true)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                eprintln!("receiving webhooks on http://{}/ (Ctrl-C stops)", receiver.addr());
                tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
                receiver.stop().await;
                anyhow::Ok(())
            })?;
        }
        Command::Rebuild { config, data, workers } => {
            init_logging("info");
            let config = load_config(config, data, workers)?;
            let rebuilt = runtime()?.block_on(coldstream::rebuild::rebuild(&config))?;
            println!(
                "rebuilt every view of {} from {} archived log records in {:.1} s; the log resumes at offset {} (checkpoint at {} ms); the old changelogs are in views.before-rebuild/",
                config.data_dir.display(),
                rebuilt.records,
                rebuilt.elapsed.as_secs_f64(),
                rebuilt.offset,
                rebuilt.time
            );
        }
        Command::Chaos { data, cycles, events, seed, fridges, rate, workers, max_run_ms } => {
            init_logging("warn");
            let rate = rate.unwrap_or((events as f64 / (f64::from(cycles.max(1)) * 2.0)).max(1000.0));
            if !(rate.is_finite() && rate > 0.0) || cycles == 0 || events == 0 {
                bail!("--rate, --cycles and --events must be positive");
            }
            let spec = coldstream::chaos::ChaosSpec {
                data_dir: data,
                cycles,
                events,
                fridges: fridges as usize,
                seed,
                rate,
                workers,
                max_run_ms,
            };
            println!(
                "chaos: {cycles} SIGKILL cycles, {events} events from {fridges} fridges at {rate:.0} events/s, seed {seed}"
            );
            let report = runtime()?.block_on(coldstream::chaos::run(spec))?;
            println!("{report}");
            if !report.passed() {
                bail!("chaos checks failed");
            }
        }
        Command::Bench { data, duration, rate, fridges, workers, seed, json, curve } => {
            init_logging("warn");
            let rate = match rate.as_str() {
                "max" => None,
                text => match text.parse::<f64>() {
                    Ok(rate) if rate.is_finite() && rate > 0.0 => Some(rate),
                    _ => bail!("--rate must be a positive number of events per second or `max`, not {text:?}"),
                },
            };
            if !(duration.is_finite() && duration > 0.0) {
                bail!("--duration must be a positive number of seconds");
            }
            let spec = coldstream::bench::BenchSpec {
                data_dir: data,
                duration: Duration::from_secs_f64(duration),
                rate,
                fridges: fridges as usize,
                workers,
                seed,
                fleet_binary: None,
            };
            if let Some(path) = curve {
                let points = runtime()?.block_on(coldstream::bench::curve::run_and_draw(&spec, &path))?;
                print!("{}", coldstream::bench::curve::table(&points));
                println!("curve: {} and {}", path.display(), path.with_extension("json").display());
                return Ok(());
            }
            let report = runtime()?.block_on(coldstream::bench::run(&spec))?;
            print!("{report}");
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
                std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Config { action: ConfigAction::Default } => print!("{}", config::DEFAULT_TOML),
    }
    Ok(())
}

/// The config file (or the defaults) with the command line's overrides.
fn load_config(path: Option<PathBuf>, data: Option<PathBuf>, workers: Option<usize>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(data) = data {
        config.data_dir = data;
    }
    if let Some(workers) = workers {
        config.workers = workers;
    }
    config.validate()?;
    Ok(config)
}
