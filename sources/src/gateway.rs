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
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{ID_RULE, Principal, Tokens, bearer};
use crate::convert::{Rejection, accept};
use crate::ingest::{Candidate, Ingest, IngestError, Outcome, Pending, stale};
use crate::proto::{
    self, Ack, FridgeMessage, GatewayMessage, PublishRequest, RejectedEvent, Welcome,
    fridge_gateway_server::FridgeGateway, fridge_gateway_server::FridgeGatewayServer, fridge_message, gateway_message,
};

/// Settings of the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Events in one batch, at most; a larger batch is refused whole.
    pub max_batch_events: usize,
    /// Batches of one connection waiting for their ack, at most.
    pub max_in_flight_batches: usize,
    /// While set (by a sink that is full), batches wait before they are
    /// appended: fridges see slower acks instead of anything being dropped.
    pub hold: Arc<AtomicBool>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig { max_batch_events: 10_000, max_in_flight_batches: 8, hold: Arc::default() }
    }
}

/// The gateway service.
#[derive(Clone)]
pub struct Gateway {
    ingest: Ingest,
    tokens: Tokens,
    config: GatewayConfig,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn unavailable(error: IngestError) -> Status {
    Status::unavailable(format!("events are not durable, send them again: {error}"))
}

fn token<T>(request: &Request<T>) -> Result<String, Status> {
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
        Gateway { ingest, tokens, config }
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
        let pending = self.ingest.submit(candidates).await.map_err(unavailable)?;
        Ok(AckFuture {
            pending,
            ingest: self.ingest.clone(),
            source: principal.clone(),
            incarnation,
            batch_id,
            seqs,
            reasons,
        })
    }

    /// Serves the gateway, health and reflection on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<FridgeGatewayServer<Gateway>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| GatewayError::Reflection(e.to_string()))?;
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(FridgeGatewayServer::new(self))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
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

    async fn stream(&self, request: Request<Streaming<FridgeMessage>>) -> Result<Response<AckStream>, Status> {
        let token = token(&request)?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(FridgeMessage { kind: Some(fridge_message::Kind::Hello(hello)) }) => hello,
            _ => return Err(Status::invalid_argument("the first message of a stream must be Hello")),
        };
        let principal = Principal::fridge(&hello.fridge_id).ok_or_else(|| {
            Status::invalid_argument(format!("Hello.fridge_id {:?} is not an id ({ID_RULE})", hello.fridge_id))
        })?;
        if !self.tokens.verify(&principal, &token) {
            tracing::warn!(fridge_id = principal.source_id(), "refused a stream with a wrong token");
            return Err(Status::unauthenticated(format!("the token is not valid for {principal}")));
        }
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
        tokio::spawn(async move { gateway.connection(principal, incarnation, inbound, outbound).await });
        Ok(Response::new(ReceiverStream::new(acks)))
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<Ack>, Status> {
        let token = token(&request)?;
        let request = request.into_inner();
        let principal = Principal::back_office(&request.source_id).ok_or_else(|| {
            Status::invalid_argument(format!(
                "PublishRequest.source_id {:?} is not an id ({ID_RULE})",
                request.source_id
            ))
        })?;
        if !self.tokens.verify(&principal, &token) {
            return Err(Status::unauthenticated(format!("the token is not valid for {principal}")));
        }
        let position = self.ingest.position(&principal);
        if position.seq_in(request.incarnation).is_none() {
            return Err(Status::failed_precondition(stale(&principal, request.incarnation, position)));
        }
        let ack = self.submit(&principal, request.incarnation, 0, request.events).await?.ack().await?;
        Ok(Response::new(ack))
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

/// Binds `addr`, for [`Gateway::serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })
}
