//! `sessions(fridge_id, session_id) → status and amounts`, and
//! `revenue(fridge_id, hour) → captured_cents, sessions, units`.
//!
//! A session's basket is, per SKU, units taken minus units returned. Its
//! expected amount prices every basket line at the price in effect when the
//! door closed: the fridge's own price for the SKU if one is in effect, else
//! the global one (a price is in effect from its event time on; the latest
//! in effect wins, by event time then seq). Of several payment results
//! (captured, declined) the latest by event time, then seq, counts.
//!
//! Status, in order of precedence: `open` (no DoorClosed), `empty` (closed,
//! every basket line 0), `unpriced` (a basket SKU had no price in effect;
//! expected is null), `awaiting_payment`, `unpaid` (declined), `settled`,
//! `undercharged`, `overcharged` (captured vs expected).

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::collection::VecCollection;
use serde::{Deserialize, Serialize};

use crate::event::HOUR_US;
use crate::{Event, Payload, Time};

/// `(fridge_id, session_id)`.
pub type SessionKey = (String, String);

/// The state of one session.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionRow {
    /// One of the statuses of DOMAIN.md.
    pub status: SessionStatus,
    /// Σ basket qty × price at DoorClosed; `None` while open or when unpriced.
    pub expected_cents: Option<i64>,
    /// The captured amount of the counting payment result, if it is a capture.
    pub captured_cents: Option<i64>,
    /// Units in the basket (taken − returned, over all SKUs).
    pub units: i64,
    /// Event time of DoorClosed, if closed.
    pub closed_at: Option<i64>,
}

/// A session's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum SessionStatus {
    Open,
    Empty,
    Unpriced,
    AwaitingPayment,
    Unpaid,
    Settled,
    Undercharged,
    Overcharged,
}

impl SessionStatus {
    /// The name used in Parquet, SQL and webhooks.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Open => "open",
            SessionStatus::Empty => "empty",
            SessionStatus::Unpriced => "unpriced",
            SessionStatus::AwaitingPayment => "awaiting_payment",
            SessionStatus::Unpaid => "unpaid",
            SessionStatus::Settled => "settled",
            SessionStatus::Undercharged => "undercharged",
            SessionStatus::Overcharged => "overcharged",
        }
    }
}

/// A payment result: `(event_time, seq, captured amount or None if declined)`.
type PaymentResult = (i64, u64, Option<i64>);
/// A price version: `(event_time, seq, price_cents)`.
type PriceVersion = (i64, u64, i64);

/// Everything a session's status depends on, as one tagged value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Fact {
    Seen,
    Closed(i64, u64),
    /// A basket line: sku, qty, price at close (None: unpriced).
    Line(String, i64, Option<i64>),
    Payment(PaymentResult),
}

fn item(event: &Event) -> Option<((String, String, String), i64)> {
    match &event.payload {
        Payload::ItemTaken { session_id, sku, qty } => {
            Some(((event.source_id.clone(), session_id.clone(), sku.clone()), *qty))
        }
        Payload::ItemReturned { session_id, sku, qty } => {
            Some(((event.source_id.clone(), session_id.clone(), sku.clone()), -*qty))
        }
        _ => None,
    }
}

fn session_of(event: &Event) -> Option<SessionKey> {
    let id = match &event.payload {
        Payload::DoorOpened { session_id }
        | Payload::DoorClosed { session_id }
        | Payload::ItemTaken { session_id, .. }
        | Payload::ItemReturned { session_id, .. }
        | Payload::PaymentAuthorized { session_id, .. }
        | Payload::PaymentCaptured { session_id, .. }
        | Payload::PaymentDeclined { session_id, .. } => session_id,
        _ => return None,
    };
    Some((event.source_id.clone(), id.clone()))
}

fn payment(event: &Event) -> Option<(SessionKey, PaymentResult)> {
    let (session_id, amount) = match &event.payload {
        Payload::PaymentCaptured { session_id, amount_cents } => (session_id, Some(*amount_cents)),
        Payload::PaymentDeclined { session_id, .. } => (session_id, None),
        _ => return None,
    };
    Some(((event.source_id.clone(), session_id.clone()), (event.event_time, event.seq, amount)))
}

fn closed(event: &Event) -> Option<(SessionKey, (i64, u64))> {
    match &event.payload {
        Payload::DoorClosed { session_id } => {
            Some(((event.source_id.clone(), session_id.clone()), (event.event_time, event.seq)))
        }
        _ => None,
    }
}

/// `(fridge override or None, sku) → version`.
fn price(event: &Event) -> Option<((Option<String>, String), PriceVersion)> {
    match &event.payload {
        Payload::PriceChanged { sku, price_cents, fridge_id } => {
            Some(((fridge_id.clone(), sku.clone()), (event.event_time, event.seq, *price_cents)))
        }
        _ => None,
    }
}

/// Decides a session's row from its facts.
fn decide(facts: &[&Fact]) -> SessionRow {
    let mut closed_at: Option<(i64, u64)> = None;
    let mut payment: Option<PaymentResult> = None;
    let (mut units, mut expected, mut unpriced, mut items) = (0i64, 0i64, false, false);
    for fact in facts {
        match fact {
            Fact::Seen => {}
            Fact::Closed(t, seq) => closed_at = closed_at.max(Some((*t, *seq))),
            Fact::Line(_, qty, price) => {
                if *qty != 0 {
                    items = true;
                    units += qty;
                    match price {
                        Some(p) => expected += qty * p,
                        None => unpriced = true,
                    }
                }
            }
            Fact::Payment(result) => payment = payment.max(Some(*result)),
        }
    }
    let captured_cents = payment.and_then(|(_, _, amount)| amount);
    let status = match (closed_at, payment) {
        (None, _) => SessionStatus::Open,
        _ if !items => SessionStatus::Empty,
        _ if unpriced => SessionStatus::Unpriced,
        (_, None) => SessionStatus::AwaitingPayment,
        (_, Some((_, _, None))) => SessionStatus::Unpaid,
        (_, Some((_, _, Some(amount)))) => match amount.cmp(&expected) {
            std::cmp::Ordering::Equal => SessionStatus::Settled,
            std::cmp::Ordering::Less => SessionStatus::Undercharged,
            std::cmp::Ordering::Greater => SessionStatus::Overcharged,
        },
    };
    let priced = closed_at.is_some() && !unpriced;
    SessionRow {
        status,
        expected_cents: priced.then_some(expected),
        captured_cents,
        units,
        closed_at: closed_at.map(|(t, _)| t),
    }
}

/// Every session, maintained incrementally.
pub fn sessions<'s>(events: VecCollection<'s, Time, Event>) -> VecCollection<'s, Time, (SessionKey, SessionRow)> {
    let seen = events.clone().flat_map(|e| session_of(&e)).distinct().map(|key| (key, Fact::Seen));
    let closes = events.clone().flat_map(|e| closed(&e)).reduce_named("LatestClose", |_key, input, output| {
        if let Some((close, _)) = input.last() {
            output.push((**close, 1));
        }
    });
    let payments = events.clone().flat_map(|e| payment(&e)).reduce_named("LatestPayment", |_key, input, output| {
        if let Some((result, _)) = input.last() {
            output.push((**result, 1));
        }
    });
    // Basket lines: the difference type sums taken and returned units.
    let lines = events
        .clone()
        .flat_map(|e| item(&e))
        .explode(|(key, qty)| Some((key, qty as isize)))
        .count()
        .map(|(key, qty)| (key, qty as i64));
    let prices = events.flat_map(|e| price(&e));

    // Each line meets the prices of its SKU in effect at the close.
    let lines_at_close = lines
        .clone()
        .map(|((fridge, session, sku), qty)| ((fridge.clone(), session.clone()), (sku, qty)))
        .join_map(closes.clone(), |(fridge, session), (sku, qty), &(closed_at, _)| {
            (sku.clone(), (fridge.clone(), session.clone(), *qty, closed_at))
        });
    let overrides = prices.clone().flat_map(|((owner, sku), version)| owner.map(|fridge| ((fridge, sku), version)));
    let globals = prices.flat_map(|((owner, sku), version)| owner.is_none().then_some((sku, version)));
    let by_override = lines_at_close
        .clone()
        .map(|(sku, (fridge, session, _, closed_at))| ((fridge, sku), (session, closed_at)))
        .join_map(overrides, |(fridge, sku), (session, closed_at), &version| {
            ((fridge.clone(), session.clone(), sku.clone()), (*closed_at, true, version))
        });
    let by_global = lines_at_close
        .clone()
        .map(|(sku, (fridge, session, _, closed_at))| (sku, (fridge, session, closed_at)))
        .join_map(globals, |sku, (fridge, session, closed_at), &version| {
            ((fridge.clone(), session.clone(), sku.clone()), (*closed_at, false, version))
        });
    // A fridge's own price beats the global one; then the latest in effect.
    let candidates = by_override
        .concat(by_global)
        .filter(|(_, (closed_at, _, (priced_at, _, _)))| priced_at <= closed_at)
        .map(|(line, (_, own, (priced_at, seq, cents)))| (line, (own, priced_at, seq, cents)));
    let line_prices = candidates.reduce_named("PriceAtClose", |_line, input, output| {
        if let Some(((_, _, _, cents), _)) = input.last() {
            output.push((*cents, 1));
        }
    });
    let priced_lines = lines_at_close
        .map(|(sku, (fridge, session, qty, _))| ((fridge, session, sku), qty))
        .join_map(line_prices.clone(), |line, qty, cents| (line.clone(), (*qty, Some(*cents))));
    let unpriced_lines =
        lines.clone().antijoin(line_prices.map(|(line, _)| line)).map(|(line, qty)| (line, (qty, None)));
    let line_facts = priced_lines
        .concat(unpriced_lines)
        .map(|((fridge, session, sku), (qty, cents))| ((fridge, session), Fact::Line(sku, qty, cents)));

    seen.concat(closes.map(|(key, (t, seq))| (key, Fact::Closed(t, seq))))
        .concat(payments.map(|(key, result)| (key, Fact::Payment(result))))
        .concat(line_facts)
        .reduce_named("SessionStatus", |_key, input, output| {
            let facts: Vec<&Fact> = input.iter().map(|(fact, _)| *fact).collect();
            output.push((decide(&facts), 1));
        })
}

/// `(fridge_id, hour start in µs)`.
pub type RevenueKey = (String, i64);

/// Captured cents, captured sessions and their units per fridge and UTC hour
/// of the capture, from the sessions whose counting result is a capture.
pub fn revenue<'s>(
    sessions: VecCollection<'s, Time, (SessionKey, SessionRow)>,
    events: VecCollection<'s, Time, Event>,
) -> VecCollection<'s, Time, (RevenueKey, (i64, i64, i64))> {
    let latest = events.flat_map(|e| payment(&e)).reduce_named("LatestPaymentForRevenue", |_key, input, output| {
        if let Some((result, _)) = input.last() {
            output.push((**result, 1));
        }
    });
    latest
        .flat_map(|(key, (t, _, amount))| amount.map(|cents| (key, (t, cents))))
        .join_map(sessions.map(|(key, row)| (key, row.units)), |(fridge, _), &(t, cents), &units| {
            ((fridge.clone(), t - t.rem_euclid(HOUR_US)), cents, units)
        })
        .explode(|(key, cents, units)| Some((key, (cents as isize, 1isize, units as isize))))
        .count()
        .map(|(key, (cents, sessions, units))| (key, (cents as i64, sessions as i64, units as i64)))
}

/// The batch reference of [`sessions`].
pub fn sessions_reference(events: &[Event]) -> BTreeMap<SessionKey, SessionRow> {
    let mut facts: BTreeMap<SessionKey, Vec<Fact>> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    let mut close: BTreeMap<SessionKey, (i64, u64)> = BTreeMap::new();
    let mut lines: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for event in events {
        if let Some(key) = session_of(event) {
            keys.insert(key);
        }
        if let Some((key, c)) = closed(event) {
            let entry = close.entry(key).or_insert(c);
            *entry = (*entry).max(c);
        }
        if let Some((key, result)) = payment(event) {
            facts.entry(key).or_default().push(Fact::Payment(result));
        }
        if let Some((key, qty)) = item(event) {
            *lines.entry(key).or_insert(0) += qty;
        }
    }
    let price_at = |fridge: &str, sku: &str, at: i64| -> Option<i64> {
        let mut best: Option<(bool, i64, u64, i64)> = None;
        for event in events {
            if let Some(((owner, item), (t, seq, cents))) = price(event)
                && item == sku
                && t <= at
                && owner.as_deref().is_none_or(|o| o == fridge)
            {
                best = best.max(Some((owner.is_some(), t, seq, cents)));
            }
        }
        best.map(|(_, _, _, cents)| cents)
    };
    for ((fridge, session, sku), qty) in lines {
        let key = (fridge.clone(), session.clone());
        let cents = close.get(&key).and_then(|&(at, _)| price_at(&fridge, &sku, at));
        if qty != 0 {
            facts.entry(key).or_default().push(Fact::Line(sku, qty, cents));
        }
    }
    for (key, c) in &close {
        facts.entry(key.clone()).or_default().push(Fact::Closed(c.0, c.1));
    }
    keys.into_iter()
        .map(|key| {
            let list = facts.remove(&key).unwrap_or_default();
            let refs: Vec<&Fact> = list.iter().collect();
            (key, decide(&refs))
        })
        .collect()
}

/// The batch reference of [`revenue`].
pub fn revenue_reference(events: &[Event]) -> BTreeMap<RevenueKey, (i64, i64, i64)> {
    let sessions = sessions_reference(events);
    let mut latest: BTreeMap<SessionKey, PaymentResult> = BTreeMap::new();
    for (key, result) in events.iter().filter_map(payment) {
        let entry = latest.entry(key).or_insert(result);
        *entry = (*entry).max(result);
    }
    let mut revenue: BTreeMap<RevenueKey, (i64, i64, i64)> = BTreeMap::new();
    for (key, (t, _, amount)) in latest {
        if let Some(cents) = amount {
            let units = sessions.get(&key).map_or(0, |row| row.units);
            let entry = revenue.entry((key.0, t - t.rem_euclid(HOUR_US))).or_insert((0, 0, 0));
            entry.0 += cents;
            entry.1 += 1;
            entry.2 += units;
        }
    }
    revenue
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::MINUTE_US;
    use crate::fleet_gen;
    use crate::harness::{final_state, run_view};

    fn state<K: Ord + Clone, V: Ord + Clone>(changes: &[((K, V), Time, isize)]) -> BTreeMap<K, V> {
        final_state(changes)
            .into_iter()
            .map(|((key, value), diff)| {
                assert_eq!(diff, 1);
                (key, value)
            })
            .collect()
    }

    fn at(source: &str, seq: u64, minute: i64, payload: Payload) -> Event {
        Event { source_id: source.into(), seq, event_time: minute * MINUTE_US, payload }
    }

    fn sessions_by_dataflow(workers: usize, arrivals: Vec<(Time, Vec<Event>)>) -> BTreeMap<SessionKey, SessionRow> {
        state(&run_view(workers, arrivals, sessions))
    }

    fn revenue_by_dataflow(workers: usize, arrivals: Vec<(Time, Vec<Event>)>) -> BTreeMap<RevenueKey, (i64, i64, i64)> {
        state(&run_view(workers, arrivals, |events: VecCollection<'_, Time, Event>| {
            revenue(sessions(events.clone()), events)
        }))
    }

    fn row(all: &[Event], session: &str) -> SessionRow {
        sessions_reference(all)[&("FR-1".to_owned(), session.to_owned())].clone()
    }

    #[test]
    fn a_session_is_priced_at_the_close_across_a_price_change_with_a_fridge_override() {
        let all = vec![
            at("bo", 1, 0, Payload::PriceChanged { sku: "cola".into(), price_cents: 100, fridge_id: None }),
            at("bo", 2, 0, Payload::PriceChanged { sku: "chips".into(), price_cents: 50, fridge_id: None }),
            // The global cola price rises at minute 10, but FR-1 has its own from minute 5.
            at("bo", 3, 10, Payload::PriceChanged { sku: "cola".into(), price_cents: 120, fridge_id: None }),
            at(
                "bo",
                4,
                5,
                Payload::PriceChanged { sku: "chips".into(), price_cents: 70, fridge_id: Some("FR-1".into()) },
            ),
            at("FR-1", 1, 8, Payload::DoorOpened { session_id: "a".into() }),
            at("FR-1", 2, 8, Payload::ItemTaken { session_id: "a".into(), sku: "cola".into(), qty: 2 }),
            at("FR-1", 3, 9, Payload::ItemTaken { session_id: "a".into(), sku: "chips".into(), qty: 2 }),
            at("FR-1", 4, 9, Payload::ItemReturned { session_id: "a".into(), sku: "chips".into(), qty: 1 }),
            at("FR-1", 5, 11, Payload::DoorClosed { session_id: "a".into() }),
            at("FR-1", 6, 12, Payload::PaymentCaptured { session_id: "a".into(), amount_cents: 310 }),
        ];
        // 2 × 120 (the global price in effect at minute 11) + 1 × 70 (FR-1's own).
        let expected = SessionRow {
            status: SessionStatus::Settled,
            expected_cents: Some(310),
            captured_cents: Some(310),
            units: 3,
            closed_at: Some(11 * MINUTE_US),
        };
        assert_eq!(row(&all, "a"), expected);
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(sessions_by_dataflow(2, vec![(1, reversed)])[&("FR-1".into(), "a".into())], expected);
    }

    #[test]
    fn each_status_by_hand() {
        let price = at("bo", 1, 0, Payload::PriceChanged { sku: "cola".into(), price_cents: 100, fridge_id: None });
        let take = |seq, s: &str, sku: &str| {
            at("FR-1", seq, 1, Payload::ItemTaken { session_id: s.into(), sku: sku.into(), qty: 1 })
        };
        let close = |seq, s: &str| at("FR-1", seq, 2, Payload::DoorClosed { session_id: s.into() });
        let pay = |seq, s: &str, minute, cents| {
            at("FR-1", seq, minute, Payload::PaymentCaptured { session_id: s.into(), amount_cents: cents })
        };
        let decline = |seq, s: &str, minute| {
            at("FR-1", seq, minute, Payload::PaymentDeclined { session_id: s.into(), reason: "card".into() })
        };
        let returned =
            at("FR-1", 30, 1, Payload::ItemReturned { session_id: "empty".into(), sku: "cola".into(), qty: 1 });
        let all = vec![
            price,
            take(1, "open", "cola"),
            take(2, "empty", "cola"),
            returned,
            close(3, "empty"),
            take(4, "unpriced", "caviar"),
            close(5, "unpriced"),
            take(6, "awaiting", "cola"),
            close(7, "awaiting"),
            take(8, "unpaid", "cola"),
            close(9, "unpaid"),
            pay(10, "unpaid", 3, 100),
            decline(11, "unpaid", 4),
            take(12, "under", "cola"),
            close(13, "under"),
            pay(14, "under", 3, 90),
            take(15, "over", "cola"),
            close(16, "over"),
            decline(17, "over", 3),
            pay(18, "over", 4, 150),
        ];
        let statuses: Vec<(String, SessionStatus)> =
            sessions_reference(&all).into_iter().map(|((_, s), row)| (s, row.status)).collect();
        assert_eq!(
            statuses,
            vec![
                ("awaiting".into(), SessionStatus::AwaitingPayment),
                ("empty".into(), SessionStatus::Empty),
                ("open".into(), SessionStatus::Open),
                ("over".into(), SessionStatus::Overcharged),
                ("under".into(), SessionStatus::Undercharged),
                ("unpaid".into(), SessionStatus::Unpaid),
                ("unpriced".into(), SessionStatus::Unpriced),
            ]
        );
        assert_eq!(row(&all, "unpriced").expected_cents, None);
        assert_eq!(sessions_by_dataflow(1, vec![(3, all.clone())]), sessions_reference(&all));
        // The later decline replaced the capture of "unpaid": only "under" and "over" earn revenue.
        assert_eq!(revenue_reference(&all), BTreeMap::from([(("FR-1".into(), 0), (240, 2, 2))]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn sessions_equal_the_reference((events, arrivals) in fleet_gen::shuffled(fleet_gen::commerce(50)), workers in 1usize..=2) {
            prop_assert_eq!(sessions_by_dataflow(workers, arrivals), sessions_reference(&events));
        }

        #[test]
        fn revenue_equals_the_reference((events, arrivals) in fleet_gen::shuffled(fleet_gen::commerce(50)), workers in 1usize..=2) {
            prop_assert_eq!(revenue_by_dataflow(workers, arrivals), revenue_reference(&events));
        }
    }
}
