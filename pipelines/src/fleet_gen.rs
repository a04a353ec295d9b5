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

/// A fleet's history: events with few distinct event times, so that ties
/// between counts and movements are common.
pub fn history(max_events: usize) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((0..FRIDGES.len(), 0i64..30, fridge_payload()), 0..max_events).prop_map(|raw| {
        let mut seqs = [0u64; FRIDGES.len()];
        raw.into_iter()
            .map(|(fridge, minute, payload)| {
                seqs[fridge] += 1;
                Event {
                    source_id: FRIDGES[fridge].to_owned(),
                    seq: seqs[fridge],
                    event_time: 1_700_000_000_000_000 + minute * crate::event::MINUTE_US,
                    payload,
                }
            })
            .collect()
    })
}

/// The history shuffled into a random arrival order and cut into batches,
/// each arriving at its own logical time.
pub fn arrivals(max_events: usize) -> impl Strategy<Value = (Vec<Event>, Vec<(Time, Vec<Event>)>)> {
    shuffled(history(max_events))
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
    prop::collection::vec((0i64..30, commerce_payload()), 0..max_events).prop_map(|raw| {
        let mut seqs = [0u64; FRIDGES.len() + 1];
        raw.into_iter()
            .map(|(minute, (source, payload))| {
                seqs[source] += 1;
                Event {
                    source_id: FRIDGES.get(source).map_or("backoffice", |f| f).to_owned(),
                    seq: seqs[source],
                    event_time: 1_700_000_000_000_000 + minute * crate::event::MINUTE_US,
                    payload,
                }
            })
            .collect()
    })
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
        .prop_map(|(events, shuffled, mut cuts)| {
            cuts.push(shuffled.len());
            cuts.sort_unstable();
            let mut batches = Vec::new();
            let mut start = 0;
            for (i, cut) in cuts.into_iter().enumerate() {
                batches.push((1_000 + i as Time * 7, shuffled[start..cut].to_vec()));
                start = cut;
            }
            (events, batches)
        })
}
