//! The gRPC gateway: `FridgeGateway.Stream` for fridges, `Publish` for the
//! back office, plus the standard health and reflection services.
//!
//! Every event is checked against the acceptance rules; accepted events are
//! appended through group commit and acknowledged only once fsynced;
//! rejected ones are answered with a reason and kept in the dead letter.
//! Acks of one connection are sent in the order of its batches; a
//! connection may have a few batches in flight, bounded, so a slow log
//! slows the fridge down rather than queueing without limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use coldstream_pipelines::metrics::{Counter, Gauge, Histogram, Registry};
use coldstream_pipelines::traces::{self, Traces};

use crate::auth::{ID_RULE, Principal, Tokens, Verified, bearer};
use crate::convert::{Rejection, accept};
use crate::ingest::{Candidate, Ingest, IngestError, Outcome, Pending, stale};
use crate::proto::{
    self, Ack, FridgeMessage, GatewayMessage, PublishRequest, RejectedEvent, StatusReply, StatusRequest, Welcome,
    fridge_gateway_server::FridgeGateway, fridge_gateway_server::FridgeGatewayServer, fridge_message, gateway_message,
};

/// Settings of the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Events in one batch, at most; a larger batch is refused whole.
    pub max_batch_events: usize,
    /// Batches of one connection waiting for their ack, at most.
    pub max_in_flight_batches: usize,
    /// Open TCP connections, at most; one more is closed at once.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (calls) on one connection, at most.
    pub max_streams_per_connection: u32,
    /// How long a new stream may take to send `Hello`.
    pub hello_timeout: Duration,
    /// HTTP/2 pings on an idle connection this often; a peer that does not
    /// answer within the same time is dropped.
    pub keepalive: Duration,
    /// TLS on the listener; `None` serves plaintext.
    pub tls: Option<ServerTls>,
    /// While set (by a sink that is full), batches wait before they are
    /// appended: fridges see slower acks instead of anything being dropped.
    pub hold: Arc<AtomicBool>,
    /// The region this gateway serves, and where other regions' fridges go.
    pub regions: Option<Arc<Regions>>,
    /// Where the gateway's instruments are registered.
    pub metrics: Registry,
    /// Which batches to follow with spans (`[tracing]`).
    pub traces: Traces,
}

/// What the gateway counts, for operators (`coldstream_gateway_*`).
#[derive(Clone, Default)]
pub struct GatewayMetrics {
    received: Counter,
    accepted: Counter,
    duplicates: Counter,
    /// By reason code (the index).
    rejected: Vec<Counter>,
    refused: Counter,
    ack_seconds: Histogram,
    connected: Gauge,
    streams: Counter,
}

impl GatewayMetrics {
    /// Registers the gateway's instruments in `registry`.
    pub fn register(registry: &Registry) -> GatewayMetrics {
        let rejected = (0..)
            .map_while(|code| proto::RejectReason::try_from(code).ok())
            .map(|reason| {
                let name = reason.as_str_name().trim_start_matches("REJECT_REASON_").to_ascii_lowercase();
                registry.counter(
                    "coldstream_gateway_events_rejected_total",
                    "Events the gateway rejected, by reason; each is kept in the dead letter.",
                    &[("reason", &name)],
                )
            })
            .collect();
        GatewayMetrics {
            received: registry.counter(
                "coldstream_gateway_events_received_total",
                "Events received in batches, before any check.",
                &[],
            ),
            accepted: registry.counter(
                "coldstream_gateway_events_accepted_total",
                "Events appended to the log and acknowledged as accepted.",
                &[],
            ),
            duplicates: registry.counter(
                "coldstream_gateway_events_duplicate_total",
                "Events acknowledged as duplicates of durable ones (resends); not appended again.",
                &[],
            ),
            rejected,
            refused: registry.counter(
                "coldstream_gateway_calls_refused_total",
                "Calls refused before their body was read: a missing, bad, expired or revoked token.",
                &[],
            ),
            ack_seconds: registry.histogram(
                "coldstream_gateway_ack_seconds",
                "From a batch's arrival to its ack: checks, queueing, group commit and fsync.",
                &[],
                coldstream_pipelines::metrics::LATENCY_SECONDS,
            ),
            connected: registry.gauge("coldstream_gateway_streams_open", "Fridge streams open now.", &[]),
            streams: registry.counter(
                "coldstream_gateway_streams_opened_total",
                "Fridge streams welcomed since the start.",
                &[],
            ),
        }
    }
}

/// The regions of a deployment as one gateway sees them: its own, the
/// fridges registered in others, and those regions' gateways.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regions {
    /// This gateway's region.
    pub here: String,
    /// Fridges by id, with the region each is registered in.
    pub fridges: std::collections::HashMap<String, String>,
    /// Every other region's gateway address, by region.
    pub gateways: std::collections::HashMap<String, String>,
}

impl Regions {
    /// For a fridge registered in another region: that region and its
    /// gateway (empty when the deployment names none).
    pub fn elsewhere(&self, fridge_id: &str) -> Option<(&str, &str)> {
        let region = self.fridges.get(fridge_id)?;
        (*region != self.here).then(|| (region.as_str(), self.gateways.get(region).map_or("", String::as_str)))
    }
}

/// The listener's TLS: its certificate and key, and the CA whose client
/// certificates authenticate fridges (mutual TLS), all PEM.
#[derive(Clone)]
pub struct ServerTls {
    /// The certificate chain, PEM.
    pub cert: Vec<u8>,
    /// The private key, PEM.
    pub key: Vec<u8>,
    /// The CA that signs fridges' client certificates, PEM; `None`: no
    /// client certificates, bearer tokens only.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls(<key>, mutual: {})", self.client_ca.is_some())
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_batch_events: 10_000,
            max_in_flight_batches: 8,
            max_connections: 10_000,
            max_streams_per_connection: 16,
            hello_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(30),
            tls: None,
            hold: Arc::default(),
            regions: None,
            metrics: Registry::default(),
            traces: Traces::default(),
        }
    }
}

/// Encoded bytes allowed per event of a full batch: a message larger than
/// `max_batch_events` times this is refused before it is decoded. Typical
/// events encode to 40 to 120 bytes.
pub const BYTES_PER_EVENT: usize = 512;

impl GatewayConfig {
    /// The largest message the gateway decodes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_batch_events.saturating_mul(BYTES_PER_EVENT).saturating_add(64 * 1024)
    }
}

/// Says that something was refused, at most once a second, with how many
/// more since the last time: a flood of bad tokens or connections cannot
/// flood the log.
#[derive(Default)]
struct RefusalLog {
    second: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
    counted: Counter,
}

impl RefusalLog {
    fn refused(&self, what: &dyn std::fmt::Display) {
        self.counted.inc();
        let now = crate::auth::now_s();
        let last = self.second.load(Ordering::Relaxed);
        if now != last && self.second.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let more = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(refused = %what, more_since_last_report = more, "refused a caller");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Checks the token from the request's metadata, before the body is read,
/// and hands what it proves to the handler.
fn authenticate(tokens: &Tokens, refusals: &RefusalLog, mut request: Request<()>) -> Result<Request<()>, Status> {
    // A client certificate the handshake verified stands in for a token.
    let certificate = request.peer_certs().and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
    if let (None, Some(der)) = (request.metadata().get("authorization"), certificate) {
        request.extensions_mut().insert(Verified::Certificate(der));
        return Ok(request);
    }
    let verified = token(&request).and_then(|token| {
        tokens.verify(&token, crate::auth::now_s()).map_err(|refusal| {
            refusals.refused(&refusal);
            Status::unauthenticated(refusal.to_string())
        })
    })?;
    if let Verified::Principal(analyst @ Principal::Analyst(_)) = &verified {
        return Err(Status::permission_denied(format!(
            "{analyst} is an analyst: analysts query the Flight SQL endpoint and send no events"
        )));
    }
    request.extensions_mut().insert(verified);
    Ok(request)
}

/// The gateway service.
#[derive(Clone)]
pub struct Gateway {
    ingest: Ingest,
    tokens: Tokens,
    config: GatewayConfig,
    refusals: Arc<RefusalLog>,
    status: StatusFn,
    metrics: GatewayMetrics,
}

/// What answers the `Status` call.
pub type StatusFn = Arc<dyn Fn() -> StatusReply + Send + Sync>;

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn unavailable(error: IngestError) -> Status {
    Status::unavailable(format!("events are not durable, send them again: {error}"))
}

fn token(request: &Request<()>) -> Result<String, Status> {
    let header = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
    let header = header.to_str().map_err(|_| Status::unauthenticated("malformed authorization header"))?;
    bearer(header)
        .map(str::to_owned)
        .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer <token>`"))
}

impl Gateway {
    /// A gateway appending through `ingest` and checking tokens with `tokens`.
    pub fn new(ingest: Ingest, tokens: Tokens, config: GatewayConfig) -> Self {
        let readers = ingest.readers();
        let status: StatusFn = Arc::new(move || StatusReply {
            log_durable_offset: readers.durable_offset(),
            log_durable_ingest_ms: readers.durable_ingest_ms().unwrap_or(0),
            serving: true,
            ..StatusReply::default()
        });
        let metrics = GatewayMetrics::register(&config.metrics);
        let refusals = Arc::new(RefusalLog { counted: metrics.refused.clone(), ..RefusalLog::default() });
        Gateway { ingest, tokens, config, refusals, status, metrics }
    }

    /// Answers `Status` with `status` (the server's view of its pipeline).
    pub fn with_status(self, status: StatusFn) -> Self {
        Gateway { status, ..self }
    }

    /// What the interceptor proved about the caller's token, confirmed
    /// against the principal the body names.
    fn confirm<T>(&self, request: &Request<T>, principal: &Principal) -> Result<(), Status> {
        let verified = request
            .extensions()
            .get::<Verified>()
            .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))?;
        self.tokens.confirm(verified, principal).map_err(|refusal| {
            self.refusals.refused(&refusal);
            Status::unauthenticated(refusal.to_string())
        })
    }

    /// Checks a batch and queues it; the returned future yields its ack.
    async fn submit(
        &self,
        principal: &Principal,
        incarnation: u64,
        batch_id: u64,
        events: Vec<proto::Event>,
    ) -> Result<AckFuture, Status> {
        if events.len() > self.config.max_batch_events {
            return Err(Status::invalid_argument(format!(
                "a batch holds at most {} events, this one {}",
                self.config.max_batch_events,
                events.len()
            )));
        }
        let arrived = std::time::Instant::now();
        self.metrics.received.add(events.len() as u64);
        let span = self.config.traces.sample().then(|| {
            tracing::info_span!(
                target: traces::TARGET,
                "gateway.batch",
                source = %principal,
                incarnation,
                batch_id,
                events = events.len(),
                accepted = tracing::field::Empty,
                rejected = tracing::field::Empty,
            )
        });
        let now = now_us();
        let mut candidates = Vec::with_capacity(events.len());
        let mut reasons = Vec::with_capacity(events.len());
        let mut seqs = Vec::with_capacity(events.len());
        let mut before = None;
        for event in events {
            seqs.push(event.seq);
            let verdict = accept(&event, principal, now).and_then(|_| in_order(before, event.seq));
            before = before.max(Some(event.seq));
            match verdict {
                Ok(()) => {
                    reasons.push(None);
                    candidates.push(Candidate::Accepted { event, source: principal.clone(), incarnation });
                }
                Err(rejection) => {
                    reasons.push(Some(rejection.clone()));
                    candidates.push(Candidate::Rejected(RejectedEvent {
                        principal: principal.to_string(),
                        event: Some(event),
                        code: rejection.code as i32,
                        message: rejection.message,
                    }));
                }
            }
        }
        while self.config.hold.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let pending = self.ingest.submit_traced(candidates, span.clone()).await.map_err(unavailable)?;
        Ok(AckFuture {
            pending,
            ingest: self.ingest.clone(),
            source: principal.clone(),
            incarnation,
            batch_id,
            seqs,
            reasons,
            arrived,
            metrics: self.metrics.clone(),
            span,
        })
    }

    /// Serves the gateway, health and reflection on `listener` until
    /// `shutdown` resolves. The health service follows `serving`: SERVING
    /// while it holds `Ok`, NOT_SERVING (the reason logged) otherwise.
    pub async fn serve(
        self,
        listener: TcpListener,
        mut serving: tokio::sync::watch::Receiver<Result<(), String>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<FridgeGatewayServer<Gateway>>().await;
        tokio::spawn(async move {
            loop {
                let state = serving.borrow_and_update().clone();
                match state {
                    Ok(()) => health.set_serving::<FridgeGatewayServer<Gateway>>().await,
                    Err(reason) => {
                        tracing::warn!(%reason, "the gateway reports NOT_SERVING");
                        health.set_not_serving::<FridgeGatewayServer<Gateway>>().await;
                    }
                }
                if serving.changed().await.is_err() {
                    return;
                }
            }
        });
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| GatewayError::Reflection(e.to_string()))?;
        let config = self.config.clone();
        let (tokens, refusals) = (self.tokens.clone(), Arc::clone(&self.refusals));
        let gateway = InterceptedService::new(
            FridgeGatewayServer::new(self).max_decoding_message_size(config.max_message_bytes()),
            move |request| authenticate(&tokens, &refusals, request),
        );
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            let mut settings = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
            if let Some(ca) = &tls.client_ca {
                // Optional: fridges without a certificate still present tokens.
                settings =
                    settings.client_ca_root(tonic::transport::Certificate::from_pem(ca)).client_auth_optional(true);
            }
            server = server.tls_config(settings).map_err(GatewayError::Transport)?;
        }
        server
            .max_concurrent_streams(Some(config.max_streams_per_connection))
            .http2_keepalive_interval(Some(config.keepalive))
            .http2_keepalive_timeout(Some(config.keepalive))
            .tcp_keepalive(Some(config.keepalive))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(gateway)
            .serve_with_incoming_shutdown(capped(listener, config.max_connections), shutdown)
            .await
            .map_err(GatewayError::Transport)
    }
}

/// Why the gateway could not serve.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// The HTTP/2 server failed.
    #[error("gRPC server: {0}")]
    Transport(#[source] tonic::transport::Error),
}

/// The seq rule within a batch: each seq above every one before it.
fn in_order(before: Option<u64>, seq: u64) -> Result<(), Rejection> {
    match before {
        Some(before) if seq <= before => Err(Rejection {
            code: proto::RejectReason::SeqOrder,
            message: format!("seq {seq} is not above seq {before} earlier in the same batch"),
        }),
        _ => Ok(()),
    }
}

/// A queued batch on its way to becoming an ack.
struct AckFuture {
    pending: Pending,
    ingest: Ingest,
    source: Principal,
    incarnation: u64,
    batch_id: u64,
    seqs: Vec<u64>,
    reasons: Vec<Option<Rejection>>,
    arrived: std::time::Instant,
    metrics: GatewayMetrics,
    /// The batch's `gateway.batch` span, when it is followed: it ends with the ack.
    span: Option<tracing::Span>,
}

impl AckFuture {
    async fn ack(self) -> Result<Ack, Status> {
        let outcomes = self.pending.await.map_err(unavailable)?;
        let mut ack = Ack { batch_id: self.batch_id, ..Ack::default() };
        for ((seq, outcome), reason) in self.seqs.into_iter().zip(outcomes).zip(self.reasons) {
            match (outcome, reason) {
                (Outcome::Appended, _) => ack.accepted.push(seq),
                (Outcome::Duplicate, _) => ack.duplicates.push(seq),
                (Outcome::Refused(reason), _) | (Outcome::DeadLettered, Some(reason)) => {
                    ack.rejected.push(proto::Rejection { seq, code: reason.code as i32, message: reason.message })
                }
                (Outcome::DeadLettered, None) => unreachable!("only rejected candidates are dead-lettered"),
            }
        }
        ack.highest_durable_seq = self.ingest.position(&self.source).seq_in(self.incarnation).unwrap_or(0);
        let metrics = &self.metrics;
        metrics.accepted.add(ack.accepted.len() as u64);
        metrics.duplicates.add(ack.duplicates.len() as u64);
        for rejection in &ack.rejected {
            if let Some(counter) = usize::try_from(rejection.code).ok().and_then(|code| metrics.rejected.get(code)) {
                counter.inc();
            }
        }
        metrics.ack_seconds.observe_duration(self.arrived.elapsed());
        if let Some(span) = &self.span {
            span.record("accepted", ack.accepted.len());
            span.record("rejected", ack.rejected.len());
        }
        Ok(ack)
    }
}

type AckStream = ReceiverStream<Result<GatewayMessage, Status>>;

fn ack_message(ack: Result<Ack, Status>) -> Result<GatewayMessage, Status> {
    ack.map(|ack| GatewayMessage { kind: Some(gateway_message::Kind::Ack(ack)) })
}

#[tonic::async_trait]
impl FridgeGateway for Gateway {
    type StreamStream = AckStream;

    async fn stream(&self, mut request: Request<Streaming<FridgeMessage>>) -> Result<Response<AckStream>, Status> {
        let first =
            tokio::time::timeout(self.config.hello_timeout, request.get_mut().message()).await.map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Hello within {} s of opening the stream",
                    self.config.hello_timeout.as_secs()
                ))
            })??;
        let hello = match first {
            Some(FridgeMessage { kind: Some(fridge_message::Kind::Hello(hello)) }) => hello,
            _ => return Err(Status::invalid_argument("the first message of a stream must be Hello")),
        };
        let principal = Principal::fridge(&hello.fridge_id).ok_or_else(|| {
            Status::invalid_argument(format!("Hello.fridge_id {:?} is not an id ({ID_RULE})", hello.fridge_id))
        })?;
        self.confirm(&request, &principal)?;
        if let Some((region, gateway)) = self.config.regions.as_ref().and_then(|r| r.elsewhere(&hello.fridge_id)) {
            let message = format!(
                "fridge {} is registered in region {region}, not {}; connect to {}",
                hello.fridge_id,
                self.config.regions.as_ref().map_or("", |r| r.here.as_str()),
                if gateway.is_empty() { "its region's gateway" } else { gateway }
            );
            let redirect = proto::Redirect {
                reason: proto::RejectReason::WrongRegion as i32,
                region: region.to_owned(),
                gateway: gateway.to_owned(),
                message: message.clone(),
            };
            let (outbound, answers) = mpsc::channel(2);
            let _ = outbound.try_send(Ok(GatewayMessage { kind: Some(gateway_message::Kind::Redirect(redirect)) }));
            let _ = outbound.try_send(Err(Status::failed_precondition(format!("wrong_region: {message}"))));
            return Ok(Response::new(ReceiverStream::new(answers)));
        }
        let inbound = request.into_inner();
        self.ingest.catch_up().await;
        let position = self.ingest.position(&principal);
        let highest_durable_seq = position
            .seq_in(hello.incarnation)
            .ok_or_else(|| Status::failed_precondition(stale(&principal, hello.incarnation, position)))?;
        let (outbound, acks) = mpsc::channel(self.config.max_in_flight_batches.max(1) * 2);
        let welcome = Welcome { highest_durable_seq, incarnation: hello.incarnation };
        outbound
            .send(Ok(GatewayMessage { kind: Some(gateway_message::Kind::Welcome(welcome)) }))
            .await
            .map_err(|_| Status::cancelled("the fridge went away"))?;
        let gateway = self.clone();
        let incarnation = hello.incarnation;
        self.metrics.streams.inc();
        let connected = self.metrics.connected.clone();
        tokio::spawn(async move {
            connected.add(1.0);
            gateway.connection(principal, incarnation, inbound, outbound).await;
            connected.add(-1.0);
        });
        Ok(Response::new(ReceiverStream::new(acks)))
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<Ack>, Status> {
        let body = request.get_ref();
        let principal = Principal::back_office(&body.source_id).ok_or_else(|| {
            Status::invalid_argument(format!("PublishRequest.source_id {:?} is not an id ({ID_RULE})", body.source_id))
        })?;
        self.confirm(&request, &principal)?;
        let request = request.into_inner();
        self.ingest.catch_up().await;
        let position = self.ingest.position(&principal);
        if position.seq_in(request.incarnation).is_none() {
            return Err(Status::failed_precondition(stale(&principal, request.incarnation, position)));
        }
        let ack = self.submit(&principal, request.incarnation, 0, request.events).await?.ack().await?;
        Ok(Response::new(ack))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let verified = request
            .extensions()
            .get::<Verified>()
            .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))?;
        if let Verified::Legacy(_) = verified {
            return Err(Status::unauthenticated("Status takes a token of the current form (`coldstream token`)"));
        }
        Ok(Response::new((self.status)()))
    }
}

impl Gateway {
    /// Serves one fridge's stream until it closes.
    async fn connection(
        self,
        principal: Principal,
        incarnation: u64,
        mut inbound: Streaming<FridgeMessage>,
        outbound: mpsc::Sender<Result<GatewayMessage, Status>>,
    ) {
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                message = inbound.message(), if open && in_flight.len() < self.config.max_in_flight_batches => {
                    match message {
                        Ok(Some(FridgeMessage { kind: Some(fridge_message::Kind::Batch(batch)) })) => {
                            match self.submit(&principal, incarnation, batch.batch_id, batch.events).await {
                                Ok(ack) => in_flight.push_back(ack.ack()),
                                Err(status) => {
                                    let _ = outbound.send(Err(status)).await;
                                    return;
                                }
                            }
                        }
                        Ok(Some(_)) => {
                            let _ = outbound.send(Err(Status::invalid_argument("only batches may follow Hello"))).await;
                            return;
                        }
                        Ok(None) => open = false,
                        Err(status) => {
                            tracing::debug!(fridge_id = principal.source_id(), %status, "fridge stream ended");
                            open = false;
                        }
                    }
                }
                Some(ack) = in_flight.next(), if !in_flight.is_empty() => {
                    let failed = ack.is_err();
                    if outbound.send(ack_message(ack)).await.is_err() || failed {
                        return;
                    }
                }
            }
        }
    }
}

/// A connection that holds one of the gateway's connection permits.
struct Capped {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Capped {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for Capped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connections `listener` accepts, at most `max` open at once: one more
/// is closed at once (and said, at most once a second), so a flood of
/// connections costs a file descriptor for a moment, never memory.
fn capped(listener: TcpListener, max: usize) -> impl futures::Stream<Item = std::io::Result<Capped>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(max.max(1)));
    let refused = Arc::new(RefusalLog::default());
    futures::stream::unfold(listener, move |listener| {
        let (permits, refused) = (Arc::clone(&permits), Arc::clone(&refused));
        async move {
            loop {
                let accepted = listener.accept().await;
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    // A failed accept (out of descriptors, a reset) is the
                    // peer's problem, not the gateway's: keep accepting.
                    Err(error) => {
                        tracing::debug!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        let _ = stream.set_nodelay(true);
                        return Some((Ok(Capped { stream, _permit: permit }), listener));
                    }
                    Err(_) => {
                        drop(stream);
                        refused.refused(&format_args!(
                            "a connection from {peer}: the gateway holds gateway.max_connections ({max}) already"
                        ));
                    }
                }
            }
        }
    })
}

/// Binds `addr`, for [`Gateway::serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })
}
