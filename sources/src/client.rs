//! The fridge side of the gateway protocol, used by the simulator, the
//! benchmarks and the tests.
//!
//! A [`Fridge`] keeps every event it has sent until an ack says it is
//! durable. When the connection drops it reconnects with backoff, learns
//! the highest durable seq from `Welcome`, forgets what is already durable
//! and sends the rest again; the gateway acks repeats as duplicates, so
//! nothing is counted twice.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::proto::{
    Ack, Event, EventBatch, FridgeMessage, GatewayMessage, Hello, PublishRequest,
    fridge_gateway_client::FridgeGatewayClient, fridge_message, gateway_message,
};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a valid URL.
    #[error("invalid endpoint {0:?}")]
    Endpoint(String),
    /// The connection could not be made or was lost.
    #[error("connection: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The gateway answered with an error.
    #[error("gateway: {} ({})", .0.message(), .0.code())]
    Status(#[from] Status),
    /// The gateway broke the protocol.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// The fridge is registered in another region, served by `gateway`.
    #[error("wrong_region: registered in region {region}, whose gateway is {gateway:?}")]
    Redirected {
        /// The fridge's region.
        region: String,
        /// That region's gateway (empty when the deployment names none).
        gateway: String,
    },
    /// Gave up after reconnecting too many times.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// Connection attempts made.
        attempts: u32,
        /// The last error.
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Whether reconnecting may help (authentication and argument errors will not).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status(status) => !matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
            ),
            ClientError::Transport(_) | ClientError::Protocol(_) => true,
            ClientError::Endpoint(_) | ClientError::GaveUp { .. } | ClientError::Redirected { .. } => false,
        }
    }
}

/// How a client speaks TLS to an `https://` gateway.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// The CA that signed the gateway's certificate, PEM; `None`: the
    /// system's roots.
    pub ca: Option<Vec<u8>>,
    /// The name the gateway's certificate must carry, when it is not the
    /// endpoint's host.
    pub domain: Option<String>,
    /// A client certificate and key, PEM: with the gateway's
    /// `tls.client_ca`, it authenticates the fridge it names, no token needed.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientTls(ca: {}, domain: {:?}, identity: {})",
            self.ca.is_some(),
            self.domain,
            self.identity.is_some()
        )
    }
}

/// Opens a channel to `endpoint` (e.g. `http://127.0.0.1:50051`; an
/// `https://` one speaks TLS against the system's roots).
pub async fn channel(endpoint: &str) -> Result<Channel, ClientError> {
    channel_with(endpoint, None).await
}

/// Opens a channel to `endpoint` with `tls` settings for an `https://` one.
pub async fn channel_with(endpoint: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
    let mut target = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|_| ClientError::Endpoint(endpoint.to_owned()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if endpoint.starts_with("https://") {
        let tls = tls.cloned().unwrap_or_default();
        let mut settings = tonic::transport::ClientTlsConfig::new();
        settings = match &tls.ca {
            Some(ca) => settings.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => settings.with_native_roots(),
        };
        if let Some(domain) = &tls.domain {
            settings = settings.domain_name(domain.clone());
        }
        if let Some((cert, key)) = &tls.identity {
            settings = settings.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        target = target.tls_config(settings)?;
    }
    Ok(target.connect().await?)
}

/// `message` with `authorization: Bearer <token>`; an empty token sends
/// none (a client certificate authenticates the call).
fn authorized<T>(message: T, token: &str) -> Result<Request<T>, ClientError> {
    let mut request = Request::new(message);
    if token.is_empty() {
        return Ok(request);
    }
    let value = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| ClientError::Protocol("the token is not a valid header value"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// One open `Stream` call.
pub struct Session {
    outbound: mpsc::Sender<FridgeMessage>,
    inbound: Streaming<GatewayMessage>,
    /// The highest durable seq the gateway reported in `Welcome`.
    pub highest_durable_seq: u64,
}

impl Session {
    /// Says hello as `fridge_id` (incarnation 0) and waits for `Welcome`.
    pub async fn open(channel: Channel, fridge_id: &str, token: &str) -> Result<Session, ClientError> {
        Session::open_as(channel, fridge_id, 0, token).await
    }

    /// Says hello as `fridge_id` in `incarnation` and waits for `Welcome`.
    pub async fn open_as(
        channel: Channel,
        fridge_id: &str,
        incarnation: u64,
        token: &str,
    ) -> Result<Session, ClientError> {
        let (outbound, receiver) = mpsc::channel(16);
        let hello = FridgeMessage {
            kind: Some(fridge_message::Kind::Hello(Hello { fridge_id: fridge_id.to_owned(), incarnation })),
        };
        outbound.send(hello).await.map_err(|_| ClientError::Protocol("stream closed before Hello"))?;
        let mut client = FridgeGatewayClient::new(channel);
        let mut inbound = client.stream(authorized(ReceiverStream::new(receiver), token)?).await?.into_inner();
        match inbound.message().await? {
            Some(GatewayMessage { kind: Some(gateway_message::Kind::Welcome(welcome)) }) => {
                Ok(Session { outbound, inbound, highest_durable_seq: welcome.highest_durable_seq })
            }
            Some(GatewayMessage { kind: Some(gateway_message::Kind::Redirect(redirect)) }) => {
                Err(ClientError::Redirected { region: redirect.region, gateway: redirect.gateway })
            }
            _ => Err(ClientError::Protocol("the gateway did not answer Hello with Welcome")),
        }
    }

    /// Sends a batch without waiting for its ack.
    pub async fn send(&self, batch_id: u64, events: Vec<Event>) -> Result<(), ClientError> {
        let batch = FridgeMessage { kind: Some(fridge_message::Kind::Batch(EventBatch { batch_id, events })) };
        self.outbound.send(batch).await.map_err(|_| ClientError::Protocol("the stream is closed"))
    }

    /// Waits for the next ack.
    pub async fn ack(&mut self) -> Result<Ack, ClientError> {
        match self.inbound.message().await? {
            Some(GatewayMessage { kind: Some(gateway_message::Kind::Ack(ack)) }) => Ok(ack),
            Some(_) => Err(ClientError::Protocol("expected an Ack")),
            None => Err(ClientError::Protocol("the gateway closed the stream")),
        }
    }
}

/// What happened to the events a [`Fridge`] sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Events the gateway appended.
    pub accepted: u64,
    /// Events the gateway already had.
    pub duplicates: u64,
    /// Events refused (and dead-lettered).
    pub rejected: u64,
    /// Times the fridge had to reconnect.
    pub reconnects: u64,
}

impl Delivered {
    /// Adds another tally to this one.
    pub fn add(&mut self, other: Delivered) {
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        self.reconnects += other.reconnects;
    }
}

/// A fridge that keeps unacknowledged events and resends them after a reconnect.
pub struct Fridge {
    /// The gateways it may use; it moves to the next one whenever it
    /// reconnects after a failure.
    endpoints: Vec<String>,
    /// The one in use.
    current: usize,
    fridge_id: String,
    token: String,
    /// The incarnation announced in `Hello` (raise it when the seq counter restarts).
    pub incarnation: u64,
    /// TLS for an `https://` endpoint.
    pub tls: Option<ClientTls>,
    session: Option<Session>,
    unacked: VecDeque<Event>,
    next_batch: u64,
    /// Reconnect attempts before giving up.
    pub max_attempts: u32,
    /// Everything delivered so far.
    pub delivered: Delivered,
}

impl Fridge {
    /// A fridge that will connect to `endpoint` as `fridge_id` with `token`.
    pub fn new(endpoint: impl Into<String>, fridge_id: impl Into<String>, token: impl Into<String>) -> Self {
        Fridge::over(vec![endpoint.into()], fridge_id, token)
    }

    /// A fridge that spreads itself over several gateways (behind no load
    /// balancer): it starts on the one its id picks and moves to the next
    /// whenever it has to reconnect. Any gateway of the region serves it:
    /// what one gateway made durable, every gateway's `Welcome` reports.
    pub fn over(endpoints: Vec<String>, fridge_id: impl Into<String>, token: impl Into<String>) -> Self {
        let fridge_id = fridge_id.into();
        let endpoints = if endpoints.is_empty() { vec![String::new()] } else { endpoints };
        let current =
            fridge_id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % endpoints.len();
        Fridge {
            endpoints,
            current,
            fridge_id,
            token: token.into(),
            incarnation: 0,
            tls: None,
            session: None,
            unacked: VecDeque::new(),
            next_batch: 1,
            max_attempts: 30,
            delivered: Delivered::default(),
        }
    }

    /// The fridge's id.
    pub fn id(&self) -> &str {
        &self.fridge_id
    }

    /// The gateway in use.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current]
    }

    /// Drops the connection, as a network failure would.
    pub fn disconnect(&mut self) {
        self.session = None;
    }

    /// Sends `events` (in seq order) and returns once all of them are
    /// durable or rejected, reconnecting and resending as needed.
    pub async fn send(&mut self, events: Vec<Event>) -> Result<Delivered, ClientError> {
        self.unacked.extend(events);
        let mut tally = Delivered::default();
        let mut attempt = 0u32;
        let mut redirects = 0;
        while !self.unacked.is_empty() {
            match self.round_trip(&mut tally).await {
                Ok(()) => attempt = 0,
                // Registered in another region: follow, a few times at most.
                Err(ClientError::Redirected { region, gateway }) if !gateway.is_empty() && redirects < 3 => {
                    redirects += 1;
                    tracing::info!(fridge_id = %self.fridge_id, %region, %gateway, "moving to the gateway of its region");
                    self.session = None;
                    self.endpoints = vec![gateway];
                    self.current = 0;
                }
                Err(error) if error.is_retryable() && attempt + 1 < self.max_attempts => {
                    attempt += 1;
                    tally.reconnects += 1;
                    self.session = None;
                    self.current = (self.current + 1) % self.endpoints.len();
                    let backoff = Duration::from_millis(20u64 << attempt.min(7));
                    tracing::debug!(fridge_id = %self.fridge_id, %error, ?backoff, "reconnecting");
                    tokio::time::sleep(backoff).await;
                }
                Err(error) => {
                    self.session = None;
                    self.delivered.add(tally);
                    return Err(if error.is_retryable() {
                        ClientError::GaveUp { attempts: attempt + 1, last: Box::new(error) }
                    } else {
                        error
                    });
                }
            }
        }
        self.delivered.add(tally);
        Ok(tally)
    }

    async fn round_trip(&mut self, tally: &mut Delivered) -> Result<(), ClientError> {
        if self.session.is_none() {
            let session = Session::open_as(
                channel_with(&self.endpoints[self.current], self.tls.as_ref()).await?,
                &self.fridge_id,
                self.incarnation,
                &self.token,
            )
            .await?;
            // What is durable needs no resending; the gateway would only
            // answer it as a duplicate.
            while self.unacked.front().is_some_and(|e| e.seq <= session.highest_durable_seq) {
                self.unacked.pop_front();
                tally.duplicates += 1;
            }
            self.session = Some(session);
            if self.unacked.is_empty() {
                return Ok(());
            }
        }
        let session = self.session.as_mut().expect("a session was just opened");
        let batch_id = self.next_batch;
        self.next_batch += 1;
        session.send(batch_id, self.unacked.iter().cloned().collect()).await?;
        let ack = session.ack().await?;
        if ack.batch_id != batch_id {
            return Err(ClientError::Protocol("an ack for another batch"));
        }
        tally.accepted += ack.accepted.len() as u64;
        tally.duplicates += ack.duplicates.len() as u64;
        tally.rejected += ack.rejected.len() as u64;
        self.unacked.clear();
        Ok(())
    }
}

/// Publishes back-office events as `source_id`.
pub async fn publish(channel: Channel, source_id: &str, token: &str, events: Vec<Event>) -> Result<Ack, ClientError> {
    let mut client = FridgeGatewayClient::new(channel);
    let request = PublishRequest { source_id: source_id.to_owned(), events, incarnation: 0 };
    Ok(client.publish(authorized(request, token)?).await?.into_inner())
}
