//! A small webhook receiver: verifies each delivery's Standard Webhooks
//! signature, answers 204 (or 401 with the reason), drops repeats by
//! `webhook-id`, and keeps what it received ([`Keep`]). `coldstream
//! receive` prints each delivery and keeps only the last
//! [`REMEMBERED_IDS`] ids (a receiver left running for weeks must not
//! grow); the demo and the tests keep every delivery and read them back;
//! the bench keeps a receipt of each.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::Secret;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One verified delivery.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// `webhook-id`.
    pub id: String,
    /// The body's `type`.
    pub kind: String,
    /// The body's `data` (null in a receipt).
    pub data: serde_json::Value,
    /// The raw body (empty in a receipt).
    pub body: String,
    /// The body's `timestamp`, in ms since the Unix epoch.
    pub timestamp_ms: Option<u64>,
    /// Whether an earlier delivery had the same id.
    pub repeat: bool,
    /// When it arrived, in ms since the Unix epoch.
    pub received_ms: u64,
}

/// What a receiver does with a verified delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Keeps it whole, for [`Receiver::received`].
    Everything,
    /// Keeps its id, type, timestamp and arrival, without its body: what
    /// a latency measurement needs, at a few dozen bytes a delivery.
    Receipts,
    /// Prints a line of it and keeps nothing.
    Print,
}

/// Ids a printing receiver remembers to flag repeats, at most.
pub const REMEMBERED_IDS: usize = 100_000;

struct Shared {
    secret: Secret,
    keep: Keep,
    seen: Mutex<Seen>,
    received: Mutex<Vec<Delivery>>,
}

/// The ids seen, oldest first; bounded when the receiver prints.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Whether `id` is new; remembers it, forgetting the oldest beyond `limit`.
    fn insert(&mut self, id: &str, limit: Option<usize>) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        if let Some(limit) = limit {
            self.order.push_back(id.to_owned());
            while self.order.len() > limit {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
        true
    }
}

/// A running receiver.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on `listen` (port 0 for any) until stopped, keeping what
    /// `keep` says of each delivery.
    pub async fn start(listen: SocketAddr, secret: Secret, keep: Keep) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { secret, keep, seen: Mutex::default(), received: Mutex::default() });
        let app =
            Router::new().route("/{*path}", post(receive)).route("/", post(receive)).with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "webhook receiver stopped");
            }
        });
        Ok(Receiver { addr, shared, stop: Some(stop), task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every verified delivery so far, repeats included, in arrival order.
    pub fn received(&self) -> Vec<Delivery> {
        self.shared.received.lock().expect("receiver lock").clone()
    }

    /// Stops listening.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    let (id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    if let Err(error) = shared.secret.verify(id, timestamp, signature, &body, now) {
        tracing::warn!(%error, "refused a delivery");
        return (StatusCode::UNAUTHORIZED, error.to_string());
    }
    let id = id.unwrap_or_default().to_owned();
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not JSON".into());
    };
    let kind = json["type"].as_str().unwrap_or_default().to_owned();
    let limit = (shared.keep == Keep::Print).then_some(REMEMBERED_IDS);
    let repeat = !shared.seen.lock().expect("receiver lock").insert(&id, limit);
    let (data, body) = match shared.keep {
        Keep::Print => {
            println!("{id} {kind}{} {}", if repeat { " (repeat)" } else { "" }, json["data"]);
            return (StatusCode::NO_CONTENT, String::new());
        }
        Keep::Receipts => (serde_json::Value::Null, String::new()),
        Keep::Everything => (json["data"].clone(), String::from_utf8_lossy(&body).into_owned()),
    };
    let timestamp_ms = json["timestamp"]
        .as_str()
        .and_then(|stamp| chrono::DateTime::parse_from_rfc3339(stamp).ok())
        .map(|stamp| stamp.timestamp_millis() as u64);
    let received_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let delivery = Delivery { id, kind, data, body, timestamp_ms, repeat, received_ms };
    shared.received.lock().expect("receiver lock").push(delivery);
    (StatusCode::NO_CONTENT, String::new())
}
