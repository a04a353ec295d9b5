//! Random fleets and shuffled arrivals for the equivalence property tests.

use proptest::prelude::*;

use crate::{Event, Payload, Time};

const FRIDGES: [&str; 3] = ["FR-000001", "FR-000002", "FR-000003"];
const SKUS: [&str; 3] = ["cola", "salad", "sandwich"];

/// One random fridge event, before its seq is assigned.
fn fridge_payload() -> impl Strategy<Value = Payload> {
    let sku = prop::sample::select(&SKUS[..]).prop_map(str::to_owned);
    let session = (0u8..4).prop_map(|s| format!("s{s}"));
    prop_oneof![
        (sku.clone(), 0i64..40).prop_map(|(sku, qty)| Payload::StockCounted { sku, qty }),
        (sku.clone(), 1i64..20).prop_map(|(sku, qty)| Payload::RestockDelivered { order_id: "o1".into(), sku, qty }),
        (session.clone(), sku.clone(), 1i64..4).prop_map(|(session_id, sku, qty)| Payload::ItemTaken {
            session_id,
            sku,
            qty
        }),
        (session, sku, 1i64..3).prop_map(|(session_id, sku, qty)| Payload::ItemReturned { session_id, sku, qty }),
    ]
}

/// A fridge or back-office event of the commerce views, before its seq.
fn commerce_payload() -> impl Strategy<Value = (usize, Payload)> {
    let sku = prop::sample::select(&SKUS[..]).prop_map(str::to_owned);
    let session = (0u8..3).prop_map(|s| format!("s{s}"));
    let fridge = 0..FRIDGES.len();
    prop_oneof![
        1 => (fridge.clone(), session.clone()).prop_map(|(f, session_id)| (f, Payload::DoorOpened { session_id })),
        1 => (fridge.clone(), session.clone()).prop_map(|(f, session_id)| (f, Payload::DoorClosed { session_id })),
        3 => (fridge.clone(), session.clone(), sku.clone(), 1i64..4)
            .prop_map(|(f, session_id, sku, qty)| (f, Payload::ItemTaken { session_id, sku, qty })),
        1 => (fridge.clone(), session.clone(), sku.clone(), 1i64..3)
            .prop_map(|(f, session_id, sku, qty)| (f, Payload::ItemReturned { session_id, sku, qty })),
        2 => (fridge.clone(), session.clone(), 0i64..12)
            .prop_map(|(f, session_id, cents)| (f, Payload::PaymentCaptured { session_id, amount_cents: cents * 50 })),
        1 => (fridge.clone(), session).prop_map(|(f, session_id)| (f, Payload::PaymentDeclined { session_id, reason: "no".into() })),
        2 => (sku, 1i64..4, prop::option::of(fridge)).prop_map(|(sku, price, owner)| (
            FRIDGES.len(),
            Payload::PriceChanged { sku, price_cents: price * 50, fridge_id: owner.map(|f| FRIDGES[f].to_owned()) },
        )),
    ]
}

/// A history of sessions, payments and price changes (the back office is
/// source index `FRIDGES.len()`).
pub fn commerce(max_events: usize) -> impl Strategy<Value = Vec<Event>> {
    let minute = (0i64..30).prop_map(|minute| FLEET_START_US + minute * crate::event::MINUTE_US);
    prop::collection::vec((minute, commerce_payload()), 0..max_events).prop_map(numbered)
}

/// Events from `(event_time, (source index, payload))`, each source's seqs
/// counting up from 1 (the back office is source index `FRIDGES.len()`).
fn numbered(raw: Vec<(i64, (usize, Payload))>) -> Vec<Event> {
    let mut seqs = [0u64; FRIDGES.len() + 1];
    raw.into_iter()
        .map(|(event_time, (source, payload))| {
            seqs[source] += 1;
            Event {
                source_id: FRIDGES.get(source).map_or("backoffice", |f| f).to_owned(),
                incarnation: 0,
                seq: seqs[source],
                event_time,
                payload,
            }
        })
        .collect()
}

/// Any history shuffled into a random arrival order and cut into batches.
pub fn shuffled(
    history: impl Strategy<Value = Vec<Event>>,
) -> impl Strategy<Value = (Vec<Event>, Vec<(Time, Vec<Event>)>)> {
    history
        .prop_flat_map(|events| {
            let len = events.len();
            (Just(events.clone()), Just(events).prop_shuffle(), prop::collection::vec(0..=len, 0..6))
        })
        .prop_map(|(events, shuffled, cuts)| (events, batches(shuffled, cuts)))
}

/// Cuts the arriving events at `cuts` into batches, each arriving at its
/// own logical time.
fn batches(arriving: Vec<Event>, mut cuts: Vec<usize>) -> Vec<(Time, Vec<Event>)> {
    cuts.push(arriving.len());
    cuts.sort_unstable();
    let mut batches = Vec::new();
    let mut start = 0;
    for (i, cut) in cuts.into_iter().enumerate() {
        batches.push((1_000 + i as Time * 7, arriving[start..cut].to_vec()));
        start = cut;
    }
    batches
}

/// The first event time of a generated fleet.
const FLEET_START_US: i64 = 1_700_000_000_000_000;

/// Event times of the whole-fleet history: a few days, some a week apart
/// (so the 7-day window matters), in 3-minute steps within two hours of
/// each day (so 30-minute warm runs are common).
fn fleet_time() -> impl Strategy<Value = i64> {
    (prop::sample::select(&[0i64, 1, 6, 7, 8][..]), 0i64..40)
        .prop_map(|(day, step)| FLEET_START_US + day * crate::event::DAY_US + step * 3 * crate::event::MINUTE_US)
}

/// Any payload of the fleet (the back office is source `FRIDGES.len()`).
fn fleet_payload() -> impl Strategy<Value = (usize, Payload)> {
    let sku = prop::sample::select(&SKUS[..]).prop_map(str::to_owned);
    let fridge = 0..FRIDGES.len();
    let celsius = prop::sample::select(&[3.5f32, 5.0, 6.5, 9.0][..]);
    prop_oneof![
        6 => (fridge.clone(), celsius, any::<bool>()).prop_map(|(f, c, door_open)| (f, Payload::Telemetry { temperature_c: crate::Temperature(c), door_open })),
        3 => commerce_payload(),
        2 => (fridge.clone(), fridge_payload()),
        2 => (fridge, sku, 0i64..12, 0i64..5, any::<bool>()).prop_map(|(f, sku, par, min, perishable)| (
            FRIDGES.len(),
            Payload::PlanogramSet { fridge_id: FRIDGES[f].to_owned(), sku, par, min, perishable },
        )),
    ]
}

fn session_id_mut(payload: &mut Payload) -> Option<&mut String> {
    match payload {
        Payload::DoorOpened { session_id }
        | Payload::ItemTaken { session_id, .. }
        | Payload::ItemReturned { session_id, .. }
        | Payload::DoorClosed { session_id }
        | Payload::PaymentAuthorized { session_id, .. }
        | Payload::PaymentCaptured { session_id, .. }
        | Payload::PaymentDeclined { session_id, .. } => Some(session_id),
        _ => None,
    }
}

/// A history of every kind of event over several days. Session ids are
/// unique per fridge and day, as a real fridge's are.
pub fn fleet(max_events: usize) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((fleet_time(), fleet_payload()), 0..max_events).prop_map(|raw| {
        let mut events = numbered(raw);
        for event in &mut events {
            let day = (event.event_time - FLEET_START_US).div_euclid(crate::event::DAY_US);
            if let Some(session_id) = session_id_mut(&mut event.payload) {
                session_id.push_str(&format!("-d{day}"));
            }
        }
        events
    })
}

/// The history arriving roughly in event-time order, each event delayed by
/// up to `max_delay_us` of event time behind the events sent after it, cut
/// into batches: the way real fridges, some reconnecting late, deliver.
pub fn late_by_at_most(
    history: impl Strategy<Value = Vec<Event>>,
    max_delay_us: i64,
) -> impl Strategy<Value = (Vec<Event>, Vec<(Time, Vec<Event>)>)> {
    history
        .prop_flat_map(move |events| {
            let len = events.len();
            (Just(events), prop::collection::vec(0..=max_delay_us, len), prop::collection::vec(0..=len, 0..8))
        })
        .prop_map(|(events, delays, cuts)| {
            let mut order: Vec<(i64, usize)> =
                events.iter().zip(&delays).enumerate().map(|(i, (e, d))| (e.event_time + d, i)).collect();
            order.sort_unstable();
            let arriving: Vec<Event> = order.into_iter().map(|(_, i)| events[i].clone()).collect();
            (events, batches(arriving, cuts))
        })
}

/// The history arriving in event-time order, except for one fridge that
/// was offline throughout: its whole backlog arrives at the end, in its own
/// order, days after the rest of the fleet.
pub fn with_offline_fridge(
    history: impl Strategy<Value = Vec<Event>>,
) -> impl Strategy<Value = (Vec<Event>, Vec<(Time, Vec<Event>)>)> {
    history
        .prop_flat_map(|events| {
            let len = events.len();
            (Just(events), 0..FRIDGES.len(), prop::collection::vec(0..=len, 0..8))
        })
        .prop_map(|(events, offline, cuts)| {
            let mut arriving = events.clone();
            arriving.sort_by_key(|e| (e.source_id == FRIDGES[offline], e.event_time));
            (events, batches(arriving, cuts))
        })
}
