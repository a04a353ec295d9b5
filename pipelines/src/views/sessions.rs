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
//! A payment result counts when it is at most the payment wait
//! (`views.payment_wait_hours`, default 72) after the session's DoorClosed
//! by event time: card networks batch captures, so a closed session is held
//! that long whatever the horizon, and a result in the window settles it
//! even when the fridge's newer events have moved the horizon past it. A
//! result later than the window changes nothing.
//!
//! Status, in order of precedence: `open` (no DoorClosed), `empty` (closed,
//! every basket line 0), `unpriced` (a basket SKU had no price in effect;
//! expected is null), `awaiting_payment`, `unpaid` (declined), `settled`,
//! `undercharged`, `overcharged` (captured vs expected).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use differential_dataflow::collection::VecCollection;
use serde::de::{self, SeqAccess};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::HOUR_US;
use crate::operators::{FridgeState, OperatorHooks, Shared, beyond_horizon, by_fridge_in_time_order_with};
use crate::vec_map::VecMap;
use crate::views::{Keyed, ViewConfig};
use crate::{Event, Payload, Time};

mod cold;

use cold::ColdSessions;

use crate::varint::{ByteBuf, Layout, field, read_layout};

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
    /// Every status.
    pub const ALL: [SessionStatus; 8] = [
        SessionStatus::Open,
        SessionStatus::Empty,
        SessionStatus::Unpriced,
        SessionStatus::AwaitingPayment,
        SessionStatus::Unpaid,
        SessionStatus::Settled,
        SessionStatus::Undercharged,
        SessionStatus::Overcharged,
    ];

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

/// What one event tells its session.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) enum Fact {
    /// DoorOpened or PaymentAuthorized: the session exists.
    Named,
    /// DoorClosed, with its seq.
    Closed(u64),
    /// Units of a SKU taken (positive) or returned (negative).
    Item(String, i64),
    /// A capture (`Some(amount)`) or a decline, with its seq.
    Payment(u64, Option<i64>),
}

/// `(session_id, event_time, fact)` of a session event, keyed by its fridge.
pub(crate) type Sighting = (String, i64, Fact);

pub(crate) fn sighting(event: Event) -> Option<(String, Sighting)> {
    let Event { source_id, seq, event_time, payload, .. } = event;
    let (session_id, fact) = match payload {
        Payload::DoorOpened { session_id } | Payload::PaymentAuthorized { session_id, .. } => (session_id, Fact::Named),
        Payload::DoorClosed { session_id } => (session_id, Fact::Closed(seq)),
        Payload::ItemTaken { session_id, sku, qty } => (session_id, Fact::Item(sku, qty)),
        Payload::ItemReturned { session_id, sku, qty } => (session_id, Fact::Item(sku, -qty)),
        Payload::PaymentCaptured { session_id, amount_cents } => (session_id, Fact::Payment(seq, Some(amount_cents))),
        Payload::PaymentDeclined { session_id, .. } => (session_id, Fact::Payment(seq, None)),
        _ => return None,
    };
    Some((source_id, (session_id, event_time, fact)))
}

/// A price change: `(sku, fridge of an override or None, (event_time, seq, cents))`.
pub type PriceChange = (String, Option<String>, (i64, u64, i64));

pub(crate) fn price(event: &Event) -> Option<PriceChange> {
    match &event.payload {
        Payload::PriceChanged { sku, price_cents, fridge_id } => {
            Some((sku.clone(), fridge_id.clone(), (event.event_time, event.seq, *price_cents)))
        }
        _ => None,
    }
}

/// Versions of one price, `(event_time, seq, cents)` with multiplicities.
type Versions = BTreeMap<(i64, u64, i64), isize>;

/// Every price version ever set, global and per fridge: a handful per SKU,
/// kept whole so that a late price change can re-price the sessions it
/// reaches.
#[derive(Default, Serialize, Deserialize)]
pub struct PriceList {
    /// `sku → (global versions, fridge → its own versions)`.
    skus: HashMap<String, (Versions, HashMap<String, Versions>)>,
}

impl PriceList {
    /// The price of `sku` in `fridge` in effect at `at`: the fridge's own
    /// latest version at or before `at`, else the global one.
    fn at(&self, fridge: &str, sku: &str, at: i64) -> Option<i64> {
        let (global, own) = self.skus.get(sku)?;
        let in_effect =
            |versions: &Versions| versions.range(..=(at, u64::MAX, i64::MAX)).next_back().map(|(&(_, _, c), _)| c);
        own.get(fridge).and_then(in_effect).or_else(|| in_effect(global))
    }
}

impl Shared for PriceList {
    type Change = PriceChange;

    fn update(&mut self, changes: &[(PriceChange, isize)]) {
        for ((sku, owner, version), diff) in changes {
            let (global, own) = self.skus.entry(sku.clone()).or_default();
            let versions = match owner {
                Some(fridge) => own.entry(fridge.clone()).or_default(),
                None => global,
            };
            let count = versions.entry(*version).or_insert(0);
            *count += diff;
            if *count == 0 {
                versions.remove(version);
            }
        }
    }
}

/// The payment result that counts: the latest of those at most `wait`
/// after the close (all of them while the session is open).
fn counting_result(
    closed_at: Option<(i64, u64)>,
    results: impl IntoIterator<Item = PaymentResult>,
    wait: i64,
) -> Option<PaymentResult> {
    let deadline = closed_at.map_or(i64::MAX, |(at, _)| at.saturating_add(wait));
    results.into_iter().filter(|(at, _, _)| *at <= deadline).max()
}

/// Decides a session's row from its latest close, its basket lines
/// `(qty, price at the close)` and its counting payment result.
fn decide(
    closed_at: Option<(i64, u64)>,
    lines: impl IntoIterator<Item = (i64, Option<i64>)>,
    payment: Option<PaymentResult>,
) -> SessionRow {
    let (mut units, mut expected, mut unpriced, mut items) = (0i64, 0i64, false, false);
    for (qty, price) in lines {
        if qty != 0 {
            items = true;
            units += qty;
            match price {
                Some(p) => expected += qty * p,
                None => unpriced = true,
            }
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

/// One session's facts, as multisets so that any change can be undone.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Session {
    /// Events naming the session: it exists while this is positive.
    events: isize,
    closes: VecMap<(i64, u64), isize>,
    payments: VecMap<PaymentResult, isize>,
    /// `sku → taken − returned`.
    basket: VecMap<String, i64>,
    /// The latest event time of the session.
    last: i64,
    /// The row and the revenue contribution currently in the output.
    row: Option<SessionRow>,
    earned: Option<Earned>,
}

/// A session's share of revenue: `(hour, cents, units)`.
type Earned = (i64, i64, i64);

impl Session {
    fn add(&mut self, at: i64, fact: &Fact, diff: isize) {
        self.events += diff;
        self.last = self.last.max(at);
        match fact {
            Fact::Named => {}
            Fact::Closed(seq) => *self.closes.value_mut(&(at, *seq)) += diff,
            Fact::Item(sku, qty) => *self.basket.value_mut(sku.as_str()) += qty * diff as i64,
            Fact::Payment(seq, amount) => *self.payments.value_mut(&(at, *seq, *amount)) += diff,
        }
        self.closes.retain(|_, n| *n != 0);
        self.payments.retain(|_, n| *n != 0);
    }

    /// The records the session holds, as [`FridgeState::held`] counts them.
    fn held(&self) -> usize {
        1 + self.closes.len() + self.payments.len() + self.basket.len()
    }

    /// The event time of the latest DoorClosed, if any.
    fn closed_at(&self) -> Option<i64> {
        self.closes.keys().next_back().map(|&(at, _)| at)
    }

    /// The row and revenue share the facts give, at today's prices.
    fn decide(&self, fridge: &str, prices: &PriceList, wait: i64) -> Option<(SessionRow, Option<Earned>)> {
        if self.events <= 0 {
            return None;
        }
        let closed_at = self.closes.keys().next_back().copied();
        let payment = counting_result(closed_at, self.payments.keys().copied(), wait);
        let lines = self.basket.iter().map(|(sku, &qty)| (qty, closed_at.and_then(|(t, _)| prices.at(fridge, sku, t))));
        let row = decide(closed_at, lines, payment);
        let earned = match payment {
            Some((t, _, Some(cents))) => Some((t - t.rem_euclid(HOUR_US), cents, row.units)),
            _ => None,
        };
        Some((row, earned))
    }
}

/// `(fridge_id, hour start in µs)`.
pub type RevenueKey = (String, i64);

/// A fridge-hour's revenue: `(captured_cents, sessions, units)`.
pub type Totals = (i64, i64, i64);

/// A change of the sessions operator: a session row or a revenue row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SessionChange {
    /// `sessions(fridge_id, session_id) → row`.
    Session(SessionKey, SessionRow),
    /// `revenue(fridge_id, hour) → (captured_cents, sessions, units)`.
    Revenue(RevenueKey, (i64, i64, i64)),
}

/// One fridge's sessions within the horizon, and the revenue hours they
/// can still change.
///
/// Sessions whose latest event is behind the horizon are packed
/// ([`ColdSessions`]) and unpacked when an event or a price change reaches
/// them. A checkpoint holds them packed, their bytes as they are (see
/// [`PACKED`]); one taken before they were holds every session unpacked
/// ([`Stored`]) and restores as well.
struct FridgeSessions {
    horizon_us: i64,
    payment_wait_us: i64,
    latest: i64,
    /// Events before this time are beyond the horizon and not applied.
    floor: i64,
    /// Sessions with an event at or after the floor, each boxed so that
    /// the map's slots stay small.
    sessions: HashMap<String, Box<Session>>,
    /// The others.
    cold: ColdSessions,
    /// `hour → (captured_cents, sessions, units)` as in the output.
    revenue: BTreeMap<i64, (i64, i64, i64)>,
    /// The records `sessions` hold, kept as they change: summing them
    /// for every update would visit every session of the fridge.
    held: usize,
}

/// The first field of a checkpointed fridge's sessions in the packed
/// layout: `(PACKED, horizon_us, payment_wait_us, latest, floor, sessions
/// within the horizon, packed sessions, revenue)`. The earlier layout
/// ([`Stored`]) starts with the horizon, which is never this.
const PACKED: i64 = i64::MIN;

/// A fridge's sessions as checkpoints held them before sessions were
/// packed.
struct Stored {
    horizon_us: i64,
    payment_wait_us: i64,
    latest: i64,
    floor: i64,
    sessions: HashMap<String, Box<Session>>,
    revenue: BTreeMap<i64, (i64, i64, i64)>,
}

impl From<Stored> for FridgeSessions {
    fn from(stored: Stored) -> FridgeSessions {
        let Stored { horizon_us, payment_wait_us, latest, floor, sessions, revenue } = stored;
        let held = sessions.values().map(|session| session.held()).sum();
        let mut state = FridgeSessions {
            horizon_us,
            payment_wait_us,
            latest,
            floor,
            sessions,
            cold: ColdSessions::default(),
            revenue,
            held,
        };
        state.pack();
        state.sessions.shrink_to_fit();
        state
    }
}

impl Serialize for FridgeSessions {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut layout = serializer.serialize_tuple(8)?;
        layout.serialize_element(&PACKED)?;
        layout.serialize_element(&self.horizon_us)?;
        layout.serialize_element(&self.payment_wait_us)?;
        layout.serialize_element(&self.latest)?;
        layout.serialize_element(&self.floor)?;
        layout.serialize_element(&self.sessions)?;
        layout.serialize_element(&self.cold.stored())?;
        layout.serialize_element(&self.revenue)?;
        layout.end()
    }
}

impl<'de> Deserialize<'de> for FridgeSessions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        read_layout(deserializer, 8)
    }
}

impl Layout for FridgeSessions {
    const WHAT: &'static str = "a fridge's sessions";

    fn read<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<FridgeSessions, A::Error> {
        const WHAT: &str = FridgeSessions::WHAT;
        let first: i64 = field(&mut seq, WHAT)?;
        if first != PACKED {
            let stored = Stored {
                horizon_us: first,
                payment_wait_us: field(&mut seq, WHAT)?,
                latest: field(&mut seq, WHAT)?,
                floor: field(&mut seq, WHAT)?,
                sessions: field(&mut seq, WHAT)?,
                revenue: field(&mut seq, WHAT)?,
            };
            return Ok(FridgeSessions::from(stored));
        }
        let (horizon_us, payment_wait_us, latest, floor) =
            (field(&mut seq, WHAT)?, field(&mut seq, WHAT)?, field(&mut seq, WHAT)?, field(&mut seq, WHAT)?);
        let sessions: HashMap<String, Box<Session>> = field(&mut seq, WHAT)?;
        let (bytes, skus): (ByteBuf, Vec<String>) = field(&mut seq, WHAT)?;
        let cold = ColdSessions::restore(bytes.0, skus).map_err(de::Error::custom)?;
        let revenue = field(&mut seq, WHAT)?;
        let held = sessions.values().map(|session| session.held()).sum();
        Ok(FridgeSessions { horizon_us, payment_wait_us, latest, floor, sessions, cold, revenue, held })
    }
}

impl FridgeSessions {
    /// A fridge with no sessions yet.
    fn new(horizon_us: i64, payment_wait_us: i64) -> FridgeSessions {
        FridgeSessions {
            horizon_us,
            payment_wait_us,
            latest: i64::MIN,
            floor: i64::MIN,
            sessions: HashMap::new(),
            cold: ColdSessions::default(),
            revenue: BTreeMap::new(),
            held: 0,
        }
    }

    /// Re-decides `ids` and pushes the changes of their rows and hours.
    fn refresh<'a>(
        &mut self,
        fridge: &str,
        ids: impl IntoIterator<Item = &'a String>,
        prices: &PriceList,
        out: &mut Vec<(SessionChange, isize)>,
    ) {
        let mut hours: BTreeMap<i64, (i64, i64, i64)> = BTreeMap::new();
        for id in ids {
            let Some(session) = self.sessions.get_mut(id) else { continue };
            let now = session.decide(fridge, prices, self.payment_wait_us);
            let (row, earned) = now.map_or((None, None), |(row, earned)| (Some(row), earned));
            if row != session.row {
                let key = (fridge.to_owned(), id.clone());
                if let Some(old) = session.row.take() {
                    out.push((SessionChange::Session(key.clone(), old), -1));
                }
                if let Some(new) = &row {
                    out.push((SessionChange::Session(key, new.clone()), 1));
                }
                session.row = row;
            }
            if earned != session.earned {
                for ((hour, cents, units), sign) in
                    session.earned.iter().map(|e| (e, -1)).chain(earned.iter().map(|e| (e, 1)))
                {
                    let delta = hours.entry(*hour).or_insert((0, 0, 0));
                    delta.0 += sign * cents;
                    delta.1 += sign;
                    delta.2 += sign * units;
                }
                session.earned = earned;
            }
            if session.events <= 0 {
                self.held -= session.held();
                self.sessions.remove(id);
            }
        }
        for (hour, (cents, count, units)) in hours {
            let key = (fridge.to_owned(), hour);
            let before = self.revenue.get(&hour).copied();
            let after = before.unwrap_or((0, 0, 0));
            let after = (after.0 + cents, after.1 + count, after.2 + units);
            if before == Some(after) {
                continue;
            }
            if let Some(old) = before {
                out.push((SessionChange::Revenue(key.clone(), old), -1));
            }
            if after.1 != 0 {
                out.push((SessionChange::Revenue(key, after), 1));
                self.revenue.insert(hour, after);
            } else {
                self.revenue.remove(&hour);
            }
        }
    }

    /// Forgets sessions whose latest event is more than twice the horizon
    /// behind (closed ones once their payment wait has passed the floor
    /// too), packs those behind the floor, and forgets revenue hours that
    /// no session held can change.
    fn retire(&mut self) {
        let floor = self.latest.saturating_sub(self.horizon_us);
        if floor < self.floor.saturating_add(self.horizon_us / 8) {
            return;
        }
        self.floor = floor;
        self.pack();
        let held: BTreeSet<i64> = self.sessions.values().filter_map(|s| s.earned.map(|(hour, _, _)| hour)).collect();
        let cold = &self.cold;
        self.revenue.retain(|hour, _| hour + HOUR_US > floor || held.contains(hour) || cold.earns_in(*hour));
    }

    /// Packs the sessions whose latest event is behind the floor, and
    /// forgets those that nothing can change any more.
    fn pack(&mut self) {
        let floor = self.floor;
        let retired = floor.saturating_sub(self.horizon_us);
        let wait = self.payment_wait_us;
        let keep = |last: i64, closed: Option<i64>| {
            last >= retired || closed.is_some_and(|closed| closed.saturating_add(wait) >= floor)
        };
        let (count, cold) = (&mut self.held, &mut self.cold);
        self.sessions.retain(|id, session| {
            if session.last >= floor {
                return true;
            }
            *count -= session.held();
            if keep(session.last, session.closed_at()) {
                cold.put(id, session);
            }
            false
        });
        self.cold.retain(keep);
        if self.sessions.capacity() > 4 * self.sessions.len().max(64) {
            self.sessions.shrink_to(2 * self.sessions.len());
        }
    }
}

impl FridgeState for FridgeSessions {
    type Input = Sighting;
    type Output = SessionChange;
    type Shared = PriceList;

    fn apply(
        &mut self,
        fridge: &str,
        _time: Time,
        inputs: &[(Sighting, isize)],
        prices: &PriceList,
        out: &mut Vec<(SessionChange, isize)>,
    ) {
        let mut touched = BTreeSet::new();
        let newest_before = self.latest;
        for ((id, at, fact), diff) in inputs {
            if *at < self.floor || beyond_horizon(*at, newest_before, self.horizon_us) {
                // Beyond the horizon, unless it is a payment result its
                // closed session still waits for.
                let closed_at = match self.sessions.get(id) {
                    Some(session) => session.closed_at(),
                    None => self.cold.closed_at(id),
                };
                let awaited = matches!(fact, Fact::Payment(..))
                    && closed_at.is_some_and(|closed| *at <= closed.saturating_add(self.payment_wait_us));
                if !awaited {
                    continue;
                }
            }
            self.latest = self.latest.max(*at);
            // The id is copied only for a session new to the map: a new
            // one, or one unpacked.
            let (session, before) = match self.sessions.get_mut(id.as_str()) {
                Some(session) => {
                    let before = session.held();
                    (session, before)
                }
                None => {
                    let unpacked = self.cold.take(id);
                    let before = unpacked.as_ref().map_or(0, Session::held);
                    self.held += before;
                    (self.sessions.entry(id.clone()).or_insert(Box::new(unpacked.unwrap_or_default())), before)
                }
            };
            session.add(*at, fact, *diff);
            self.held = self.held + session.held() - before;
            touched.insert(id);
        }
        self.refresh(fridge, touched, prices, out);
        self.retire();
    }

    fn reshare(
        &mut self,
        fridge: &str,
        _time: Time,
        changes: &[(PriceChange, isize)],
        prices: &PriceList,
        out: &mut Vec<(SessionChange, isize)>,
    ) {
        let reached = |session: &Session| {
            let Some(&(closed_at, _)) = session.closes.keys().next_back() else { return false };
            changes.iter().any(|((sku, owner, (at, _, _)), _)| {
                *at <= closed_at && owner.as_deref().is_none_or(|o| o == fridge) && session.basket.contains_key(sku)
            })
        };
        let mut ids: Vec<String> =
            self.sessions.iter().filter(|(_, session)| reached(session)).map(|(id, _)| id.clone()).collect();
        for (id, session) in self.cold.take_if(reached) {
            self.held += session.held();
            ids.push(id.clone());
            self.sessions.insert(id, Box::new(session));
        }
        self.refresh(fridge, &ids, prices, out);
    }

    fn held(&self) -> usize {
        self.held + self.cold.held() + self.revenue.len()
    }
}

/// Every session and the revenue of every fridge-hour, maintained
/// incrementally from the fridges' session events and the price changes.
///
/// A session is held until its latest event is more than twice `horizon_us`
/// behind its fridge's latest session event; an event more than the
/// horizon behind is beyond it and not applied. Revenue hours are held while
/// a new capture or a held session can still change them.
pub fn sessions_and_revenue<'s>(
    events: VecCollection<'s, Time, Event>,
    horizon_us: i64,
    payment_wait_us: i64,
    hooks: &OperatorHooks,
) -> (Keyed<'s, SessionKey, SessionRow>, Keyed<'s, RevenueKey, Totals>) {
    let prices = events.clone().flat_map(|event| price(&event));
    sessions_and_revenue_of(events.flat_map(sighting), prices, horizon_us, payment_wait_us, hooks)
}

/// [`sessions_and_revenue`] of the fridges' session events ([`sighting`])
/// and the price changes ([`price`]).
pub(crate) fn sessions_and_revenue_of<'s>(
    sightings: Keyed<'s, String, Sighting>,
    prices: VecCollection<'s, Time, PriceChange>,
    horizon_us: i64,
    payment_wait_us: i64,
    hooks: &OperatorHooks,
) -> (Keyed<'s, SessionKey, SessionRow>, Keyed<'s, RevenueKey, Totals>) {
    let new_state = move || FridgeSessions::new(horizon_us, payment_wait_us);
    let changes = by_fridge_in_time_order_with(sightings, prices, "sessions.sessions", new_state, hooks);
    let sessions = changes.clone().flat_map(|change| match change {
        SessionChange::Session(key, row) => Some((key, row)),
        SessionChange::Revenue(..) => None,
    });
    let revenue = changes.flat_map(|change| match change {
        SessionChange::Revenue(key, totals) => Some((key, totals)),
        SessionChange::Session(..) => None,
    });
    (sessions, revenue)
}

/// A session's facts as the batch reference gathers them.
#[derive(Default)]
struct Gathered {
    close: Option<(i64, u64)>,
    results: Vec<PaymentResult>,
    basket: BTreeMap<String, i64>,
}

/// Every session's facts, from the full list of events.
fn gather(events: &[Event]) -> BTreeMap<SessionKey, Gathered> {
    let mut sessions: BTreeMap<SessionKey, Gathered> = BTreeMap::new();
    for (fridge, (id, at, fact)) in events.iter().cloned().filter_map(sighting) {
        let session = sessions.entry((fridge, id)).or_default();
        match fact {
            Fact::Named => {}
            Fact::Closed(seq) => session.close = session.close.max(Some((at, seq))),
            Fact::Item(sku, qty) => *session.basket.entry(sku).or_insert(0) += qty,
            Fact::Payment(seq, amount) => session.results.push((at, seq, amount)),
        }
    }
    sessions
}

/// The batch reference of [`sessions_and_revenue`]'s sessions.
pub fn sessions_reference(events: &[Event], config: &ViewConfig) -> BTreeMap<SessionKey, SessionRow> {
    let prices: Vec<PriceChange> = events.iter().filter_map(price).collect();
    // The fridge's own latest version at or before `at`, else the global one.
    let price_at = |fridge: &str, sku: &str, at: i64| -> Option<i64> {
        let mut best: Option<(bool, i64, u64, i64)> = None;
        for (item, owner, (t, seq, cents)) in &prices {
            if item == sku && *t <= at && owner.as_deref().is_none_or(|o| o == fridge) {
                best = best.max(Some((owner.is_some(), *t, *seq, *cents)));
            }
        }
        best.map(|(_, _, _, cents)| cents)
    };
    gather(events)
        .into_iter()
        .map(|((fridge, id), session)| {
            let lines = session
                .basket
                .iter()
                .map(|(sku, &qty)| (qty, session.close.and_then(|(at, _)| price_at(&fridge, sku, at))));
            let payment = counting_result(session.close, session.results.iter().copied(), config.payment_wait_us);
            let row = decide(session.close, lines, payment);
            ((fridge, id), row)
        })
        .collect()
}

/// The batch reference of [`sessions_and_revenue`]'s revenue.
pub fn revenue_reference(events: &[Event], config: &ViewConfig) -> BTreeMap<RevenueKey, (i64, i64, i64)> {
    let mut revenue: BTreeMap<RevenueKey, (i64, i64, i64)> = BTreeMap::new();
    for ((fridge, _), session) in gather(events) {
        let payment = counting_result(session.close, session.results.iter().copied(), config.payment_wait_us);
        if let Some((at, _, Some(cents))) = payment {
            let units: i64 = session.basket.values().filter(|&&qty| qty != 0).sum();
            let entry = revenue.entry((fridge, at - at.rem_euclid(HOUR_US))).or_insert((0, 0, 0));
            entry.0 += cents;
            entry.1 += 1;
            entry.2 += units;
        }
    }
    revenue
}

view_with_exact_reference!(
    /// The `sessions` view.
    Sessions,
    sessions_reference,
    with config
);

view_with_exact_reference!(
    /// The `revenue` view.
    Revenue,
    revenue_reference,
    with config
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::{DAY_US, HOUR_US, MINUTE_US};
    use crate::fleet_gen;
    use crate::harness::{final_state, run_view};
    use crate::operators::HeldRecords;

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
        Event { source_id: source.into(), incarnation: 0, seq, event_time: minute * MINUTE_US, payload }
    }

    const WAIT: i64 = 72 * HOUR_US;

    fn reference(all: &[Event]) -> BTreeMap<SessionKey, SessionRow> {
        sessions_reference(all, &ViewConfig::default())
    }

    fn sessions_by_dataflow(workers: usize, arrivals: Vec<(Time, Vec<Event>)>) -> BTreeMap<SessionKey, SessionRow> {
        state(&run_view(workers, arrivals, |events: VecCollection<'_, Time, Event>| {
            sessions_and_revenue(events, DAY_US, WAIT, &OperatorHooks::default()).0
        }))
    }

    fn revenue_by_dataflow(workers: usize, arrivals: Vec<(Time, Vec<Event>)>) -> BTreeMap<RevenueKey, (i64, i64, i64)> {
        state(&run_view(workers, arrivals, |events: VecCollection<'_, Time, Event>| {
            sessions_and_revenue(events, DAY_US, WAIT, &OperatorHooks::default()).1
        }))
    }

    fn row(all: &[Event], session: &str) -> SessionRow {
        reference(all)[&("FR-1".to_owned(), session.to_owned())].clone()
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
            reference(&all).into_iter().map(|((_, s), row)| (s, row.status)).collect();
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
        assert_eq!(sessions_by_dataflow(1, vec![(3, all.clone())]), reference(&all));
        // The later decline replaced the capture of "unpaid": only "under" and "over" earn revenue.
        assert_eq!(
            revenue_reference(&all, &ViewConfig::default()),
            BTreeMap::from([(("FR-1".into(), 0), (240, 2, 2))])
        );
    }

    /// Ten days of a session an hour, arriving hour by hour, through a
    /// 2-hour horizon: finished sessions leave the operator's state but stay
    /// in the view, and a payment that comes days late is not applied.
    #[test]
    fn sessions_behind_the_horizon_are_retired_and_stay_in_the_view() {
        let price = at("bo", 1, 0, Payload::PriceChanged { sku: "cola".into(), price_cents: 100, fridge_id: None });
        let mut seq = 0;
        let mut next = |minute, payload| {
            seq += 1;
            at("FR-1", seq, minute, payload)
        };
        let mut hours: Vec<Vec<Event>> = Vec::new();
        for hour in 0..240 {
            let (s, m) = (format!("s{hour}"), hour * 60);
            hours.push(vec![
                next(m + 1, Payload::DoorOpened { session_id: s.clone() }),
                next(m + 2, Payload::ItemTaken { session_id: s.clone(), sku: "cola".into(), qty: 2 }),
                next(m + 3, Payload::DoorClosed { session_id: s.clone() }),
                next(m + 4, Payload::PaymentCaptured { session_id: s, amount_cents: 200 }),
            ]);
        }
        let late = next(5, Payload::PaymentDeclined { session_id: "s0".into(), reason: "card".into() });
        let all: Vec<Event> = std::iter::once(price.clone()).chain(hours.iter().flatten().cloned()).collect();
        let mut arrivals = vec![(1, vec![price])];
        arrivals.extend(hours.into_iter().enumerate().map(|(i, hour)| (i as Time + 2, hour)));
        arrivals.push((500, vec![late]));

        let held = HeldRecords::default();
        let counter = held.clone();
        let changes = run_view(1, arrivals, move |events: VecCollection<'_, Time, Event>| {
            // A payment wait of one hour: sessions retire soon after the horizon.
            let hooks = OperatorHooks { held: held.clone(), ..OperatorHooks::default() };
            sessions_and_revenue(events, 2 * HOUR_US, HOUR_US, &hooks).0
        });
        let sessions = state(&changes);
        assert_eq!(sessions.len(), 240);
        assert_eq!(sessions, reference(&all), "the late decline of s0 is beyond the horizon");
        assert_eq!(sessions[&("FR-1".into(), "s0".into())].status, SessionStatus::Settled);
        // About the last four hours of sessions and their revenue hours, not 240 of them.
        assert!(counter.get() <= 6 * 4 + 6, "{} records held", counter.get());
    }

    /// An end-of-day batch capture: it arrives a day after its session
    /// closed, when the fridge's newer sessions have moved the 2-hour horizon
    /// far past it. Within the payment wait it settles the session and earns
    /// its hour with the basket's units; a result beyond the wait changes
    /// nothing.
    #[test]
    fn a_capture_within_the_payment_wait_settles_its_session_whatever_the_horizon() {
        let price = at("bo", 1, 0, Payload::PriceChanged { sku: "cola".into(), price_cents: 100, fridge_id: None });
        let mut seq = 0;
        let mut next = |minute, payload| {
            seq += 1;
            at("FR-1", seq, minute, payload)
        };
        let mut day = vec![
            next(1, Payload::ItemTaken { session_id: "batch".into(), sku: "cola".into(), qty: 3 }),
            next(2, Payload::DoorClosed { session_id: "batch".into() }),
            next(3, Payload::ItemTaken { session_id: "never".into(), sku: "cola".into(), qty: 1 }),
            next(4, Payload::DoorClosed { session_id: "never".into() }),
        ];
        for hour in 1..=30 {
            let s = format!("s{hour}");
            day.push(next(hour * 60, Payload::DoorOpened { session_id: s.clone() }));
            day.push(next(hour * 60 + 1, Payload::DoorClosed { session_id: s }));
        }
        // Captured 24 hours after the close; the other result 73 hours after its close.
        let capture = next(2 + 24 * 60, Payload::PaymentCaptured { session_id: "batch".into(), amount_cents: 300 });
        let too_late = next(4 + 73 * 60, Payload::PaymentCaptured { session_id: "never".into(), amount_cents: 100 });
        let all: Vec<Event> =
            [price.clone()].into_iter().chain(day.iter().cloned()).chain([capture.clone(), too_late.clone()]).collect();
        let arrivals = vec![(1, vec![price]), (2, day), (3, vec![capture]), (4, vec![too_late])];
        let changes = run_view(1, arrivals.clone(), |events: VecCollection<'_, Time, Event>| {
            sessions_and_revenue(events, 2 * HOUR_US, WAIT, &OperatorHooks::default()).0
        });
        let sessions = state(&changes);
        assert_eq!(sessions, reference(&all));
        assert_eq!(sessions[&("FR-1".into(), "batch".into())].status, SessionStatus::Settled);
        assert_eq!(sessions[&("FR-1".into(), "never".into())].status, SessionStatus::AwaitingPayment);
        let revenue = state(&run_view(1, arrivals, |events: VecCollection<'_, Time, Event>| {
            sessions_and_revenue(events, 2 * HOUR_US, WAIT, &OperatorHooks::default()).1
        }));
        assert_eq!(revenue, BTreeMap::from([(("FR-1".into(), 24 * HOUR_US), (300, 1, 3))]));
        assert_eq!(revenue, revenue_reference(&all, &ViewConfig::default()));
    }

    /// A fridge's sessions over two days through a 1-hour horizon and a
    /// 10-hour payment wait: some within the horizon, most packed.
    fn two_days_of_sessions() -> FridgeSessions {
        let mut state = FridgeSessions::new(HOUR_US, 10 * HOUR_US);
        let (prices, mut out) = (PriceList::default(), Vec::new());
        for n in 0..2 * 24 * 6i64 {
            let (id, minute) = (format!("s{n}"), n * 10);
            let facts = [
                (minute, Fact::Named),
                (minute + 1, Fact::Item(["cola", "salad", "water"][n as usize % 3].into(), 1 + n % 2)),
                (minute + 2, Fact::Closed(n as u64)),
                (minute + 30, Fact::Payment(n as u64, (n % 4 != 0).then_some(180))),
            ];
            let inputs: Vec<(Sighting, isize)> =
                facts.into_iter().map(|(at, fact)| ((id.clone(), at * MINUTE_US, fact), 1)).collect();
            state.apply("FR-1", n as Time, &inputs, &prices, &mut out);
        }
        state
    }

    fn every_session(state: &FridgeSessions) -> BTreeMap<String, &Session> {
        state.sessions.iter().map(|(id, session)| (id.clone(), &**session)).collect()
    }

    /// A checkpoint holds the packed sessions as their bytes: it restores
    /// to the same sessions, packed and not, and is far smaller than the
    /// same sessions unpacked (the layout before).
    #[test]
    fn packed_sessions_are_checkpointed_as_they_are_and_restore() {
        let state = two_days_of_sessions();
        let packed_count = state.cold.sessions().count();
        assert!(packed_count > 4 * state.sessions.len(), "{packed_count} packed, {} not", state.sessions.len());
        let bytes = crate::checkpoint::encode(&state);
        let back: FridgeSessions = bincode::deserialize(&bytes).unwrap();
        assert_eq!(every_session(&back), every_session(&state));
        let packed =
            |s: &FridgeSessions| s.cold.sessions().map(|(id, s)| (id.to_owned(), s)).collect::<BTreeMap<_, _>>();
        assert_eq!(packed(&back), packed(&state));
        assert_eq!((back.held(), back.revenue.clone()), (state.held(), state.revenue.clone()));
        assert_eq!((back.latest, back.floor), (state.latest, state.floor));
        // The earlier layout of the same sessions.
        let unpacked = {
            let mut sessions: HashMap<String, Box<Session>> =
                state.sessions.iter().map(|(id, s)| (id.clone(), Box::new(copy(s)))).collect();
            sessions.extend(state.cold.sessions().map(|(id, s)| (id.to_owned(), Box::new(s))));
            let earlier =
                (state.horizon_us, state.payment_wait_us, state.latest, state.floor, sessions, &state.revenue);
            crate::checkpoint::encode(&earlier)
        };
        assert!(bytes.len() * 2 < unpacked.len(), "{} bytes packed, {} unpacked", bytes.len(), unpacked.len());
        // A checkpoint in the earlier layout restores to the same state.
        let earlier: FridgeSessions = bincode::deserialize(&unpacked).unwrap();
        assert_eq!(packed(&earlier), packed(&state));
        assert_eq!(every_session(&earlier), every_session(&state));
        assert_eq!(earlier.held(), state.held());
    }

    /// Bytes that do not hold packed sessions are refused with a reason,
    /// never a panic.
    #[test]
    fn damaged_packed_sessions_are_refused() {
        let state = two_days_of_sessions();
        let bytes = crate::checkpoint::encode(&state);
        let mut refused = 0;
        for cut in (bytes.len() / 2..bytes.len()).step_by(7) {
            refused += usize::from(bincode::deserialize::<FridgeSessions>(&bytes[..cut]).is_err());
        }
        assert!(refused > 0);
        for flip in (0..bytes.len()).step_by(13) {
            let mut damaged = bytes.clone();
            damaged[flip] ^= 0x5a;
            // Either refused or read as something: never a panic.
            let _ = bincode::deserialize::<FridgeSessions>(&damaged);
        }
    }

    fn copy(session: &Session) -> Session {
        bincode::deserialize(&bincode::serialize(session).unwrap()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn sessions_equal_the_reference((events, arrivals) in fleet_gen::shuffled(fleet_gen::commerce(50)), workers in 1usize..=2) {
            prop_assert_eq!(sessions_by_dataflow(workers, arrivals), reference(&events));
        }

        /// The count of held records kept as sessions change equals a count
        /// over every session, through new sessions, retractions that end
        /// one and sessions retired behind the horizon.
        #[test]
        fn the_held_count_follows_every_change((_, arrivals) in fleet_gen::shuffled(fleet_gen::commerce(50))) {
            let new_state = || FridgeSessions::new(5 * MINUTE_US, 10 * MINUTE_US);
            let (prices, mut out) = (PriceList::default(), Vec::new());
            let mut fridges: BTreeMap<String, FridgeSessions> = BTreeMap::new();
            for (time, events) in arrivals {
                let mut inputs: BTreeMap<String, Vec<(Sighting, isize)>> = BTreeMap::new();
                for (fridge, seen) in events.into_iter().filter_map(sighting) {
                    inputs.entry(fridge).or_default().push((seen, 1));
                }
                for (fridge, inputs) in inputs {
                    let state = fridges.entry(fridge.clone()).or_insert_with(new_state);
                    let retracted: Vec<(Sighting, isize)> = inputs.iter().map(|(seen, _)| (seen.clone(), -1)).collect();
                    for batch in [&inputs, &retracted, &inputs] {
                        state.apply(&fridge, time, batch, &prices, &mut out);
                        let counted = state.sessions.values().map(|session| session.held()).sum::<usize>()
                            + state.cold.sessions().map(|(_, session)| session.held()).sum::<usize>();
                        prop_assert_eq!(state.held + state.cold.held(), counted);
                    }
                }
            }
        }

        #[test]
        fn revenue_equals_the_reference((events, arrivals) in fleet_gen::shuffled(fleet_gen::commerce(50)), workers in 1usize..=2) {
            prop_assert_eq!(revenue_by_dataflow(workers, arrivals), revenue_reference(&events, &ViewConfig::default()));
        }
    }
}
