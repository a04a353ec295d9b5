//! `coldstream run`: the long-running pipeline server.

use std::time::Duration;

use anyhow::Context;
use coldstream::config::{LogSection, Role};
use coldstream::server::Server;

use super::{ConfigArgs, init_logging_with, runtime_with};

/// The server's configuration and its overrides.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Overrides `listen`.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Overrides `role`: all (gateway, log and pipeline), gateway, or
    /// pipeline (one process of the pipeline, following the log).
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Overrides `cluster.processes`: the pipeline's processes.
    #[arg(long)]
    pub processes: Option<usize>,
    /// Overrides `cluster.process`: this process's index, from 0.
    #[arg(long)]
    pub process: Option<usize>,
    /// Overrides `cluster.hosts`: a file with every process's host:port,
    /// one per line, in process order.
    #[arg(long)]
    pub hostfile: Option<std::path::PathBuf>,
    /// Overrides `log.dir` of the embedded log: a pipeline process on the
    /// gateway's machine follows the gateway's log there.
    #[arg(long)]
    pub log_dir: Option<std::path::PathBuf>,
    /// Serves the Flight SQL endpoint on this address (`flight_sql.listen`
    /// with `flight_sql.enabled`).
    #[arg(long)]
    pub flight_sql: Option<std::net::SocketAddr>,
    /// Serves Prometheus metrics and the status page on this address
    /// (`metrics.listen` with `metrics.enabled`).
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
}

/// Listens for Ctrl-C (SIGINT) and SIGTERM, the signal service managers
/// (systemd, Docker, Kubernetes) stop a process with. Listening starts
/// when this is called, so a signal sent as soon as the address is
/// printed stops the server cleanly rather than killing it.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Runs the server until Ctrl-C or SIGTERM, then drains the log into every
/// sink and takes a last checkpoint.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = args.config.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(role) = args.role {
        config.role = role;
    }
    if let Some(listen) = args.flight_sql {
        config.flight_sql = coldstream::config::FlightSqlSection { enabled: true, listen, ..config.flight_sql };
    }
    if let Some(listen) = args.metrics {
        config.metrics = coldstream::config::MetricsSection { enabled: true, listen };
    }
    if let Some(processes) = args.processes {
        config.cluster.processes = processes;
    }
    if let Some(process) = args.process {
        config.cluster.process = process;
    }
    if let Some(hostfile) = args.hostfile {
        config.cluster.hostfile = Some(hostfile);
        config.cluster.hosts.clear();
    }
    if let Some(dir) = args.log_dir {
        match &mut config.log {
            LogSection::Embedded(embedded) => embedded.dir = Some(dir),
            LogSection::Fluvio(_) => {
                anyhow::bail!("--log-dir names the embedded log's folder; this config's log is on Fluvio")
            }
        }
    }
    // The cluster's shape and addresses are checked before anything starts.
    let cluster = config.cluster.cluster()?;
    // Every secret is checked before anything is opened.
    config.auth.tokens()?;
    let runtime = runtime_with(config.async_threads)?;
    let exporter = if config.tracing.otlp_endpoint.is_empty() {
        None
    } else {
        let _on = runtime.enter();
        Some(coldstream::otlp::Exporter::start(&config.tracing).map_err(anyhow::Error::msg)?)
    };
    init_logging_with("info", exporter.as_ref());
    let result = runtime.block_on(async move {
        let started = std::time::Instant::now();
        let server = Server::start(&config).await?;
        let stop = stop_signal()?;
        tokio::pin!(stop);
        if config.role.has_gateway() {
            // Scripts and tests read the bound address from this line.
            println!("coldstream listening on {}", server.addr());
        } else {
            println!("coldstream pipeline process {} of {} running", cluster.process, cluster.processes);
        }
        if let Some(addr) = server.flight_sql_addr() {
            println!("coldstream flight sql on {addr}");
        }
        if let Some(addr) = server.metrics_addr() {
            println!("coldstream metrics on http://{addr}/metrics, status page on http://{addr}/");
        }
        let replayed = async {
            if server.replayed(Duration::from_secs(86_400)).await.is_ok() {
                // ... and, from this one, the time it took to replay what the log held.
                // Whoever read the address may have closed the pipe.
                let line = format!("coldstream caught up in {} ms\n", started.elapsed().as_millis());
                let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
            }
            std::future::pending::<()>().await
        };
        // A component that cannot recover stops the process: the fleet's
        // acks stop too, instead of going on while a sink falls behind.
        let failure = tokio::select! {
            _ = replayed => None,
            () = &mut stop => None,
            failure = server.failed() => Some(failure),
        };
        tracing::info!("shutting down: draining the log into every sink");
        let drained = server.shutdown().await;
        match failure {
            Some(failure) if config.role.has_gateway() => {
                Err(anyhow::anyhow!("{failure}; stopped so that nothing more is acknowledged (restart to resume)"))
            }
            Some(failure) => Err(anyhow::anyhow!("{failure}")),
            None => drained.map_err(Into::into),
        }
    });
    // The last spans go out while the runtime that carries them still runs.
    drop(exporter);
    result
}
