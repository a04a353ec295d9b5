//! The operators' window on a running server: Prometheus metrics on
//! `/metrics`, a live status page on `/` and the JSON it draws from on
//! `/status.json`, all on one HTTP address (`[metrics]`, loopback by
//! default, TLS as on the gateway).
//!
//! The components register their own instruments in the server's
//! [`Registry`] (the gateway, the log writer, the view sink, webhook
//! delivery); this module adds what is read when a scrape comes: the
//! log's size and end, how far the views, the archive and the checkpoints
//! are behind it, and the process's memory and CPU. The status page's
//! numbers are read from the same registry, so the page and a scrape agree.
//! `/grafana-dashboard.json` is a Grafana dashboard of the metrics.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use coldstream_pipelines::metrics::Registry;
use coldstream_sinks::webhooks::{Endpoint, Recent};
use coldstream_sources::gateway::ServerTls;
use coldstream_sources::ingest::Ingest;
use coldstream_sources::log::{Footprint, OpenReader};
use serde_json::json;
use tokio::sync::oneshot;

use crate::server::Progress;
use crate::workers::ReadProgress;

/// What a server's metrics are read from, besides its components' own
/// instruments.
pub struct Sources {
    /// The log.
    pub readers: Arc<dyn OpenReader>,
    /// How far the archive, the views and the checkpoints have got.
    pub progress: Arc<Progress>,
    /// The log writer (a pipeline process has none).
    pub ingest: Option<Ingest>,
    /// How far the workers have read the log (a gateway has none).
    pub read: Option<Arc<ReadProgress>>,
    /// The process's role, as the config says it.
    pub role: &'static str,
}

/// Registers the metrics read at scrape time.
pub fn register(registry: &Registry, sources: Sources) {
    let Sources { readers, progress, ingest, read, role } = sources;
    registry.gauge_fn(
        "coldstream_build_info",
        "Always 1: the version and role of this process.",
        &[("version", env!("CARGO_PKG_VERSION")), ("role", role)],
        || 1.0,
    );
    let log = Arc::clone(&readers);
    registry.gauge_fn(
        "coldstream_log_durable_records",
        "Records durable in the log (its end offset).",
        &[],
        move || log.durable_offset() as f64,
    );
    let log = Arc::clone(&readers);
    registry.gauge_fn(
        "coldstream_log_first_record",
        "The first offset the log still holds (retention removed what is before it).",
        &[],
        move || log.first_offset().map_or(0.0, |first| first as f64),
    );
    let log = Arc::clone(&readers);
    registry.gauge_fn(
        "coldstream_log_last_ingest_timestamp_seconds",
        "Ingest time of the last durable record.",
        &[],
        move || log.durable_ingest_ms().map_or(0.0, |ms| ms as f64 / 1000.0),
    );
    // The three are read from one listing of the log's folder per scrape.
    let footprint = Arc::new(RecentFootprint { log: Arc::clone(&readers), last: Mutex::default() });
    let disk = Arc::clone(&footprint);
    registry.gauge_fn("coldstream_log_size_bytes", "Bytes the log's segments occupy on disk.", &[], move || {
        disk.read().map_or(0.0, |f| f.bytes as f64)
    });
    let disk = Arc::clone(&footprint);
    registry.gauge_fn("coldstream_log_segments", "Segments the log holds.", &[], move || {
        disk.read().map_or(0.0, |f| f.segments as f64)
    });
    registry.gauge_fn(
        "coldstream_log_oldest_segment_age_seconds",
        "Seconds since the oldest segment was last written: how far back the log reaches.",
        &[],
        move || footprint.read().map_or(0.0, |f| f.oldest_segment_age_seconds),
    );
    if let Some(ingest) = ingest {
        registry.gauge_fn(
            "coldstream_fleet_fridges_known",
            "Fridges with at least one durable event.",
            &[],
            move || ingest.fridges_known() as f64,
        );
    }
    if let Some(read) = read {
        register_views(registry, &readers, &progress, read);
    }
}

/// The log's footprint, read from disk at most once a second.
struct RecentFootprint {
    log: Arc<dyn OpenReader>,
    last: Mutex<Option<(std::time::Instant, Option<Footprint>)>>,
}

impl RecentFootprint {
    fn read(&self) -> Option<Footprint> {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *last {
            Some((at, footprint)) if at.elapsed() < Duration::from_secs(1) => footprint,
            _ => {
                let footprint = self.log.footprint();
                *last = Some((std::time::Instant::now(), footprint));
                footprint
            }
        }
    }
}

/// The views', the archive's and the checkpoints' progress behind the log.
fn register_views(
    registry: &Registry,
    readers: &Arc<dyn OpenReader>,
    progress: &Arc<Progress>,
    read: Arc<ReadProgress>,
) {
    for view in coldstream_pipelines::views::NAMES {
        let (log, lagging) = (Arc::clone(readers), Arc::clone(progress));
        registry.gauge_fn(
            "coldstream_view_lag_seconds",
            "How far the view's frontier is behind the log's last durable ingest time (0: caught up).",
            &[("view", view)],
            move || views_lag_ms(log.as_ref(), &lagging) as f64 / 1000.0,
        );
        let (log, behind, records) = (Arc::clone(readers), Arc::clone(progress), Arc::clone(&read));
        registry.gauge_fn(
            "coldstream_view_lag_records",
            "Durable log records not yet final in the view: read and unfinished, or not read yet.",
            &[("view", view)],
            move || {
                let frontier = behind.views.load(Ordering::Acquire);
                log.durable_offset().saturating_sub(records.final_before(frontier)) as f64
            },
        );
        let frontier = Arc::clone(progress);
        registry.gauge_fn(
            "coldstream_view_frontier_timestamp_seconds",
            "The view's frontier: every change before this ingest time has reached its sinks.",
            &[("view", view)],
            move || frontier.views.load(Ordering::Acquire) as f64 / 1000.0,
        );
    }
    let log = Arc::clone(readers);
    registry.gauge_fn(
        "coldstream_view_unread_records",
        "Durable log records the workers have not read yet.",
        &[],
        move || log.durable_offset().saturating_sub(read.read()) as f64,
    );
    let (log, archive) = (Arc::clone(readers), Arc::clone(progress));
    registry.gauge_fn(
        "coldstream_archive_lag_records",
        "Durable log records not yet in events/ and rejected/ (in files or buffered).",
        &[],
        move || log.durable_offset().saturating_sub(archive.archived.load(Ordering::Acquire)) as f64,
    );
    let progress = Arc::clone(progress);
    let checkpoint = Arc::clone(&progress);
    registry.gauge_fn(
        "coldstream_checkpoint_age_seconds",
        "Seconds since the last checkpoint was written (since the start, before the first).",
        &[],
        move || checkpoint_age_seconds(&checkpoint),
    );
    let checkpoint = Arc::clone(&progress);
    registry.gauge_fn("coldstream_checkpoint_size_bytes", "Bytes of the last checkpoint written.", &[], move || {
        checkpoint.checkpoint_bytes.load(Ordering::Acquire) as f64
    });
    let checkpoint = Arc::clone(&progress);
    registry.gauge_fn(
        "coldstream_checkpoint_write_seconds",
        "How long writing the last checkpoint took (serialising, fsync, rename).",
        &[],
        move || checkpoint.checkpoint_write_us.load(Ordering::Acquire) as f64 / 1e6,
    );
    registry.counter_fn(
        "coldstream_checkpoints_written_total",
        "Checkpoints written since the start.",
        &[],
        move || progress.checkpoints.load(Ordering::Acquire) as f64,
    );
}

/// Milliseconds the views' frontier is behind the log's last ingest time.
fn views_lag_ms(log: &dyn OpenReader, progress: &Progress) -> u64 {
    let frontier = progress.views.load(Ordering::Acquire);
    log.durable_ingest_ms().map_or(0, |last| (last + 1).saturating_sub(frontier))
}

/// The server's start, for the age of a checkpoint not yet written.
static STARTED_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

fn checkpoint_age_seconds(progress: &Progress) -> f64 {
    let written = progress.checkpoint_written_ms.load(Ordering::Acquire);
    let since = if written == 0 { *STARTED_MS.get_or_init(coldstream_sources::ingest::now_ms) } else { written };
    coldstream_sources::ingest::now_ms().saturating_sub(since) as f64 / 1000.0
}

/// Registers the process's own metrics (Linux: read from `/proc/self`).
pub fn register_process(registry: &Registry) {
    STARTED_MS.get_or_init(coldstream_sources::ingest::now_ms);
    registry.gauge_fn("process_resident_memory_bytes", "Resident memory size in bytes.", &[], || {
        proc_status_kib("VmRSS:").map_or(0.0, |kib| kib * 1024.0)
    });
    registry.gauge_fn("process_virtual_memory_bytes", "Virtual memory size in bytes.", &[], || {
        proc_status_kib("VmSize:").map_or(0.0, |kib| kib * 1024.0)
    });
    registry.counter_fn("process_cpu_seconds_total", "User and system CPU time spent, in seconds.", &[], || {
        proc_stat().map_or(0.0, |stat| (stat.utime + stat.stime) as f64 / CLOCK_TICKS)
    });
    registry.gauge_fn("process_threads", "Threads of the process.", &[], || {
        proc_stat().map_or(0.0, |stat| stat.threads as f64)
    });
    registry.gauge_fn("process_open_fds", "Open file descriptors.", &[], || {
        std::fs::read_dir("/proc/self/fd").map_or(0.0, |fds| fds.count() as f64)
    });
    registry.gauge_fn(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds.",
        &[],
        process_start_seconds,
    );
}

/// `/proc`'s clock ticks per second (`USER_HZ`, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

struct ProcStat {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
}

fn proc_stat() -> Option<ProcStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: fields follow the last `)`.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    // Fields 14, 15, 20 and 22 of proc(5), counted from the state (field 3).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat { utime: field(14)?, stime: field(15)?, threads: field(20)?, start_ticks: field(22)? })
}

fn proc_status_kib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn process_start_seconds() -> f64 {
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
        stat.lines().find_map(|line| line.strip_prefix("btime ").and_then(|t| t.trim().parse::<f64>().ok()))
    });
    match (boot, proc_stat()) {
        (Some(boot), Some(stat)) => boot + stat.start_ticks as f64 / CLOCK_TICKS,
        _ => *STARTED_MS.get_or_init(coldstream_sources::ingest::now_ms) as f64 / 1000.0,
    }
}

/// Settings of the metrics listener.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Its address.
    pub listen: SocketAddr,
    /// TLS, as on the gateway; `None` serves plain HTTP.
    pub tls: Option<ServerTls>,
}

/// What the status page reads.
#[derive(Clone)]
pub struct Page {
    /// The server's instruments.
    pub registry: Registry,
    /// The latest alerts and open orders (a gateway has none).
    pub recent: Option<Arc<Mutex<Recent>>>,
}

/// The metrics listener, until it is dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl MetricsServer {
    /// Listens on `config.listen` and serves `/metrics`, `/status.json` and
    /// the status page, on the current tokio runtime.
    pub async fn start(config: MetricsConfig, page: Page) -> std::io::Result<MetricsServer> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(scrape))
            .route("/status.json", get(status_json))
            .route("/", get(status_page))
            .route("/grafana-dashboard.json", get(dashboard))
            .with_state(Arc::new(page));
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        match config.tls {
            None => {
                tokio::spawn(async move {
                    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                        tracing::error!(%error, "the metrics listener stopped");
                    }
                });
            }
            Some(tls) => {
                let listener = TlsListener::new(listener, tls_acceptor(&tls)?)?;
                tokio::spawn(async move {
                    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                        tracing::error!(%error, "the metrics listener stopped");
                    }
                });
            }
        }
        Ok(MetricsServer { addr, stop: Some(stop) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn tls_acceptor(tls: &ServerTls) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let certs = CertificateDer::pem_slice_iter(&tls.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("the TLS certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key).map_err(|e| invalid(format!("the TLS key: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("the TLS certificate and key: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// TCP connections whose TLS handshake has completed. Each handshake runs
/// in a task of its own (at most 10 s), so a client that stalls in it holds
/// up no other.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (done, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, "accepting a metrics connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    // The server stopped: the listener goes with it.
                    _ = done.closed() => return,
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, %peer, "a metrics client's TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "a metrics client's TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended: no connection comes any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn scrape(State(page): State<Arc<Page>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], page.registry.render())
}

async fn status_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        include_str!("status.html"),
    )
}

/// A Grafana dashboard of these metrics, to import.
pub const GRAFANA_DASHBOARD: &str = include_str!("grafana-dashboard.json");

async fn dashboard() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], GRAFANA_DASHBOARD)
}

async fn status_json(State(page): State<Arc<Page>>) -> impl IntoResponse {
    let body = status(&page).to_string();
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], body)
}

/// What the status page shows, read from the registry.
pub fn status(page: &Page) -> serde_json::Value {
    let r = &page.registry;
    let value = |name: &str, labels: &[(&str, &str)]| r.value(name, labels);
    let total = |name: &str| value(name, &[]).unwrap_or(0.0);
    let rejected = r.sum("coldstream_gateway_events_rejected_total");
    let views: Vec<_> = coldstream_pipelines::views::NAMES
        .iter()
        .map(|view| {
            json!({
                "view": view,
                "lag_seconds": value("coldstream_view_lag_seconds", &[("view", view)]),
                "lag_records": value("coldstream_view_lag_records", &[("view", view)]),
                "changes_total": value("coldstream_view_changes_total", &[("view", view)]),
            })
        })
        .collect();
    let webhooks: Vec<_> = Endpoint::ALL
        .iter()
        .filter(|e| value("coldstream_webhook_delivered_total", &[("endpoint", e.as_str())]).is_some())
        .map(|e| {
            let labels: &[(&str, &str)] = &[("endpoint", e.as_str())];
            json!({
                "endpoint": e.as_str(),
                "pending": value("coldstream_webhook_pending_messages", labels),
                "in_flight": value("coldstream_webhook_in_flight_messages", labels),
                "delivered_total": value("coldstream_webhook_delivered_total", labels),
                "retries_total": value("coldstream_webhook_retries_total", labels),
                "dead_lettered_total": value("coldstream_webhook_dead_lettered_total", labels),
                "superseded_total": value("coldstream_webhook_superseded_total", labels),
                "breaker": match value("coldstream_webhook_breaker_state", labels) {
                    Some(state) if state >= 2.0 => "open",
                    Some(state) if state >= 1.0 => "half open",
                    _ => "closed",
                },
            })
        })
        .collect();
    let (alerts, orders, open_orders) = match &page.recent {
        Some(recent) => {
            let recent = recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (recent.alerts(), recent.newest_orders(20), recent.open_order_count())
        }
        None => (Vec::new(), Vec::new(), 0),
    };
    json!({
        "now_ms": coldstream_sources::ingest::now_ms(),
        "fleet": {
            "fridges_known": value("coldstream_fleet_fridges_known", &[]),
            "streams_open": value("coldstream_gateway_streams_open", &[]),
        },
        "ingest": {
            "received_total": total("coldstream_gateway_events_received_total"),
            "accepted_total": total("coldstream_gateway_events_accepted_total"),
            "duplicate_total": total("coldstream_gateway_events_duplicate_total"),
            "rejected_total": rejected,
            "log_durable_records": total("coldstream_log_durable_records"),
            "log_size_bytes": total("coldstream_log_size_bytes"),
        },
        "views": views,
        "archive_lag_records": value("coldstream_archive_lag_records", &[]),
        "webhooks": webhooks,
        "checkpoint": {
            "age_seconds": value("coldstream_checkpoint_age_seconds", &[]),
            "size_bytes": value("coldstream_checkpoint_size_bytes", &[]),
            "written_total": value("coldstream_checkpoints_written_total", &[]),
        },
        "memory_bytes": value("process_resident_memory_bytes", &[]),
        "alerts": alerts,
        "open_orders": open_orders,
        "orders": orders,
    })
}
