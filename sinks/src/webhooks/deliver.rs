//! Delivery: one dispatcher per endpoint sends the outbox's messages,
//! signed, in order per key and concurrently across keys (at most
//! `max_in_flight` at once); retries with exponential backoff and jitter;
//! dead-letters permanent failures; and a circuit breaker stops sending to
//! an endpoint that keeps failing, probing it with one message at a time
//! until it answers again.

use std::collections::{HashMap, VecDeque};
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

use super::dead_letter::{DeadLetter, FailedDelivery};
use super::events::{Endpoint, Message};
use super::outbox::Outbox;
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

/// How one attempt ended.
#[derive(Debug)]
enum Outcome {
    Delivered,
    /// Worth retrying: a timeout, a connection error, 5xx, 408, 429.
    Retry(String),
    /// 4xx other than 408 and 429: the answer's status and body.
    Permanent(u16, String),
}

/// Messages of one key, delivered one after the other.
#[derive(Default)]
struct Lane {
    queue: VecDeque<Message>,
    attempts: u32,
    retry_at: Option<Instant>,
    busy: bool,
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

/// Sends one endpoint's messages until `stop` resolves.
pub async fn dispatch(
    endpoint: Endpoint,
    config: EndpointConfig,
    retry: RetryPolicy,
    outbox: Arc<Mutex<Outbox>>,
    dead_letter: Arc<DeadLetter>,
    mut incoming: UnboundedReceiver<Message>,
) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(config.max_in_flight)
        .build_http();
    let mut lanes: HashMap<String, Lane> = HashMap::new();
    let mut order: VecDeque<String> = VecDeque::new();
    let seeded: Vec<Message> = {
        let outbox = outbox.lock().expect("outbox lock");
        outbox.pending().filter(|m| m.endpoint == endpoint).cloned().collect()
    };
    for message in seeded {
        add(&mut lanes, &mut order, message);
    }
    let mut breaker = Breaker::Closed { failures: 0 };
    let mut in_flight: JoinSet<(String, Outcome)> = JoinSet::new();
    let mut done: Vec<String> = Vec::new();
    let mut open = true;
    loop {
        // Send what may go: lane heads not busy and not waiting to retry.
        let now = Instant::now();
        if let Breaker::Open { until } = breaker
            && now >= until
        {
            tracing::info!(endpoint = endpoint.as_str(), "circuit half-open: probing with one delivery");
            breaker = Breaker::Probing;
            if let Some(key) = next_ready(&lanes, &order, now) {
                launch(&mut in_flight, &client, &config, &mut lanes, key);
            } else {
                breaker = Breaker::Closed { failures: retry.breaker_failures.saturating_sub(1) };
            }
        }
        if matches!(breaker, Breaker::Closed { .. }) {
            let mut rotated = 0;
            while in_flight.len() < config.max_in_flight && rotated < order.len() {
                let key = order[rotated].clone();
                rotated += 1;
                let lane = &lanes[&key];
                if !lane.busy && lane.retry_at.is_none_or(|at| at <= now) {
                    launch(&mut in_flight, &client, &config, &mut lanes, key);
                }
            }
        }
        if !done.is_empty() {
            let ids = std::mem::take(&mut done);
            let outbox = Arc::clone(&outbox);
            let marked = tokio::task::spawn_blocking(move || outbox.lock().expect("outbox lock").done(&ids)).await;
            if let Ok(Err(error)) = marked {
                tracing::error!(%error, "could not mark deliveries done; they will be sent again after a restart");
            }
        }
        if !open && lanes.is_empty() && in_flight.is_empty() {
            return;
        }

        let wake = lanes.values().filter_map(|lane| lane.retry_at).min();
        let wake = match breaker {
            Breaker::Open { until } => Some(until),
            _ => wake,
        };
        tokio::select! {
            received = incoming.recv(), if open => match received {
                Some(message) => add(&mut lanes, &mut order, message),
                None => open = false,
            },
            Some(joined) = in_flight.join_next() => {
                let Ok((key, outcome)) = joined else { continue };
                let Some(lane) = lanes.get_mut(&key) else { continue };
                lane.busy = false;
                let Some(message) = lane.queue.front() else { continue };
                match outcome {
                    Outcome::Delivered => {
                        if breaker != (Breaker::Closed { failures: 0 }) {
                            tracing::info!(endpoint = endpoint.as_str(), "endpoint answers again: circuit closed");
                        }
                        breaker = Breaker::Closed { failures: 0 };
                        done.push(message.id.clone());
                        finish(&mut lanes, &mut order, &key);
                    }
                    Outcome::Permanent(status, answer) => {
                        breaker = Breaker::Closed { failures: 0 };
                        tracing::error!(endpoint = endpoint.as_str(), id = %message.id, kind = %message.kind, status,
                            "permanent failure: moved to webhooks_failed/");
                        let failed = FailedDelivery { message: message.clone(), status, answer };
                        let dead_letter = Arc::clone(&dead_letter);
                        let written = tokio::task::spawn_blocking(move || dead_letter.write(&failed)).await;
                        match written {
                            Ok(Ok(())) => {
                                done.push(message.id.clone());
                                finish(&mut lanes, &mut order, &key);
                            }
                            _ => {
                                tracing::error!(id = %message.id, "could not write the dead letter; retrying the delivery");
                                lane.retry_at = Some(Instant::now() + retry.max);
                            }
                        }
                    }
                    Outcome::Retry(reason) => {
                        let delay = retry.backoff(lane.attempts);
                        lane.attempts += 1;
                        lane.retry_at = Some(Instant::now() + delay);
                        tracing::warn!(endpoint = endpoint.as_str(), id = %message.id, attempt = lane.attempts, %reason,
                            retry_in_ms = delay.as_millis() as u64, "delivery failed");
                        breaker = match breaker {
                            Breaker::Closed { failures } if failures + 1 < retry.breaker_failures => {
                                Breaker::Closed { failures: failures + 1 }
                            }
                            _ => {
                                tracing::warn!(endpoint = endpoint.as_str(), open_for_ms = retry.breaker_open.as_millis() as u64,
                                    "circuit open: the endpoint keeps failing");
                                Breaker::Open { until: Instant::now() + retry.breaker_open }
                            }
                        };
                    }
                }
            }
            _ = sleep_until(wake) => {}
        }
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn add(lanes: &mut HashMap<String, Lane>, order: &mut VecDeque<String>, message: Message) {
    let lane = lanes.entry(message.key.clone()).or_insert_with(|| {
        order.push_back(message.key.clone());
        Lane::default()
    });
    lane.queue.push_back(message);
}

/// The head of `key`'s lane is done: the next one may go.
fn finish(lanes: &mut HashMap<String, Lane>, order: &mut VecDeque<String>, key: &str) {
    if let Some(lane) = lanes.get_mut(key) {
        lane.queue.pop_front();
        lane.attempts = 0;
        lane.retry_at = None;
        if lane.queue.is_empty() {
            lanes.remove(key);
            order.retain(|k| k != key);
        }
    }
}

fn next_ready(lanes: &HashMap<String, Lane>, order: &VecDeque<String>, now: Instant) -> Option<String> {
    order.iter().find(|key| lanes[*key].retry_at.is_none_or(|at| at <= now) && !lanes[*key].busy).cloned()
}

fn launch(
    in_flight: &mut JoinSet<(String, Outcome)>,
    client: &Client<HttpConnector, Full<Bytes>>,
    config: &EndpointConfig,
    lanes: &mut HashMap<String, Lane>,
    key: String,
) {
    let Some(lane) = lanes.get_mut(&key) else { return };
    let Some(message) = lane.queue.front() else { return };
    lane.busy = true;
    let (client, config, message) = (client.clone(), config.clone(), message.clone());
    in_flight.spawn(async move { (key, attempt(&client, &config, &message).await) });
}

/// One signed attempt.
async fn attempt(client: &Client<HttpConnector, Full<Bytes>>, config: &EndpointConfig, message: &Message) -> Outcome {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = config.secret.sign(&message.id, timestamp, message.body.as_bytes());
    let request = hyper::Request::post(config.url.clone())
        .header("content-type", "application/json")
        .header("user-agent", concat!("coldstream/", env!("CARGO_PKG_VERSION")))
        .header("webhook-id", &message.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::from(message.body.clone())));
    let request = match request {
        Ok(request) => request,
        Err(error) => return Outcome::Permanent(0, format!("cannot build the request: {error}")),
    };
    let answer = tokio::time::timeout(config.timeout, async {
        let response = client.request(request).await.map_err(|e| format!("connection: {e}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?;
        Ok::<_, String>((status, body.to_bytes()))
    })
    .await;
    match answer {
        Err(_) => Outcome::Retry(format!("no answer within {} ms", config.timeout.as_millis())),
        Ok(Err(error)) => Outcome::Retry(error),
        Ok(Ok((status, _))) if (200..300).contains(&status) => Outcome::Delivered,
        Ok(Ok((status, body))) if (400..500).contains(&status) && status != 408 && status != 429 => {
            let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
            Outcome::Permanent(status, text)
        }
        Ok(Ok((status, _))) => Outcome::Retry(format!("HTTP {status}")),
    }
}
