//! The server's configuration: one TOML file, every field documented.
//! `coldstream config default` prints [`DEFAULT_TOML`], a complete example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coldstream_sources::auth::{Key, Principal, Tokens};
use coldstream_sources::log::embedded::{EmbeddedConfig, EmbeddedLog};
use coldstream_sources::log::{EventLog, LogError, OpenReader};
use serde::Deserialize;

/// The whole configuration of `coldstream run`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the event log, Parquet files and state live.
    pub data_dir: PathBuf,
    /// The gRPC address fridges and the back office connect to.
    pub listen: SocketAddr,
    /// Timely worker threads; 0 means one per core.
    pub workers: usize,
    /// Threads of the async runtime that runs the gateway, webhook
    /// delivery and the HTTP endpoints; 0 means one per core.
    pub async_threads: usize,
    /// What this process runs.
    pub role: Role,
    /// The timely cluster the pipeline runs on.
    pub cluster: ClusterSection,
    /// The region this deployment serves.
    pub region: RegionSection,
    /// Authentication of fridges and back-office clients.
    pub auth: AuthConfig,
    /// The gRPC gateway.
    pub gateway: GatewaySection,
    /// TLS on the gRPC listener.
    pub tls: TlsSection,
    /// The event log: which kind, and its settings.
    pub log: LogSection,
    /// The Parquet sink.
    pub parquet: ParquetSection,
    /// The views.
    pub views: ViewsSection,
    /// Webhook endpoints, retries and the outbox bound.
    pub webhooks: WebhooksSection,
    /// Checkpoints of the views' state.
    pub checkpoint: CheckpointSection,
    /// The Flight SQL endpoint for analysts.
    pub flight_sql: FlightSqlSection,
    /// SQL extensions.
    pub sql: SqlSection,
    /// Prometheus metrics and the status page.
    pub metrics: MetricsSection,
    /// Traces of sampled batches over OTLP.
    pub tracing: TracingSection,
}

/// OpenTelemetry traces: a sampled batch's path from the gateway to the
/// log, the views and each webhook delivery, exported over OTLP/gRPC.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSection {
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; empty: no traces.
    pub otlp_endpoint: String,
    /// The share of batches followed, 0 to 1.
    pub sample_ratio: f64,
    /// The `service.name` of the spans.
    pub service_name: String,
}

impl Default for TracingSection {
    fn default() -> Self {
        TracingSection { otlp_endpoint: String::new(), sample_ratio: 0.01, service_name: "coldstream".into() }
    }
}

/// Prometheus metrics on `/metrics` and the live status page on `/`, on
/// one HTTP address, served when `enabled` (or `coldstream run --metrics ADDR`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Whether `coldstream run` serves them.
    pub enabled: bool,
    /// Their address; TLS as on the gateway (`[tls]`), required off loopback.
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection { enabled: false, listen: SocketAddr::from(([127, 0, 0, 1], 9464)) }
    }
}

/// SQL extensions: UDFs written for Arroyo, for the Flight SQL endpoint and
/// the restock policy (`views.reorder_point_udf`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlSection {
    /// Libraries `coldstream udf build` made, each with its manifest beside it.
    pub udfs: Vec<PathBuf>,
}

/// The Flight SQL endpoint: the tables of `coldstream query` for analysts'
/// own tools, served when `enabled` (or `coldstream run --flight-sql ADDR`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlightSqlSection {
    /// Whether `coldstream run` serves it.
    pub enabled: bool,
    /// Its address; TLS as on the gateway (`[tls]`), required off loopback.
    pub listen: SocketAddr,
    /// Memory one query's sorts, aggregations and joins may hold.
    pub memory_limit_mb: u64,
    /// From a statement's arrival to its last batch.
    pub timeout_seconds: u64,
    /// Queries running at once; more wait for a slot.
    pub max_concurrent_queries: usize,
}

impl Default for FlightSqlSection {
    fn default() -> Self {
        FlightSqlSection {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            memory_limit_mb: 512,
            timeout_seconds: 300,
            max_concurrent_queries: 4,
        }
    }
}

/// What one `coldstream run` process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The gateway, the log and the pipeline in one process.
    #[default]
    All,
    /// The gateway and the log writer: it acks, and computes nothing.
    Gateway,
    /// One process of the pipeline: it reads the log (following the
    /// gateway's), maintains the views of its fridges, archives and
    /// delivers for them.
    Pipeline,
}

impl Role {
    /// The name `--role` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Gateway => "gateway",
            Role::Pipeline => "pipeline",
        }
    }

    /// Whether this role takes fridges' calls and writes the log.
    pub fn has_gateway(self) -> bool {
        matches!(self, Role::All | Role::Gateway)
    }

    /// Whether this role runs timely workers and sinks.
    pub fn has_pipeline(self) -> bool {
        matches!(self, Role::All | Role::Pipeline)
    }
}

/// The timely cluster: pipeline processes that share the work, each with
/// `workers` threads, connected over TCP (timely's own cluster mode).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Processes in the cluster; 1 is a single process.
    pub processes: usize,
    /// This process's index, from 0.
    pub process: usize,
    /// Every process's `host:port`, in process order (what timely listens
    /// on and connects to); or `hostfile`.
    pub hosts: Vec<String>,
    /// A file with one `host:port` per line, instead of `hosts`.
    pub hostfile: Option<PathBuf>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection { processes: 1, process: 0, hosts: Vec::new(), hostfile: None }
    }
}

impl ClusterSection {
    /// The cluster's shape and addresses, checked.
    pub fn cluster(&self) -> Result<crate::workers::Cluster, ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if !(1..=1024).contains(&self.processes) {
            return invalid(format!("cluster.processes {} is not in 1..=1024", self.processes));
        }
        if self.process >= self.processes {
            return invalid(format!(
                "cluster.process {} is not below cluster.processes {}",
                self.process, self.processes
            ));
        }
        let hosts = match &self.hostfile {
            Some(path) => {
                if !self.hosts.is_empty() {
                    return invalid("give cluster.hosts or cluster.hostfile, not both".into());
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
                text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
            }
            None => self.hosts.clone(),
        };
        if self.processes > 1 && hosts.len() != self.processes {
            return invalid(format!(
                "a cluster of {} processes needs {} host:port addresses (cluster.hosts or --hostfile), one per process; {} given",
                self.processes,
                self.processes,
                hosts.len()
            ));
        }
        if let Some(bad) =
            hosts.iter().find(|h| h.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()))
        {
            return invalid(format!("cluster address {bad:?} is not host:port"));
        }
        Ok(crate::workers::Cluster { processes: self.processes, process: self.process, addresses: hosts })
    }
}

/// The region a deployment serves: one log and pipeline per region, each
/// fridge served by its own region's gateways.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionSection {
    /// This deployment's region; empty for a deployment of one region.
    pub name: String,
    /// Every other region's gateway address, by region.
    pub gateways: std::collections::BTreeMap<String, String>,
    /// A CSV file of `fridge_id,region` lines: where each fridge is
    /// registered. A fridge registered in another region is answered with
    /// a `Redirect` to that region's gateway (reason `wrong_region`).
    pub registry: Option<PathBuf>,
}

impl RegionSection {
    /// The gateway's view of the regions, the registry read and checked;
    /// `None` without a registry.
    pub fn regions(&self) -> Result<Option<coldstream_sources::gateway::Regions>, ConfigError> {
        let Some(path) = &self.registry else { return Ok(None) };
        if self.name.is_empty() {
            return Err(ConfigError::Invalid("region.registry needs region.name, this deployment's region".into()));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let mut fridges = std::collections::HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line == "fridge_id,region" {
                continue;
            }
            let bad = |why: &str| {
                ConfigError::Invalid(format!("{} line {}: {why} (want `fridge_id,region`)", path.display(), number + 1))
            };
            let (fridge, region) = line.split_once(',').ok_or_else(|| bad("no comma"))?;
            let (fridge, region) = (fridge.trim(), region.trim());
            if !coldstream_sources::auth::valid_id(fridge) || region.is_empty() {
                return Err(bad("not a fridge id and a region"));
            }
            if region != self.name && !self.gateways.contains_key(region) {
                return Err(bad(&format!("region {region:?} has no gateway in region.gateways")));
            }
            fridges.insert(fridge.to_owned(), region.to_owned());
        }
        Ok(Some(coldstream_sources::gateway::Regions {
            here: self.name.clone(),
            fridges,
            gateways: self.gateways.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }))
    }
}

/// Checkpoints.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// A checkpoint is taken each time the log's ingest time enters a new
    /// interval of this many seconds...
    pub interval_seconds: u64,
    /// ... or a commit starts this many records after the last one (not
    /// on processes reading shares of a partitioned log, which agree on
    /// checkpoint times by the intervals alone).
    pub every_records: u64,
    /// Checkpoints kept on disk (the newest first; an older one is used if
    /// the newest is damaged).
    pub keep: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection { interval_seconds: 10, every_records: 1_000_000, keep: 3 }
    }
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

/// Webhooks.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSection {
    /// Deliveries pending on disk beyond which the views wait and the
    /// gateway slows its acks.
    pub max_pending: usize,
    /// The first retry's delay, in ms; each further one doubles it (with jitter).
    pub retry_initial_ms: u64,
    /// The longest delay between two attempts, in ms.
    pub retry_max_ms: u64,
    /// Consecutive failed attempts that open an endpoint's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before it probes the endpoint, in ms.
    pub breaker_open_ms: u64,
    /// Restock orders.
    pub procurement: Option<EndpointSection>,
    /// Settled sessions and payment discrepancies.
    pub accounting: Option<EndpointSection>,
    /// Cold-chain excursions and negative stock.
    pub alerts: Option<EndpointSection>,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        let defaults = coldstream_sinks::webhooks::WebhookConfig::default();
        WebhooksSection {
            max_pending: defaults.max_pending,
            retry_initial_ms: millis(defaults.retry.initial),
            retry_max_ms: millis(defaults.retry.max),
            breaker_failures: defaults.retry.breaker_failures,
            breaker_open_ms: millis(defaults.retry.breaker_open),
            procurement: None,
            accounting: None,
            alerts: None,
        }
    }
}

impl WebhooksSection {
    /// The section of `endpoint`, to set or clear.
    pub fn endpoint_mut(&mut self, endpoint: coldstream_sinks::webhooks::Endpoint) -> &mut Option<EndpointSection> {
        use coldstream_sinks::webhooks::Endpoint;
        match endpoint {
            Endpoint::Procurement => &mut self.procurement,
            Endpoint::Accounting => &mut self.accounting,
            Endpoint::Alerts => &mut self.alerts,
        }
    }
}

/// One webhook endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// `http://host:port/path`.
    pub url: String,
    /// The endpoint's `whsec_` signing secret.
    pub secret: String,
    /// How long one attempt may take, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Deliveries in flight at once (each for a different key).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// For an `https://` URL: a PEM file of the CA to trust instead of the
    /// system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Send every `restock.updated`, even one a later state of its order
    /// superseded before it was sent (by default such an update is skipped).
    #[serde(default)]
    pub every_update: bool,
    /// `auto` (HTTP/1.1 to `http://`, HTTP/2 to `https://` when the
    /// receiver offers it), `http1` or `http2`.
    #[serde(default)]
    pub protocol: coldstream_sinks::webhooks::Protocol,
}

fn default_timeout_ms() -> u64 {
    millis(coldstream_sinks::webhooks::EndpointConfig::DEFAULT_TIMEOUT)
}

fn default_max_in_flight() -> usize {
    coldstream_sinks::webhooks::EndpointConfig::DEFAULT_MAX_IN_FLIGHT
}

/// The views.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewsSection {
    /// The views keep state this many hours behind each fridge's latest
    /// event; an event later than that no longer changes them.
    pub horizon_hours: u64,
    /// Days a restock delivery takes; sets the reorder point.
    pub lead_time_days: i64,
    /// Hours after its DoorClosed that a session waits for its payment
    /// result (card networks batch captures), whatever the horizon.
    pub payment_wait_hours: u64,
    /// A UDF of `[sql] udfs`, by name, that replaces the built-in reorder
    /// point: `(par, min, on_hand, sales_7d, lead_time_days) -> i64`.
    pub reorder_point_udf: Option<String>,
}

impl Default for ViewsSection {
    fn default() -> Self {
        let defaults = coldstream_pipelines::views::ViewConfig::default();
        ViewsSection {
            horizon_hours: (defaults.horizon_us / coldstream_pipelines::event::HOUR_US) as u64,
            lead_time_days: defaults.lead_time_days,
            payment_wait_hours: (defaults.payment_wait_us / coldstream_pipelines::event::HOUR_US) as u64,
            reorder_point_udf: None,
        }
    }
}

/// Authentication.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The fleet key that signs new tokens. `COLDSTREAM_SECRET` overrides
    /// it; the built-in development secret is refused unless
    /// `allow_dev_secret` is set.
    pub secret: String,
    /// The id of `secret`, named in every token it signs.
    pub key_id: String,
    /// Older keys that still verify tokens while fridges move to new ones.
    pub previous_keys: Vec<PreviousKey>,
    /// Principals refused whatever their token: fridge ids,
    /// `backoffice/<id>` or `analyst/<name>`.
    pub revoked: Vec<String>,
    /// Accept tokens of the old form (the bare HMAC of the principal's
    /// name), which can only be checked once the request body is read.
    pub legacy_tokens: bool,
    /// Accept the built-in development secret (for local trials only).
    pub allow_dev_secret: bool,
}

/// A key that verifies tokens but no longer signs them.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKey {
    /// Its id, as tokens name it.
    pub id: String,
    /// Its secret.
    pub secret: String,
}

/// The shortest secret a key may have.
pub const MIN_SECRET_CHARS: usize = 16;

impl AuthConfig {
    /// The fleet secret in effect: `COLDSTREAM_SECRET` if set, else `secret`.
    pub fn effective_secret(&self) -> Result<String, ConfigError> {
        match std::env::var("COLDSTREAM_SECRET") {
            Ok(secret) if secret.is_empty() => {
                Err(ConfigError::Invalid("COLDSTREAM_SECRET is set but empty; unset it or give the secret".into()))
            }
            Ok(secret) => Ok(secret),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(ConfigError::Invalid("COLDSTREAM_SECRET is not UTF-8".into()))
            }
            Err(std::env::VarError::NotPresent) => Ok(self.secret.clone()),
        }
    }

    /// The token checker these settings describe, with the secret in
    /// effect; the development secret only where allowed.
    pub fn tokens(&self) -> Result<Tokens, ConfigError> {
        self.tokens_with(&self.effective_secret()?, true)
    }

    fn tokens_with(&self, secret: &str, refuse_dev_secret: bool) -> Result<Tokens, ConfigError> {
        let check = |id: &str, secret: &str, name: &str| {
            if !coldstream_sources::auth::valid_id(id) {
                return Err(ConfigError::Invalid(format!(
                    "{name} id {id:?} is not an id ({})",
                    coldstream_sources::auth::ID_RULE
                )));
            }
            if secret.chars().count() < MIN_SECRET_CHARS {
                return Err(ConfigError::Invalid(format!("{name} must be at least {MIN_SECRET_CHARS} characters")));
            }
            if refuse_dev_secret && secret == DEV_SECRET && !self.allow_dev_secret {
                return Err(ConfigError::Invalid(format!(
                    "{name} is the built-in development secret; set auth.secret or COLDSTREAM_SECRET (or auth.allow_dev_secret = true for a local trial)"
                )));
            }
            Ok(Key::new(id, secret))
        };
        let mut keys = vec![check(&self.key_id, secret, "auth.secret")?];
        for key in &self.previous_keys {
            if keys.iter().any(|k| k.id == key.id) {
                return Err(ConfigError::Invalid(format!("auth.previous_keys: key id {:?} appears twice", key.id)));
            }
            keys.push(check(&key.id, &key.secret, "auth.previous_keys secret")?);
        }
        let revoked = self
            .revoked
            .iter()
            .map(|name| name.parse::<Principal>().map_err(|e| ConfigError::Invalid(format!("auth.revoked: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tokens::with_keys(keys).revoke(revoked).legacy(self.legacy_tokens))
    }
}

/// TLS on the gRPC listener.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// The listener's certificate chain, PEM.
    pub cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub key: Option<PathBuf>,
    /// The CA whose client certificates authenticate fridges (mutual
    /// TLS), PEM: a certificate valid for a fridge id as a DNS name needs
    /// no token.
    pub client_ca: Option<PathBuf>,
    /// Serve plaintext on an address other than loopback (behind a proxy
    /// that terminates TLS); refused unless set.
    pub allow_plaintext: bool,
}

/// The gRPC gateway.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Events in one batch, at most.
    pub max_batch_events: usize,
    /// Unacknowledged batches per connection, at most.
    pub max_in_flight_batches: usize,
    /// Batches waiting for the log writer, at most; when full, acks slow down.
    pub queue_batches: usize,
    /// Records in one group commit (one fsync), at most.
    pub max_commit_records: usize,
    /// How far a seq may jump above its source's highest durable seq;
    /// beyond it the event is refused `seq_gap`.
    pub max_seq_gap: u64,
    /// Open connections, at most; one more is closed at once.
    pub max_connections: usize,
    /// Concurrent calls on one connection, at most.
    pub max_streams_per_connection: u32,
    /// Seconds a new stream may take to send `Hello`.
    pub hello_timeout_seconds: u64,
    /// Seconds between HTTP/2 pings on an idle connection; a peer that does
    /// not answer within as long is dropped.
    pub keepalive_seconds: u64,
}

/// The event log: a closed choice of kinds, selected by `kind` (the
/// embedded log when it is left out). Each kind has its own settings.
#[derive(Clone, Debug, PartialEq)]
pub enum LogSection {
    /// `kind = "embedded"`: segment files in `data_dir/log`, the default.
    Embedded(EmbeddedSection),
    /// `kind = "fluvio"`: a Fluvio topic (a build with the `fluvio` feature).
    Fluvio(FluvioSection),
}

/// The event log on a Fluvio topic (`[log] kind = "fluvio"`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FluvioSection {
    /// The cluster's controller (SC), `host:port`.
    pub endpoint: String,
    /// The topic (created if missing).
    pub topic: String,
    /// Partitions of the topic when coldstream creates it (a topic that
    /// exists keeps its own); a fridge's records all go to one of them.
    pub partitions: u32,
    /// Replicas of the topic when coldstream creates it; an ack waits for
    /// every one of them.
    pub replication: u32,
    /// TLS to the cluster (its controller and SPUs), verified and mutual as
    /// Fluvio's is: the CA that signed the cluster's certificates, PEM...
    pub tls_ca: Option<PathBuf>,
    /// ... this client's certificate and key, PEM...
    pub tls_cert: Option<PathBuf>,
    /// ...
    pub tls_key: Option<PathBuf>,
    /// ... and the name the cluster's certificates are for (default: the
    /// endpoint's host).
    pub tls_domain: Option<String>,
}

impl Default for FluvioSection {
    fn default() -> Self {
        FluvioSection {
            endpoint: "127.0.0.1:9003".into(),
            topic: "coldstream-events".into(),
            partitions: 1,
            replication: 1,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_domain: None,
        }
    }
}

impl FluvioSection {
    /// The endpoint's host.
    fn host(&self) -> &str {
        let host = self.endpoint.rsplit_once(':').map_or(self.endpoint.as_str(), |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Checks the TLS settings: all three files or none, and TLS to a
    /// cluster off loopback unless `tls.allow_plaintext`.
    fn check_tls(&self, allow_plaintext: bool) -> Result<(), ConfigError> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(_), Some(_), Some(_)) => Ok(()),
            (None, None, None) if self.tls_domain.is_some() => {
                Err(ConfigError::Invalid("log.tls_domain needs log.tls_ca, log.tls_cert and log.tls_key".into()))
            }
            (None, None, None) => {
                let loopback = self.host() == "localhost"
                    || self.host().parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if loopback || allow_plaintext {
                    Ok(())
                } else {
                    Err(ConfigError::Invalid(format!(
                        "log.endpoint {} is not loopback and there is no TLS: every event would cross the network in clear; set log.tls_ca, log.tls_cert and log.tls_key (or tls.allow_plaintext = true)",
                        self.endpoint
                    )))
                }
            }
            _ => Err(ConfigError::Invalid("log.tls_ca, log.tls_cert and log.tls_key go together".into())),
        }
    }

    #[cfg(feature = "fluvio")]
    fn log_config(&self) -> coldstream_sources::log::fluvio::FluvioLogConfig {
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some(coldstream_sources::log::fluvio::FluvioTls {
                domain: self.tls_domain.clone().unwrap_or_else(|| self.host().to_owned()),
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        coldstream_sources::log::fluvio::FluvioLogConfig {
            endpoint: self.endpoint.clone(),
            topic: self.topic.clone(),
            partitions: self.partitions,
            replication: self.replication,
            tls,
        }
    }
}

/// The error of a build without the Fluvio log.
#[cfg(not(feature = "fluvio"))]
fn no_fluvio() -> LogError {
    LogError::Failed("log.kind \"fluvio\" needs a coldstream built with `--features fluvio`".into())
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection::Embedded(EmbeddedSection::default())
    }
}

impl<'de> Deserialize<'de> for LogSection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = match table.remove("kind") {
            None => "embedded".to_owned(),
            Some(toml::Value::String(kind)) => kind,
            Some(other) => return Err(D::Error::custom(format!("log.kind must be a string, not {other}"))),
        };
        match kind.as_str() {
            "embedded" => toml::Value::Table(table).try_into().map(LogSection::Embedded).map_err(D::Error::custom),
            "fluvio" => toml::Value::Table(table).try_into().map(LogSection::Fluvio).map_err(D::Error::custom),
            other => {
                Err(D::Error::custom(format!("log.kind {other:?} is not a kind of log (\"embedded\", \"fluvio\")")))
            }
        }
    }
}

impl LogSection {
    /// Opens (creating) the log of the data directory `data_dir`.
    pub fn open(&self, data_dir: &Path) -> Result<Box<dyn EventLog>, LogError> {
        match self {
            LogSection::Embedded(embedded) => Ok(Box::new(EmbeddedLog::open(
                embedded.dir(data_dir),
                EmbeddedConfig { segment_bytes: embedded.segment_mb << 20 },
            )?)),
            #[cfg(feature = "fluvio")]
            LogSection::Fluvio(fluvio) => {
                Ok(Box::new(coldstream_sources::log::fluvio::FluvioLog::open(fluvio.log_config())?))
            }
            #[cfg(not(feature = "fluvio"))]
            LogSection::Fluvio(_) => Err(no_fluvio()),
        }
    }

    /// Readers of the log another process writes (a pipeline process
    /// beside the gateway's).
    pub fn follow(&self, data_dir: &Path) -> Result<std::sync::Arc<dyn OpenReader>, LogError> {
        match self {
            LogSection::Embedded(embedded) => EmbeddedLog::follow(embedded.dir(data_dir)),
            #[cfg(feature = "fluvio")]
            LogSection::Fluvio(fluvio) => coldstream_sources::log::fluvio::FluvioLog::follow(fluvio.log_config()),
            #[cfg(not(feature = "fluvio"))]
            LogSection::Fluvio(_) => Err(no_fluvio()),
        }
    }

    /// Readers for the pipeline of process `cluster.process` on a log with
    /// partitions to share: its share of them among the cluster's processes
    /// ([`coldstream_sources::log::Share`]; the whole topic, when it has
    /// fewer partitions than processes). `None` where every process reads
    /// the log the gateway's readers read (the embedded log, one process).
    pub fn follow_share(
        &self,
        cluster: &crate::workers::Cluster,
    ) -> Result<Option<std::sync::Arc<dyn OpenReader>>, LogError> {
        if !cluster.is_multi() {
            return Ok(None);
        }
        match self {
            LogSection::Embedded(_) => Ok(None),
            #[cfg(feature = "fluvio")]
            LogSection::Fluvio(fluvio) => {
                let readers = coldstream_sources::log::fluvio::FluvioLog::follow_share(
                    fluvio.log_config(),
                    cluster.processes,
                    cluster.process,
                )?;
                Ok(Some(readers))
            }
            #[cfg(not(feature = "fluvio"))]
            LogSection::Fluvio(_) => Err(no_fluvio()),
        }
    }

    /// Where the log lives, for messages.
    pub fn describe(&self, data_dir: &Path) -> String {
        match self {
            LogSection::Embedded(embedded) => embedded.dir(data_dir).display().to_string(),
            LogSection::Fluvio(fluvio) => format!("Fluvio topic {} at {}", fluvio.topic, fluvio.endpoint),
        }
    }

    /// How long records are kept after every consumer has covered them;
    /// `None` for a log that keeps them by its own rules.
    pub fn retention_ms(&self) -> Option<u64> {
        match self {
            LogSection::Embedded(embedded) => Some(embedded.retention_hours * 3_600_000),
            // The topic's own retention settings.
            LogSection::Fluvio(_) => None,
        }
    }
}

/// The embedded event log (`[log] kind = "embedded"`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedSection {
    /// Size at which a log segment is closed and a new one started, in MiB.
    pub segment_mb: u64,
    /// A closed segment is removed once every consumer has covered it (the
    /// archive in `events/`, the kept checkpoints, the seq map) and its
    /// last record is this many hours old. 0 removes it as soon as it is
    /// covered.
    pub retention_hours: u64,
    /// The log's folder; `data_dir/log` when left out. A pipeline process
    /// on the gateway's machine names the gateway's.
    pub dir: Option<PathBuf>,
}

impl EmbeddedSection {
    /// The log's folder for the data directory `data_dir`.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("log"))
    }
}

/// The Parquet sink.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetSection {
    /// Close a file once its buffered rows reach this many MiB.
    pub roll_mb: usize,
    /// Close a file once its oldest row has waited this many seconds.
    pub roll_seconds: u64,
    /// ZSTD level, 1 to 22.
    pub zstd_level: i32,
}

/// The restock policy of the UDF `name`, one of the loaded `udfs`: it
/// must take five `i64`s (par, min, on_hand, sales_7d, lead_time_days) and
/// return an `i64`.
fn reorder_policy(
    name: &str,
    udfs: &[Arc<crate::udf::LoadedUdf>],
) -> Result<coldstream_pipelines::views::restock::ReorderPolicy, ConfigError> {
    use crate::udf::{Typed, UdfType};
    let udf = udfs.iter().find(|udf| udf.name() == name).map(Arc::clone).ok_or_else(|| {
        ConfigError::Invalid(format!("views.reorder_point_udf {name:?} is none of the UDFs in sql.udfs"))
    })?;
    let int = Typed { udf_type: UdfType::I64, nullable: false };
    let manifest = udf.manifest();
    if manifest.args != [int; 5] || manifest.returns.udf_type != UdfType::I64 {
        return Err(ConfigError::Invalid(format!(
            "views.reorder_point_udf {name:?} must be fn {name}(par: i64, min: i64, on_hand: i64, sales_7d: i64, lead_time_days: i64) -> i64"
        )));
    }
    let id = format!("{name} sha256:{}", udf.content_hash());
    Ok(coldstream_pipelines::views::restock::ReorderPolicy {
        id,
        reorder_point: Arc::new(move |i| {
            udf.call_i64(&[i.par, i.min, i.on_hand, i.sales_7d, i.lead_time_days])?
                .ok_or_else(|| format!("{} returned null", udf.name()))
        }),
    })
}

/// The development secret, for demos and tests on loopback.
pub const DEV_SECRET: &str = "coldstream-dev-secret";

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./coldstream-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            workers: 0,
            async_threads: 0,
            role: Role::default(),
            cluster: ClusterSection::default(),
            region: RegionSection::default(),
            auth: AuthConfig::default(),
            gateway: GatewaySection::default(),
            tls: TlsSection::default(),
            log: LogSection::default(),
            parquet: ParquetSection::default(),
            views: ViewsSection::default(),
            webhooks: WebhooksSection::default(),
            checkpoint: CheckpointSection::default(),
            flight_sql: FlightSqlSection::default(),
            metrics: MetricsSection::default(),
            tracing: TracingSection::default(),
            sql: SqlSection::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: DEV_SECRET.to_owned(),
            key_id: coldstream_sources::auth::DEFAULT_KEY_ID.to_owned(),
            previous_keys: Vec::new(),
            revoked: Vec::new(),
            legacy_tokens: false,
            allow_dev_secret: false,
        }
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        let defaults = coldstream_sources::gateway::GatewayConfig::default();
        let ingest = coldstream_sources::ingest::IngestConfig::default();
        GatewaySection {
            max_batch_events: defaults.max_batch_events,
            max_in_flight_batches: defaults.max_in_flight_batches,
            queue_batches: ingest.queue_batches,
            max_commit_records: ingest.max_commit_records,
            max_seq_gap: ingest.max_seq_gap,
            max_connections: defaults.max_connections,
            max_streams_per_connection: defaults.max_streams_per_connection,
            hello_timeout_seconds: defaults.hello_timeout.as_secs(),
            keepalive_seconds: defaults.keepalive.as_secs(),
        }
    }
}

impl Default for EmbeddedSection {
    fn default() -> Self {
        EmbeddedSection { segment_mb: EmbeddedConfig::default().segment_bytes >> 20, retention_hours: 168, dir: None }
    }
}

impl Default for ParquetSection {
    fn default() -> Self {
        let defaults = coldstream_sinks::ParquetConfig::default();
        ParquetSection {
            roll_mb: defaults.roll_bytes >> 20,
            roll_seconds: defaults.roll_age.as_secs(),
            zstd_level: defaults.zstd_level,
        }
    }
}

/// A configuration that cannot be used, with the reason in one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with its location.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// The defaults, with data in `data_dir`, `workers` timely workers, and
    /// the gateway on a free loopback port: a server in this process (the
    /// demo, the bench).
    pub fn loopback(data_dir: &Path, workers: usize) -> Config {
        Config {
            data_dir: data_dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().expect("a literal socket address"),
            workers,
            auth: AuthConfig { allow_dev_secret: true, ..AuthConfig::default() },
            ..Config::default()
        }
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().replace('\n', " ").split_whitespace().collect::<Vec<_>>().join(" "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The listener's TLS, its files read; refuses plaintext on an address
    /// other than loopback unless `tls.allow_plaintext` says so.
    pub fn server_tls(&self) -> Result<Option<coldstream_sources::gateway::ServerTls>, ConfigError> {
        let read = |path: &PathBuf, name: &str| {
            std::fs::read(path).map_err(|e| ConfigError::Invalid(format!("tls.{name} {}: {e}", path.display())))
        };
        let tls = match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => Some(coldstream_sources::gateway::ServerTls {
                cert: read(cert, "cert")?,
                key: read(key, "key")?,
                client_ca: self.tls.client_ca.as_ref().map(|ca| read(ca, "client_ca")).transpose()?,
            }),
            (None, None) if self.tls.client_ca.is_some() => {
                return Err(ConfigError::Invalid("tls.client_ca needs tls.cert and tls.key".into()));
            }
            (None, None) => None,
            _ => return Err(ConfigError::Invalid("tls.cert and tls.key go together".into())),
        };
        if tls.is_none() && !self.listen.ip().is_loopback() && !self.tls.allow_plaintext {
            return Err(ConfigError::Invalid(format!(
                "listen {} is not loopback and there is no TLS: tokens would cross the network in clear; set tls.cert and tls.key (or tls.allow_plaintext = true behind a proxy that terminates TLS)",
                self.listen
            )));
        }
        Ok(tls)
    }

    /// The Flight SQL endpoint's settings, when it is enabled: over this
    /// data directory, with the gateway's tokens and certificate; refuses
    /// plaintext off loopback as the gateway does.
    pub fn flight_sql(
        &self,
        tokens: &coldstream_sources::auth::Tokens,
        tls: Option<&coldstream_sources::gateway::ServerTls>,
        udfs: &[std::sync::Arc<crate::udf::LoadedUdf>],
    ) -> Result<Option<crate::flight_sql::FlightSqlConfig>, ConfigError> {
        let f = &self.flight_sql;
        if !f.enabled {
            return Ok(None);
        }
        if tls.is_none() && !f.listen.ip().is_loopback() && !self.tls.allow_plaintext {
            return Err(ConfigError::Invalid(format!(
                "flight_sql.listen {} is not loopback and there is no TLS: analysts' tokens would cross the network in clear; set tls.cert and tls.key",
                f.listen
            )));
        }
        Ok(Some(crate::flight_sql::FlightSqlConfig {
            listen: f.listen,
            data_dirs: vec![self.data_dir.clone()],
            tokens: tokens.clone(),
            tls: tls.cloned(),
            limits: crate::flight_sql::Limits {
                memory_bytes: (f.memory_limit_mb as usize) << 20,
                timeout: Duration::from_secs(f.timeout_seconds),
                concurrent: f.max_concurrent_queries,
            },
            udfs: udfs.to_vec(),
        }))
    }

    /// The metrics listener's settings, when it is enabled; refuses
    /// plaintext off loopback as the gateway does (the page shows the
    /// fleet's orders and alerts).
    pub fn metrics(
        &self,
        tls: Option<&coldstream_sources::gateway::ServerTls>,
    ) -> Result<Option<crate::metrics::MetricsConfig>, ConfigError> {
        let m = &self.metrics;
        if !m.enabled {
            return Ok(None);
        }
        if tls.is_none() && !m.listen.ip().is_loopback() && !self.tls.allow_plaintext {
            return Err(ConfigError::Invalid(format!(
                "metrics.listen {} is not loopback and there is no TLS: the status page shows the fleet's orders and alerts; set tls.cert and tls.key",
                m.listen
            )));
        }
        Ok(Some(crate::metrics::MetricsConfig { listen: m.listen, tls: tls.cloned() }))
    }

    /// Which batches the components follow with spans: none unless
    /// `tracing.otlp_endpoint` is set.
    pub fn traces(&self) -> coldstream_pipelines::traces::Traces {
        if self.tracing.otlp_endpoint.is_empty() {
            coldstream_pipelines::traces::Traces::default()
        } else {
            coldstream_pipelines::traces::Traces::sampled(self.tracing.sample_ratio)
        }
    }

    /// The gateway's settings (not yet holding for a full sink).
    pub fn gateway(&self) -> coldstream_sources::gateway::GatewayConfig {
        coldstream_sources::gateway::GatewayConfig {
            max_batch_events: self.gateway.max_batch_events,
            max_in_flight_batches: self.gateway.max_in_flight_batches,
            max_connections: self.gateway.max_connections,
            max_streams_per_connection: self.gateway.max_streams_per_connection,
            hello_timeout: Duration::from_secs(self.gateway.hello_timeout_seconds),
            keepalive: Duration::from_secs(self.gateway.keepalive_seconds),
            tls: None,
            hold: Default::default(),
            regions: None,
            metrics: Default::default(),
            traces: Default::default(),
        }
    }

    /// Checks value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const HOUR_S: u128 = 3600;
        const DAY_S: u128 = 24 * HOUR_S;
        let (segment_mb, retention_hours) = match &self.log {
            LogSection::Embedded(embedded) => (embedded.segment_mb, embedded.retention_hours),
            LogSection::Fluvio(fluvio) => {
                if !(1..=16).contains(&fluvio.replication)
                    || !(1..=1024).contains(&fluvio.partitions)
                    || fluvio.topic.is_empty()
                    || fluvio.endpoint.is_empty()
                {
                    return Err(ConfigError::Invalid(
                        "log.replication must be in 1..=16, log.partitions in 1..=1024, and log.topic and log.endpoint set"
                            .into(),
                    ));
                }
                fluvio.check_tls(self.tls.allow_plaintext)?;
                (1, 0)
            }
        };
        let g = &self.gateway;
        let c = &self.checkpoint;
        // Every number has an upper bound too: none may wrap when scaled to
        // bytes or milliseconds, or overflow a deadline.
        let f = &self.flight_sql;
        let ranges: [(&str, u128, u128, u128); 22] = [
            ("workers", self.workers as u128, 0, 1024),
            ("async_threads", self.async_threads as u128, 0, 1024),
            ("gateway.max_batch_events", g.max_batch_events as u128, 1, 1_000_000),
            ("gateway.max_in_flight_batches", g.max_in_flight_batches as u128, 1, 1024),
            ("gateway.queue_batches", g.queue_batches as u128, 1, 1_000_000),
            ("gateway.max_commit_records", g.max_commit_records as u128, 1, 10_000_000),
            ("gateway.max_seq_gap", g.max_seq_gap as u128, 1, 1 << 48),
            ("gateway.max_connections", g.max_connections as u128, 1, 1_000_000),
            ("gateway.max_streams_per_connection", g.max_streams_per_connection as u128, 1, 10_000),
            ("gateway.hello_timeout_seconds", g.hello_timeout_seconds as u128, 1, HOUR_S),
            ("gateway.keepalive_seconds", g.keepalive_seconds as u128, 1, DAY_S),
            ("log.segment_mb", segment_mb as u128, 1, 64 * 1024),
            ("log.retention_hours", retention_hours as u128, 0, 100 * 365 * 24),
            ("parquet.roll_mb", self.parquet.roll_mb as u128, 1, 64 * 1024),
            ("parquet.roll_seconds", self.parquet.roll_seconds as u128, 0, 7 * DAY_S),
            ("checkpoint.interval_seconds", c.interval_seconds as u128, 1, DAY_S),
            ("checkpoint.every_records", c.every_records as u128, 0, 1 << 48),
            ("checkpoint.keep", c.keep as u128, 1, 1000),
            ("views.payment_wait_hours", self.views.payment_wait_hours as u128, 1, 365 * 24),
            ("flight_sql.memory_limit_mb", f.memory_limit_mb as u128, 16, 1 << 20),
            ("flight_sql.timeout_seconds", f.timeout_seconds as u128, 1, DAY_S),
            ("flight_sql.max_concurrent_queries", f.max_concurrent_queries as u128, 1, 1024),
        ];
        for (name, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(ConfigError::Invalid(format!("{name} {value} is not in {low}..={high}")));
            }
        }
        if !(1..=22).contains(&self.parquet.zstd_level) {
            return Err(ConfigError::Invalid(format!(
                "parquet.zstd_level {} is not in 1..=22",
                self.parquet.zstd_level
            )));
        }
        if self.views.horizon_hours == 0 || self.views.horizon_hours > 24 * 365 {
            return Err(ConfigError::Invalid(format!(
                "views.horizon_hours {} is not in 1..=8760",
                self.views.horizon_hours
            )));
        }
        if !(0..=365).contains(&self.views.lead_time_days) {
            return Err(ConfigError::Invalid(format!(
                "views.lead_time_days {} is not in 0..=365",
                self.views.lead_time_days
            )));
        }
        let t = &self.tracing;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(ConfigError::Invalid(format!("tracing.sample_ratio {} is not in 0..=1", t.sample_ratio)));
        }
        let endpoint = t.otlp_endpoint.as_str();
        let is_url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !(endpoint.is_empty() || is_url) {
            return Err(ConfigError::Invalid(format!(
                "tracing.otlp_endpoint {:?} is not an http:// or https:// address of an OTLP/gRPC collector",
                t.otlp_endpoint
            )));
        }
        self.auth.tokens_with(&self.auth.secret, false)?;
        self.webhooks()?;
        if self.cluster.hostfile.is_none() {
            self.cluster.cluster()?;
        }
        Ok(())
    }

    /// The webhook sink's settings, checked.
    pub fn webhooks(&self) -> Result<coldstream_sinks::webhooks::WebhookConfig, ConfigError> {
        use coldstream_sinks::webhooks::{Endpoint, EndpointConfig, RetryPolicy, Secret};
        let w = &self.webhooks;
        const DAY_MS: u64 = 24 * 3_600_000;
        let ranges = [
            ("webhooks.max_pending", w.max_pending as u64, 1, 100_000_000),
            ("webhooks.retry_initial_ms", w.retry_initial_ms, 1, DAY_MS),
            ("webhooks.retry_max_ms", w.retry_max_ms, 1, 7 * DAY_MS),
            ("webhooks.breaker_failures", w.breaker_failures as u64, 1, 1_000_000),
            ("webhooks.breaker_open_ms", w.breaker_open_ms, 1, DAY_MS),
        ];
        for (name, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(ConfigError::Invalid(format!("{name} {value} is not in {low}..={high}")));
            }
        }
        let mut endpoints = Vec::new();
        for (endpoint, section) in [
            (Endpoint::Procurement, &w.procurement),
            (Endpoint::Accounting, &w.accounting),
            (Endpoint::Alerts, &w.alerts),
        ] {
            let Some(section) = section else { continue };
            let name = endpoint.as_str();
            let url: hyper::Uri = section
                .url
                .parse()
                .ok()
                .filter(|u: &hyper::Uri| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "webhooks.{name}.url {:?} is not an http(s)://host[:port]/path URL",
                        section.url
                    ))
                })?;
            let ca = match &section.ca_file {
                None => None,
                Some(_) if url.scheme_str() != Some("https") => {
                    return Err(ConfigError::Invalid(format!("webhooks.{name}.ca_file applies to https:// URLs only")));
                }
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        ConfigError::Invalid(format!("webhooks.{name}.ca_file {}: {e}", path.display()))
                    })?;
                    coldstream_sinks::webhooks::tls_roots(Some(&pem)).map_err(|e| {
                        ConfigError::Invalid(format!("webhooks.{name}.ca_file {}: {e}", path.display()))
                    })?;
                    Some(pem)
                }
            };
            let secret = Secret::parse(&section.secret)
                .map_err(|e| ConfigError::Invalid(format!("webhooks.{name}.secret: {e}")))?;
            if !(1..=600_000).contains(&section.timeout_ms) || !(1..=10_000).contains(&section.max_in_flight) {
                return Err(ConfigError::Invalid(format!(
                    "webhooks.{name}: timeout_ms must be in 1..=600000 and max_in_flight in 1..=10000"
                )));
            }
            let timeout = Duration::from_millis(section.timeout_ms);
            endpoints.push((
                endpoint,
                EndpointConfig {
                    url,
                    secret,
                    timeout,
                    max_in_flight: section.max_in_flight,
                    ca,
                    every_update: section.every_update,
                    protocol: section.protocol,
                },
            ));
        }
        Ok(coldstream_sinks::webhooks::WebhookConfig {
            endpoints,
            retry: RetryPolicy {
                initial: Duration::from_millis(w.retry_initial_ms),
                max: Duration::from_millis(w.retry_max_ms),
                breaker_failures: w.breaker_failures,
                breaker_open: Duration::from_millis(w.breaker_open_ms),
            },
            max_pending: w.max_pending,
            metrics: Default::default(),
            traces: Default::default(),
        })
    }

    /// The number of worker threads to start.
    pub fn worker_threads(&self) -> usize {
        if self.workers == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { self.workers }
    }

    /// The views' settings, with the reorder policy's UDF loaded.
    pub fn views(&self) -> Result<coldstream_pipelines::views::ViewConfig, ConfigError> {
        let udfs = match &self.views.reorder_point_udf {
            Some(_) => crate::udf::load_all(&self.sql.udfs).map_err(|e| ConfigError::Invalid(e.to_string()))?,
            None => Vec::new(),
        };
        self.views_with(&udfs)
    }

    /// The views' settings, the reorder policy taken from `udfs` (those of
    /// `[sql] udfs`, loaded).
    pub fn views_with(
        &self,
        udfs: &[Arc<crate::udf::LoadedUdf>],
    ) -> Result<coldstream_pipelines::views::ViewConfig, ConfigError> {
        let reorder_point = match &self.views.reorder_point_udf {
            Some(name) => Some(reorder_policy(name, udfs)?),
            None => None,
        };
        Ok(coldstream_pipelines::views::ViewConfig {
            horizon_us: self.views.horizon_hours as i64 * coldstream_pipelines::event::HOUR_US,
            lead_time_days: self.views.lead_time_days,
            reorder_point,
            payment_wait_us: self.views.payment_wait_hours as i64 * coldstream_pipelines::event::HOUR_US,
            hooks: Default::default(),
            deduplicate: matches!(self.log, LogSection::Fluvio(_)),
        })
    }

    /// The Parquet sink's settings.
    pub fn parquet(&self) -> coldstream_sinks::ParquetConfig {
        coldstream_sinks::ParquetConfig {
            roll_bytes: self.parquet.roll_mb << 20,
            roll_age: Duration::from_secs(self.parquet.roll_seconds),
            zstd_level: self.parquet.zstd_level,
        }
    }
}

/// A complete configuration with every default, commented.
pub const DEFAULT_TOML: &str = r#"# coldstream configuration (coldstream run --config FILE).
# Every key is optional; the values shown are the defaults.

# Where the event log, Parquet files and state live.
data_dir = "./coldstream-data"
# The gRPC address fridges and the back office connect to.
listen = "127.0.0.1:50051"
# Timely worker threads; 0 means one per core.
workers = 0
# Threads of the async runtime (gateway, webhook delivery, HTTP endpoints);
# 0 means one per core. On a machine the timely workers already fill, fewer
# leave them more of it: fresher views, slower webhooks (see the README).
async_threads = 0
# What this process runs: "all" (gateway, log and pipeline), "gateway"
# (takes fridges' calls and writes the log, computes nothing) or "pipeline"
# (one process of the pipeline, following the log the gateway writes).
role = "all"

[region]
# This deployment's region (one log and pipeline per region); its data
# directory is marked with it, so `coldstream query --data A --data B`
# labels each row's region. Empty for a deployment of one region.
name = ""
# A CSV file of `fridge_id,region` lines: where each fridge is registered.
# A fridge registered in another region is sent to that region's gateway.
# registry = "/etc/coldstream/fridges.csv"

[region.gateways]
# Every other region's gateway, by region:
# us-east = "https://us-east.example.com:50051"

[cluster]
# The pipeline on several processes (timely's cluster mode): each has
# `workers` threads, a fridge's state lives on one worker of one process,
# and each process keeps, archives and delivers for its own fridges in its
# own data_dir. On a Fluvio topic with at least as many partitions as
# processes, each process reads and archives only its share of them (the
# partitions p with p % processes = process). Every process needs the same
# processes, hosts and workers.
processes = 1
# This process's index, from 0.
process = 0
# Every process's host:port, in process order (or hostfile = "FILE", one
# per line).
hosts = []

[auth]
# The fleet key that signs tokens (`coldstream token` prints them). At
# least 16 characters. COLDSTREAM_SECRET overrides it.
secret = "coldstream-dev-secret"
# Its id, named in every token it signs.
key_id = "k1"
# Keys that still verify tokens while fridges move to tokens of the new key:
# previous_keys = [{ id = "k0", secret = "…" }]
previous_keys = []
# Fridges (by id), back-office clients (`backoffice/<id>`) and analysts
# (`analyst/<name>`) refused whatever their token.
revoked = []
# Accept tokens of the old form (the bare HMAC of the principal's name).
# They can only be checked once the body is read; turn this off once every
# fridge holds a token from `coldstream token`.
legacy_tokens = false
# Accept the built-in development secret above (local trials only).
allow_dev_secret = false

[gateway]
# Events in one batch, at most; a larger batch is refused whole.
max_batch_events = 10000
# Unacknowledged batches per connection, at most.
max_in_flight_batches = 8
# Batches waiting for the log writer, at most; when full, acks slow down.
queue_batches = 1024
# Records in one group commit (one fsync), at most.
max_commit_records = 50000
# How far a seq may jump above its source's highest durable seq; beyond it
# the event is refused `seq_gap`, so one bad counter cannot silence a fridge.
max_seq_gap = 1000000
# Open connections, at most; one more is closed at once.
max_connections = 10000
# Concurrent calls on one connection, at most (a fridge needs one).
max_streams_per_connection = 16
# Seconds a new stream may take to send Hello.
hello_timeout_seconds = 10
# Seconds between HTTP/2 pings on an idle connection; a peer that does not
# answer within as long is dropped.
keepalive_seconds = 30

[tls]
# TLS on the gRPC listener: certificate chain and private key, PEM.
# cert = "/etc/coldstream/gateway.pem"
# key = "/etc/coldstream/gateway.key"
# The CA of fridges' client certificates (mutual TLS): a certificate valid
# for a fridge id (as a DNS name) authenticates that fridge without a token.
# client_ca = "/etc/coldstream/fridges-ca.pem"
# A listen address other than loopback without TLS is refused unless this
# is set (a proxy in front terminates TLS).
allow_plaintext = false

[log]
# Which log: "embedded" (segment files in data_dir/log; no server to run),
# or "fluvio" (a Fluvio topic; a build with `--features fluvio`), whose
# keys are endpoint = "host:port" of the controller, topic, partitions and
# replication (when coldstream creates the topic),
# and for TLS to the cluster tls_ca, tls_cert, tls_key (PEM files) and
# tls_domain (default: the endpoint's host).
kind = "embedded"
# The log's folder, when not data_dir/log: a pipeline process on the
# gateway's machine follows the gateway's log there.
# dir = "/var/lib/coldstream/log"
# Size at which a log segment is closed and a new one started, in MiB.
segment_mb = 128
# A closed segment is removed once everything downstream has covered it
# (archived in events/, behind every kept checkpoint) and its last record
# is this many hours old; 0 removes it as soon as it is covered.
# `coldstream rebuild` recomputes the views from events/ alone.
retention_hours = 168

[checkpoint]
# The views' state is checkpointed each time the log's ingest time enters
# a new interval of this many seconds, or every_records records after the
# last checkpoint, whichever comes first; a restart replays only the log
# after the newest checkpoint. (Processes that read shares of a Fluvio
# topic checkpoint at each interval's start only, so that they agree.)
interval_seconds = 10
every_records = 1000000
# Checkpoints kept in checkpoints/; if the newest is damaged, the one
# before it is used.
keep = 3

[parquet]
# Close a file once its buffered rows reach this many MiB.
roll_mb = 64
# Close a file once its oldest row has waited this many seconds.
roll_seconds = 30
# ZSTD compression level, 1 to 22.
zstd_level = 3

[views]
# State is kept this many hours behind each fridge's latest event (1 to
# 8760); an event that arrives later than that behind its own fridge is
# archived in events/ but no longer changes the views.
horizon_hours = 6
# Days a restock delivery takes: reorder point = max(min,
# ceil(sales_7d / 7 * lead_time_days)).
lead_time_days = 2
# Hours after its DoorClosed that a session waits for its payment result
# (end-of-day batch captures), whatever the horizon (1 to 8760). A result
# later than that is archived but settles nothing.
payment_wait_hours = 72
# A UDF of [sql] udfs, by name, that replaces the built-in reorder point:
# fn NAME(par: i64, min: i64, on_hand: i64, sales_7d: i64, lead_time_days:
# i64) -> i64. The checkpoints record its content hash: a changed UDF asks
# for `coldstream rebuild`.
# reorder_point_udf = "seasonal_reorder_point"

[flight_sql]
# The Flight SQL endpoint: the tables of `coldstream query` for analysts'
# tools (DBeaver, Superset, Grafana, ADBC), with tokens of
# `coldstream token --analyst NAME`. Off unless enabled (or
# `coldstream run --flight-sql ADDR`); TLS as on the gateway ([tls]),
# required on an address other than loopback.
enabled = false
listen = "127.0.0.1:50052"
# Memory one query's sorts, aggregations and joins may hold; a query that
# needs more fails alone (nothing spills to disk).
memory_limit_mb = 512
# From a statement's arrival to its last batch, waiting for a slot included.
timeout_seconds = 300
# Queries running at once; more wait for a slot.
max_concurrent_queries = 4

[metrics]
# Prometheus metrics on /metrics and the live status page on /, on one
# HTTP address. Off unless enabled (or `coldstream run --metrics ADDR`);
# TLS as on the gateway ([tls]), required on an address other than loopback.
enabled = false
listen = "127.0.0.1:9464"

[tracing]
# OpenTelemetry traces over OTLP/gRPC: a sampled batch's path from the
# gateway (gateway.batch) to its group commit (log.commit), the views
# (views.pending) and each webhook (webhook.pending, webhook.attempt).
# Empty: no traces.
otlp_endpoint = ""
# The share of batches followed, 0 to 1.
sample_ratio = 0.01
service_name = "coldstream"

[sql]
# UDFs written for Arroyo (arroyo-udf-plugin), built with `coldstream udf
# build DIR`: the libraries, each with its manifest beside it. Callable
# from Flight SQL, and as the restock policy (views.reorder_point_udf).
udfs = []

[webhooks]
# Deliveries pending on disk (webhooks/outbox.log) beyond which the views
# wait and the gateway slows its acks; nothing is dropped.
max_pending = 100000
# Retries: the first after retry_initial_ms, each next one twice as late
# (with jitter), at most retry_max_ms apart; retried until delivered.
retry_initial_ms = 500
retry_max_ms = 60000
# After breaker_failures failed attempts in a row an endpoint's circuit
# opens: nothing is sent for breaker_open_ms, then one probe at a time
# until it answers.
breaker_failures = 10
breaker_open_ms = 30000

# One table per endpoint: procurement (restock.*), accounting (payment.*),
# alerts (coldchain.excursion, inventory.negative). Without a table, that
# endpoint's messages are not kept. For example:
#
# [webhooks.procurement]
# url = "http://127.0.0.1:9001/hooks"
# secret = "whsec_Y29sZHN0cmVhbS1kZW1vLXNlY3JldC0wMQ=="
# timeout_ms = 10000          # one attempt, connection included
# max_in_flight = 64          # concurrent deliveries (different keys)
# every_update = false        # true: also send a restock.updated that a later
#                             # state of its order superseded before it was sent
# protocol = "auto"           # auto: HTTP/1.1 to http://, HTTP/2 to https:// when
#                             # the receiver offers it; "http1"; "http2": every
#                             # delivery a stream of one connection (to http://,
#                             # the receiver must speak cleartext HTTP/2)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// `coldstream config default` prints every default: parsed back, it
    /// is exactly [`Config::default`], field by field.
    #[test]
    fn the_printed_default_parses_to_the_defaults() {
        let parsed = Config::parse(DEFAULT_TOML, "default").expect("the default parses");
        let defaults = Config::default();
        assert_eq!(parsed.data_dir, defaults.data_dir);
        assert_eq!(parsed.listen, defaults.listen);
        assert_eq!(parsed.workers, defaults.workers);
        assert_eq!(parsed.async_threads, defaults.async_threads);
        assert_eq!(parsed.auth, defaults.auth);
        assert_eq!(parsed.gateway, defaults.gateway);
        assert_eq!(parsed.log, defaults.log);
        assert_eq!(parsed.parquet, defaults.parquet);
        assert_eq!(parsed.views, defaults.views);
        assert_eq!(parsed.webhooks, defaults.webhooks);
        assert_eq!(parsed.checkpoint, defaults.checkpoint);
        assert_eq!(parsed.flight_sql, defaults.flight_sql);
        assert_eq!(parsed.metrics, defaults.metrics);
        assert_eq!(parsed.tracing, defaults.tracing);
        assert_eq!(parsed, defaults);
    }

    /// The sections' defaults are the components' own.
    #[test]
    fn the_sections_take_their_defaults_from_the_components() {
        let config = Config::default();
        assert_eq!(
            config.views().expect("no UDF").horizon_us,
            coldstream_pipelines::views::ViewConfig::default().horizon_us
        );
        assert_eq!(config.parquet().roll_bytes, coldstream_sinks::ParquetConfig::default().roll_bytes);
        assert_eq!(
            config.webhooks().expect("valid").max_pending,
            coldstream_sinks::webhooks::WebhookConfig::default().max_pending
        );
    }

    #[test]
    fn the_log_is_a_closed_choice_of_kinds() {
        let config = Config::parse("[log]\nsegment_mb = 4\n", "c.toml").expect("embedded by default");
        assert_eq!(config.log, LogSection::Embedded(EmbeddedSection { segment_mb: 4, ..EmbeddedSection::default() }));
        let named = Config::parse("[log]\nkind = \"embedded\"\nretention_hours = 0\n", "c.toml").expect("named");
        assert_eq!(named.log.retention_ms(), Some(0));
        let unknown = Config::parse("[log]\nkind = \"kafka\"\n", "c.toml").expect_err("no such log");
        assert!(unknown.to_string().contains("kafka") && !unknown.to_string().contains('\n'), "{unknown}");
        let stray = Config::parse("[log]\nkind = \"embedded\"\ntopic = \"x\"\n", "c.toml").expect_err("unknown key");
        assert!(stray.to_string().contains("topic"), "{stray}");
        let fluvio = Config::parse("[log]\nkind = \"fluvio\"\ntopic = \"fleet\"\n", "c.toml").expect("fluvio");
        assert_eq!(fluvio.log, LogSection::Fluvio(FluvioSection { topic: "fleet".into(), ..FluvioSection::default() }));
        assert_eq!(fluvio.log.retention_ms(), None, "the topic keeps records by its own rules");
        let stray = Config::parse("[log]\nkind = \"fluvio\"\nsegment_mb = 4\n", "c.toml").expect_err("unknown key");
        assert!(stray.to_string().contains("segment_mb"), "{stray}");
        let none = Config::parse("[log]\nkind = \"fluvio\"\nreplication = 0\n", "c.toml").expect_err("no replicas");
        assert!(none.to_string().contains("log.replication"), "{none}");
        let spread = Config::parse("[log]\nkind = \"fluvio\"\npartitions = 8\n", "c.toml").expect("partitions");
        assert!(matches!(spread.log, LogSection::Fluvio(FluvioSection { partitions: 8, .. })));
        let nothing = Config::parse("[log]\nkind = \"fluvio\"\npartitions = 0\n", "c.toml").expect_err("none");
        assert!(nothing.to_string().contains("log.partitions"), "{nothing}");
        let far = "[log]\nkind = \"fluvio\"\nendpoint = \"fluvio.example:9003\"\n";
        let clear = Config::parse(far, "c.toml").expect_err("plaintext off loopback");
        assert!(clear.to_string().contains("not loopback and there is no TLS"), "{clear}");
        Config::parse(&format!("{far}[tls]\nallow_plaintext = true\n"), "c.toml").expect("allowed explicitly");
        let half = Config::parse(&format!("{far}tls_ca = \"ca.pem\"\n"), "c.toml").expect_err("half of TLS");
        assert!(half.to_string().contains("go together"), "{half}");
        let tls = format!("{far}tls_ca = \"ca.pem\"\ntls_cert = \"c.pem\"\ntls_key = \"c.key\"\n");
        let tls = Config::parse(&tls, "c.toml").expect("TLS to a remote cluster");
        let LogSection::Fluvio(section) = &tls.log else { panic!("a Fluvio log") };
        assert_eq!(section.host(), "fluvio.example", "the certificate's name defaults to the endpoint's host");
        #[cfg(not(feature = "fluvio"))]
        {
            let missing = fluvio.log.open(Path::new("/nonexistent")).err().expect("a build without Fluvio");
            assert!(missing.to_string().contains("--features fluvio"), "{missing}");
        }
    }

    #[test]
    fn a_snippet_overrides_only_what_it_names() {
        let config =
            Config::parse("workers = 3\nasync_threads = 1\n[parquet]\nroll_seconds = 5\n", "snippet").expect("valid");
        assert_eq!((config.workers, config.async_threads), (3, 1));
        assert_eq!(config.parquet.roll_seconds, 5);
        assert_eq!(config.parquet.zstd_level, 3);
    }

    #[test]
    fn every_number_has_an_upper_bound_so_nothing_wraps_or_overflows_a_deadline() {
        for (snippet, name) in [
            ("[log]\nretention_hours = 9223372036854775807\n", "log.retention_hours"),
            ("[gateway]\nhello_timeout_seconds = 9223372036854775807\n", "gateway.hello_timeout_seconds"),
            ("[checkpoint]\ninterval_seconds = 9223372036854775807\n", "checkpoint.interval_seconds"),
            ("[webhooks]\nretry_max_ms = 9223372036854775807\n", "webhooks.retry_max_ms"),
            ("[parquet]\nroll_mb = 9223372036854775807\n", "parquet.roll_mb"),
            ("[log]\nsegment_mb = 9223372036854775807\n", "log.segment_mb"),
            ("async_threads = 100000\n", "async_threads"),
        ] {
            let error = Config::parse(snippet, "c.toml").expect_err(name);
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn the_development_secret_and_short_or_duplicate_keys_are_refused() {
        let auth = AuthConfig::default();
        let refused = auth.tokens_with(DEV_SECRET, true).expect_err("the dev secret");
        assert!(refused.to_string().contains("development secret"), "{refused}");
        let allowed = AuthConfig { allow_dev_secret: true, ..AuthConfig::default() };
        assert!(allowed.tokens_with(DEV_SECRET, true).is_ok());
        assert!(auth.tokens_with("short", true).is_err());
        let twice = AuthConfig {
            previous_keys: vec![PreviousKey { id: "k1".into(), secret: "another-secret-of-16".into() }],
            ..AuthConfig::default()
        };
        assert!(twice.tokens_with("a-secret-of-16-chars", true).expect_err("k1 twice").to_string().contains("twice"));
        let revoked = AuthConfig { revoked: vec!["FR 1".into()], ..AuthConfig::default() };
        assert!(revoked.tokens_with("a-secret-of-16-chars", true).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        let unknown = Config::parse("[gateway]\nmax_batch = 3\n", "c.toml").expect_err("unknown key");
        assert!(unknown.to_string().contains("max_batch"), "{unknown}");
        assert!(!unknown.to_string().contains('\n'));
        let bad = Config::parse("[parquet]\nzstd_level = 40\n", "c.toml").expect_err("out of range");
        assert!(bad.to_string().contains("zstd_level"));
        let url = Config::parse(
            "[webhooks.alerts]\nurl = \"ftp://x\"\nsecret = \"whsec_Y29sZHN0cmVhbS1kZW1vLXNlY3JldC0wMQ==\"\n",
            "c.toml",
        )
        .expect_err("not http");
        assert!(url.to_string().contains("webhooks.alerts.url"), "{url}");
        let secret =
            Config::parse("[webhooks.alerts]\nurl = \"http://127.0.0.1:9/\"\nsecret = \"hunter2\"\n", "c.toml")
                .expect_err("not whsec_");
        assert!(secret.to_string().contains("whsec_") && !secret.to_string().contains('\n'), "{secret}");
        let ok = Config::parse("[webhooks.alerts]\nurl = \"http://127.0.0.1:9/hooks\"\nsecret = \"whsec_Y29sZHN0cmVhbS1kZW1vLXNlY3JldC0wMQ==\"\n", "c.toml")
            .expect("valid");
        assert_eq!(ok.webhooks().expect("valid").endpoints.len(), 1);
    }

    #[test]
    fn an_endpoints_protocol_defaults_to_auto_and_is_one_of_three() {
        use coldstream_sinks::webhooks::Protocol;
        let endpoint = |extra: &str| {
            Config::parse(
                &format!(
                    "[webhooks.accounting]\nurl = \"http://127.0.0.1:9/hooks\"\nsecret = \"whsec_Y29sZHN0cmVhbS1kZW1vLXNlY3JldC0wMQ==\"\n{extra}"
                ),
                "c.toml",
            )
            .and_then(|config| config.webhooks())
            .map(|webhooks| webhooks.endpoints[0].1.protocol)
        };
        assert_eq!(endpoint("").expect("valid"), Protocol::Auto);
        for protocol in Protocol::ALL {
            assert_eq!(endpoint(&format!("protocol = \"{}\"\n", protocol.as_str())).expect("valid"), protocol);
            assert_eq!(protocol.as_str().parse::<Protocol>(), Ok(protocol));
        }
        let bad = endpoint("protocol = \"spdy\"\n").expect_err("not a protocol");
        assert!(bad.to_string().contains("spdy") && !bad.to_string().contains('\n'), "{bad}");
        assert!("h2".parse::<Protocol>().expect_err("not a name").contains("auto, http1, http2"));
    }
}
