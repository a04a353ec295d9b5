//! A fleet of simulated fridges over real gRPC, as `coldstream simulate`,
//! the tests and the benches drive it.
//!
//! The fleet itself is the pure generator `coldstream_pipelines::fleet`;
//! [`run`] drives it against a gateway, one stream per fridge, and spoils
//! a small share of events on purpose, to exercise the dead letter.

use std::time::{Duration, Instant};

use crate::auth::{Principal, Tokens};
use crate::client::{self, ClientError, ClientTls, Delivered, Fridge};
use crate::convert::encode;
use coldstream_pipelines::fleet::BACK_OFFICE;
pub use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use rand::Rng;
use rand::rngs::SmallRng;

/// Makes an event invalid the way real devices do.
fn spoil(event: &mut crate::proto::Event, rng: &mut SmallRng) {
    use crate::proto::event::Payload as Wire;
    match rng.random_range(0..3) {
        0 => event.payload = None,
        1 => event.event_time_us += 3_600_000_000 * 24 * 365,
        _ => {
            event.payload = Some(Wire::ItemTaken(crate::proto::ItemTaken {
                session_id: "S-glitch".into(),
                sku: "cola-330".into(),
                qty: Some(0),
            }))
        }
    }
}

/// How to drive the fleet.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The gateway, e.g. `http://127.0.0.1:50051`, or several separated
    /// by commas: the fleet spreads over them, each fridge moving to the
    /// next one when its gateway is unreachable.
    pub target: String,
    /// Issues the fleet's tokens.
    pub tokens: Tokens,
    /// TLS for an `https://` target.
    pub tls: Option<ClientTls>,
    /// Events per second for the whole fleet; `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Events per batch, at most.
    pub batch: usize,
    /// Draw a progress bar.
    pub progress: bool,
}

impl RunSpec {
    /// The gateways of `target`.
    pub fn targets(&self) -> Vec<String> {
        let targets: Vec<String> =
            self.target.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
        if targets.is_empty() { vec![self.target.clone()] } else { targets }
    }
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// Fridge and back-office events sent.
    pub sent: u64,
    /// What the gateway answered.
    pub delivered: Delivered,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Summary {
    /// Acknowledged events (accepted, duplicate or rejected) per second.
    pub fn events_per_second(&self) -> f64 {
        let acked = self.delivered.accepted + self.delivered.duplicates + self.delivered.rejected;
        acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, accepted {}, duplicates {}, rejected {}, reconnects {}, in {:.1} s ({:.0} events/s)",
            self.sent,
            self.delivered.accepted,
            self.delivered.duplicates,
            self.delivered.rejected,
            self.delivered.reconnects,
            self.elapsed.as_secs_f64(),
            self.events_per_second()
        )
    }
}

/// Publishes back-office events, reconnecting and resending while the
/// gateway is unreachable (resent events are answered as duplicates).
async fn publish_retrying(
    targets: &[String],
    tls: Option<&ClientTls>,
    token: &str,
    events: Vec<crate::proto::Event>,
) -> Result<crate::proto::Ack, ClientError> {
    let mut attempt = 0u32;
    loop {
        let target = &targets[attempt as usize % targets.len()];
        let result = match client::channel_with(target, tls).await {
            Ok(channel) => client::publish(channel, BACK_OFFICE, token, events.clone()).await,
            Err(error) => Err(error),
        };
        match result {
            Err(error) if error.is_retryable() && attempt < 30 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20u64 << attempt.min(7))).await;
            }
            other => return other,
        }
    }
}

/// Drives `fleet` against a gateway until every event is acknowledged.
pub async fn run(fleet: Fleet, spec: &RunSpec, total_events: u64) -> Result<Summary, ClientError> {
    let started = Instant::now();
    let tokens = &spec.tokens;
    let targets = spec.targets();
    let mut summary = Summary::default();
    for chunk in fleet.back_office.chunks(500) {
        let token = tokens.issue(&Principal::BackOffice(BACK_OFFICE.into()));
        let ack = publish_retrying(&targets, spec.tls.as_ref(), &token, chunk.iter().map(encode).collect()).await?;
        summary.sent += chunk.len() as u64;
        summary.delivered.accepted += ack.accepted.len() as u64;
        summary.delivered.duplicates += ack.duplicates.len() as u64;
        summary.delivered.rejected += ack.rejected.len() as u64;
    }
    let bar = if spec.progress {
        let bar = indicatif::ProgressBar::new(total_events);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let per_fridge_rate = spec.rate.map(|r| r / fleet.fridges.len().max(1) as f64);
    let mut tasks = tokio::task::JoinSet::new();
    for mut sim in fleet.fridges {
        let token = tokens.issue(&Principal::Fridge(sim.id().to_owned()));
        let mut fridge = Fridge::over(targets.clone(), sim.id().to_owned(), token);
        fridge.tls = spec.tls.clone();
        let bar = bar.clone();
        let batch = spec.batch.max(1);
        tasks.spawn(async move {
            let began = Instant::now();
            let mut sent = 0u64;
            loop {
                // Pace to the rate: never ahead of `sent / rate` seconds.
                let limit = match per_fridge_rate {
                    Some(rate) => {
                        let due = (began.elapsed().as_secs_f64() * rate) as u64;
                        if due <= sent {
                            let wait = (sent + 1) as f64 / rate - began.elapsed().as_secs_f64();
                            tokio::time::sleep(Duration::from_secs_f64(wait.max(0.001))).await;
                            continue;
                        }
                        ((due - sent) as usize).min(batch)
                    }
                    None => batch,
                };
                let Some(events) = sim.next_batch(limit, encode, spoil) else { break };
                let count = events.len() as u64;
                fridge.send(events).await?;
                sent += count;
                bar.inc(count);
            }
            Ok::<(u64, Delivered), ClientError>((sent, fridge.delivered))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((sent, delivered))) => {
                summary.sent += sent;
                summary.delivered.add(delivered);
            }
            Ok(Err(error)) => {
                tasks.abort_all();
                return Err(error);
            }
            Err(join) => {
                tracing::error!(%join, "a simulated fridge failed");
            }
        }
    }
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}
