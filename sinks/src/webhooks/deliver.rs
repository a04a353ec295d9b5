//! Delivery: one dispatcher per endpoint sends the outbox's messages,
//! signed, in order per key and concurrently across keys (at most
//! `max_in_flight` at once); retries with exponential backoff and jitter;
//! dead-letters permanent failures; and a circuit breaker stops sending to
//! an endpoint that keeps failing, probing it with one message at a time
//! until it answers again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::Instant;

use coldstream_pipelines::metrics::{Counter, Gauge, Histogram, Registry};

use super::Outgoing;
use super::dead_letter::{DeadLetter, FailedDelivery};
use super::events::{Endpoint, Message};
use super::outbox::{Bodies, Outbox, Pending};
use super::sign::Secret;

/// Where and how one endpoint is reached.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// `http://host:port/path`.
    pub url: hyper::Uri,
    /// The endpoint's signing secret.
    pub secret: Secret,
    /// How long one attempt may take, connection included.
    pub timeout: Duration,
    /// Messages in flight at once (each to a different key).
    pub max_in_flight: usize,
    /// For an `https://` URL, the CA to trust (PEM) instead of the system's
    /// roots.
    pub ca: Option<Vec<u8>>,
    /// Send every message, even a `restock.updated` that a later one of its
    /// key superseded before it was sent.
    pub every_update: bool,
    /// Which HTTP the endpoint is spoken to in.
    pub protocol: Protocol,
}

/// Which HTTP an endpoint is spoken to in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Protocol {
    /// HTTP/1.1 to an `http://` URL; to an `https://` one, HTTP/2 if the
    /// receiver offers it in the TLS handshake (ALPN), else HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only: one request at a time on each connection, up to
    /// `max_in_flight` connections.
    Http1,
    /// HTTP/2 only, all deliveries as streams of one connection: to an
    /// `http://` URL without asking first (the receiver must speak
    /// cleartext HTTP/2, "prior knowledge"); to an `https://` one, a
    /// receiver that does not offer it in the handshake is not reached.
    Http2,
}

impl Protocol {
    /// Every protocol, in the order the configuration lists them.
    pub const ALL: [Protocol; 3] = [Protocol::Auto, Protocol::Http1, Protocol::Http2];

    /// The name the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

/// The configuration reads a protocol by the names [`Protocol::as_str`] gives.
impl TryFrom<String> for Protocol {
    type Error = String;

    fn try_from(name: String) -> Result<Protocol, String> {
        name.parse()
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(name: &str) -> Result<Protocol, String> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == name).ok_or_else(|| {
            let names: Vec<&str> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
            format!("{name:?} is not one of {}", names.join(", "))
        })
    }
}

/// The roots an `https://` endpoint's certificate is checked against: the
/// PEM `ca` if given, else the system's.
pub fn tls_roots(ca: Option<&[u8]>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
                roots.add(cert).map_err(|e| format!("not a usable CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("no certificate in the PEM".into());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "reading the system's CA certificates");
            }
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// What delivers to one endpoint: HTTP/1.1 or HTTP/2 ([`Protocol`]), over
/// TLS for `https://`.
type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn http_client(config: &EndpointConfig) -> Result<HttpClient, String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(tls_roots(config.ca.as_deref())?)
        .with_no_client_auth();
    // Small bodies, one request at a time per connection: Nagle's algorithm
    // would hold each one back for the previous one's ACK.
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    // The versions offered in the TLS handshake; over `http://` there is no
    // handshake, and `http2_only` below decides.
    let versions = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    let connector = match config.protocol {
        Protocol::Auto => versions.enable_all_versions().wrap_connector(http),
        Protocol::Http1 => versions.enable_http1().wrap_connector(http),
        Protocol::Http2 => versions.enable_http2().wrap_connector(http),
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(config.max_in_flight)
        .http2_only(config.protocol == Protocol::Http2)
        .build(connector))
}

impl EndpointConfig {
    /// The default of [`EndpointConfig::timeout`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default of [`EndpointConfig::max_in_flight`].
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
}

/// Retries and the circuit breaker.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// The first retry's delay; each further one doubles it.
    pub initial: Duration,
    /// The longest delay between attempts.
    pub max: Duration,
    /// Consecutive failed attempts that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before probing.
    pub breaker_open: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            breaker_failures: 10,
            breaker_open: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`: exponential, capped, with
    /// "equal jitter" (between half and all of it).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let full = self.initial.saturating_mul(1u32 << attempt.min(20)).min(self.max);
        let half = full / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

/// What delivery to one endpoint measures (`coldstream_webhook_*`, with
/// the endpoint as a label).
#[derive(Clone, Default)]
pub struct EndpointMetrics {
    in_flight: Gauge,
    delivered: Counter,
    retried: Counter,
    dead_lettered: Counter,
    superseded: Counter,
    /// 0 closed, 1 probing (half open), 2 open.
    breaker: Gauge,
    attempt_seconds: Histogram,
}

impl EndpointMetrics {
    /// Registers `endpoint`'s instruments in `registry`.
    pub fn register(registry: &Registry, endpoint: Endpoint) -> EndpointMetrics {
        let labels: &[(&str, &str)] = &[("endpoint", endpoint.as_str())];
        EndpointMetrics {
            in_flight: registry.gauge(
                "coldstream_webhook_in_flight_messages",
                "Deliveries sent and not yet answered.",
                labels,
            ),
            delivered: registry.counter(
                "coldstream_webhook_delivered_total",
                "Messages the receiver acknowledged with a 2xx.",
                labels,
            ),
            retried: registry.counter(
                "coldstream_webhook_retries_total",
                "Attempts that failed in a way worth retrying (timeout, connection error, 5xx, 408, 429).",
                labels,
            ),
            dead_lettered: registry.counter(
                "coldstream_webhook_dead_lettered_total",
                "Messages refused for good (4xx) and moved to webhooks_failed/.",
                labels,
            ),
            superseded: registry.counter(
                "coldstream_webhook_superseded_total",
                "restock.updated messages skipped unsent: a later state of the same order superseded them.",
                labels,
            ),
            breaker: registry.gauge(
                "coldstream_webhook_breaker_state",
                "The endpoint's circuit breaker: 0 closed, 1 half open (one probe out), 2 open.",
                labels,
            ),
            attempt_seconds: registry.histogram(
                "coldstream_webhook_attempt_seconds",
                "One delivery attempt, from sending the request to the answer (or the timeout).",
                labels,
                coldstream_pipelines::metrics::LATENCY_SECONDS,
            ),
        }
    }

    fn breaker(&self, breaker: &Breaker) {
        self.breaker.set(match breaker {
            Breaker::Closed { .. } => 0.0,
            Breaker::Probing => 1.0,
            Breaker::Open { .. } => 2.0,
        });
    }
}

/// How one attempt ended.
#[derive(Debug)]
enum Outcome {
    Delivered,
    /// Worth retrying: a timeout, a connection error, 5xx, 408, 429.
    Retry(String),
    /// 4xx other than 408 and 429: the answer's status and body.
    Permanent(u16, String),
    /// Not sent: its body could not be read back from the outbox file.
    /// Retried later; it says nothing about the endpoint.
    Unread(String),
}

/// What every attempt at one endpoint needs, shared by them all.
struct Sender {
    client: HttpClient,
    config: EndpointConfig,
    bodies: Arc<Bodies>,
}

/// Messages of one key, delivered one after the other.
#[derive(Default)]
struct Lane {
    queue: VecDeque<Arc<Pending>>,
    attempts: u32,
}

/// The circuit breaker of an endpoint.
#[derive(Debug, PartialEq)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; nothing else is sent until it answers.
    Probing,
}

impl Breaker {
    /// An attempt was answered (delivered, or refused for good): the
    /// circuit closes. Returns whether it was anything but closed with no
    /// failures.
    fn answered(&mut self) -> bool {
        let changed = *self != Breaker::Closed { failures: 0 };
        *self = Breaker::Closed { failures: 0 };
        changed
    }

    /// An attempt failed at `now`: one more failure, and the circuit opens
    /// at the policy's count (a failed probe opens it again at once).
    /// Returns whether it opened.
    fn failed(&mut self, retry: &RetryPolicy, now: Instant) -> bool {
        match *self {
            Breaker::Closed { failures } if failures + 1 < retry.breaker_failures => {
                *self = Breaker::Closed { failures: failures + 1 };
                false
            }
            _ => {
                *self = Breaker::Open { until: now + retry.breaker_open };
                true
            }
        }
    }
}

/// A lane's key, held as one of the lane's messages (each holds its key
/// in its own text): a lane, its place in `ready` or `waiting` and an
/// attempt in flight cost a pointer each, not a copy of the key.
#[derive(Clone)]
struct Key(Arc<Pending>);

impl Key {
    fn as_str(&self) -> &str {
        self.0.key()
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

#[cfg(test)]
impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Lanes by key, and which of them may send now or later. Every lane is in
/// exactly one place: `ready`, `waiting` (until its retry time), or in
/// flight.
#[derive(Default)]
struct Lanes {
    lanes: HashMap<Key, Lane>,
    ready: VecDeque<Key>,
    waiting: BTreeMap<(Instant, u64), Key>,
    timers: u64,
}

impl Lanes {
    fn add(&mut self, message: Arc<Pending>) {
        let key = Key(Arc::clone(&message));
        let lane = self.lanes.entry(key.clone()).or_default();
        lane.queue.push_back(message);
        if lane.queue.len() == 1 {
            self.ready.push_back(key);
        }
    }

    /// The next lane to send from, with every `restock.updated` at its
    /// head that a later state of the same order supersedes taken off
    /// first (`DOMAIN.md`: procurement acts on the latest state); those go
    /// to `superseded`. A message done already is dropped unsent: one
    /// handed to the dispatcher twice (seeded from the outbox as it
    /// started, and sent to it) is sent once.
    fn next_ready(&mut self, mut superseded: Option<&mut Vec<Arc<Pending>>>) -> Option<Key> {
        loop {
            let key = self.ready.pop_front()?;
            let Some(lane) = self.lanes.get_mut(key.as_str()) else { continue };
            while lane.queue.front().is_some_and(|m| m.is_done()) {
                lane.queue.pop_front();
                lane.attempts = 0;
            }
            if lane.queue.is_empty() {
                self.lanes.remove(key.as_str());
                continue;
            }
            if let Some(superseded) = superseded.as_deref_mut() {
                while lane.queue.len() > 1 && lane.queue.front().is_some_and(|m| m.may_be_superseded()) {
                    superseded.extend(lane.queue.pop_front());
                    lane.attempts = 0;
                }
            }
            return Some(key);
        }
    }

    fn head(&self, key: &str) -> Option<&Arc<Pending>> {
        self.lanes.get(key).and_then(|lane| lane.queue.front())
    }

    /// The head of `key`'s lane is done: the next one may go.
    fn finish(&mut self, key: Key) {
        let Some(lane) = self.lanes.get_mut(key.as_str()) else { return };
        lane.queue.pop_front();
        lane.attempts = 0;
        if lane.queue.is_empty() {
            self.lanes.remove(key.as_str());
        } else {
            self.ready.push_back(key);
        }
    }

    /// The head of `key`'s lane failed: it waits before its next attempt.
    fn retry_later(&mut self, key: Key, retry: &RetryPolicy) -> (u32, Duration) {
        let Some(lane) = self.lanes.get_mut(key.as_str()) else { return (0, Duration::ZERO) };
        let delay = retry.backoff(lane.attempts);
        lane.attempts += 1;
        self.timers += 1;
        self.waiting.insert((Instant::now() + delay, self.timers), key);
        (lane.attempts, delay)
    }

    /// Moves lanes whose retry time has come back to `ready`.
    fn wake(&mut self, now: Instant) {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.ready.push_back(key);
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        self.waiting.keys().next().map(|(at, _)| *at)
    }

    fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }
}

/// Sends one endpoint's messages until its channel closes and nothing is
/// left (or the task is aborted; what is not done stays in the outbox).
pub async fn dispatch(
    endpoint: Endpoint,
    config: EndpointConfig,
    retry: RetryPolicy,
    outbox: Arc<Mutex<Outbox>>,
    dead_letter: Arc<DeadLetter>,
    mut incoming: UnboundedReceiver<Outgoing>,
    metrics: EndpointMetrics,
) {
    let name = endpoint.as_str();
    let client = match http_client(&config) {
        Ok(client) => client,
        Err(error) => {
            // The config check read the same CA: this is not expected.
            tracing::error!(endpoint = name, %error, "cannot set up TLS; nothing is sent to this endpoint");
            return;
        }
    };
    let mut lanes = Lanes::default();
    let (seeded, bodies): (Vec<Arc<Pending>>, Arc<Bodies>) = {
        let outbox = outbox.lock().expect("outbox lock");
        (outbox.pending().filter(|m| m.endpoint == endpoint).cloned().collect(), outbox.bodies())
    };
    let sender = Arc::new(Sender { client, config, bodies });
    let (config, bodies) = (&sender.config, &sender.bodies);
    for message in seeded {
        lanes.add(message);
    }
    let mut breaker = Breaker::Closed { failures: 0 };
    let mut in_flight: JoinSet<(Key, Outcome)> = JoinSet::new();
    // The `webhook.pending` spans of followed messages, by id: each ends
    // when its message is done.
    let mut spans: HashMap<String, tracing::Span> = HashMap::new();
    // Done marks are written in batches by their own task, so that sending
    // never waits for the outbox; after a power loss, a delivery whose mark
    // had not reached the disk is sent again, with the same id.
    let (done, marks) = tokio::sync::mpsc::unbounded_channel::<Arc<Pending>>();
    let marker = tokio::spawn(mark_done(name, Arc::clone(&outbox), marks));
    let mut open = true;
    loop {
        let now = Instant::now();
        lanes.wake(now);
        let mut superseded = Vec::new();
        if let Breaker::Open { until } = breaker
            && now >= until
            && let Some(key) = lanes.next_ready((!config.every_update).then_some(&mut superseded))
        {
            tracing::info!(endpoint = name, "circuit half-open: probing with one delivery");
            breaker = Breaker::Probing;
            launch(&mut in_flight, &sender, &lanes, key, &metrics, &spans);
        }
        while matches!(breaker, Breaker::Closed { .. }) && in_flight.len() < config.max_in_flight {
            let Some(key) = lanes.next_ready((!config.every_update).then_some(&mut superseded)) else { break };
            launch(&mut in_flight, &sender, &lanes, key, &metrics, &spans);
        }
        metrics.in_flight.set(in_flight.len() as f64);
        metrics.breaker(&breaker);
        if !superseded.is_empty() {
            metrics.superseded.add(superseded.len() as u64);
            outbox.lock().expect("outbox lock").count_superseded(superseded.len() as u64);
            for message in superseded {
                if let Some(span) = spans.remove(message.id()) {
                    span.record("outcome", "superseded");
                }
                let _ = done.send(message);
            }
        }
        if !open && lanes.is_empty() && in_flight.is_empty() {
            drop(done);
            let _ = marker.await;
            return;
        }

        let wake = match breaker {
            Breaker::Open { until } if until > Instant::now() => Some(until),
            _ => lanes.next_wake(),
        };
        tokio::select! {
            received = incoming.recv(), if open => match received {
                Some((message, span)) => {
                    if let Some(span) = span {
                        spans.insert(message.id().to_owned(), span);
                    }
                    lanes.add(message);
                }
                None => open = false,
            },
            Some(joined) = in_flight.join_next() => {
                let Ok((key, outcome)) = joined else { continue };
                let Some(message) = lanes.head(key.as_str()).cloned() else { continue };
                match outcome {
                    Outcome::Delivered => {
                        if breaker.answered() {
                            tracing::info!(endpoint = name, "endpoint answers again: circuit closed");
                        }
                        metrics.delivered.inc();
                        if let Some(span) = spans.remove(message.id()) {
                            span.record("outcome", "delivered");
                        }
                        let _ = done.send(Arc::clone(&message));
                        lanes.finish(key);
                    }
                    Outcome::Permanent(status, answer) => {
                        breaker.answered();
                        tracing::error!(endpoint = name, id = %message.id(), kind = %message.kind(), status,
                            "permanent failure: moved to webhooks_failed/");
                        let (dead_letter, bodies, pending) =
                            (Arc::clone(&dead_letter), Arc::clone(bodies), Arc::clone(&message));
                        let written = tokio::task::spawn_blocking(move || {
                            let message = bodies.read(&pending).map_err(|e| e.to_string())?;
                            dead_letter.write(&FailedDelivery { message, status, answer }).map_err(|e| e.to_string())
                        });
                        match written.await {
                            Ok(Ok(())) => {
                                metrics.dead_lettered.inc();
                                if let Some(span) = spans.remove(message.id()) {
                                    span.record("outcome", "dead_lettered");
                                }
                                let _ = done.send(Arc::clone(&message));
                                lanes.finish(key);
                            }
                            failed => {
                                let reason = match failed {
                                    Ok(Err(reason)) => reason,
                                    _ => "the writer stopped".to_owned(),
                                };
                                tracing::error!(id = %message.id(), %reason, "could not write the dead letter; retrying the delivery");
                                lanes.retry_later(key, &retry);
                            }
                        }
                    }
                    Outcome::Unread(reason) => {
                        metrics.retried.inc();
                        let (attempt, delay) = lanes.retry_later(key, &retry);
                        tracing::error!(endpoint = name, id = %message.id(), attempt, %reason,
                            retry_in_ms = delay.as_millis() as u64, "could not read the message back from the outbox");
                    }
                    Outcome::Retry(reason) => {
                        metrics.retried.inc();
                        let (attempt, delay) = lanes.retry_later(key, &retry);
                        tracing::warn!(endpoint = name, id = %message.id(), attempt, %reason,
                            retry_in_ms = delay.as_millis() as u64, "delivery failed");
                        if breaker.failed(&retry, Instant::now()) {
                            tracing::warn!(endpoint = name, open_for_ms = retry.breaker_open.as_millis() as u64,
                                "circuit open: the endpoint keeps failing");
                        }
                    }
                }
            }
            _ = sleep_until(wake) => {}
        }
    }
}

/// Marks delivered messages done in the outbox, as many per write as are waiting.
async fn mark_done(name: &'static str, outbox: Arc<Mutex<Outbox>>, mut marks: UnboundedReceiver<Arc<Pending>>) {
    let mut waiting = Vec::new();
    while marks.recv_many(&mut waiting, 8_192).await > 0 {
        let batch = std::mem::take(&mut waiting);
        let outbox = Arc::clone(&outbox);
        let marked = tokio::task::spawn_blocking(move || outbox.lock().expect("outbox lock").done(&batch)).await;
        if !matches!(marked, Ok(Ok(()))) {
            tracing::error!(endpoint = name, "could not mark deliveries done; they will be sent again after a restart");
        }
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn launch(
    in_flight: &mut JoinSet<(Key, Outcome)>,
    sender: &Arc<Sender>,
    lanes: &Lanes,
    key: Key,
    metrics: &EndpointMetrics,
    spans: &HashMap<String, tracing::Span>,
) {
    use tracing::Instrument;
    let Some(pending) = lanes.head(key.as_str()).cloned() else { return };
    let (sender, latency) = (Arc::clone(sender), metrics.attempt_seconds.clone());
    let span = match spans.get(pending.id()) {
        Some(waiting) => tracing::info_span!(
            target: coldstream_pipelines::traces::TARGET,
            parent: waiting,
            "webhook.attempt",
            webhook_id = %pending.id(),
            url = %sender.config.url,
            outcome = tracing::field::Empty,
        ),
        None => tracing::Span::none(),
    };
    in_flight.spawn(
        async move {
            let started = Instant::now();
            // The body is read back from the outbox's file (the page cache,
            // since it was written moments before) only now.
            let outcome = match sender.bodies.read(&pending) {
                Ok(message) => attempt(&sender.client, &sender.config, message).await,
                Err(error) => Outcome::Unread(error.to_string()),
            };
            latency.observe_duration(started.elapsed());
            let said = match &outcome {
                Outcome::Delivered => "delivered".to_owned(),
                Outcome::Retry(reason) => format!("retry: {reason}"),
                Outcome::Permanent(status, _) => format!("refused: {status}"),
                Outcome::Unread(reason) => format!("not sent: {reason}"),
            };
            tracing::Span::current().record("outcome", said.as_str());
            (key, outcome)
        }
        .instrument(span),
    );
}

/// Bytes of a receiver's answer kept for the dead letter, at most.
const ANSWER_BYTES: usize = 4096;

/// One signed attempt.
async fn attempt(client: &HttpClient, config: &EndpointConfig, message: Message) -> Outcome {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = config.secret.sign(&message.id, timestamp, message.body.as_bytes());
    let request = hyper::Request::post(config.url.clone())
        .header("content-type", "application/json")
        .header("user-agent", concat!("coldstream/", env!("CARGO_PKG_VERSION")))
        .header("webhook-id", &message.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::from(message.body)));
    let request = match request {
        Ok(request) => request,
        Err(error) => return Outcome::Permanent(0, format!("cannot build the request: {error}")),
    };
    let answer = tokio::time::timeout(config.timeout, async {
        let response = client.request(request).await.map_err(|e| format!("connection: {e}"))?;
        let status = response.status().as_u16();
        // Only the first KiBs of an answer are kept: read no more than that,
        // however much the receiver sends.
        let mut body = response.into_body();
        let mut kept = Vec::new();
        while kept.len() < ANSWER_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        kept.extend_from_slice(&data[..data.len().min(ANSWER_BYTES - kept.len())]);
                    }
                }
                Some(Err(e)) => return Err(format!("reading the answer: {e}")),
                None => break,
            }
        }
        Ok::<_, String>((status, Bytes::from(kept)))
    })
    .await;
    match answer {
        Err(_) => Outcome::Retry(format!("no answer within {} ms", config.timeout.as_millis())),
        Ok(Err(error)) => Outcome::Retry(error),
        Ok(Ok((status, _))) if (200..300).contains(&status) => Outcome::Delivered,
        Ok(Ok((status, body))) if (400..500).contains(&status) && status != 408 && status != 429 => {
            let text = String::from_utf8_lossy(&body).into_owned();
            Outcome::Permanent(status, text)
        }
        Ok(Ok((status, _))) => Outcome::Retry(format!("HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, key: &str, kind: &str) -> Arc<Pending> {
        let message = Message {
            id: id.into(),
            endpoint: Endpoint::Procurement,
            key: key.into(),
            kind: kind.into(),
            time: 1,
            body: "{}".into(),
        };
        Arc::new(Pending::new(&message, 0, 0))
    }

    fn message(id: &str, key: &str) -> Arc<Pending> {
        order(id, key, "restock.opened")
    }

    /// The key of the lane `key`.
    fn key(lanes: &Lanes, key: &str) -> Key {
        lanes.lanes.get_key_value(key).expect("a lane").0.clone()
    }

    #[test]
    fn a_lane_sends_its_messages_one_at_a_time_in_order_and_keys_do_not_wait_for_each_other() {
        let mut lanes = Lanes::default();
        for (id, key) in [("m1", "FR-1"), ("m2", "FR-1"), ("m3", "FR-2")] {
            lanes.add(message(id, key));
        }
        assert_eq!(lanes.ready, ["FR-1", "FR-2"], "one entry per key, however many messages it holds");
        assert_eq!(lanes.head("FR-1").map(|m| m.id()), Some("m1"));
        lanes.ready.clear();
        lanes.finish(key(&lanes, "FR-1"));
        assert_eq!(lanes.ready, ["FR-1"]);
        assert_eq!(lanes.head("FR-1").map(|m| m.id()), Some("m2"));
        lanes.finish(key(&lanes, "FR-1"));
        lanes.finish(key(&lanes, "FR-2"));
        assert!(lanes.is_empty());
    }

    #[test]
    fn an_update_superseded_before_it_was_sent_is_skipped_and_opened_and_closed_never_are() {
        let mut lanes = Lanes::default();
        let order = |id: &str, kind: &str| order(id, "FR-1/o1", kind);
        lanes.add(order("opened", "restock.opened"));
        for (id, kind) in [("u1", "restock.updated"), ("u2", "restock.updated"), ("closed", "restock.closed")] {
            lanes.add(order(id, kind));
        }
        lanes.add(order("reopened", "restock.opened"));
        lanes.add(order("u3", "restock.updated"));
        let mut every = Lanes::default();
        for message in lanes.lanes["FR-1/o1"].queue.iter() {
            every.add(message.clone());
        }
        let mut superseded = Vec::new();
        let mut sent = Vec::new();
        while let Some(key) = lanes.next_ready(Some(&mut superseded)) {
            sent.push(lanes.head(key.as_str()).unwrap().id().to_owned());
            lanes.finish(key);
        }
        assert_eq!(sent, ["opened", "closed", "reopened", "u3"], "the last state of each order, in order");
        assert_eq!(superseded.iter().map(|m| m.id()).collect::<Vec<_>>(), ["u1", "u2"]);
        sent.clear();
        while let Some(key) = every.next_ready(None) {
            sent.push(every.head(key.as_str()).unwrap().id().to_owned());
            every.finish(key);
        }
        assert_eq!(sent, ["opened", "u1", "u2", "closed", "reopened", "u3"], "every_update sends them all");
    }

    #[test]
    fn a_message_done_already_is_not_sent_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut outbox = Outbox::open(dir.path()).expect("opens");
        let messages: Vec<Arc<Message>> = ["m1", "m2"]
            .map(|id| {
                Arc::new(Message {
                    id: id.into(),
                    endpoint: Endpoint::Procurement,
                    key: "FR-1/o1".into(),
                    kind: "restock.opened".into(),
                    time: 1,
                    body: "{}".into(),
                })
            })
            .into();
        let enqueued = outbox.enqueue(&messages, 1).expect("enqueues");
        let mut lanes = Lanes::default();
        // Seeded from the outbox, and handed over again by the view sink.
        for pending in enqueued.iter().chain(&enqueued) {
            lanes.add(Arc::clone(pending));
        }
        let mut sent = Vec::new();
        while let Some(key) = lanes.next_ready(None) {
            let head = Arc::clone(lanes.head(key.as_str()).expect("a head"));
            outbox.done(std::slice::from_ref(&head)).expect("marks");
            sent.push(head.id().to_owned());
            lanes.finish(key);
        }
        assert_eq!(sent, ["m1", "m2"]);
        assert!(lanes.is_empty());
    }

    #[test]
    fn a_failed_lane_is_ready_again_only_after_its_backoff() {
        let retry = RetryPolicy { initial: Duration::from_secs(60), ..RetryPolicy::default() };
        let mut lanes = Lanes::default();
        lanes.add(message("m1", "FR-1"));
        lanes.ready.clear();
        let (attempts, delay) = lanes.retry_later(key(&lanes, "FR-1"), &retry);
        assert_eq!(attempts, 1);
        assert!(delay >= Duration::from_secs(30) && delay <= Duration::from_secs(60), "{delay:?}");
        lanes.wake(Instant::now());
        assert!(lanes.ready.is_empty(), "woken before its time");
        assert!(lanes.next_wake().is_some());
        lanes.wake(Instant::now() + Duration::from_secs(61));
        assert_eq!(lanes.ready, ["FR-1"]);
        assert_eq!(lanes.head("FR-1").map(|m| m.id()), Some("m1"), "the same message is tried again");
    }

    #[test]
    fn the_backoff_doubles_with_equal_jitter_up_to_its_cap() {
        let retry = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
            ..RetryPolicy::default()
        };
        for (attempt, full) in [(0, 100), (1, 200), (2, 400), (3, 800), (4, 1_000), (30, 1_000)] {
            let delay = retry.backoff(attempt).as_millis() as u64;
            assert!((full / 2..=full).contains(&delay), "attempt {attempt}: {delay} ms, not in {}..={full}", full / 2);
        }
    }

    #[test]
    fn the_breaker_opens_after_its_failures_a_failed_probe_reopens_it_and_an_answer_closes_it() {
        let retry =
            RetryPolicy { breaker_failures: 3, breaker_open: Duration::from_secs(30), ..RetryPolicy::default() };
        let now = Instant::now();
        let mut breaker = Breaker::Closed { failures: 0 };
        assert!(!breaker.failed(&retry, now));
        assert!(!breaker.failed(&retry, now));
        assert_eq!(breaker, Breaker::Closed { failures: 2 });
        assert!(breaker.failed(&retry, now), "the third failure in a row opens it");
        assert_eq!(breaker, Breaker::Open { until: now + Duration::from_secs(30) });
        breaker = Breaker::Probing;
        assert!(breaker.failed(&retry, now), "a failed probe opens it again");
        breaker = Breaker::Probing;
        assert!(breaker.answered());
        assert_eq!(breaker, Breaker::Closed { failures: 0 });
        assert!(!breaker.answered(), "closing a closed breaker is no change");
        assert!(!breaker.failed(&retry, now), "an answer resets the count");
    }
}
