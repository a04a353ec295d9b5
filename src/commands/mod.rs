//! One file per subcommand, each with its clap `Args`; the argument groups
//! several commands share ([`FleetArgs`], [`DataArgs`]) are declared once
//! here. This is the only layer that uses `anyhow`: the library's errors
//! are typed, and a command turns them into one line for the terminal.

pub mod bench;
pub mod chaos;
pub mod config;
pub mod demo;
pub mod query;
pub mod rebuild;
pub mod receive;
pub mod run;
pub mod simulate;
pub mod token;
pub mod udf;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use coldstream::config::{self as settings, Config};
use coldstream_sources::auth::{Key, Tokens};

/// Every subcommand.
#[derive(Subcommand)]
pub enum Command {
    /// The whole system on one machine: server, simulated fleet, report.
    Demo(demo::Args),
    /// The long-running pipeline server.
    Run(run::Args),
    /// Recomputes every view from the Parquet archive in events/ (stop the
    /// server first): for a lost checkpoint or changed view settings.
    Rebuild(rebuild::Args),
    /// Crash test: runs the server and a simulated fleet as processes,
    /// SIGKILLs the server at random moments, restarts it, and checks that
    /// no acked event, view change or webhook was lost or repeated.
    Chaos(chaos::Args),
    /// End-to-end throughput and latency: the pipeline and local webhook
    /// receivers here, a simulated fleet in a separate process.
    Bench(bench::Args),
    /// A fleet of simulated fridges streaming to a gateway over gRPC.
    Simulate(simulate::Args),
    /// SQL over the Parquet logs (DataFusion).
    Query(query::Args),
    /// Prints the bearer token of a fridge, a back-office client or an analyst.
    Token(token::Args),
    /// A webhook receiver that verifies signatures and prints each delivery.
    Receive(receive::Args),
    /// Configuration helpers.
    Config(config::Args),
    /// Writes and builds UDFs written for Arroyo (`arroyo-udf-plugin`).
    Udf(udf::Args),
}

impl Command {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Demo(args) => demo::run(args),
            Command::Run(args) => run::run(args),
            Command::Rebuild(args) => rebuild::run(args),
            Command::Chaos(args) => chaos::run(args),
            Command::Bench(args) => bench::run(args),
            Command::Simulate(args) => simulate::run(args),
            Command::Query(args) => query::run(args),
            Command::Token(args) => token::run(args),
            Command::Receive(args) => receive::run(args),
            Command::Config(args) => config::run(args),
            Command::Udf(args) => udf::run(args),
        }
    }
}

/// The simulated fleet: how many fridges, and the seed of every choice.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct FleetArgs {
    /// Simulated fridges.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub fridges: u64,
    /// Seed of the simulated fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The data directory.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DataArgs {
    /// The data directory [default: the config's `data_dir`, else
    /// ./coldstream-data].
    #[arg(long)]
    pub data: Option<PathBuf>,
}

impl DataArgs {
    /// The directory given, or the default one.
    pub fn dir(&self) -> PathBuf {
        self.data.clone().unwrap_or_else(|| Config::default().data_dir)
    }
}

/// A TOML configuration file and the overrides every server command takes.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    /// A TOML configuration file (`coldstream config default` prints one).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Overrides `workers` (timely worker threads; 0: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
}

impl ConfigArgs {
    /// The config file (or the defaults) with the command line's overrides.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(data) = &self.data.data {
            config.data_dir = data.clone();
        }
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        config.validate()?;
        Ok(config)
    }
}

/// `--rate`: events per second, or `max`.
pub fn rate(text: &str) -> anyhow::Result<Option<f64>> {
    match text {
        "max" => Ok(None),
        text => match text.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Some(rate)),
            _ => bail!("--rate must be a positive number of events per second or `max`, not {text:?}"),
        },
    }
}

/// The fleet key that signs tokens: never a command-line value, which any
/// user of the machine could read in `ps`.
#[derive(clap::Args)]
pub struct KeyArgs {
    /// A file holding the fleet secret (else `COLDSTREAM_SECRET`, else the
    /// development secret).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// The key's id, as the server's `auth.key_id` names it.
    #[arg(long, default_value = coldstream_sources::auth::DEFAULT_KEY_ID)]
    pub key_id: String,
}

impl KeyArgs {
    /// The secret: the file, `COLDSTREAM_SECRET`, or the development one.
    pub fn secret(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.secret_file {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading --secret-file {}", path.display()))?;
            let secret = text.trim_end_matches(['\n', '\r']).to_owned();
            if secret.is_empty() {
                bail!("--secret-file {} is empty", path.display());
            }
            return Ok(secret);
        }
        match std::env::var("COLDSTREAM_SECRET") {
            Ok(secret) if secret.is_empty() => bail!("COLDSTREAM_SECRET is set but empty; unset it or give the secret"),
            Ok(secret) => Ok(secret),
            Err(_) => Ok(settings::DEV_SECRET.to_owned()),
        }
    }

    /// Tokens signed with the key.
    pub fn tokens(&self) -> anyhow::Result<Tokens> {
        if !coldstream_sources::auth::valid_id(&self.key_id) {
            bail!("--key-id {:?} is not an id ({})", self.key_id, coldstream_sources::auth::ID_RULE);
        }
        Ok(Tokens::with_keys(vec![Key::new(&self.key_id, self.secret()?)]))
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people at a terminal: time, level, target, message, fields.
    #[default]
    Human,
    /// One JSON object per line, for log shippers: `timestamp`, `level`,
    /// `target`, `threadName`, `message` and the event's own fields.
    Json,
}

/// The format `--log-format` chose, set once by `main`.
pub static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Logs to stderr at `default` unless `COLDSTREAM_LOG` says otherwise, in
/// the format of `--log-format`.
pub fn init_logging(default: &str) {
    init_logging_with(default, None);
}

/// [`init_logging`], and hands the batch-path spans to `exporter` (OTLP).
pub fn init_logging_with(default: &str, exporter: Option<&coldstream::otlp::Exporter>) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("COLDSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match LOG_FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Human => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).with_thread_names(true).with_current_span(false).boxed(),
    };
    tracing_subscriber::registry().with(lines.with_filter(filter)).with(exporter.map(|e| e.layer())).init();
}

/// The async runtime a command runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(0)
}

/// The async runtime, with `threads` worker threads (0: one per core).
pub fn runtime_with(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        threads => threads,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Starts a receiver on a free loopback port for every webhook endpoint,
/// under the example secret, and points `config`'s endpoints at them (the
/// demo and the bench).
pub async fn local_receivers(
    config: &mut Config,
    keep: coldstream_sinks::webhooks::receiver::Keep,
) -> std::io::Result<Vec<(coldstream_sinks::webhooks::Endpoint, coldstream_sinks::webhooks::receiver::Receiver)>> {
    use coldstream_sinks::webhooks::receiver::Receiver;
    use coldstream_sinks::webhooks::{EXAMPLE_SECRET, Endpoint, EndpointConfig, Protocol, Secret};
    let mut receivers = Vec::new();
    for endpoint in Endpoint::ALL {
        let secret = Secret::parse(EXAMPLE_SECRET).expect("the example secret parses");
        let receiver = Receiver::start(([127, 0, 0, 1], 0).into(), secret, keep).await?;
        *config.webhooks.endpoint_mut(endpoint) = Some(coldstream::config::EndpointSection {
            url: format!("http://{}/{}", receiver.addr(), endpoint.as_str()),
            secret: EXAMPLE_SECRET.to_owned(),
            timeout_ms: 10_000,
            max_in_flight: EndpointConfig::DEFAULT_MAX_IN_FLIGHT,
            ca_file: None,
            every_update: false,
            protocol: Protocol::Auto,
        });
        receivers.push((endpoint, receiver));
    }
    Ok(receivers)
}

/// Makes `dir` an empty folder holding only the `marker` file of `command`,
/// deleting an earlier run's data there. Returns false, touching nothing,
/// if `dir` holds anything else.
pub fn fresh_dir(dir: &std::path::Path, marker: &str, command: &str) -> std::io::Result<bool> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        if !dir.join(marker).exists() {
            return Ok(false);
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(marker), format!("made by coldstream {command}; deleted by the next {command}\n"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_async_runtime_has_the_threads_asked_for() {
        for threads in [1, 3] {
            let runtime = super::runtime_with(threads).expect("a runtime");
            assert_eq!(runtime.metrics().num_workers(), threads);
        }
        let per_core = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(super::runtime_with(0).expect("a runtime").metrics().num_workers(), per_core);
    }
}
