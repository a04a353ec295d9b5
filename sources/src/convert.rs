//! The acceptance rules of the gateway, and the translation between the
//! wire format and the domain model.
//!
//! [`decode`] checks the shape of an event (every required field present
//! and well formed) and is also used when reading the log back; [`accept`]
//! adds the rules that depend on who sent it and when: quantity ranges,
//! non-negative money, the authenticated source, the publisher kind and the
//! 5-minute clock-skew limit.

use coldstream_pipelines::{Event, Payload, Temperature};

use crate::auth::Principal;
use crate::proto::{self, RejectReason, event::Payload as Wire};

/// Why an event was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The machine-readable reason.
    pub code: RejectReason,
    /// A sentence naming the offending field.
    pub message: String,
}

impl Rejection {
    fn new(code: RejectReason, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into() }
    }
}

/// The largest `qty` an event may carry.
pub const MAX_QTY: i64 = 1000;
/// The largest amount or price, in cents (one million in the currency).
pub const MAX_MONEY_CENTS: i64 = 100_000_000;
/// How far ahead of the gateway clock an event time may be.
pub const MAX_CLOCK_SKEW_US: i64 = 5 * 60 * 1_000_000;

fn malformed(message: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::Malformed, message)
}

fn text(value: String, field: &str) -> Result<String, Rejection> {
    if value.trim().is_empty() { Err(malformed(format!("{field} is missing"))) } else { Ok(value) }
}

fn present<T: Copy>(value: Option<T>, field: &str) -> Result<T, Rejection> {
    value.ok_or_else(|| malformed(format!("{field} is missing")))
}

/// Checks the shape of an event and translates it to the domain model,
/// moving its strings.
pub fn decode(event: proto::Event) -> Result<Event, Rejection> {
    let Some(payload) = event.payload else {
        return Err(Rejection::new(RejectReason::UnknownPayload, "the event has no payload this gateway knows"));
    };
    let source_id = text(event.source_id, "source_id")?;
    if event.seq == 0 {
        return Err(malformed("seq is missing (seqs start at 1)"));
    }
    if event.event_time_us <= 0 {
        return Err(malformed("event_time_us is missing or before 1970"));
    }
    let payload = match payload {
        Wire::Telemetry(t) => {
            let temperature_c = present(t.temperature_c, "temperature_c")?;
            if !temperature_c.is_finite() {
                return Err(malformed("temperature_c is not a finite number"));
            }
            Payload::Telemetry {
                temperature_c: Temperature(temperature_c),
                door_open: present(t.door_open, "door_open")?,
            }
        }
        Wire::DoorOpened(p) => Payload::DoorOpened { session_id: text(p.session_id, "session_id")? },
        Wire::ItemTaken(p) => Payload::ItemTaken {
            session_id: text(p.session_id, "session_id")?,
            sku: text(p.sku, "sku")?,
            qty: present(p.qty, "qty")?,
        },
        Wire::ItemReturned(p) => Payload::ItemReturned {
            session_id: text(p.session_id, "session_id")?,
            sku: text(p.sku, "sku")?,
            qty: present(p.qty, "qty")?,
        },
        Wire::DoorClosed(p) => Payload::DoorClosed { session_id: text(p.session_id, "session_id")? },
        Wire::PaymentAuthorized(p) => Payload::PaymentAuthorized {
            session_id: text(p.session_id, "session_id")?,
            amount_cents: present(p.amount_cents, "amount_cents")?,
        },
        Wire::PaymentCaptured(p) => Payload::PaymentCaptured {
            session_id: text(p.session_id, "session_id")?,
            amount_cents: present(p.amount_cents, "amount_cents")?,
        },
        Wire::PaymentDeclined(p) => {
            Payload::PaymentDeclined { session_id: text(p.session_id, "session_id")?, reason: p.reason }
        }
        Wire::RestockDelivered(p) => Payload::RestockDelivered {
            order_id: text(p.order_id, "order_id")?,
            sku: text(p.sku, "sku")?,
            qty: present(p.qty, "qty")?,
        },
        Wire::StockCounted(p) => Payload::StockCounted { sku: text(p.sku, "sku")?, qty: present(p.qty, "qty")? },
        Wire::PriceChanged(p) => Payload::PriceChanged {
            sku: text(p.sku, "sku")?,
            price_cents: present(p.price_cents, "price_cents")?,
            fridge_id: match p.fridge_id {
                Some(id) => Some(text(id, "fridge_id")?),
                None => None,
            },
        },
        Wire::FridgeRegistered(p) => Payload::FridgeRegistered {
            fridge_id: text(p.fridge_id, "fridge_id")?,
            region: text(p.region, "region")?,
            site: text(p.site, "site")?,
        },
        Wire::PlanogramSet(p) => Payload::PlanogramSet {
            fridge_id: text(p.fridge_id, "fridge_id")?,
            sku: text(p.sku, "sku")?,
            par: present(p.par, "par")?,
            min: present(p.min, "min")?,
            perishable: present(p.perishable, "perishable")?,
        },
    };
    Ok(Event { source_id, incarnation: 0, seq: event.seq, event_time: event.event_time_us, payload })
}

/// Applies every acceptance rule to an event received from `principal`
/// when the gateway clock read `now_us`.
pub fn accept(event: &proto::Event, principal: &Principal, now_us: i64) -> Result<Event, Rejection> {
    let decoded = decode(event.clone())?;
    check_ids(&decoded)?;
    if decoded.source_id != principal.source_id() {
        return Err(Rejection::new(
            RejectReason::WrongSource,
            format!("source_id {:?} is not the authenticated {:?}", decoded.source_id, principal.source_id()),
        ));
    }
    let kind = decoded.kind();
    if kind.is_back_office() != matches!(principal, Principal::BackOffice(_)) {
        return Err(Rejection::new(
            RejectReason::WrongPublisher,
            format!("{} events cannot be published by {principal}", kind.as_str()),
        ));
    }
    if decoded.event_time > now_us.saturating_add(MAX_CLOCK_SKEW_US) {
        return Err(Rejection::new(
            RejectReason::FutureEventTime,
            format!(
                "event_time is {} s ahead of the gateway clock (the limit is 300 s)",
                (decoded.event_time - now_us) / 1_000_000
            ),
        ));
    }
    check_ranges(&decoded.payload)?;
    Ok(decoded)
}

/// Every id an event names follows the id rule. Only new events are
/// checked: records already in the log stay readable.
fn check_ids(event: &Event) -> Result<(), Rejection> {
    let check = |id: &str, field: &str| {
        if crate::auth::valid_id(id) {
            Ok(())
        } else {
            Err(malformed(format!("{field} {id:?} is not an id ({})", crate::auth::ID_RULE)))
        }
    };
    check(&event.source_id, "source_id")?;
    match &event.payload {
        Payload::PriceChanged { fridge_id: Some(fridge_id), .. }
        | Payload::FridgeRegistered { fridge_id, .. }
        | Payload::PlanogramSet { fridge_id, .. } => check(fridge_id, "fridge_id"),
        _ => Ok(()),
    }
}

fn check_ranges(payload: &Payload) -> Result<(), Rejection> {
    let qty = |qty: i64, low: i64| {
        if (low..=MAX_QTY).contains(&qty) {
            Ok(())
        } else {
            Err(Rejection::new(RejectReason::InvalidQty, format!("qty {qty} is not in {low}..={MAX_QTY}")))
        }
    };
    let money = |cents: i64, field: &str| {
        if cents < 0 {
            Err(Rejection::new(RejectReason::NegativeMoney, format!("{field} {cents} is negative")))
        } else if cents > MAX_MONEY_CENTS {
            Err(Rejection::new(
                RejectReason::MoneyOutOfRange,
                format!("{field} {cents} is above the limit of {MAX_MONEY_CENTS} cents"),
            ))
        } else {
            Ok(())
        }
    };
    match payload {
        Payload::ItemTaken { qty: q, .. }
        | Payload::ItemReturned { qty: q, .. }
        | Payload::RestockDelivered { qty: q, .. } => qty(*q, 1),
        // An audit may find an empty shelf.
        Payload::StockCounted { qty: q, .. } => qty(*q, 0),
        Payload::PaymentAuthorized { amount_cents, .. } | Payload::PaymentCaptured { amount_cents, .. } => {
            money(*amount_cents, "amount_cents")
        }
        Payload::PriceChanged { price_cents, .. } => money(*price_cents, "price_cents"),
        Payload::PlanogramSet { par, min, .. } => {
            if !(0..=MAX_QTY).contains(par) || !(0..=MAX_QTY).contains(min) {
                Err(Rejection::new(
                    RejectReason::InvalidQty,
                    format!("par {par} and min {min} must be in 0..={MAX_QTY}"),
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Translates a domain event to the wire format (the simulator and tests
/// build events in the domain model).
pub fn encode(event: &Event) -> proto::Event {
    let payload = match &event.payload {
        Payload::Telemetry { temperature_c, door_open } => {
            Wire::Telemetry(proto::Telemetry { temperature_c: Some(temperature_c.0), door_open: Some(*door_open) })
        }
        Payload::DoorOpened { session_id } => Wire::DoorOpened(proto::DoorOpened { session_id: session_id.clone() }),
        Payload::ItemTaken { session_id, sku, qty } => {
            Wire::ItemTaken(proto::ItemTaken { session_id: session_id.clone(), sku: sku.clone(), qty: Some(*qty) })
        }
        Payload::ItemReturned { session_id, sku, qty } => Wire::ItemReturned(proto::ItemReturned {
            session_id: session_id.clone(),
            sku: sku.clone(),
            qty: Some(*qty),
        }),
        Payload::DoorClosed { session_id } => Wire::DoorClosed(proto::DoorClosed { session_id: session_id.clone() }),
        Payload::PaymentAuthorized { session_id, amount_cents } => Wire::PaymentAuthorized(proto::PaymentAuthorized {
            session_id: session_id.clone(),
            amount_cents: Some(*amount_cents),
        }),
        Payload::PaymentCaptured { session_id, amount_cents } => Wire::PaymentCaptured(proto::PaymentCaptured {
            session_id: session_id.clone(),
            amount_cents: Some(*amount_cents),
        }),
        Payload::PaymentDeclined { session_id, reason } => {
            Wire::PaymentDeclined(proto::PaymentDeclined { session_id: session_id.clone(), reason: reason.clone() })
        }
        Payload::RestockDelivered { order_id, sku, qty } => Wire::RestockDelivered(proto::RestockDelivered {
            order_id: order_id.clone(),
            sku: sku.clone(),
            qty: Some(*qty),
        }),
        Payload::StockCounted { sku, qty } => {
            Wire::StockCounted(proto::StockCounted { sku: sku.clone(), qty: Some(*qty) })
        }
        Payload::PriceChanged { sku, price_cents, fridge_id } => Wire::PriceChanged(proto::PriceChanged {
            sku: sku.clone(),
            price_cents: Some(*price_cents),
            fridge_id: fridge_id.clone(),
        }),
        Payload::FridgeRegistered { fridge_id, region, site } => Wire::FridgeRegistered(proto::FridgeRegistered {
            fridge_id: fridge_id.clone(),
            region: region.clone(),
            site: site.clone(),
        }),
        Payload::PlanogramSet { fridge_id, sku, par, min, perishable } => Wire::PlanogramSet(proto::PlanogramSet {
            fridge_id: fridge_id.clone(),
            sku: sku.clone(),
            par: Some(*par),
            min: Some(*min),
            perishable: Some(*perishable),
        }),
    };
    proto::Event {
        source_id: event.source_id.clone(),
        seq: event.seq,
        event_time_us: event.event_time,
        payload: Some(payload),
    }
}

/// The `kind` name of a wire payload, for the dead-letter table.
pub fn wire_kind(event: &proto::Event) -> Option<&'static str> {
    let kind = match event.payload.as_ref()? {
        Wire::Telemetry(_) => "telemetry",
        Wire::DoorOpened(_) => "door_opened",
        Wire::ItemTaken(_) => "item_taken",
        Wire::ItemReturned(_) => "item_returned",
        Wire::DoorClosed(_) => "door_closed",
        Wire::PaymentAuthorized(_) => "payment_authorized",
        Wire::PaymentCaptured(_) => "payment_captured",
        Wire::PaymentDeclined(_) => "payment_declined",
        Wire::RestockDelivered(_) => "restock_delivered",
        Wire::StockCounted(_) => "stock_counted",
        Wire::PriceChanged(_) => "price_changed",
        Wire::FridgeRegistered(_) => "fridge_registered",
        Wire::PlanogramSet(_) => "planogram_set",
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    fn taken(qty: Option<i64>) -> proto::Event {
        proto::Event {
            source_id: "FR-1".into(),
            seq: 1,
            event_time_us: NOW,
            payload: Some(Wire::ItemTaken(proto::ItemTaken { session_id: "s".into(), sku: "cola".into(), qty })),
        }
    }

    fn code(event: &proto::Event, principal: &Principal) -> Option<RejectReason> {
        accept(event, principal, NOW).err().map(|r| r.code)
    }

    #[test]
    fn each_rule_has_its_reason() {
        let fridge = Principal::Fridge("FR-1".into());
        assert_eq!(code(&taken(Some(3)), &fridge), None);
        assert_eq!(code(&taken(None), &fridge), Some(RejectReason::Malformed));
        assert_eq!(code(&taken(Some(0)), &fridge), Some(RejectReason::InvalidQty));
        assert_eq!(code(&taken(Some(1001)), &fridge), Some(RejectReason::InvalidQty));
        assert_eq!(code(&taken(Some(3)), &Principal::Fridge("FR-2".into())), Some(RejectReason::WrongSource));
        assert_eq!(code(&taken(Some(3)), &Principal::BackOffice("FR-1".into())), Some(RejectReason::WrongPublisher));
        let mut future = taken(Some(3));
        future.event_time_us = NOW + MAX_CLOCK_SKEW_US + 1;
        assert_eq!(code(&future, &fridge), Some(RejectReason::FutureEventTime));
        future.event_time_us = NOW + MAX_CLOCK_SKEW_US;
        assert_eq!(code(&future, &fridge), None);
        let mut none = taken(Some(3));
        none.payload = None;
        assert_eq!(code(&none, &fridge), Some(RejectReason::UnknownPayload));
        let captured = proto::Event {
            payload: Some(Wire::PaymentCaptured(proto::PaymentCaptured {
                session_id: "s".into(),
                amount_cents: Some(-1),
            })),
            ..taken(Some(1))
        };
        assert_eq!(code(&captured, &fridge), Some(RejectReason::NegativeMoney));
    }

    #[test]
    fn an_empty_shelf_can_be_counted() {
        let counted = proto::Event {
            payload: Some(Wire::StockCounted(proto::StockCounted { sku: "cola".into(), qty: Some(0) })),
            ..taken(Some(1))
        };
        assert!(accept(&counted, &Principal::Fridge("FR-1".into()), NOW).is_ok());
    }

    #[test]
    fn encode_and_decode_round_trip() {
        let event = decode(taken(Some(4))).expect("valid");
        assert_eq!(decode(encode(&event)).expect("valid"), event);
    }
}
