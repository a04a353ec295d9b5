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
use coldstream_pipelines::views::ViewBatch;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

pub use dead_letter::{DeadLetter, FailedDelivery};
pub use deliver::{EndpointConfig, RetryPolicy, tls_roots};
pub use events::{Derive, Endpoint, Message};
pub use outbox::{Outbox, OutboxError};
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
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig { endpoints: Vec::new(), retry: RetryPolicy::default(), max_pending: 100_000 }
    }
}

/// The view sink's side of the webhooks: turns view changes into messages
/// and puts them in the outbox; the dispatchers (tokio tasks) deliver.
pub struct Webhooks {
    derive: Derive,
    outbox: Arc<Mutex<Outbox>>,
    senders: HashMap<Endpoint, UnboundedSender<Message>>,
    /// Changes before this time were already in the outbox when it opened.
    resume_at: Time,
    max_pending: usize,
    pressure: Arc<AtomicBool>,
    /// Set when the server stops: a full outbox no longer holds the views.
    stopping: Arc<AtomicBool>,
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
        let orphans: Vec<Message> =
            outbox.pending().filter(|m| !config.endpoints.iter().any(|(e, _)| *e == m.endpoint)).cloned().collect();
        if !orphans.is_empty() {
            for message in &orphans {
                let answer = format!(
                    "not sent: webhooks.{} is no longer in the config (add it back to deliver such messages)",
                    message.endpoint.as_str()
                );
                dead_letter
                    .write(&FailedDelivery { message: message.clone(), status: 0, answer })
                    .map_err(dead_letter_error)?;
            }
            let ids: Vec<String> = orphans.iter().map(|m| m.id.clone()).collect();
            outbox.done(&ids)?;
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
            let (send, receive) = unbounded_channel();
            senders.insert(*endpoint, send);
            tasks.push(tokio::spawn(deliver::dispatch(
                *endpoint,
                endpoint_config.clone(),
                config.retry.clone(),
                Arc::clone(&outbox),
                Arc::clone(&dead_letter),
                receive,
            )));
        }
        let max_pending = config.max_pending.max(1);
        let stopping = Arc::default();
        Ok((Webhooks { derive: Derive::default(), outbox, senders, resume_at, max_pending, pressure, stopping }, tasks))
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
        if messages.is_empty() {
            return Ok(());
        }
        let mut waited = false;
        while self.outbox.lock().expect("outbox lock").pending_len() >= self.max_pending
            && !self.stopping.load(Ordering::Acquire)
        {
            if !waited {
                tracing::warn!(
                    max_pending = self.max_pending,
                    "webhook outbox full: holding the views and slowing ingestion"
                );
                self.pressure.store(true, Ordering::Release);
                waited = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if waited {
            tracing::info!("webhook outbox below its bound again");
            self.pressure.store(false, Ordering::Release);
        }
        self.outbox.lock().expect("outbox lock").enqueue(messages.clone(), frontier)?;
        for message in messages {
            if let Some(sender) = self.senders.get(&message.endpoint) {
                let _ = sender.send(message);
            }
        }
        Ok(())
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
