//! What the webhooks say: the view changes of each completed logical time,
//! turned into Standard Webhooks messages.
//!
//! | endpoint | types | from |
//! |---|---|---|
//! | procurement | `restock.opened`, `restock.updated`, `restock.closed` | `restock_orders` lines |
//! | accounting | `payment.settled`, `payment.discrepancy` | `sessions` rows |
//! | alerts | `coldchain.excursion`, `inventory.negative` | `alerts` |
//!
//! A message's id is derived from the change (view, key, logical time,
//! type), so a replay of the log produces the same ids; its key orders
//! delivery (a fridge's orders, a session, an alert's subject).

use std::collections::BTreeMap;

use coldstream_pipelines::Time;
use coldstream_pipelines::views::{Alert, RestockLine, SessionKey, SessionRow, SessionStatus, ViewBatch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Who receives a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// Restock orders.
    Procurement,
    /// Settled sessions and payment discrepancies.
    Accounting,
    /// Cold-chain excursions and negative stock.
    Alerts,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 3] = [Endpoint::Procurement, Endpoint::Accounting, Endpoint::Alerts];

    /// The name in the config and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Procurement => "procurement",
            Endpoint::Accounting => "accounting",
            Endpoint::Alerts => "alerts",
        }
    }
}

/// One webhook message, ready to sign and send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `webhook-id`: `msg_` and 32 hex digits derived from the change.
    pub id: String,
    /// Who receives it.
    pub endpoint: Endpoint,
    /// Messages with the same key are delivered in order.
    pub key: String,
    /// The event type, e.g. `restock.opened`.
    pub kind: String,
    /// The logical time of the change.
    pub time: Time,
    /// The JSON body: `{"type", "timestamp", "data"}`.
    pub body: String,
}

impl Message {
    /// Whether a later message of the same key makes this one stale, so
    /// that it need not be sent: a `restock.updated` (an order's newer
    /// state, or its close, says all procurement needs).
    pub fn may_be_superseded(&self) -> bool {
        self.kind == "restock.updated"
    }
}

/// The `webhook-id` of a change: a hash of the view, the key's parts, the
/// logical time and the type, each part length-prefixed so that no two
/// different changes encode alike (`("a/b", "c")` and `("a", "b/c")` differ).
fn message_id(view: &str, key: &[&str], time: Time, kind: &str) -> String {
    let mut hash = Sha256::new();
    let time = time.to_string();
    for part in [view].iter().chain(key).chain([&time.as_str(), &kind]) {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    format!("msg_{}", &hex::encode(hash.finalize())[..32])
}

/// A message's body. The fields of the bodies are written in name order,
/// as they always have been, so that a body is the same bytes whichever
/// release derives it.
#[derive(Serialize)]
struct Body<'a, D> {
    data: D,
    timestamp: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
}

#[derive(Serialize)]
struct OrderData<'a> {
    fridge_id: &'a str,
    lines: Vec<LineData<'a>>,
    opened_at_ms: Time,
    order_id: &'a str,
}

#[derive(Serialize)]
struct LineData<'a> {
    qty: i64,
    sku: &'a str,
}

#[derive(Serialize)]
struct PaymentData<'a> {
    captured_cents: Option<i64>,
    closed_at_us: Option<i64>,
    expected_cents: Option<i64>,
    fridge_id: &'a str,
    session_id: &'a str,
    status: &'a str,
    units: i64,
}

#[derive(Serialize)]
struct NegativeData<'a> {
    fridge_id: &'a str,
    sku: &'a str,
    state: &'a str,
}

#[derive(Serialize)]
struct ExcursionData<'a> {
    fridge_id: &'a str,
    start_us: i64,
    state: &'a str,
}

fn message(endpoint: Endpoint, view: &str, key: [&str; 2], kind: &str, time: Time, data: impl Serialize) -> Message {
    let id = message_id(view, &key, time, kind);
    let key = key.join("/");
    let timestamp = chrono::DateTime::from_timestamp_millis(time as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let body = serde_json::to_string(&Body { data, timestamp: &timestamp, kind })
        .expect("a body of strings and integers always encodes");
    Message { id, endpoint, key, kind: kind.to_owned(), time, body }
}

/// An open order: `(opened_at, sku → qty)`.
type Order = (Time, BTreeMap<String, i64>);

/// Turns view changes into messages, one completed logical time at a time.
#[derive(Default)]
pub struct Derive {
    /// Changes of times the frontier has not passed yet, consolidated: a
    /// record inserted and retracted at the same time is no change at all,
    /// whatever order the two arrive in.
    pending: BTreeMap<Time, BTreeMap<Change, isize>>,
    /// Open orders by fridge and order id.
    orders: BTreeMap<String, BTreeMap<String, Order>>,
    /// Changes before this time came back from a checkpoint.
    restored: Time,
}

/// The records webhooks read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Line((String, String), RestockLine),
    Session(SessionKey, SessionRow),
    Alert(Alert),
}

impl Derive {
    /// Takes a batch of view changes (any times).
    pub fn push(&mut self, batch: &ViewBatch) {
        let restored = self.restored;
        let mut add = |time: Time, change: Change, diff: isize| {
            if time < restored {
                return;
            }
            let entry = self.pending.entry(time).or_default().entry(change).or_insert(0);
            *entry += diff;
        };
        match batch {
            ViewBatch::RestockOrders(changes) => {
                for ((key, line), time, diff) in changes {
                    add(*time, Change::Line(key.clone(), line.clone()), *diff);
                }
            }
            ViewBatch::Sessions(changes) => {
                // Only rows that call for a message matter: an earlier row
                // of another status differs from them anyway.
                for ((key, row), time, diff) in changes.iter().filter(|((_, row), _, _)| payment_kind(row).is_some()) {
                    add(*time, Change::Session(key.clone(), row.clone()), *diff);
                }
            }
            ViewBatch::Alerts(changes) => {
                for (alert, time, diff) in changes {
                    add(*time, Change::Alert(alert.clone()), *diff);
                }
            }
            _ => {}
        }
    }

    /// What it keeps between times (the open orders), encoded for a
    /// checkpoint taken once every time before the last `advance` is done.
    pub fn snapshot(&self) -> Vec<u8> {
        bincode::serialize(&self.orders).expect("in-memory orders always encode")
    }

    /// Takes back a [`Derive::snapshot`] taken at `frontier`; changes before
    /// `frontier` that arrive again are dropped.
    pub fn restore(&mut self, snapshot: &[u8], frontier: Time) -> Result<(), bincode::Error> {
        self.orders = bincode::deserialize(snapshot)?;
        self.pending.retain(|time, _| *time >= frontier);
        self.restored = frontier;
        Ok(())
    }

    /// The messages of every time before `frontier`, in time order.
    pub fn advance(&mut self, frontier: Time) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= frontier {
                break;
            }
            let (time, changes) = entry.remove_entry();
            self.time(time, changes, &mut out);
        }
        out
    }

    fn time(&mut self, time: Time, changes: BTreeMap<Change, isize>, out: &mut Vec<Message>) {
        let mut touched: BTreeMap<(String, String), Option<Order>> = BTreeMap::new();
        let mut sessions: BTreeMap<SessionKey, (Option<SessionRow>, Option<SessionRow>)> = BTreeMap::new();
        // Retractions first, so that a line whose quantity changes is
        // removed before its new quantity is put in.
        let (retracted, inserted): (Vec<_>, Vec<_>) =
            changes.into_iter().filter(|(_, diff)| *diff != 0).partition(|(_, diff)| *diff < 0);
        for (change, diff) in retracted.into_iter().chain(inserted) {
            match change {
                Change::Line((fridge, sku), line) => {
                    let orders = self.orders.entry(fridge.clone()).or_default();
                    // The order as it was before this time: taken at its first change.
                    touched
                        .entry((fridge, line.order_id.clone()))
                        .or_insert_with(|| orders.get(&line.order_id).cloned());
                    let order = orders.entry(line.order_id).or_insert((line.opened_at, BTreeMap::new()));
                    if diff > 0 {
                        order.1.insert(sku, line.qty);
                    } else {
                        order.1.remove(&sku);
                    }
                }
                Change::Session(key, row) => {
                    let entry = sessions.entry(key).or_default();
                    if diff > 0 { entry.1 = Some(row) } else { entry.0 = Some(row) }
                }
                Change::Alert(alert) => out.push(alert_message(&alert, diff > 0, time)),
            }
        }
        for ((fridge, order_id), before) in touched {
            let orders = self.orders.entry(fridge.clone()).or_default();
            let before = before.filter(|(_, lines)| !lines.is_empty());
            let after = orders.get(&order_id).filter(|(_, lines)| !lines.is_empty());
            let kind = match (&before, after) {
                (None, Some(_)) => Some("restock.opened"),
                (Some(b), Some(a)) if b != a => Some("restock.updated"),
                (Some(_), None) => Some("restock.closed"),
                _ => None,
            };
            if let Some(kind) = kind {
                let (opened_at, lines) = after.or(before.as_ref()).expect("an order before or after");
                let lines = if kind == "restock.closed" {
                    Vec::new()
                } else {
                    lines.iter().map(|(sku, &qty)| LineData { qty, sku }).collect()
                };
                let data = OrderData { fridge_id: &fridge, lines, opened_at_ms: *opened_at, order_id: &order_id };
                out.push(message(Endpoint::Procurement, "restock_orders", [&fridge, &order_id], kind, time, data));
            }
            if after.is_none() {
                orders.remove(&order_id);
            }
            if orders.is_empty() {
                self.orders.remove(&fridge);
            }
        }
        for ((fridge, session), (before, after)) in sessions {
            let Some(row) = after else { continue };
            let Some(kind) = payment_kind(&row) else { continue };
            let same = |old: &SessionRow| {
                (old.status, old.expected_cents, old.captured_cents)
                    == (row.status, row.expected_cents, row.captured_cents)
            };
            if before.as_ref().is_some_and(same) {
                continue;
            }
            let data = PaymentData {
                captured_cents: row.captured_cents,
                closed_at_us: row.closed_at,
                expected_cents: row.expected_cents,
                fridge_id: &fridge,
                session_id: &session,
                status: row.status.as_str(),
                units: row.units,
            };
            out.push(message(Endpoint::Accounting, "sessions", [&fridge, &session], kind, time, data));
        }
    }
}

/// The accounting message a session row calls for, if any.
fn payment_kind(row: &SessionRow) -> Option<&'static str> {
    match row.status {
        SessionStatus::Settled => Some("payment.settled"),
        SessionStatus::Undercharged | SessionStatus::Overcharged => Some("payment.discrepancy"),
        _ => None,
    }
}

fn alert_message(alert: &Alert, raised: bool, time: Time) -> Message {
    let state = if raised { "raised" } else { "cleared" };
    match alert {
        Alert::InventoryNegative { fridge_id, sku } => {
            let data = NegativeData { fridge_id, sku, state };
            message(Endpoint::Alerts, "alerts", [fridge_id, sku], alert.kind(), time, data)
        }
        Alert::ColdchainExcursion { fridge_id, start } => {
            let data = ExcursionData { fridge_id, start_us: *start, state };
            message(Endpoint::Alerts, "alerts", [fridge_id, &start.to_string()], alert.kind(), time, data)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use coldstream_pipelines::views::order_id;

    use super::*;

    fn line(sku: &str, opened_at: Time, qty: i64) -> ((String, String), RestockLine) {
        (("FR-1".into(), sku.into()), RestockLine { order_id: order_id("FR-1", opened_at), opened_at, qty })
    }

    fn lines(changes: coldstream_pipelines::views::Changes<((String, String), RestockLine)>) -> ViewBatch {
        ViewBatch::RestockOrders(changes)
    }

    fn kinds(messages: &[Message]) -> Vec<&str> {
        messages.iter().map(|m| m.kind.as_str()).collect()
    }

    fn body(message: &Message) -> serde_json::Value {
        serde_json::from_str(&message.body).expect("a JSON body")
    }

    #[test]
    fn a_restock_order_opens_changes_and_closes_with_one_message_each() {
        let mut derive = Derive::default();
        derive.push(&lines(vec![(line("cola", 10, 6), 10, 1), (line("salad", 10, 2), 10, 1)]));
        let opened = derive.advance(11);
        assert_eq!(kinds(&opened), ["restock.opened"]);
        assert_eq!(
            (opened[0].key.as_str(), opened[0].time, opened[0].endpoint),
            ("FR-1/RO-FR-1-10", 10, Endpoint::Procurement)
        );
        assert_eq!(body(&opened[0])["data"]["lines"].as_array().map(Vec::len), Some(2));
        // A quantity changes: the old line is retracted and the new one inserted at one time.
        derive.push(&lines(vec![(line("cola", 10, 6), 20, -1), (line("cola", 10, 9), 20, 1)]));
        let updated = derive.advance(21);
        assert_eq!(kinds(&updated), ["restock.updated"]);
        assert_eq!(body(&updated[0])["data"]["lines"][0], serde_json::json!({ "sku": "cola", "qty": 9 }));
        derive.push(&lines(vec![(line("cola", 10, 9), 30, -1), (line("salad", 10, 2), 30, -1)]));
        let closed = derive.advance(31);
        assert_eq!(kinds(&closed), ["restock.closed"]);
        assert_eq!(body(&closed[0])["data"]["lines"], serde_json::json!([]));
        let ids: BTreeSet<&str> = [&opened[0], &updated[0], &closed[0]].iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids.len(), 3, "each message has its own id");
    }

    #[test]
    fn a_line_inserted_and_retracted_at_one_time_sends_nothing_whatever_the_order() {
        let mut derive = Derive::default();
        derive.push(&lines(vec![(line("cola", 10, 6), 10, -1)]));
        derive.push(&lines(vec![(line("cola", 10, 6), 10, 1)]));
        assert!(derive.advance(11).is_empty());
        assert!(derive.orders.is_empty(), "no order is left open");
    }

    #[test]
    fn a_time_is_derived_only_once_the_frontier_has_passed_it() {
        let mut derive = Derive::default();
        derive.push(&lines(vec![(line("cola", 50, 1), 50, 1)]));
        assert!(derive.advance(50).is_empty(), "time 50 is not complete before the frontier passes it");
        assert_eq!(kinds(&derive.advance(51)), ["restock.opened"]);
    }

    #[test]
    fn ids_come_from_the_change_so_a_replay_gives_the_same_ones() {
        let run = || {
            let mut derive = Derive::default();
            derive.push(&lines(vec![(line("cola", 10, 6), 10, 1)]));
            derive.push(&ViewBatch::Alerts(vec![(
                Alert::ColdchainExcursion { fridge_id: "FR-1".into(), start: 5 },
                12,
                1,
            )]));
            derive.advance(13).into_iter().map(|m| (m.id, m.body)).collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first.len(), 2);
        assert_eq!(first, run());
        assert!(first.iter().all(|(id, _)| id.starts_with("msg_") && id.len() == 4 + 32), "{first:?}");
    }

    fn session(status: SessionStatus, captured: Option<i64>, units: i64) -> ViewBatch {
        let row = SessionRow { status, expected_cents: Some(450), captured_cents: captured, units, closed_at: Some(1) };
        ViewBatch::Sessions(vec![((("FR-1".into(), "s1".into()), row), 10, 1)])
    }

    #[test]
    fn webhook_ids_of_keys_that_join_alike_differ() {
        assert_ne!(
            message_id("sessions", &["FR-1", "a/b"], 5, "payment.settled"),
            message_id("sessions", &["FR-1/a", "b"], 5, "payment.settled")
        );
        assert_ne!(message_id("alerts", &["FR-1", "12"], 3, "x"), message_id("alerts", &["FR-1", "1"], 23, "x"));
        assert_eq!(message_id("sessions", &["FR-1", "s"], 5, "k"), message_id("sessions", &["FR-1", "s"], 5, "k"));
    }

    #[test]
    fn settled_and_discrepant_sessions_go_to_accounting_and_other_statuses_do_not() {
        let mut derive = Derive::default();
        derive.push(&session(SessionStatus::AwaitingPayment, None, 1));
        assert!(derive.advance(11).is_empty());
        derive.push(&session(SessionStatus::Settled, Some(450), 1));
        let settled = derive.advance(11);
        assert_eq!(kinds(&settled), ["payment.settled"]);
        assert_eq!((settled[0].endpoint, settled[0].key.as_str()), (Endpoint::Accounting, "FR-1/s1"));
        let mut derive = Derive::default();
        derive.push(&session(SessionStatus::Overcharged, Some(900), 1));
        assert_eq!(kinds(&derive.advance(11)), ["payment.discrepancy"]);
    }

    #[test]
    fn a_session_row_that_changes_only_in_what_accounting_does_not_read_sends_nothing_again() {
        let mut derive = Derive::default();
        derive.push(&session(SessionStatus::Settled, Some(450), 1));
        assert_eq!(derive.advance(11).len(), 1);
        let row = |units| SessionRow {
            status: SessionStatus::Settled,
            expected_cents: Some(450),
            captured_cents: Some(450),
            units,
            closed_at: Some(1),
        };
        let key: SessionKey = ("FR-1".into(), "s1".into());
        derive.push(&ViewBatch::Sessions(vec![((key.clone(), row(1)), 20, -1), ((key, row(2)), 20, 1)]));
        assert!(derive.advance(21).is_empty());
    }

    /// The bodies receivers have always had, byte for byte: fields in name
    /// order, integers as integers.
    #[test]
    fn every_kind_of_body_keeps_its_bytes() {
        let mut derive = Derive::default();
        derive.push(&lines(vec![(line("cola", 5, 3), 7, 1), (line("chips", 5, 2), 7, 1)]));
        derive.push(&session(SessionStatus::Settled, Some(450), 1));
        let excursion = Alert::ColdchainExcursion { fridge_id: "FR-1".into(), start: 60 };
        let negative = Alert::InventoryNegative { fridge_id: "FR-1".into(), sku: "cola".into() };
        derive.push(&ViewBatch::Alerts(vec![(excursion, 12, 1), (negative, 12, -1)]));
        let bodies: Vec<String> = derive.advance(13).into_iter().map(|m| m.body).collect();
        let order = order_id("FR-1", 5);
        assert_eq!(
            bodies,
            [
                format!(
                    r#"{{"data":{{"fridge_id":"FR-1","lines":[{{"qty":2,"sku":"chips"}},{{"qty":3,"sku":"cola"}}],"opened_at_ms":5,"order_id":"{order}"}},"timestamp":"1970-01-01T00:00:00.007Z","type":"restock.opened"}}"#
                ),
                r#"{"data":{"captured_cents":450,"closed_at_us":1,"expected_cents":450,"fridge_id":"FR-1","session_id":"s1","status":"settled","units":1},"timestamp":"1970-01-01T00:00:00.010Z","type":"payment.settled"}"#.to_owned(),
                r#"{"data":{"fridge_id":"FR-1","sku":"cola","state":"cleared"},"timestamp":"1970-01-01T00:00:00.012Z","type":"inventory.negative"}"#.to_owned(),
                r#"{"data":{"fridge_id":"FR-1","start_us":60,"state":"raised"},"timestamp":"1970-01-01T00:00:00.012Z","type":"coldchain.excursion"}"#.to_owned(),
            ]
        );
    }

    #[test]
    fn alerts_are_raised_and_cleared() {
        let mut derive = Derive::default();
        let alert = Alert::InventoryNegative { fridge_id: "FR-1".into(), sku: "cola".into() };
        derive.push(&ViewBatch::Alerts(vec![(alert.clone(), 10, 1), (alert.clone(), 20, -1)]));
        let messages = derive.advance(21);
        let states: Vec<_> = messages.iter().map(|m| body(m)["data"]["state"].as_str().map(str::to_owned)).collect();
        assert_eq!(states, [Some("raised".to_owned()), Some("cleared".to_owned())]);
        assert!(messages.iter().all(|m| m.endpoint == Endpoint::Alerts && m.key == "FR-1/cola"));
    }

    #[test]
    fn a_restored_derivation_drops_replayed_changes_and_keeps_its_open_orders() {
        let mut before = Derive::default();
        before.push(&lines(vec![(line("cola", 10, 6), 10, 1)]));
        assert_eq!(before.advance(11).len(), 1);
        let snapshot = before.snapshot();
        let mut after = Derive::default();
        after.restore(&snapshot, 11).expect("decodes");
        // The replay from the dataflow's checkpoint repeats time 10.
        after.push(&lines(vec![(line("cola", 10, 6), 10, 1)]));
        assert!(after.advance(11).is_empty(), "the replayed opening is not sent twice");
        after.push(&lines(vec![(line("cola", 10, 6), 30, -1)]));
        assert_eq!(kinds(&after.advance(31)), ["restock.closed"]);
    }
}
