//! A small webhook receiver: verifies each delivery's Standard Webhooks
//! signature, answers 204 (or 401 with the reason), drops repeats by
//! `webhook-id`, and keeps what it received. `coldstream receive` prints
//! each delivery; the demo and the tests read them back.

use std::collections::HashSet;
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

struct Shared {
    secret: Secret,
    print: bool,
    seen: Mutex<HashSet<String>>,
    received: Mutex<Vec<Delivery>>,
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
    /// writes one line per delivery to standard output.
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
    let repeat = !shared.seen.lock().expect("receiver lock").insert(id.clone());
    let body = String::from_utf8_lossy(&body).into_owned();
    if shared.print {
        println!("{id} {kind}{} {}", if repeat { " (repeat)" } else { "" }, json["data"]);
    }
    let received_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let delivery = Delivery { id, kind, data: json["data"].clone(), body, repeat, received_ms };
    shared.received.lock().expect("receiver lock").push(delivery);
    (StatusCode::NO_CONTENT, String::new())
}
