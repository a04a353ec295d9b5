//! A small webhook receiver: verifies each delivery's Standard Webhooks
//! signature, answers 204 (or 401 with the reason), drops repeats by
//! `webhook-id`, and keeps what it received. `coldstream receive` prints
//! each delivery and keeps only the last [`REMEMBERED_IDS`] ids (a receiver
//! left running for weeks must not grow); the demo and the tests keep every
//! delivery and read them back.

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
    /// The body's `data`.
    pub data: serde_json::Value,
    /// The raw body.
    pub body: String,
    /// Whether an earlier delivery had the same id.
    pub repeat: bool,
    /// When it arrived, in ms since the Unix epoch.
    pub received_ms: u64,
}

/// Ids a printing receiver remembers to flag repeats, at most.
pub const REMEMBERED_IDS: usize = 100_000;

struct Shared {
    secret: Secret,
    print: bool,
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
    /// Listens on `listen` (port 0 for any) until stopped; with `print`,
    /// writes one line per delivery to standard output instead of keeping
    /// it (so [`Receiver::received`] stays empty).
    pub async fn start(listen: SocketAddr, secret: Secret, print: bool) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { secret, print, seen: Mutex::default(), received: Mutex::default() });
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
    let limit = shared.print.then_some(REMEMBERED_IDS);
    let repeat = !shared.seen.lock().expect("receiver lock").insert(&id, limit);
    if shared.print {
        println!("{id} {kind}{} {}", if repeat { " (repeat)" } else { "" }, json["data"]);
        return (StatusCode::NO_CONTENT, String::new());
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let received_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let delivery = Delivery { id, kind, data: json["data"].clone(), body, repeat, received_ms };
    shared.received.lock().expect("receiver lock").push(delivery);
    (StatusCode::NO_CONTENT, String::new())
}
