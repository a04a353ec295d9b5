//! A deterministic fleet of simulated fridges: a pure generator of the
//! events a real fleet sends, for the simulator (`coldstream simulate`),
//! the tests, the benches and the golden fixtures.
//!
//! The fleet is deterministic for a seed and a start time: the back office
//! registers the fridges and sets planograms and prices, then every fridge
//! produces its own stream in event-time order — telemetry every 30 s,
//! customer sessions (door, takes, returns, payment, a few declines and
//! wrong amounts), restock deliveries when stock runs low, and occasional
//! audits. What goes on the wire, and which events are spoiled on purpose
//! to exercise the dead letter, is up to the caller ([`SimFridge::next_batch`]).

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::event::{DAY_US, HOUR_US, MINUTE_US};
use crate::{Event, Payload, Temperature};

/// The back-office client id the fleet publishes as.
pub const BACK_OFFICE: &str = "erp";

/// The product catalogue: `(sku, price_cents, perishable)`.
const CATALOGUE: &[(&str, i64, bool)] = &[
    ("cola-330", 180, false),
    ("water-500", 120, false),
    ("juice-orange", 290, true),
    ("sandwich-ham", 450, true),
    ("sandwich-veggie", 420, true),
    ("salad-caesar", 590, true),
    ("yoghurt-berry", 210, true),
    ("chocolate-bar", 150, false),
    ("crisps-salted", 160, false),
    ("apple", 90, true),
    ("protein-bar", 250, false),
    ("cold-brew", 340, false),
    ("wrap-chicken", 520, true),
    ("sushi-box", 790, true),
    ("iced-tea", 230, false),
    ("nuts-mix", 270, false),
];

const REGIONS: &[&str] = &["eu-west", "eu-north", "us-east"];

/// What the fleet looks like.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of fridges.
    pub fridges: usize,
    /// Fridge events in total, spread evenly over the fridges.
    pub events: u64,
    /// Event time of the first event (µs since the epoch).
    pub start_us: i64,
    /// Share of fridge events made invalid on purpose.
    pub bad_rate: f64,
    /// SKUs each fridge carries. `None`: 6 to 10 from a catalogue of 16
    /// products. More than 16 widens the catalogue with plain products.
    pub skus: Option<usize>,
}

impl FleetSpec {
    /// Roughly 165 events per fridge-hour: a start early enough that the
    /// simulated history ends about an hour before `now_us`.
    pub fn start_before(now_us: i64, fridges: usize, events: u64) -> i64 {
        let hours = events as f64 / fridges.max(1) as f64 / 165.0;
        let start = now_us - ((hours * 1.2 + 1.0) * HOUR_US as f64) as i64;
        start - start.rem_euclid(MINUTE_US)
    }
}

/// The catalogue of a fleet whose fridges carry `skus` products: the 16
/// named ones, then plain ones (`item-0017`, ...) up to `skus`. Steps of 3
/// through it visit every product, so no fridge carries one twice.
fn catalogue(skus: usize) -> Vec<(String, i64, bool)> {
    let mut catalogue: Vec<_> =
        CATALOGUE.iter().map(|(sku, price, perishable)| ((*sku).to_owned(), *price, *perishable)).collect();
    let mut n = catalogue.len();
    while n < skus || n % 3 == 0 {
        n += 1;
        catalogue.push((format!("item-{n:04}"), 100 + (n as i64 * 37) % 400, false));
    }
    catalogue
}

/// The fridge id of fridge number `i`.
pub fn fridge_id(i: usize) -> String {
    format!("FR-{:06}", i + 1)
}

/// One fridge's simulation state.
pub struct SimFridge {
    id: String,
    rng: SmallRng,
    clock: i64,
    seq: u64,
    remaining: u64,
    bad_rate: f64,
    next_telemetry: i64,
    next_session: i64,
    next_audit: i64,
    sessions: u64,
    orders: u64,
    excursion_until: i64,
    /// First reading of the current warm spell, until its perishables are written off.
    warm_since: Option<i64>,
    /// `sku → (on_hand, par, min, price)`.
    shelf: BTreeMap<String, (i64, i64, i64, i64)>,
    restock_at: Option<i64>,
    queue: std::collections::VecDeque<(i64, Payload)>,
}

impl SimFridge {
    fn payloads_to_events(&mut self, limit: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(limit);
        while out.len() < limit && self.remaining > 0 {
            if self.queue.is_empty() {
                self.plan_next();
            }
            let Some((time, payload)) = self.queue.pop_front() else { break };
            self.seq += 1;
            self.remaining -= 1;
            out.push(Event { source_id: self.id.clone(), incarnation: 0, seq: self.seq, event_time: time, payload });
        }
        out
    }

    /// Queues what happens next, in event-time order.
    fn plan_next(&mut self) {
        let next =
            self.next_telemetry.min(self.next_session).min(self.next_audit).min(self.restock_at.unwrap_or(i64::MAX));
        self.clock = next;
        if Some(next) == self.restock_at {
            self.restock_at = None;
            self.orders += 1;
            let order_id = format!("{}-PO{:05}", self.id, self.orders);
            for (sku, (on_hand, par, _, _)) in self.shelf.iter_mut() {
                if *on_hand < *par {
                    let qty = *par - *on_hand;
                    *on_hand = *par;
                    self.queue.push_back((
                        next,
                        Payload::RestockDelivered { order_id: order_id.clone(), sku: sku.clone(), qty },
                    ));
                }
            }
            if self.queue.is_empty() {
                self.plan_next();
            }
        } else if next == self.next_telemetry {
            self.next_telemetry += 30_000_000;
            if self.excursion_until < next && self.rng.random_bool(0.0004) {
                // A compressor failure: a warm run of 20 to 60 minutes.
                self.excursion_until = next + self.rng.random_range(20..60) * MINUTE_US;
            }
            let temperature = if next < self.excursion_until {
                let since = *self.warm_since.get_or_insert(next);
                if next - since >= 30 * MINUTE_US {
                    // Warm for 30 minutes: the perishables are spoiled and
                    // locked away (the pipeline writes them off), and the
                    // restocker is called.
                    self.warm_since = Some(i64::MAX);
                    for (sku, entry) in self.shelf.iter_mut() {
                        if CATALOGUE.iter().any(|(name, _, perishable)| *perishable && name == sku) {
                            entry.0 = 0;
                        }
                    }
                    self.restock_at.get_or_insert(next + self.rng.random_range(2..8) * HOUR_US);
                }
                self.rng.random_range(6.0..9.5)
            } else {
                self.warm_since = None;
                self.rng.random_range(2.5..4.8)
            };
            self.queue
                .push_back((next, Payload::Telemetry { temperature_c: Temperature(temperature), door_open: false }));
        } else if next == self.next_audit {
            self.next_audit += DAY_US;
            let skus: Vec<String> = self.shelf.keys().cloned().collect();
            let sku = skus[self.rng.random_range(0..skus.len())].clone();
            let entry = self.shelf.get_mut(&sku).expect("the sku was just picked from the shelf");
            // Shrinkage: an audit sometimes finds one fewer.
            if entry.0 > 0 && self.rng.random_bool(0.3) {
                entry.0 -= 1;
            }
            self.queue.push_back((next, Payload::StockCounted { sku, qty: entry.0.max(0) }));
        } else {
            self.next_session += (self.rng.random_range(2.0..14.0) * MINUTE_US as f64) as i64;
            self.session(next);
        }
    }

    fn session(&mut self, start: i64) {
        self.sessions += 1;
        let session_id = format!("S{:07}", self.sessions);
        let mut t = start;
        self.queue.push_back((t, Payload::DoorOpened { session_id: session_id.clone() }));
        t += 1_000_000;
        self.queue.push_back((t, Payload::PaymentAuthorized { session_id: session_id.clone(), amount_cents: 2_000 }));
        let stocked: Vec<String> = self.shelf.iter().filter(|(_, s)| s.0 > 0).map(|(k, _)| k.clone()).collect();
        let mut basket: BTreeMap<String, i64> = BTreeMap::new();
        if !stocked.is_empty() {
            for _ in 0..self.rng.random_range(1..=3) {
                let sku = stocked[self.rng.random_range(0..stocked.len())].clone();
                let qty = self.rng.random_range(1..=2);
                t += self.rng.random_range(2..9) * 1_000_000;
                self.queue.push_back((t, Payload::ItemTaken { session_id: session_id.clone(), sku: sku.clone(), qty }));
                *basket.entry(sku).or_insert(0) += qty;
            }
            if self.rng.random_bool(0.1)
                && let Some((sku, qty)) = basket.iter_mut().next()
            {
                t += 3_000_000;
                self.queue
                    .push_back((t, Payload::ItemReturned { session_id: session_id.clone(), sku: sku.clone(), qty: 1 }));
                *qty -= 1;
            }
        }
        t += self.rng.random_range(3..20) * 1_000_000;
        self.queue.push_back((t, Payload::DoorClosed { session_id: session_id.clone() }));
        let mut expected = 0;
        for (sku, qty) in &basket {
            let entry = self.shelf.get_mut(sku).expect("basket skus come from the shelf");
            entry.0 -= qty;
            expected += qty * entry.3;
        }
        t += 2_000_000;
        if expected > 0 {
            if self.rng.random_bool(0.03) {
                self.queue.push_back((t, Payload::PaymentDeclined { session_id, reason: "insufficient_funds".into() }));
            } else {
                // Now and then a terminal charges a stale amount.
                let amount_cents = if self.rng.random_bool(0.01) {
                    let off = self.rng.random_range(1..=5) * 10;
                    if self.rng.random_bool(0.5) { expected + off } else { (expected - off).max(0) }
                } else {
                    expected
                };
                self.queue.push_back((t, Payload::PaymentCaptured { session_id, amount_cents }));
            }
        }
        if self.restock_at.is_none() && self.shelf.values().any(|(on_hand, _, min, _)| on_hand <= min) {
            self.restock_at = Some(t + self.rng.random_range(2..8) * HOUR_US);
        }
    }
}

/// A deterministic fleet.
pub struct Fleet {
    /// The back office's events, to publish before any fridge event.
    pub back_office: Vec<Event>,
    /// The fridges.
    pub fridges: Vec<SimFridge>,
}

impl Fleet {
    /// Builds the fleet of `spec`.
    pub fn new(spec: &FleetSpec) -> Fleet {
        let mut back_office = Vec::new();
        let setup_time = spec.start_us - HOUR_US;
        let mut seq = 0u64;
        let mut push = |payload: Payload, back_office: &mut Vec<Event>| {
            seq += 1;
            back_office.push(Event {
                source_id: BACK_OFFICE.into(),
                incarnation: 0,
                seq,
                event_time: setup_time,
                payload,
            });
        };
        let catalogue = catalogue(spec.skus.unwrap_or(0));
        for (sku, price, _) in &catalogue {
            push(Payload::PriceChanged { sku: sku.clone(), price_cents: *price, fridge_id: None }, &mut back_office);
        }
        let per_fridge = spec.events / spec.fridges.max(1) as u64;
        let extra = spec.events % spec.fridges.max(1) as u64;
        let mut fridges = Vec::with_capacity(spec.fridges);
        for i in 0..spec.fridges {
            let id = fridge_id(i);
            let mut rng = SmallRng::seed_from_u64(spec.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            push(
                Payload::FridgeRegistered {
                    fridge_id: id.clone(),
                    region: REGIONS[i % REGIONS.len()].into(),
                    site: format!("site-{:04}", i / 2 + 1),
                },
                &mut back_office,
            );
            let mut shelf = BTreeMap::new();
            let carried = spec.skus.unwrap_or_else(|| rng.random_range(6..=10));
            let offset = rng.random_range(0..catalogue.len());
            for k in 0..carried {
                let (sku, price, perishable) = &catalogue[(offset + k * 3) % catalogue.len()];
                let (sku, price, perishable) = (sku.as_str(), *price, *perishable);
                let par = rng.random_range(8..=24);
                let min = rng.random_range(2..=5);
                // Fridges on some sites charge a premium for one product.
                let price = if i % 7 == 3 && k == 0 {
                    push(
                        Payload::PriceChanged { sku: sku.into(), price_cents: price + 30, fridge_id: Some(id.clone()) },
                        &mut back_office,
                    );
                    price + 30
                } else {
                    price
                };
                push(
                    Payload::PlanogramSet { fridge_id: id.clone(), sku: sku.into(), par, min, perishable },
                    &mut back_office,
                );
                shelf.insert(sku.to_owned(), (par, par, min, price));
            }
            let initial: Vec<(i64, Payload)> = shelf
                .iter()
                .map(|(sku, (on_hand, ..))| (spec.start_us, Payload::StockCounted { sku: sku.clone(), qty: *on_hand }))
                .collect();
            let start_jitter = rng.random_range(0..30) * 1_000_000;
            fridges.push(SimFridge {
                id,
                clock: spec.start_us,
                seq: 0,
                remaining: per_fridge + u64::from((i as u64) < extra),
                bad_rate: spec.bad_rate,
                next_telemetry: spec.start_us + start_jitter,
                next_session: spec.start_us + start_jitter + 3 * MINUTE_US,
                next_audit: spec.start_us + DAY_US / 2 + start_jitter * 100,
                sessions: 0,
                orders: 0,
                excursion_until: 0,
                warm_since: None,
                shelf,
                restock_at: None,
                queue: initial.into(),
                rng,
            });
        }
        Fleet { back_office, fridges }
    }

    /// Every fridge event, fridge by fridge (for tests and fixtures).
    pub fn all_events(mut self) -> Vec<Event> {
        let mut all = self.back_office;
        for fridge in &mut self.fridges {
            loop {
                let batch = fridge.payloads_to_events(1024);
                if batch.is_empty() {
                    break;
                }
                all.extend(batch);
            }
        }
        all
    }
}

impl SimFridge {
    /// The next batch of this fridge's events as `encode` puts them on the
    /// wire, each made invalid by `spoil` with the fleet's bad rate (drawn
    /// from the fridge's own random numbers, so a seed gives the same
    /// batches); `None` when the fridge has sent all its events.
    pub fn next_batch<W>(
        &mut self,
        limit: usize,
        encode: impl Fn(&Event) -> W,
        spoil: impl Fn(&mut W, &mut SmallRng),
    ) -> Option<Vec<W>> {
        let events = self.payloads_to_events(limit);
        if events.is_empty() {
            return None;
        }
        let mut wire: Vec<W> = events.iter().map(encode).collect();
        for event in &mut wire {
            if self.bad_rate > 0.0 && self.rng.random_bool(self.bad_rate) {
                spoil(event, &mut self.rng);
            }
        }
        Some(wire)
    }

    /// The fridge's next events with an event time before `until_us`, in
    /// order (for benches that feed the dataflow directly).
    pub fn events_until(&mut self, until_us: i64) -> Vec<Event> {
        let mut out = Vec::new();
        while self.remaining > 0 {
            if self.queue.is_empty() {
                self.plan_next();
            }
            match self.queue.front() {
                Some((time, _)) if *time < until_us => out.extend(self.payloads_to_events(1)),
                _ => break,
            }
        }
        out
    }

    /// The fridge's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn planograms(fleet: &Fleet) -> BTreeMap<String, BTreeSet<String>> {
        let mut by_fridge: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for event in &fleet.back_office {
            if let Payload::PlanogramSet { fridge_id, sku, .. } = &event.payload {
                assert!(by_fridge.entry(fridge_id.clone()).or_default().insert(sku.clone()), "{sku} twice");
            }
        }
        by_fridge
    }

    fn spec(skus: Option<usize>) -> FleetSpec {
        FleetSpec { seed: 9, fridges: 5, events: 5_000, start_us: 1_767_225_600_000_000, bad_rate: 0.0, skus }
    }

    #[test]
    fn fridges_carry_6_to_10_of_16_products_by_default() {
        let fleet = Fleet::new(&spec(None));
        let shelves = planograms(&fleet);
        assert_eq!(shelves.len(), 5);
        for skus in shelves.values() {
            assert!((6..=10).contains(&skus.len()), "{skus:?}");
            assert!(skus.iter().all(|sku| CATALOGUE.iter().any(|(name, ..)| name == sku)));
        }
    }

    #[test]
    fn wider_shelves_carry_every_sku_once_and_sell_only_those() {
        let mut fleet = Fleet::new(&spec(Some(50)));
        let shelves = planograms(&fleet);
        let priced: BTreeSet<String> = fleet
            .back_office
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::PriceChanged { sku, fridge_id: None, .. } => Some(sku.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(priced.len(), 50);
        for skus in shelves.values() {
            assert_eq!(skus.len(), 50);
            assert!(skus.is_subset(&priced));
        }
        let mut sold = 0;
        for fridge in &mut fleet.fridges {
            for event in fridge.events_until(i64::MAX) {
                if let Payload::ItemTaken { sku, .. } = &event.payload {
                    assert!(shelves[&event.source_id].contains(sku), "{sku} is not on {}", event.source_id);
                    sold += 1;
                }
            }
        }
        assert!(sold > 100, "only {sold} items taken");
    }
}
