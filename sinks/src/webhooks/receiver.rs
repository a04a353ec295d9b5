//! A small webhook receiver (HTTP/1.1, and HTTP/2 in cleartext to a client
//! that starts with it): verifies each delivery's Standard Webhooks
//! signature, answers 204 (or 401 with the reason), drops repeats by
//! `webhook-id`, and keeps what it received ([`Keep`]). `coldstream
//! receive` prints each delivery and keeps only the last
//! [`REMEMBERED_IDS`] ids (a receiver left running for weeks must not
//! grow); the demo and the tests keep every delivery and read them back;
//! the bench keeps a [`Receipt`] of each first delivery and counts the
//! repeats.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Secret;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Version};
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
    /// The body's `timestamp`, in ms since the Unix epoch.
    pub timestamp_ms: Option<u64>,
    /// Whether an earlier delivery had the same id.
    pub repeat: bool,
    /// When it arrived, in ms since the Unix epoch.
    pub received_ms: u64,
    /// The HTTP it came in.
    pub version: Version,
}

/// What a receiver does with a verified delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Keeps it whole, for [`Receiver::received`].
    Everything,
    /// Keeps a [`Receipt`] of each first delivery of an id, for
    /// [`Receiver::take_receipts`], and counts the repeats: what a latency
    /// measurement needs, at 24 bytes a delivery and 17 a slot of the set
    /// of ids (the bench runs its receivers in the pipeline's process,
    /// whose memory it measures).
    Receipts,
    /// Prints a line of it and keeps nothing.
    Print,
}

/// What a [`Keep::Receipts`] receiver keeps of the first delivery of an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The body's `timestamp`, in ms since the Unix epoch.
    pub timestamp_ms: Option<u64>,
    /// When it arrived, in ms since the Unix epoch.
    pub received_ms: u64,
}

/// Ids a printing receiver remembers to flag repeats, at most.
pub const REMEMBERED_IDS: usize = 100_000;

struct Shared {
    secret: Secret,
    keep: Keep,
    seen: Mutex<Seen>,
    received: Mutex<Vec<Delivery>>,
    receipts: Mutex<Vec<Receipt>>,
    repeats: AtomicU64,
}

/// The ids seen; bounded, oldest forgotten first, when the receiver prints.
/// coldstream's own ids are kept apart as numbers: a set of them takes 17
/// bytes a slot where one of [`SeenId`]s takes 33.
#[derive(Default)]
struct Seen {
    derived: HashSet<u128>,
    other: HashSet<Box<str>>,
    order: VecDeque<SeenId>,
}

/// An id as [`Seen`] keeps it: coldstream's own (`msg_` and 32 lowercase
/// hex digits) as the 128-bit number it spells, any other as it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SeenId {
    Derived(u128),
    Other(Box<str>),
}

impl SeenId {
    fn of(id: &str) -> SeenId {
        id.strip_prefix("msg_")
            .filter(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .and_then(|hex| u128::from_str_radix(hex, 16).ok())
            .map_or_else(|| SeenId::Other(id.into()), SeenId::Derived)
    }
}

impl Seen {
    /// Whether `id` is new; remembers it, forgetting the oldest beyond `limit`.
    fn insert(&mut self, id: &str, limit: Option<usize>) -> bool {
        let id = SeenId::of(id);
        let new = match &id {
            SeenId::Derived(n) => self.derived.insert(*n),
            SeenId::Other(text) => self.other.insert(text.clone()),
        };
        let Some(limit) = limit.filter(|_| new) else { return new };
        self.order.push_back(id);
        while self.order.len() > limit {
            match self.order.pop_front() {
                Some(SeenId::Derived(n)) => self.derived.remove(&n),
                Some(SeenId::Other(text)) => self.other.remove(&text),
                None => false,
            };
        }
        true
    }
}

/// The part of a body a receipt reads; the rest is skipped unparsed.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    timestamp: Option<std::borrow::Cow<'a, str>>,
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
        let shared = Arc::new(Shared {
            secret,
            keep,
            seen: Mutex::default(),
            received: Mutex::default(),
            receipts: Mutex::default(),
            repeats: Default::default(),
        });
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

    /// The receipts kept so far (by a [`Keep::Receipts`] receiver), in
    /// arrival order; the receiver keeps none of them.
    pub fn take_receipts(&self) -> Vec<Receipt> {
        std::mem::take(&mut *self.shared.receipts.lock().expect("receiver lock"))
    }

    /// Deliveries of an id delivered before, counted by a
    /// [`Keep::Receipts`] receiver (which keeps no receipt of them).
    pub fn repeats(&self) -> u64 {
        self.shared.repeats.load(Ordering::Relaxed)
    }

    /// Stops listening.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    let (id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    if let Err(error) = shared.secret.verify(id, timestamp, signature, &body, now) {
        tracing::warn!(%error, "refused a delivery");
        return (StatusCode::UNAUTHORIZED, error.to_string());
    }
    let id = id.unwrap_or_default();
    let limit = (shared.keep == Keep::Print).then_some(REMEMBERED_IDS);
    let received_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    if shared.keep == Keep::Receipts {
        let Ok(head) = serde_json::from_slice::<Head>(&body) else {
            return (StatusCode::BAD_REQUEST, "the body is not a JSON object".into());
        };
        if shared.seen.lock().expect("receiver lock").insert(id, limit) {
            let timestamp_ms = head.timestamp.as_deref().and_then(epoch_ms);
            shared.receipts.lock().expect("receiver lock").push(Receipt { timestamp_ms, received_ms });
        } else {
            shared.repeats.fetch_add(1, Ordering::Relaxed);
        }
        return (StatusCode::NO_CONTENT, String::new());
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not JSON".into());
    };
    let kind = json["type"].as_str().unwrap_or_default().to_owned();
    let repeat = !shared.seen.lock().expect("receiver lock").insert(id, limit);
    if shared.keep == Keep::Print {
        println!("{id} {kind}{} {}", if repeat { " (repeat)" } else { "" }, json["data"]);
        return (StatusCode::NO_CONTENT, String::new());
    }
    let delivery = Delivery {
        id: id.to_owned(),
        kind,
        data: json["data"].clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        timestamp_ms: json["timestamp"].as_str().and_then(epoch_ms),
        repeat,
        received_ms,
        version,
    };
    shared.received.lock().expect("receiver lock").push(delivery);
    (StatusCode::NO_CONTENT, String::new())
}

/// An RFC 3339 time in ms since the Unix epoch.
fn epoch_ms(stamp: &str) -> Option<u64> {
    chrono::DateTime::parse_from_rfc3339(stamp).ok().map(|stamp| stamp.timestamp_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::EXAMPLE_SECRET;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Posts `body` signed as `id` over a plain HTTP/1.1 connection; the answer's status line.
    async fn post(addr: SocketAddr, id: &str, body: &str) -> String {
        let secret = Secret::parse(EXAMPLE_SECRET).expect("the example secret");
        let now = chrono::Utc::now().timestamp();
        let signature = secret.sign(id, now, body.as_bytes());
        let request = format!(
            "POST /procurement HTTP/1.1\r\nhost: receiver\r\nwebhook-id: {id}\r\nwebhook-timestamp: {now}\r\n\
             webhook-signature: {signature}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
        stream.write_all(request.as_bytes()).await.expect("sends");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("reads the answer");
        answer.lines().next().unwrap_or_default().to_owned()
    }

    #[test]
    fn a_bounded_receiver_forgets_its_oldest_ids_of_either_kind_and_an_unbounded_one_none() {
        let derived = |n: u32| format!("msg_{n:032x}");
        let mut seen = Seen::default();
        assert!(seen.insert(&derived(1), Some(2)));
        assert!(seen.insert("evt-2", Some(2)));
        assert!(!seen.insert(&derived(1), Some(2)), "a repeat is not new and forgets nothing");
        assert!(seen.insert(&derived(3), Some(2)), "the third id forgets the first");
        assert!(seen.insert(&derived(1), Some(2)), "so the first is new again, and evt-2 is forgotten");
        assert!(seen.insert("evt-2", Some(2)));
        assert_eq!((seen.derived.len() + seen.other.len(), seen.order.len()), (2, 2));
        let mut all = Seen::default();
        for n in 0..1_000 {
            assert!(all.insert(&derived(n), None) && all.insert(&format!("evt-{n}"), None));
        }
        assert!(!all.insert(&derived(0), None) && !all.insert("evt-0", None), "kept without a bound");
        assert_eq!((all.derived.len(), all.other.len(), all.order.len()), (1_000, 1_000, 0));
    }

    #[tokio::test]
    async fn a_receipt_keeps_the_timestamp_and_arrival_and_repeats_of_any_id_are_counted() {
        let secret = Secret::parse(EXAMPLE_SECRET).expect("the example secret");
        let receiver = Receiver::start(([127, 0, 0, 1], 0).into(), secret, Keep::Receipts).await.expect("listens");
        let upper = "msg_0123456789abcdef0123456789ABCDEF";
        let body = r#"{"type":"restock.opened","timestamp":"2026-01-02T03:04:05.678Z","data":{"lines":[1,2]}}"#;
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
        let lower = "msg_0123456789abcdef0123456789abcdef";
        for id in [upper, lower, lower, "evt-7", "evt-7"] {
            assert!(post(receiver.addr(), id, body).await.contains("204"), "{id} accepted");
        }
        assert!(post(receiver.addr(), "evt-8", "not json").await.contains("400"));
        let receipts = receiver.take_receipts();
        // Ids are compared as they are written: other case, other id.
        assert_eq!(receipts.len(), 3, "{receipts:?}");
        assert_eq!(receiver.repeats(), 2);
        assert!(receipts.iter().all(|r| r.timestamp_ms == Some(1_767_323_045_678)), "{receipts:?}");
        assert!(receipts.iter().all(|r| r.received_ms >= before.as_millis() as u64), "{receipts:?}");
        assert!(receiver.take_receipts().is_empty(), "taken once");
        assert!(receiver.received().is_empty(), "a receipt keeps no body");
        receiver.stop().await;
    }
}
