//! The COST baseline: one thread of plain Rust, hash maps and
//! sorted maps, that keeps all seven views of DOMAIN.md up to date event by
//! event, with the rules coldstream's dataflow follows:
//!
//! - a late event takes its place by event time: a late StockCounted
//!   supersedes the movements before it, a late reading re-splits its
//!   fridge's warm runs (an excursion can grow, split or vanish, and its
//!   write-off with it), a late capture re-settles its session;
//! - every change retracts what it replaces (a session's revenue moves from
//!   its old hour to its new one, a sale leaves the 7-day window);
//! - state is bounded by the horizon (`views.horizon_hours`): each fridge
//!   folds its stock movements more than the horizon behind its latest
//!   stock event into one value per SKU, keeps its readings back to the last
//!   cool one before the horizon, and retires sessions twice the horizon
//!   old once no payment result can reach them; an event behind those
//!   points is not applied, as in coldstream.
//!
//! After each event every view holds its current rows; [`Streaming::views`]
//! reads them out to compare with coldstream's, row for row.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Unbounded};

use coldstream_pipelines::event::HOUR_US;
use coldstream_pipelines::views::cold_chain::{EXCURSION_AFTER_US, WARM_ABOVE_C};
use coldstream_pipelines::views::{
    Alert, Excursion, ExcursionKey, InventoryKey, RevenueKey, SALES_WINDOW_US, SessionKey, SessionRow, SessionStatus,
    Slot, ViewConfig,
};
use coldstream_pipelines::{Event, Payload, Temperature, Time};

/// `(fridge_id, sku) → value`.
pub type ByShelf = BTreeMap<InventoryKey, i64>;

/// Every view's rows, as coldstream's consolidated output is compared.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rows {
    pub inventory: BTreeSet<(InventoryKey, i64)>,
    pub sessions: BTreeSet<(SessionKey, SessionRow)>,
    pub revenue: BTreeSet<(RevenueKey, (i64, i64, i64))>,
    pub sales_7d: BTreeSet<(InventoryKey, i64)>,
    pub excursions: BTreeSet<(ExcursionKey, Excursion)>,
    /// Restock lines as `((fridge, sku), units)`: an order's id is the
    /// logical time it opened, which differs between engines that decide at
    /// different moments.
    pub restock_lines: BTreeSet<(InventoryKey, i64)>,
    pub alerts: BTreeSet<Alert>,
}

impl Rows {
    /// The inventory: `(fridge, sku) → on hand`.
    pub fn inventory_by_shelf(&self) -> ByShelf {
        self.inventory.iter().cloned().collect()
    }

    /// `(view, rows)` of each view, in the order of coldstream's list.
    pub fn counts(&self) -> [(&'static str, usize); 7] {
        [
            ("inventory", self.inventory.len()),
            ("sessions", self.sessions.len()),
            ("revenue", self.revenue.len()),
            ("sales_7d", self.sales_7d.len()),
            ("excursions", self.excursions.len()),
            ("restock_orders", self.restock_lines.len()),
            ("alerts", self.alerts.len()),
        ]
    }

    /// The views where `other` differs, each with its first differing row.
    pub fn differences(&self, other: &Rows) -> Vec<String> {
        fn first<T: Ord + std::fmt::Debug>(view: &str, ours: &BTreeSet<T>, theirs: &BTreeSet<T>) -> Option<String> {
            let only_ours = ours.difference(theirs).next();
            let only_theirs = theirs.difference(ours).next();
            (only_ours.is_some() || only_theirs.is_some())
                .then(|| format!("{view}: only in the first {only_ours:?}, only in the second {only_theirs:?}"))
        }
        [
            first("inventory", &self.inventory, &other.inventory),
            first("sessions", &self.sessions, &other.sessions),
            first("revenue", &self.revenue, &other.revenue),
            first("sales_7d", &self.sales_7d, &other.sales_7d),
            first("excursions", &self.excursions, &other.excursions),
            first("restock_orders", &self.restock_lines, &other.restock_lines),
            first("alerts", &self.alerts, &other.alerts),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// `(event_time, seq)`: where an event sits in its fridge's order.
type Position = (i64, u64);
/// A payment result: `(event_time, seq, captured amount or None if declined)`.
type PaymentResult = (i64, u64, Option<i64>);
/// A price version's place: `(event_time, seq)` → cents.
type Versions = BTreeMap<Position, i64>;

/// One SKU of one fridge: its stock, its planogram, its sales and its line.
#[derive(Default)]
struct Shelf {
    /// On-hand as of the fold point; `None` if nothing was folded.
    base: Option<i64>,
    /// The latest StockCounted after the fold point: `(event_time, seq, qty)`.
    count: Option<(i64, u64, i64)>,
    /// `event_time → Σ quantity` of the movements after the fold point.
    movements: BTreeMap<i64, i64>,
    /// The inventory row.
    on_hand: Option<i64>,
    /// The latest PlanogramSet: `(event_time, seq, slot)`.
    plan: Option<(i64, u64, Slot)>,
    /// The perishable flag of each planogram version (for write-offs).
    perishable: BTreeMap<Position, bool>,
    /// The sales_7d row: `(units, takes and returns in the window)`.
    sold: (i64, usize),
    /// The restock line's units.
    line: Option<i64>,
}

impl Shelf {
    fn perishable_at(&self, at: i64) -> bool {
        self.perishable.range(..=(at, u64::MAX)).next_back().is_some_and(|(_, flag)| *flag)
    }

    /// The count in effect: the latest real count or write-off (a write-off
    /// sorts before a real count at the same time).
    fn in_effect(&self, write_offs: &BTreeSet<i64>) -> Option<(i64, u64, i64)> {
        let written_off = write_offs.iter().rev().find(|&&at| self.perishable_at(at)).map(|&at| (at, 0, 0));
        self.count.max(written_off)
    }

    /// The on-hand from scratch.
    fn compute(&self, write_offs: &BTreeSet<i64>) -> Option<i64> {
        match self.in_effect(write_offs) {
            Some((at, _, qty)) => {
                Some(qty + self.movements.range((Excluded(at), Unbounded)).map(|(_, q)| q).sum::<i64>())
            }
            None if self.base.is_none() && self.movements.is_empty() => None,
            None => Some(self.base.unwrap_or(0) + self.movements.values().sum::<i64>()),
        }
    }
}

/// One session's facts and what it shows.
#[derive(Default)]
struct Session {
    /// The latest DoorClosed: `(event_time, seq)`.
    close: Option<Position>,
    /// `sku → taken − returned`.
    basket: BTreeMap<String, i64>,
    results: Vec<PaymentResult>,
    /// Event time of its latest event.
    last: i64,
    /// Its revenue share: `(hour, cents, units)`.
    earned: Option<(i64, i64, i64)>,
}

/// Everything kept for one fridge.
struct Fridge {
    shelves: HashMap<String, Shelf>,
    /// Latest event time of the fridge's own events (the sales window's end).
    latest: i64,
    /// Takes and returns inside the sales window: position → (sku, units).
    window: BTreeMap<Position, (String, i64)>,
    /// Latest stock event time, and the fold point behind it.
    latest_stock: i64,
    fold: i64,
    /// Readings from the last cool one before the horizon on.
    readings: BTreeMap<Position, Temperature>,
    latest_reading: i64,
    /// Readings before this are final (and forgotten).
    settled: Option<Position>,
    /// The excursions view's rows of this fridge, by their first reading.
    excursions: BTreeMap<Position, Excursion>,
    /// Write-off times of the excursions that can still change inventory.
    write_offs: BTreeSet<i64>,
    sessions: HashMap<String, Session>,
    /// The sessions view's rows of this fridge (they outlive retirement).
    session_rows: HashMap<String, SessionRow>,
    latest_session: i64,
    session_floor: i64,
    /// The revenue view's rows: hour → (cents, sessions, units).
    revenue: BTreeMap<i64, (i64, i64, i64)>,
    /// Lines of the open order, and the logical time it opened.
    lines: usize,
    opened_at: Option<Time>,
}

impl Default for Fridge {
    fn default() -> Self {
        Fridge {
            shelves: HashMap::new(),
            latest: i64::MIN,
            window: BTreeMap::new(),
            latest_stock: i64::MIN,
            fold: i64::MIN,
            readings: BTreeMap::new(),
            latest_reading: i64::MIN,
            settled: None,
            excursions: BTreeMap::new(),
            write_offs: BTreeSet::new(),
            sessions: HashMap::new(),
            session_rows: HashMap::new(),
            latest_session: i64::MIN,
            session_floor: i64::MIN,
            revenue: BTreeMap::new(),
            lines: 0,
            opened_at: None,
        }
    }
}

/// All seven views, kept up to date one event at a time.
pub struct Streaming {
    horizon_us: i64,
    lead_time_days: i64,
    payment_wait_us: i64,
    fridges: HashMap<String, Fridge>,
    /// `sku → (global versions, fridge → its own versions)`.
    prices: HashMap<String, (Versions, HashMap<String, Versions>)>,
    /// The logical time of the events being applied (restock order ids).
    time: Time,
}

impl Streaming {
    /// The loop fed `hours`, the events of hour `h` at logical time `h + 1`.
    pub fn over_hours(hours: &[Vec<Event>], config: &ViewConfig) -> Self {
        let mut views = Streaming::new(config);
        for (hour, events) in hours.iter().enumerate() {
            views.advance_to(hour as Time + 1);
            for event in events {
                views.apply(event);
            }
        }
        views
    }

    pub fn new(config: &ViewConfig) -> Self {
        Streaming {
            horizon_us: config.horizon_us,
            lead_time_days: config.lead_time_days,
            payment_wait_us: config.payment_wait_us,
            fridges: HashMap::new(),
            prices: HashMap::new(),
            time: 0,
        }
    }

    /// The events that follow arrive at logical time `time`.
    pub fn advance_to(&mut self, time: Time) {
        self.time = time;
    }

    /// Applies one event to every view it changes.
    pub fn apply(&mut self, event: &Event) {
        match &event.payload {
            Payload::Telemetry { temperature_c, .. } => {
                self.sales_clock(event);
                self.reading(&event.source_id, (event.event_time, event.seq), *temperature_c);
            }
            Payload::ItemTaken { session_id, sku, qty } => {
                self.sale(event, sku, *qty);
                self.movement(event, sku, -*qty);
                self.session(event, session_id, |s| *s.basket.entry(sku.clone()).or_insert(0) += qty);
            }
            Payload::ItemReturned { session_id, sku, qty } => {
                self.sale(event, sku, -*qty);
                self.movement(event, sku, *qty);
                self.session(event, session_id, |s| *s.basket.entry(sku.clone()).or_insert(0) -= qty);
            }
            Payload::RestockDelivered { sku, qty, .. } => {
                self.sales_clock(event);
                self.movement(event, sku, *qty);
            }
            Payload::StockCounted { sku, qty } => {
                self.sales_clock(event);
                self.count(event, sku, *qty);
            }
            Payload::DoorOpened { session_id } | Payload::PaymentAuthorized { session_id, .. } => {
                self.sales_clock(event);
                self.session(event, session_id, |_| {});
            }
            Payload::DoorClosed { session_id } => {
                self.sales_clock(event);
                let at = (event.event_time, event.seq);
                self.session(event, session_id, |s| s.close = s.close.max(Some(at)));
            }
            Payload::PaymentCaptured { session_id, amount_cents } => {
                self.sales_clock(event);
                let result = (event.event_time, event.seq, Some(*amount_cents));
                self.session(event, session_id, |s| s.results.push(result));
            }
            Payload::PaymentDeclined { session_id, .. } => {
                self.sales_clock(event);
                let result = (event.event_time, event.seq, None);
                self.session(event, session_id, |s| s.results.push(result));
            }
            Payload::PriceChanged { sku, price_cents, fridge_id } => {
                self.price(event, sku, *price_cents, fridge_id.as_deref())
            }
            Payload::PlanogramSet { fridge_id, sku, par, min, perishable } => {
                let slot = Slot { par: *par, min: *min, perishable: *perishable };
                self.plan(event, fridge_id, sku, slot);
            }
            Payload::FridgeRegistered { .. } => {}
        }
    }

    // --- sales_7d -------------------------------------------------------

    /// A fridge event moves its sales window's end.
    fn sales_clock(&mut self, event: &Event) {
        let fridge = self.fridges.entry(event.source_id.clone()).or_default();
        if event.event_time <= fridge.latest {
            return;
        }
        fridge.latest = event.event_time;
        let start = fridge.latest.saturating_sub(SALES_WINDOW_US);
        let mut left = Vec::new();
        while let Some(entry) = fridge.window.first_entry() {
            if entry.key().0 > start {
                break;
            }
            let (sku, units) = entry.remove();
            let shelf = fridge.shelves.get_mut(&sku).expect("a sale's shelf exists");
            shelf.sold.0 -= units;
            shelf.sold.1 -= 1;
            left.push(sku);
        }
        for sku in left {
            self.relines(&event.source_id, &sku);
        }
    }

    fn sale(&mut self, event: &Event, sku: &str, units: i64) {
        self.sales_clock(event);
        let fridge = self.fridges.get_mut(&event.source_id).expect("the sales clock made it");
        if event.event_time <= fridge.latest.saturating_sub(SALES_WINDOW_US) {
            return; // already outside the window
        }
        fridge.window.insert((event.event_time, event.seq), (sku.to_owned(), units));
        let shelf = fridge.shelves.entry(sku.to_owned()).or_default();
        shelf.sold.0 += units;
        shelf.sold.1 += 1;
        self.relines(&event.source_id, sku);
    }

    // --- inventory ------------------------------------------------------

    /// Moves the fridge's stock clock; folds once it is an hour past the fold.
    fn stock_clock(&mut self, fridge_id: &str, at: i64) {
        let horizon = self.horizon_us;
        let fridge = self.fridges.get_mut(fridge_id).expect("the sales clock made it");
        fridge.latest_stock = fridge.latest_stock.max(at);
        let settled = fridge.settled.map_or(i64::MIN, |(t, _)| t);
        let fold = fridge.latest_stock.saturating_sub(horizon).min(settled);
        if fold < fridge.fold.saturating_add(HOUR_US) {
            return;
        }
        fridge.fold = fold;
        let write_offs = &fridge.write_offs;
        for shelf in fridge.shelves.values_mut() {
            let mut upto = Shelf {
                base: shelf.base,
                count: shelf.count.filter(|c| c.0 <= fold),
                perishable: shelf.perishable.clone(),
                ..Shelf::default()
            };
            upto.movements = shelf.movements.range(..=fold).map(|(t, q)| (*t, *q)).collect();
            let early: BTreeSet<i64> = write_offs.range(..=fold).copied().collect();
            shelf.base = upto.compute(&early);
            shelf.movements = shelf.movements.split_off(&(fold + 1));
            shelf.count = shelf.count.filter(|c| c.0 > fold);
            let newest_before = shelf.perishable.range(..=(fold, u64::MAX)).next_back().map(|(p, _)| *p);
            if let Some(keep) = newest_before {
                shelf.perishable = shelf.perishable.split_off(&keep);
            }
        }
        fridge.write_offs = fridge.write_offs.split_off(&(fold + 1));
    }

    fn movement(&mut self, event: &Event, sku: &str, delta: i64) {
        self.sales_clock(event);
        let at = event.event_time;
        let fridge = self.fridges.get_mut(&event.source_id).expect("the sales clock made it");
        if at <= fridge.fold {
            return; // beyond the horizon
        }
        let shelf = fridge.shelves.entry(sku.to_owned()).or_default();
        *shelf.movements.entry(at).or_insert(0) += delta;
        match shelf.in_effect(&fridge.write_offs) {
            Some((counted_at, _, _)) if at <= counted_at => {}
            Some(_) => *shelf.on_hand.as_mut().expect("a count gives a row") += delta,
            None => shelf.on_hand = Some(shelf.on_hand.or(shelf.base).unwrap_or(0) + delta),
        }
        self.relines(&event.source_id, sku);
        self.stock_clock(&event.source_id, at);
    }

    fn count(&mut self, event: &Event, sku: &str, qty: i64) {
        let count = (event.event_time, event.seq, qty);
        let fridge = self.fridges.get_mut(&event.source_id).expect("the sales clock made it");
        if count.0 <= fridge.fold {
            return;
        }
        let shelf = fridge.shelves.entry(sku.to_owned()).or_default();
        if shelf.count.is_some_and(|c| c >= count) {
            return;
        }
        shelf.count = Some(count);
        shelf.on_hand = shelf.compute(&fridge.write_offs);
        self.relines(&event.source_id, sku);
        self.stock_clock(&event.source_id, count.0);
    }

    // --- planogram and restock -----------------------------------------

    fn plan(&mut self, event: &Event, fridge_id: &str, sku: &str, slot: Slot) {
        let version = (event.event_time, event.seq, slot);
        let fridge = self.fridges.entry(fridge_id.to_owned()).or_default();
        let shelf = fridge.shelves.entry(sku.to_owned()).or_default();
        shelf.perishable.insert((version.0, version.1), slot.perishable);
        if shelf.plan.is_none_or(|p| (p.0, p.1) < (version.0, version.1)) {
            shelf.plan = Some(version);
        }
        if fridge.write_offs.iter().any(|&at| at >= version.0) {
            shelf.on_hand = shelf.compute(&fridge.write_offs);
        }
        self.relines(fridge_id, sku);
    }

    /// Recomputes one shelf's restock line, opening or closing its fridge's order.
    fn relines(&mut self, fridge_id: &str, sku: &str) {
        let lead = self.lead_time_days;
        let time = self.time;
        let Some(fridge) = self.fridges.get_mut(fridge_id) else { return };
        let Some(shelf) = fridge.shelves.get_mut(sku) else { return };
        let line = shelf.plan.and_then(|(_, _, slot)| {
            let on_hand = shelf.on_hand.unwrap_or(0);
            let qty = slot.par - on_hand;
            let demand = (shelf.sold.0 * lead + 6).div_euclid(7);
            (slot.par > 0 && qty > 0 && on_hand <= slot.min.max(demand)).then_some(qty)
        });
        if line == shelf.line {
            return;
        }
        match (shelf.line.is_some(), line.is_some()) {
            (false, true) => fridge.lines += 1,
            (true, false) => fridge.lines -= 1,
            _ => {}
        }
        shelf.line = line;
        match (fridge.opened_at, fridge.lines > 0) {
            (None, true) => fridge.opened_at = Some(time),
            (Some(_), false) => fridge.opened_at = None,
            _ => {}
        }
    }

    // --- cold chain -----------------------------------------------------

    fn reading(&mut self, fridge_id: &str, at: Position, temperature: Temperature) {
        let horizon = self.horizon_us;
        let fridge = self.fridges.get_mut(fridge_id).expect("the sales clock made it");
        if fridge.settled.is_some_and(|settled| at < settled) {
            return; // beyond the horizon
        }
        let warm = |t: &Temperature| t.0 > WARM_ABOVE_C;
        // Only the readings between the cool ones around `at` can change.
        let before = fridge.readings.range(..at).rev().find(|(_, t)| !warm(t)).map(|(p, _)| *p);
        let after = fridge.readings.range((Excluded(at), Unbounded)).find(|(_, t)| !warm(t)).map(|(p, _)| *p);
        let lower = before.map_or(Unbounded, Excluded);
        let upper = after.map_or(Unbounded, Excluded);
        fridge.readings.insert(at, temperature);
        let old: Vec<Position> = fridge.excursions.range((lower, upper)).map(|(p, _)| *p).collect();
        let mut new = Vec::new();
        let mut run: Option<(Position, i64, Temperature)> = None;
        for (&position, reading) in fridge.readings.range((lower, upper)) {
            if warm(reading) {
                run = Some(match run {
                    Some((start, _, max)) => (start, position.0, max.max(*reading)),
                    None => (position, position.0, *reading),
                });
            } else if let Some(finished) = run.take() {
                new.push(finished);
            }
        }
        new.extend(run);
        new.retain(|(start, end, _)| end - start.0 >= EXCURSION_AFTER_US);
        // A run that only grew keeps its start, and its write-off.
        let changed_write_offs = old.len() != new.len() || old.iter().zip(&new).any(|(a, b)| *a != b.0);
        for start in &old {
            fridge.excursions.remove(start);
            fridge.write_offs.remove(&(start.0 + EXCURSION_AFTER_US));
        }
        for (start, end, max) in new {
            fridge.excursions.insert(start, (end, max));
            fridge.write_offs.insert(start.0 + EXCURSION_AFTER_US);
        }
        if changed_write_offs {
            let now = fridge.write_offs.clone();
            let mut touched = Vec::new();
            for (sku, shelf) in &mut fridge.shelves {
                let on_hand = shelf.compute(&now);
                if on_hand != shelf.on_hand {
                    shelf.on_hand = on_hand;
                    touched.push(sku.clone());
                }
            }
            for sku in touched {
                self.relines(fridge_id, &sku);
            }
        }
        // Forget what the horizon has passed.
        let fridge = self.fridges.get_mut(fridge_id).expect("it was just used");
        fridge.latest_reading = fridge.latest_reading.max(at.0);
        let edge = (fridge.latest_reading.saturating_sub(horizon), 0);
        if fridge.settled.is_none_or(|s| s.0 + HOUR_US <= edge.0)
            && let Some(cool) = fridge.readings.range(..edge).rev().find(|(_, t)| !warm(t)).map(|(p, _)| *p)
        {
            fridge.readings = fridge.readings.split_off(&cool);
            fridge.settled = Some(cool);
        }
    }

    // --- sessions and revenue ------------------------------------------

    fn session(&mut self, event: &Event, id: &str, fact: impl FnOnce(&mut Session)) {
        let (horizon, wait) = (self.horizon_us, self.payment_wait_us);
        let at = event.event_time;
        let is_result = matches!(event.payload, Payload::PaymentCaptured { .. } | Payload::PaymentDeclined { .. });
        let fridge = self.fridges.get_mut(&event.source_id).expect("the sales clock made it");
        if at < fridge.session_floor || at < fridge.latest_session.saturating_sub(horizon) {
            let awaited = is_result
                && fridge.sessions.get(id).and_then(|s| s.close).is_some_and(|(closed, _)| at <= closed + wait);
            if !awaited {
                return; // beyond the horizon
            }
        }
        fridge.latest_session = fridge.latest_session.max(at);
        let session = fridge.sessions.entry(id.to_owned()).or_default();
        session.last = session.last.max(at);
        fact(session);
        refresh(&self.prices, wait, &event.source_id, fridge, id);

        // Retire sessions no event can reach any more.
        let floor = fridge.latest_session.saturating_sub(horizon);
        if floor >= fridge.session_floor.saturating_add(horizon / 8) {
            fridge.session_floor = floor;
            let retired = floor.saturating_sub(horizon);
            fridge.sessions.retain(|_, s| s.last >= retired || s.close.is_some_and(|(c, _)| c + wait >= floor));
        }
    }

    fn price(&mut self, event: &Event, sku: &str, cents: i64, owner: Option<&str>) {
        let (global, own) = self.prices.entry(sku.to_owned()).or_default();
        let versions = match owner {
            Some(fridge) => own.entry(fridge.to_owned()).or_default(),
            None => global,
        };
        versions.insert((event.event_time, event.seq), cents);
        // Re-price the held sessions of the fridges it reaches that closed after it.
        let reached: Vec<(String, String)> = self
            .fridges
            .iter()
            .filter(|(id, _)| owner.is_none_or(|o| o == id.as_str()))
            .flat_map(|(fridge_id, fridge)| {
                fridge
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.close.is_some_and(|(c, _)| c >= event.event_time) && s.basket.contains_key(sku))
                    .map(|(id, _)| (fridge_id.clone(), id.clone()))
            })
            .collect();
        for (fridge_id, id) in reached {
            let fridge = self.fridges.get_mut(&fridge_id).expect("it was just listed");
            refresh(&self.prices, self.payment_wait_us, &fridge_id, fridge, &id);
        }
    }

    /// Every view's current rows.
    pub fn views(&self) -> Rows {
        let mut rows = Rows::default();
        for (fridge_id, fridge) in &self.fridges {
            for (sku, shelf) in &fridge.shelves {
                let key = || (fridge_id.clone(), sku.clone());
                if let Some(on_hand) = shelf.on_hand {
                    rows.inventory.insert((key(), on_hand));
                    if on_hand < 0 {
                        rows.alerts.insert(Alert::InventoryNegative { fridge_id: fridge_id.clone(), sku: sku.clone() });
                    }
                }
                if shelf.sold.1 > 0 {
                    rows.sales_7d.insert((key(), shelf.sold.0));
                }
                if let Some(qty) = shelf.line {
                    rows.restock_lines.insert((key(), qty));
                }
            }
            for (id, row) in &fridge.session_rows {
                rows.sessions.insert(((fridge_id.clone(), id.clone()), row.clone()));
            }
            for (hour, totals) in &fridge.revenue {
                rows.revenue.insert(((fridge_id.clone(), *hour), *totals));
            }
            for (start, excursion) in &fridge.excursions {
                rows.excursions.insert(((fridge_id.clone(), start.0), *excursion));
                rows.alerts.insert(Alert::ColdchainExcursion { fridge_id: fridge_id.clone(), start: start.0 });
            }
        }
        rows
    }
}

/// The price of `sku` in `fridge` in effect at `at`: the fridge's own
/// latest version at or before `at`, else the global one.
fn price_at(
    prices: &HashMap<String, (Versions, HashMap<String, Versions>)>,
    fridge: &str,
    sku: &str,
    at: i64,
) -> Option<i64> {
    let (global, own) = prices.get(sku)?;
    let in_effect = |versions: &Versions| versions.range(..=(at, u64::MAX)).next_back().map(|(_, cents)| *cents);
    own.get(fridge).and_then(in_effect).or_else(|| in_effect(global))
}

/// Recomputes session `id`'s row and revenue share, at the prices in effect
/// when its door closed.
fn refresh(
    prices: &HashMap<String, (Versions, HashMap<String, Versions>)>,
    wait: i64,
    fridge_id: &str,
    fridge: &mut Fridge,
    id: &str,
) {
    let Some(session) = fridge.sessions.get_mut(id) else { return };
    let (mut units, mut expected, mut unpriced, mut items) = (0i64, 0i64, false, false);
    for (sku, &qty) in &session.basket {
        if qty == 0 {
            continue;
        }
        items = true;
        units += qty;
        match session.close.and_then(|(closed, _)| price_at(prices, fridge_id, sku, closed)) {
            Some(cents) => expected += qty * cents,
            None => unpriced = true,
        }
    }
    let deadline = session.close.map_or(i64::MAX, |(closed, _)| closed.saturating_add(wait));
    let payment = session.results.iter().filter(|r| r.0 <= deadline).max().copied();
    let status = match (session.close, payment) {
        (None, _) => SessionStatus::Open,
        _ if !items => SessionStatus::Empty,
        _ if unpriced => SessionStatus::Unpriced,
        (_, None) => SessionStatus::AwaitingPayment,
        (_, Some((_, _, None))) => SessionStatus::Unpaid,
        (_, Some((_, _, Some(paid)))) if paid == expected => SessionStatus::Settled,
        (_, Some((_, _, Some(paid)))) if paid < expected => SessionStatus::Undercharged,
        _ => SessionStatus::Overcharged,
    };
    let priced = session.close.is_some() && !unpriced;
    let row = SessionRow {
        status,
        expected_cents: priced.then_some(expected),
        captured_cents: payment.and_then(|(_, _, paid)| paid),
        units,
        closed_at: session.close.map(|(t, _)| t),
    };
    let earned = match payment {
        Some((t, _, Some(cents))) => Some((t - t.rem_euclid(HOUR_US), cents, units)),
        _ => None,
    };
    if earned != session.earned {
        for ((hour, cents, units), sign) in session.earned.iter().map(|e| (e, -1)).chain(earned.iter().map(|e| (e, 1)))
        {
            let totals = fridge.revenue.entry(*hour).or_insert((0, 0, 0));
            totals.0 += sign * cents;
            totals.1 += sign;
            totals.2 += sign * units;
            if totals.1 == 0 {
                fridge.revenue.remove(hour);
            }
        }
        session.earned = earned;
    }
    fridge.session_rows.insert(id.to_owned(), row);
}
