//! Webhooks to procurement, accounting and alerts: view changes become
//! signed Standard Webhooks messages, kept in a durable outbox until the
//! receiver acknowledges them, delivered in order per key with retries, a
//! circuit breaker and a dead letter; a full outbox holds the view sink
//! back (and raises `pressure`, which slows ingestion) instead of dropping.

pub mod dead_letter;
pub mod deliver;
pub mod events;
pub mod outbox;
pub mod receiver;
pub mod sign;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coldstream_pipelines::Time;
use coldstream_pipelines::metrics::Registry;
use coldstream_pipelines::traces::{self, Traces};
use coldstream_pipelines::views::ViewBatch;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

pub use dead_letter::{DeadLetter, FailedDelivery};
pub use deliver::{EndpointConfig, Protocol, RetryPolicy, tls_roots};
pub use events::{Derive, Endpoint, Message};
pub use outbox::{Bodies, Outbox, OutboxError, Pending};
pub use sign::{EXAMPLE_SECRET, Secret, SignatureError};

use crate::parquet::ParquetConfig;
use crate::{SinkError, ViewSink};

/// Settings of the webhook sink.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The endpoints to deliver to; messages for others are not kept.
    pub endpoints: Vec<(Endpoint, EndpointConfig)>,
    /// Retries and circuit breaker, for every endpoint.
    pub retry: RetryPolicy,
    /// Pending deliveries on disk beyond which the view sink waits (and
    /// ingestion slows) until receivers catch up.
    pub max_pending: usize,
    /// Where the delivery's instruments are registered.
    pub metrics: Registry,
    /// Where followed batches' spans wait for their messages.
    pub traces: Traces,
}

/// A message on its way to its endpoint's dispatcher, with its
/// `webhook.pending` span when its batch is followed. The outbox and the
/// dispatcher share each pending message; its body stays in the outbox's
/// file until it is sent.
pub type Outgoing = (Arc<Pending>, Option<tracing::Span>);

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            endpoints: Vec::new(),
            retry: RetryPolicy::default(),
            max_pending: 100_000,
            metrics: Registry::default(),
            traces: Traces::default(),
        }
    }
}

/// The view sink's side of the webhooks: turns view changes into messages
/// and puts them in the outbox; the dispatchers (tokio tasks) deliver.
pub struct Webhooks {
    derive: Derive,
    recent: Arc<Mutex<Recent>>,
    outbox: Arc<Mutex<Outbox>>,
    senders: HashMap<Endpoint, UnboundedSender<Outgoing>>,
    traces: Traces,
    /// Changes before this time were already in the outbox when it opened.
    resume_at: Time,
    max_pending: usize,
    pressure: Arc<AtomicBool>,
    /// Set when the server stops: a full outbox no longer holds the views.
    stopping: Arc<AtomicBool>,
    /// Holds on a full outbox, and when they were last logged.
    holds: Holds,
}

/// How often a full outbox is logged, at most.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The view sink's holds on a full outbox: at a sustained backlog it fills
/// again every few batches, and one line per [`FULL_WARNING_EVERY`] says
/// how many there were.
#[derive(Default)]
struct Holds {
    logged_at: Option<std::time::Instant>,
    unlogged: u64,
}

impl Holds {
    /// Counts a hold at `now`; returns the holds a line is due for (this
    /// one included), if the last line was at least
    /// [`FULL_WARNING_EVERY`] ago or there was none.
    fn hold(&mut self, now: std::time::Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.logged_at.is_some_and(|at| now.duration_since(at) < FULL_WARNING_EVERY) {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Webhooks {
    /// Opens `root/webhooks/outbox.log` and starts one dispatcher per
    /// endpoint on the current tokio runtime; they resume what is pending.
    pub fn start(
        root: &Path,
        config: &WebhookConfig,
        parquet: ParquetConfig,
        pressure: Arc<AtomicBool>,
    ) -> Result<(Webhooks, Vec<JoinHandle<()>>), OutboxError> {
        let mut outbox = Outbox::open(&root.join("webhooks"))?;
        let resume_at = outbox.covered();
        tracing::info!(pending = outbox.pending_len(), covered_ms = resume_at, "webhook outbox open");
        let failed_dir = root.join("webhooks_failed");
        let dead_letter_error = |e: SinkError| OutboxError {
            path: failed_dir.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        };
        let dead_letter = DeadLetter::open(root, parquet).map_err(dead_letter_error)?;
        // Messages for an endpoint the config no longer has would wait (and
        // hold ingestion) forever: they go to the dead letter instead.
        let orphans: Vec<Arc<Pending>> =
            outbox.pending().filter(|m| !config.endpoints.iter().any(|(e, _)| *e == m.endpoint)).cloned().collect();
        if !orphans.is_empty() {
            let bodies = outbox.bodies();
            for pending in &orphans {
                let answer = format!(
                    "not sent: webhooks.{} is no longer in the config (add it back to deliver such messages)",
                    pending.endpoint.as_str()
                );
                let message = bodies.read(pending)?;
                dead_letter.write(&FailedDelivery { message, status: 0, answer }).map_err(dead_letter_error)?;
            }
            outbox.done(&orphans)?;
            tracing::warn!(
                messages = orphans.len(),
                "pending webhooks for endpoints no longer in the config went to webhooks_failed/"
            );
        }
        let outbox = Arc::new(Mutex::new(outbox));
        let dead_letter = Arc::new(dead_letter);
        let mut senders = HashMap::new();
        let mut tasks = Vec::new();
        for (endpoint, endpoint_config) in &config.endpoints {
            let (e, pending) = (*endpoint, Arc::downgrade(&outbox));
            config.metrics.gauge_fn(
                "coldstream_webhook_pending_messages",
                "Messages in the outbox not yet delivered (or dead-lettered), by endpoint.",
                &[("endpoint", e.as_str())],
                move || {
                    let Some(outbox) = pending.upgrade() else { return 0.0 };
                    outbox.lock().map_or(0.0, |outbox| outbox.pending_for(e) as f64)
                },
            );
            let (send, receive) = unbounded_channel();
            senders.insert(*endpoint, send);
            tasks.push(tokio::spawn(deliver::dispatch(
                *endpoint,
                endpoint_config.clone(),
                config.retry.clone(),
                Arc::clone(&outbox),
                Arc::clone(&dead_letter),
                receive,
                deliver::EndpointMetrics::register(&config.metrics, *endpoint),
            )));
        }
        let max_pending = config.max_pending.max(1);
        let stopping = Arc::default();
        let webhooks = Webhooks {
            derive: Derive::default(),
            recent: Arc::default(),
            traces: config.traces.clone(),
            outbox,
            senders,
            resume_at,
            max_pending,
            pressure,
            stopping,
            holds: Holds::default(),
        };
        Ok((webhooks, tasks))
    }

    /// The latest alerts and the open restock orders, as this process's
    /// messages said them.
    pub fn recent(&self) -> Arc<Mutex<Recent>> {
        Arc::clone(&self.recent)
    }

    /// Set it to let a full outbox take what is left when the server stops
    /// (on disk only; delivered after the next start).
    pub fn stopping(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stopping)
    }

    /// The outbox, shared: how many deliveries are pending, for status.
    pub fn outbox(&self) -> Arc<Mutex<Outbox>> {
        Arc::clone(&self.outbox)
    }

    /// The derivation's state, for a checkpoint taken right after
    /// [`Webhooks::advance`] to `frontier`: every message before it is in
    /// the outbox.
    pub fn snapshot(&self) -> Vec<u8> {
        self.derive.snapshot()
    }

    /// Takes back a [`Webhooks::snapshot`] taken at `frontier`.
    pub fn restore(&mut self, snapshot: &[u8], frontier: Time) -> Result<(), String> {
        self.derive.restore(snapshot, frontier).map_err(|e| format!("the webhook derivation does not decode: {e}"))
    }

    /// Takes a batch of view changes.
    pub fn push(&mut self, batch: &ViewBatch) {
        if !self.senders.is_empty() {
            self.derive.push(batch);
        }
    }

    /// Puts the messages of every time before `frontier` in the outbox,
    /// waiting first while the outbox is full.
    pub fn advance(&mut self, frontier: Time) -> Result<(), OutboxError> {
        if self.senders.is_empty() {
            return Ok(());
        }
        let messages: Vec<Message> = self
            .derive
            .advance(frontier)
            .into_iter()
            .filter(|m| m.time >= self.resume_at && self.senders.contains_key(&m.endpoint))
            .collect();
        let messages = self.within_alert_quota(messages);
        if messages.is_empty() {
            return Ok(());
        }
        let mut waited = false;
        while self.outbox.lock().expect("outbox lock").pending_len() >= self.max_pending
            && !self.stopping.load(Ordering::Acquire)
        {
            if !waited {
                if let Some(holds) = self.holds.hold(std::time::Instant::now()) {
                    tracing::warn!(
                        max_pending = self.max_pending,
                        holds_since_last_line = holds,
                        "webhook outbox full: holding the views and slowing ingestion"
                    );
                }
                self.pressure.store(true, Ordering::Release);
                waited = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if waited {
            tracing::debug!("webhook outbox below its bound again");
            self.pressure.store(false, Ordering::Release);
        }
        let messages: Vec<Arc<Message>> = messages.into_iter().map(Arc::new).collect();
        self.recent.lock().expect("recent lock").note(&messages);
        let enqueued = self.outbox.lock().expect("outbox lock").enqueue(&messages, frontier)?;
        drop(messages);
        for pending in enqueued {
            let span = self.traces.waiting_at(pending.time).first().map(|waiting| {
                tracing::info_span!(
                    target: traces::TARGET,
                    parent: waiting,
                    "webhook.pending",
                    webhook_id = %pending.id(),
                    endpoint = pending.endpoint.as_str(),
                    kind = %pending.kind(),
                    outcome = tracing::field::Empty,
                )
            });
            if let Some(sender) = self.senders.get(&pending.endpoint) {
                let _ = sender.send((pending, span));
            }
        }
        Ok(())
    }
}

/// What the status page shows of the messages: the latest alerts, and the
/// restock orders opened and not yet closed, since this process started
/// (bounded: the newest [`Recent::ALERTS`] alerts, at most
/// [`Recent::ORDERS`] orders).
///
/// The messages are kept as they went to the outbox, shared with it; a
/// body is read back into JSON only when the page asks for it, not for
/// every message that passes.
#[derive(Default, Debug)]
pub struct Recent {
    alerts: std::collections::VecDeque<Arc<Message>>,
    orders: std::collections::BTreeMap<String, Arc<Message>>,
}

/// One message as the status page shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Noted {
    /// The event type (`alert.raised`, `restock.opened`, …).
    pub kind: String,
    /// `fridge/…`: the message's key.
    pub key: String,
    /// The logical time of the change (ms since the Unix epoch).
    pub time: Time,
    /// The body's `data`.
    pub data: serde_json::Value,
}

impl Noted {
    fn of(message: &Message) -> Noted {
        let data = serde_json::from_str::<serde_json::Value>(&message.body)
            .ok()
            .and_then(|mut body| body.get_mut("data").map(serde_json::Value::take))
            .unwrap_or_default();
        Noted { kind: message.kind.clone(), key: message.key.clone(), time: message.time, data }
    }
}

impl Recent {
    /// Alerts kept.
    pub const ALERTS: usize = 20;
    /// Open orders kept.
    pub const ORDERS: usize = 1000;

    fn note(&mut self, messages: &[Arc<Message>]) {
        for message in messages {
            let restock = message.kind.starts_with("restock.");
            if message.endpoint != Endpoint::Alerts && !restock {
                continue;
            }
            if !restock {
                self.alerts.push_front(Arc::clone(message));
                self.alerts.truncate(Recent::ALERTS);
            } else if message.kind == "restock.closed" {
                self.orders.remove(&message.key);
            } else if self.orders.len() < Recent::ORDERS || self.orders.contains_key(&message.key) {
                self.orders.insert(message.key.clone(), Arc::clone(message));
            }
        }
    }

    /// The latest alerts, newest first.
    pub fn alerts(&self) -> Vec<Noted> {
        self.alerts.iter().map(|message| Noted::of(message)).collect()
    }

    /// The `limit` open restock orders that changed last, newest first.
    pub fn newest_orders(&self, limit: usize) -> Vec<Noted> {
        let mut orders: Vec<&Arc<Message>> = self.orders.values().collect();
        orders.sort_by_key(|message| std::cmp::Reverse(message.time));
        orders.into_iter().take(limit).map(|message| Noted::of(message)).collect()
    }

    /// How many restock orders are open.
    pub fn open_order_count(&self) -> usize {
        self.orders.len()
    }
}

/// Alerts of one fridge that may wait in the outbox at once. One fridge
/// that raises and clears alerts without end (a flood of invented SKUs, a
/// flapping sensor) must not fill the outbox and hold the whole fleet: its
/// further alerts are not sent, and stay in the `alerts` view.
pub const ALERTS_PENDING_PER_FRIDGE: usize = 1000;

impl Webhooks {
    /// `messages` without the alerts of fridges at their quota, counted
    /// and said once per fridge and advance.
    fn within_alert_quota(&mut self, messages: Vec<Message>) -> Vec<Message> {
        let outbox = self.outbox.lock().expect("outbox lock");
        let mut taken: HashMap<String, usize> = HashMap::new();
        let mut withheld: HashMap<String, usize> = HashMap::new();
        let kept = messages
            .into_iter()
            .filter(|message| {
                if message.endpoint != Endpoint::Alerts {
                    return true;
                }
                let fridge = outbox::fridge_of(&message.key).to_owned();
                let pending = outbox.pending_of(Endpoint::Alerts, &fridge) + taken.get(&fridge).copied().unwrap_or(0);
                if pending >= ALERTS_PENDING_PER_FRIDGE {
                    *withheld.entry(fridge).or_insert(0) += 1;
                    false
                } else {
                    *taken.entry(fridge).or_insert(0) += 1;
                    true
                }
            })
            .collect();
        for (fridge, count) in withheld {
            tracing::warn!(
                fridge_id = %fridge,
                withheld = count,
                "{ALERTS_PENDING_PER_FRIDGE} alerts of this fridge are waiting for delivery already; further ones are not sent (they stay in the alerts view)"
            );
        }
        kept
    }
}

impl ViewSink for Webhooks {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn push(&mut self, batch: &ViewBatch) {
        Webhooks::push(self, batch);
    }

    fn advance(&mut self, frontier: Time, _closing: bool) -> Result<(), SinkError> {
        Ok(Webhooks::advance(self, frontier)?)
    }

    fn snapshot(&mut self, _frontier: Time) -> Result<Vec<u8>, SinkError> {
        Ok(Webhooks::snapshot(self))
    }

    fn restore(&mut self, snapshot: &[u8], frontier: Time) -> Result<(), SinkError> {
        Webhooks::restore(self, snapshot, frontier).map_err(SinkError::Checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(fridge: &str, n: usize) -> Message {
        Message {
            id: format!("msg_{fridge}_{n}"),
            endpoint: Endpoint::Alerts,
            key: format!("{fridge}/sku-{n}"),
            kind: "inventory.negative".into(),
            time: n as Time,
            body: "{}".into(),
        }
    }

    #[test]
    fn a_full_outbox_is_logged_at_once_then_once_per_interval_with_the_holds_between() {
        let start = std::time::Instant::now();
        let mut holds = Holds::default();
        assert_eq!(holds.hold(start), Some(1), "the first hold is logged");
        for second in 1..10 {
            assert_eq!(holds.hold(start + Duration::from_secs(second)), None, "{second} s: not yet");
        }
        assert_eq!(holds.hold(start + FULL_WARNING_EVERY), Some(10), "nine held back and this one");
        assert_eq!(holds.hold(start + FULL_WARNING_EVERY + Duration::from_secs(1)), None);
        assert_eq!(holds.hold(start + FULL_WARNING_EVERY * 5), Some(2), "a quiet spell, then a line at once");
    }

    #[tokio::test]
    async fn one_fridge_flooding_alerts_gets_its_quota_and_the_others_all_theirs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoint = EndpointConfig {
            url: "http://127.0.0.1:9/hooks".parse().expect("a literal URL"),
            secret: Secret::parse(EXAMPLE_SECRET).expect("the example secret"),
            timeout: Duration::from_millis(100),
            max_in_flight: 1,
            ca: None,
            every_update: false,
            protocol: Protocol::Auto,
        };
        let config = WebhookConfig { endpoints: vec![(Endpoint::Alerts, endpoint)], ..WebhookConfig::default() };
        let (mut webhooks, dispatchers) =
            Webhooks::start(dir.path(), &config, ParquetConfig::default(), Arc::default()).expect("starts");
        for dispatcher in dispatchers {
            dispatcher.abort();
        }
        let flood: Vec<Message> = (0..ALERTS_PENDING_PER_FRIDGE + 500).map(|n| alert("FR-1", n)).collect();
        let kept = webhooks.within_alert_quota(flood);
        assert_eq!(kept.len(), ALERTS_PENDING_PER_FRIDGE);
        webhooks
            .outbox
            .lock()
            .expect("outbox")
            .enqueue(&kept.into_iter().map(Arc::new).collect::<Vec<_>>(), 1)
            .expect("enqueues");
        let more = webhooks.within_alert_quota(vec![alert("FR-1", 99_999), alert("FR-2", 1), alert("FR-2", 2)]);
        assert_eq!(more.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), ["FR-2/sku-1", "FR-2/sku-2"]);
        // Delivered alerts make room again.
        let mut outbox = webhooks.outbox.lock().expect("outbox");
        let first = outbox.pending().find(|m| m.id() == "msg_FR-1_0").cloned().expect("pending");
        outbox.done(&[first]).expect("marks");
        drop(outbox);
        assert_eq!(webhooks.within_alert_quota(vec![alert("FR-1", 100_000)]).len(), 1);
    }

    fn order(fridge: &str, kind: &str, time: Time, qty: i64) -> Arc<Message> {
        Arc::new(Message {
            id: format!("msg_{fridge}_{time}"),
            endpoint: Endpoint::Procurement,
            key: format!("{fridge}/order"),
            kind: kind.into(),
            time,
            body: format!(r#"{{"data":{{"fridge_id":"{fridge}","qty":{qty}}},"timestamp":"t","type":"{kind}"}}"#),
        })
    }

    #[test]
    fn the_status_page_reads_the_latest_state_of_each_open_order_and_the_newest_alerts() {
        let mut recent = Recent::default();
        let mut negative = alert("FR-9", 7);
        negative.body = r#"{"data":{"sku":"cola"},"timestamp":"t","type":"inventory.negative"}"#.into();
        recent.note(&[
            order("FR-1", "restock.opened", 10, 4),
            order("FR-2", "restock.opened", 11, 2),
            order("FR-1", "restock.updated", 12, 6),
            Arc::new(negative),
            order("FR-3", "restock.opened", 13, 1),
            order("FR-2", "restock.closed", 14, 2),
        ]);
        assert_eq!(recent.open_order_count(), 2);
        let newest = recent.newest_orders(20);
        let seen: Vec<(&str, &str, Time, i64)> = newest
            .iter()
            .map(|noted| {
                (noted.key.as_str(), noted.kind.as_str(), noted.time, noted.data["qty"].as_i64().unwrap_or(-1))
            })
            .collect();
        assert_eq!(seen, [("FR-3/order", "restock.opened", 13, 1), ("FR-1/order", "restock.updated", 12, 6)]);
        assert_eq!(recent.newest_orders(1).len(), 1);
        let alerts = recent.alerts();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].data, serde_json::json!({"sku": "cola"}));
        for n in 0..Recent::ALERTS + 5 {
            recent.note(&[Arc::new(alert("FR-9", 100 + n))]);
        }
        let alerts = recent.alerts();
        assert_eq!(alerts.len(), Recent::ALERTS);
        assert_eq!(alerts[0].time, (100 + Recent::ALERTS + 4) as Time, "newest first");
    }
}
