//! Events as the dataflows see them: an envelope and one payload, already
//! validated by the gateway (quantities in range, money non-negative).

use serde::{Deserialize, Serialize};

/// One accepted event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// The fridge id for fridge events, the back-office client id otherwise.
    pub source_id: String,
    /// The source's incarnation: raised whenever its seq counter restarts
    /// (a wiped flash), 0 when the source does not say.
    pub incarnation: u64,
    /// Strictly increasing per source and incarnation, starting at 1.
    pub seq: u64,
    /// When it happened, in microseconds since the Unix epoch (UTC).
    pub event_time: i64,
    /// What happened.
    pub payload: Payload,
}

/// A temperature in degrees Celsius, ordered totally so that readings can
/// live in differential collections.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Temperature(pub f32);

impl PartialEq for Temperature {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Temperature {}
impl PartialOrd for Temperature {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Temperature {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for Temperature {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

/// The payload of an event: see DOMAIN.md, "Events".
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // the fields are the domain's own words
pub enum Payload {
    Telemetry { temperature_c: Temperature, door_open: bool },
    DoorOpened { session_id: String },
    ItemTaken { session_id: String, sku: String, qty: i64 },
    ItemReturned { session_id: String, sku: String, qty: i64 },
    DoorClosed { session_id: String },
    PaymentAuthorized { session_id: String, amount_cents: i64 },
    PaymentCaptured { session_id: String, amount_cents: i64 },
    PaymentDeclined { session_id: String, reason: String },
    RestockDelivered { order_id: String, sku: String, qty: i64 },
    StockCounted { sku: String, qty: i64 },
    PriceChanged { sku: String, price_cents: i64, fridge_id: Option<String> },
    FridgeRegistered { fridge_id: String, region: String, site: String },
    PlanogramSet { fridge_id: String, sku: String, par: i64, min: i64, perishable: bool },
}

/// The kind of a payload, as named in the Parquet `kind` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum EventKind {
    Telemetry,
    DoorOpened,
    ItemTaken,
    ItemReturned,
    DoorClosed,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    RestockDelivered,
    StockCounted,
    PriceChanged,
    FridgeRegistered,
    PlanogramSet,
}

impl EventKind {
    /// The name used in the Parquet `kind` column and in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Telemetry => "telemetry",
            EventKind::DoorOpened => "door_opened",
            EventKind::ItemTaken => "item_taken",
            EventKind::ItemReturned => "item_returned",
            EventKind::DoorClosed => "door_closed",
            EventKind::PaymentAuthorized => "payment_authorized",
            EventKind::PaymentCaptured => "payment_captured",
            EventKind::PaymentDeclined => "payment_declined",
            EventKind::RestockDelivered => "restock_delivered",
            EventKind::StockCounted => "stock_counted",
            EventKind::PriceChanged => "price_changed",
            EventKind::FridgeRegistered => "fridge_registered",
            EventKind::PlanogramSet => "planogram_set",
        }
    }

    /// Whether events of this kind come from the back office rather than a fridge.
    pub fn is_back_office(self) -> bool {
        matches!(self, EventKind::PriceChanged | EventKind::FridgeRegistered | EventKind::PlanogramSet)
    }
}

impl Payload {
    /// The kind of this payload.
    pub fn kind(&self) -> EventKind {
        match self {
            Payload::Telemetry { .. } => EventKind::Telemetry,
            Payload::DoorOpened { .. } => EventKind::DoorOpened,
            Payload::ItemTaken { .. } => EventKind::ItemTaken,
            Payload::ItemReturned { .. } => EventKind::ItemReturned,
            Payload::DoorClosed { .. } => EventKind::DoorClosed,
            Payload::PaymentAuthorized { .. } => EventKind::PaymentAuthorized,
            Payload::PaymentCaptured { .. } => EventKind::PaymentCaptured,
            Payload::PaymentDeclined { .. } => EventKind::PaymentDeclined,
            Payload::RestockDelivered { .. } => EventKind::RestockDelivered,
            Payload::StockCounted { .. } => EventKind::StockCounted,
            Payload::PriceChanged { .. } => EventKind::PriceChanged,
            Payload::FridgeRegistered { .. } => EventKind::FridgeRegistered,
            Payload::PlanogramSet { .. } => EventKind::PlanogramSet,
        }
    }
}

impl Event {
    /// The fridge this event concerns: the source for fridge events, the
    /// named fridge for back-office events, `None` for a global price change.
    pub fn fridge_id(&self) -> Option<&str> {
        match &self.payload {
            Payload::PriceChanged { fridge_id, .. } => fridge_id.as_deref(),
            Payload::FridgeRegistered { fridge_id, .. } | Payload::PlanogramSet { fridge_id, .. } => Some(fridge_id),
            _ => Some(&self.source_id),
        }
    }

    /// The kind of this event's payload.
    pub fn kind(&self) -> EventKind {
        self.payload.kind()
    }
}

/// Microseconds in one minute, for event-time arithmetic.
pub const MINUTE_US: i64 = 60_000_000;
/// Microseconds in one hour.
pub const HOUR_US: i64 = 60 * MINUTE_US;
/// Microseconds in one day.
pub const DAY_US: i64 = 24 * HOUR_US;
