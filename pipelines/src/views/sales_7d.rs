//! `sales_7d(fridge_id, sku) → units`: units taken minus units returned
//! with an event time in the 7 days (168 hours) up to the fridge's latest
//! event time seen so far, that is in `(latest − 168 h, latest]`.
//!
//! "Latest" counts every event the fridge itself sent (telemetry included),
//! not back-office events about it. A row exists while the window holds at
//! least one take or return of the SKU; its units may be 0, or negative
//! when a return falls inside the window and its take before it.
//!
//! State is bounded by the window itself: a fridge's latest event time only
//! grows, so a movement that has left the window can never enter it again
//! and is forgotten, and one that arrives already outside it is ignored.

use std::collections::BTreeMap;

use differential_dataflow::collection::VecCollection;
use serde::{Deserialize, Serialize};

use crate::event::DAY_US;
use crate::operators::{FridgeState, OperatorHooks, by_fridge_in_time_order};
use crate::varint::{ByteBuf, Bytes, Layout, Reader, field, put_signed, read_layout, reserve};
use crate::views::Keyed;
use crate::views::inventory::InventoryKey;
use crate::{Event, Payload, Time};

/// The length of the sales window (µs).
pub const SALES_WINDOW_US: i64 = 7 * DAY_US;

/// What a fridge event tells the sales window: its event time and, for a
/// take or return, `(sku, signed units)`.
pub(crate) type Sighting = (i64, Option<(String, i64)>);

pub(crate) fn sighting(event: &Event) -> Option<(String, Sighting)> {
    if event.kind().is_back_office() {
        return None;
    }
    let movement = match &event.payload {
        Payload::ItemTaken { sku, qty, .. } => Some((sku.clone(), *qty)),
        Payload::ItemReturned { sku, qty, .. } => Some((sku.clone(), -*qty)),
        _ => None,
    };
    Some((event.source_id.clone(), (event.event_time, movement)))
}

/// One fridge's sales window.
///
/// Each SKU keeps its movements in event-time order, packed
/// ([`Movements`]), rather than a map entry per movement with its own copy
/// of the SKU's name. A checkpoint holds each SKU's packed bytes as they
/// are (see [`PACKED`]); one taken before the window was packed holds
/// `(event_time, sku) → (units, movements)` and `sku → totals`
/// ([`Stored`]) and restores as well.
#[derive(Default)]
struct Window {
    latest: Option<i64>,
    skus: BTreeMap<String, Movements>,
    /// The earliest event time any SKU holds: the window's opening passing
    /// it is what makes a SKU worth looking at for what left.
    oldest: Option<i64>,
}

/// One SKU's movements inside the window, one entry per distinct event
/// time, in time order: `(time − the previous entry's time, units,
/// movements)` as variable-length numbers, about 7 bytes where a
/// `(time, units, movements)` triple would take 24. Movements mostly
/// arrive in time order and leave from the front, so adding is an append
/// and leaving a move of `head`; a late movement rewrites the SKU's
/// entries (a few dozen).
#[derive(Default)]
struct Movements {
    bytes: Vec<u8>,
    /// The offset of the first entry inside the window.
    head: usize,
    /// The time the first entry's difference is taken from.
    origin: i64,
    /// The last entry's time and offset.
    last_at: i64,
    last_offset: usize,
    /// Entries from `head` on.
    entries: usize,
    /// Units and movements summed over the entries.
    units: i64,
    movements: i64,
}

impl Movements {
    /// The SKU's row: its units while the window holds a movement of it.
    fn row(&self) -> Option<i64> {
        (self.movements > 0).then_some(self.units)
    }

    fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The time of the first entry.
    fn front(&self) -> Option<i64> {
        (!self.is_empty()).then(|| self.origin.wrapping_add(Reader { bytes: &self.bytes, at: self.head }.signed()))
    }

    fn add(&mut self, at: i64, units: i64, movements: i64) {
        if self.is_empty() {
            *self = Movements { origin: at, last_at: at, entries: 1, units, movements, ..Movements::default() };
            self.push(0, units, movements);
            return;
        }
        if at > self.last_at {
            self.units += units;
            self.movements += movements;
            self.last_offset = self.bytes.len();
            self.push(at.wrapping_sub(self.last_at), units, movements);
            self.last_at = at;
            self.entries += 1;
            return;
        }
        if at == self.last_at {
            let mut reader = Reader { bytes: &self.bytes, at: self.last_offset };
            let (gap, was_units, was_movements) = (reader.signed(), reader.signed(), reader.signed());
            let sums = (was_units + units, was_movements + movements);
            if sums != (0, 0) {
                self.units += units;
                self.movements += movements;
                self.bytes.truncate(self.last_offset);
                self.push(gap, sums.0, sums.1);
                return;
            }
        }
        // A late movement, or one that empties the last time: rewrite.
        let mut all: Vec<(i64, i64, i64)> = self.by_time().collect();
        let index = all.partition_point(|(time, _, _)| *time < at);
        match all.get_mut(index) {
            Some(entry) if entry.0 == at => {
                entry.1 += units;
                entry.2 += movements;
                if (entry.1, entry.2) == (0, 0) {
                    all.remove(index);
                }
            }
            _ => all.insert(index, (at, units, movements)),
        }
        *self = Movements::default();
        for (at, units, movements) in all {
            self.add(at, units, movements);
        }
    }

    /// Appends an entry.
    fn push(&mut self, gap: i64, units: i64, movements: i64) {
        reserve(&mut self.bytes, 30);
        put_signed(&mut self.bytes, gap);
        put_signed(&mut self.bytes, units);
        put_signed(&mut self.bytes, movements);
    }

    /// Forgets the movements at or before `opens`.
    fn leave(&mut self, opens: i64) {
        while let Some(at) = self.front()
            && at <= opens
        {
            let mut reader = Reader { bytes: &self.bytes, at: self.head };
            reader.signed();
            self.units -= reader.signed();
            self.movements -= reader.signed();
            (self.origin, self.head) = (at, reader.at);
            self.entries -= 1;
        }
        if self.is_empty() {
            *self = Movements::default();
        } else if self.head * 2 > self.bytes.len() {
            self.bytes.drain(..self.head);
            self.last_offset -= self.head;
            self.head = 0;
            if self.bytes.capacity() > 2 * self.bytes.len() + 32 {
                self.bytes.shrink_to(self.bytes.len() + self.bytes.len() / 4);
            }
        }
    }

    /// The movements a checkpoint held: entries packed as [`Movements::push`]
    /// writes them, the first one's difference taken from `origin`.
    fn restore(origin: i64, bytes: Vec<u8>) -> Result<Movements, String> {
        let mut movements = Movements { origin, last_at: origin, ..Movements::default() };
        let mut reader = Reader { bytes: &bytes, at: 0 };
        while reader.at < bytes.len() {
            let offset = reader.at;
            let (gap, units, moved) = (reader.signed(), reader.signed(), reader.signed());
            if reader.at > bytes.len() {
                return Err(format!("an entry at byte {offset} is cut short"));
            }
            movements.last_at = movements.last_at.wrapping_add(gap);
            movements.last_offset = offset;
            movements.entries += 1;
            movements.units += units;
            movements.movements += moved;
        }
        movements.bytes = bytes;
        Ok(movements)
    }

    /// `(event_time, units, movements)` per entry, in time order.
    fn by_time(&self) -> impl Iterator<Item = (i64, i64, i64)> + '_ {
        let mut reader = Reader { bytes: &self.bytes, at: self.head };
        let mut time = self.origin;
        (0..self.entries).map(move |_| {
            time = time.wrapping_add(reader.signed());
            (time, reader.signed(), reader.signed())
        })
    }
}

impl Window {
    /// The earliest event time any SKU holds.
    fn oldest_held(&self) -> Option<i64> {
        self.skus.values().filter_map(Movements::front).min()
    }
}

/// Notes `sku`'s row as it was before this time, at its first change in it.
fn note_before(changed: &mut BTreeMap<String, Option<i64>>, sku: &str, movements: &Movements) {
    if !changed.contains_key(sku) {
        changed.insert(sku.to_owned(), movements.row());
    }
}

/// The first field of a checkpointed window in the packed layout: `(PACKED,
/// latest, [(sku, origin, packed bytes)])`. The earlier layout ([`Stored`])
/// starts with `latest`, an option, whose tag in a checkpoint's encoding
/// (bincode) is a byte of 0 or 1.
const PACKED: u8 = 2;

/// A window as checkpoints held it before its movements were packed.
struct Stored {
    latest: Option<i64>,
    /// `(event_time, sku) → (units, movements)` inside the window.
    movements: BTreeMap<(i64, String), (i64, i64)>,
    /// `sku → (units, movements)` summed over the window (derived again).
    #[allow(dead_code)]
    totals: BTreeMap<String, (i64, i64)>,
}

impl From<Stored> for Window {
    fn from(stored: Stored) -> Window {
        let mut window = Window { latest: stored.latest, ..Window::default() };
        for ((at, sku), (units, movements)) in stored.movements {
            if units != 0 || movements != 0 {
                window.skus.entry(sku).or_default().add(at, units, movements);
            }
        }
        window.oldest = window.oldest_held();
        window
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let skus: Vec<(&str, i64, Bytes)> = self
            .skus
            .iter()
            .map(|(sku, movements)| (sku.as_str(), movements.origin, Bytes(&movements.bytes[movements.head..])))
            .collect();
        let mut layout = serializer.serialize_tuple(3)?;
        layout.serialize_element(&PACKED)?;
        layout.serialize_element(&self.latest)?;
        layout.serialize_element(&skus)?;
        layout.end()
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        read_layout(deserializer, 4)
    }
}

impl Layout for Window {
    const WHAT: &'static str = "a fridge's sales window";

    fn read<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<Window, A::Error> {
        use serde::de::Error;
        const WHAT: &str = "a sales window";
        let tag: u8 = field(&mut seq, WHAT)?;
        if tag == PACKED {
            let mut window = Window { latest: field(&mut seq, WHAT)?, ..Window::default() };
            let skus: Vec<(String, i64, ByteBuf)> = field(&mut seq, WHAT)?;
            for (sku, origin, bytes) in skus {
                let movements = Movements::restore(origin, bytes.0)
                    .map_err(|reason| A::Error::custom(format!("the sales of {sku}: {reason}")))?;
                window.skus.insert(sku, movements);
            }
            window.oldest = window.oldest_held();
            return Ok(window);
        }
        let latest = match tag {
            0 => None,
            1 => Some(field(&mut seq, WHAT)?),
            other => return Err(A::Error::custom(format!("a sales window in an unknown layout ({other})"))),
        };
        let stored = Stored { latest, movements: field(&mut seq, WHAT)?, totals: field(&mut seq, WHAT)? };
        Ok(Window::from(stored))
    }
}

impl FridgeState for Window {
    type Input = Sighting;
    type Output = (InventoryKey, i64);
    type Shared = ();

    fn apply(
        &mut self,
        fridge: &str,
        _time: Time,
        inputs: &[(Self::Input, isize)],
        _shared: &(),
        out: &mut Vec<(Self::Output, isize)>,
    ) {
        let Some(newest) = inputs.iter().map(|((at, _), _)| *at).max() else { return };
        let latest = self.latest.map_or(newest, |l| l.max(newest));
        self.latest = Some(latest);
        let opens = latest.saturating_sub(SALES_WINDOW_US);
        // Each touched SKU's row before this time.
        let mut changed: BTreeMap<String, Option<i64>> = BTreeMap::new();
        for ((at, movement), diff) in inputs {
            if let Some((sku, units)) = movement
                && *at > opens
            {
                let movements = match self.skus.get_mut(sku.as_str()) {
                    Some(movements) => movements,
                    None => self.skus.entry(sku.clone()).or_default(),
                };
                note_before(&mut changed, sku, movements);
                movements.add(*at, units * *diff as i64, *diff as i64);
                self.oldest = Some(self.oldest.map_or(*at, |oldest| oldest.min(*at)));
            }
        }
        // Movements that the advancing window has left behind.
        if self.oldest.is_some_and(|oldest| oldest <= opens) {
            for (sku, movements) in &mut self.skus {
                if movements.front().is_some_and(|at| at <= opens) {
                    note_before(&mut changed, sku, movements);
                    movements.leave(opens);
                }
            }
            self.oldest = self.oldest_held();
        }
        // Every SKU touched above is in `changed`: those left empty go.
        for (sku, before) in changed {
            if self.skus.get(&sku).is_some_and(Movements::is_empty) {
                self.skus.remove(&sku);
            }
            let after = self.skus.get(&sku).and_then(Movements::row);
            if before != after {
                let key = (fridge.to_owned(), sku);
                if let Some(units) = before {
                    out.push(((key.clone(), units), -1));
                }
                if let Some(units) = after {
                    out.push(((key, units), 1));
                }
            }
        }
    }

    fn held(&self) -> usize {
        self.skus.values().map(|sku| sku.entries + usize::from(sku.movements != 0)).sum()
    }
}

/// Seven-day sales of every `(fridge, sku)`, maintained incrementally.
pub fn sales_7d<'s>(
    events: VecCollection<'s, Time, Event>,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, (InventoryKey, i64)> {
    sales_7d_of(events.flat_map(|event| sighting(&event)), hooks)
}

/// [`sales_7d`] of the fridges' events as the window sees them ([`sighting`]).
pub(crate) fn sales_7d_of<'s>(
    sightings: Keyed<'s, String, Sighting>,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, (InventoryKey, i64)> {
    by_fridge_in_time_order(sightings, "sales_7d.window", Window::default, hooks)
}

/// The batch reference of [`sales_7d`].
pub fn sales_7d_reference(events: &[Event]) -> BTreeMap<InventoryKey, i64> {
    let mut latest: BTreeMap<String, i64> = BTreeMap::new();
    for (fridge, (at, _)) in events.iter().filter_map(sighting) {
        let entry = latest.entry(fridge).or_insert(at);
        *entry = (*entry).max(at);
    }
    let mut units = BTreeMap::new();
    for (fridge, (at, movement)) in events.iter().filter_map(sighting) {
        if let Some((sku, qty)) = movement
            && at > latest[&fridge] - SALES_WINDOW_US
        {
            *units.entry((fridge, sku)).or_insert(0) += qty;
        }
    }
    units
}

view_with_exact_reference!(
    /// The `sales_7d` view.
    Sales7d,
    sales_7d_reference
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Temperature;
    use crate::event::HOUR_US;
    use crate::views::ViewConfig;
    use crate::views::tests::{keyed, run_all};

    fn at(seq: u64, hour: i64, payload: Payload) -> Event {
        Event { source_id: "FR-1".into(), incarnation: 0, seq, event_time: hour * HOUR_US, payload }
    }

    fn take(seq: u64, hour: i64, qty: i64) -> Event {
        at(seq, hour, Payload::ItemTaken { session_id: format!("s{seq}"), sku: "cola".into(), qty })
    }

    fn sales(arrivals: Vec<(Time, Vec<Event>)>) -> BTreeMap<InventoryKey, i64> {
        keyed(&run_all(2, arrivals, ViewConfig::default(), |views| views.sales_7d))
    }

    /// The layout a window had in checkpoints before it was kept per SKU.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Earlier {
        latest: Option<i64>,
        movements: BTreeMap<(i64, String), (i64, i64)>,
        totals: BTreeMap<String, (i64, i64)>,
    }

    #[test]
    fn a_window_checkpointed_in_the_earlier_layout_restores_and_is_written_packed() {
        let earlier = Earlier {
            latest: Some(200),
            movements: BTreeMap::from([
                ((50, "cola".to_owned()), (3, 2)),
                ((60, "salad".to_owned()), (-1, 1)),
                ((70, "cola".to_owned()), (1, 1)),
                // Retracted to nothing: dropped on restore.
                ((80, "water".to_owned()), (0, 0)),
            ]),
            totals: BTreeMap::from([("cola".to_owned(), (4, 3)), ("salad".to_owned(), (-1, 1))]),
        };
        let bytes = crate::checkpoint::encode(&earlier);
        let window: Window = bincode::deserialize(&bytes).unwrap();
        assert_eq!(window.latest, Some(200));
        assert_eq!(window.oldest, Some(50));
        assert_eq!(window.skus["cola"].by_time().collect::<Vec<_>>(), [(50, 3, 2), (70, 1, 1)]);
        assert_eq!((window.skus["cola"].units, window.skus["cola"].movements), (4, 3));
        assert_eq!(window.skus["salad"].row(), Some(-1));
        assert!(!window.skus.contains_key("water"));
        assert_eq!(window.held(), 5);
        // Written back, it is packed, smaller, and restores to the same.
        let packed = crate::checkpoint::encode(&window);
        assert!(packed.len() < bytes.len(), "{} bytes packed, {} before", packed.len(), bytes.len());
        let again: Window = bincode::deserialize(&packed).unwrap();
        assert_eq!((again.latest, again.oldest, again.held()), (Some(200), Some(50), 5));
        for sku in ["cola", "salad"] {
            let (was, is) = (&window.skus[sku], &again.skus[sku]);
            assert_eq!(is.by_time().collect::<Vec<_>>(), was.by_time().collect::<Vec<_>>());
            assert_eq!((is.units, is.movements, is.last_at), (was.units, was.movements, was.last_at));
        }
        assert!(bincode::deserialize::<Window>(&packed[..packed.len() - 1]).is_err(), "cut short");
    }

    /// A window that movements have left from the front, and that later
    /// took one late, is written from its first live entry and restores to
    /// the same entries, which then take appends and leave as before.
    #[test]
    fn a_window_with_movements_gone_restores_from_its_first_live_one() {
        let mut cola = Movements::default();
        for hour in 1..=10 {
            cola.add(hour * 3_600_000_000, hour, 1);
        }
        cola.leave(4 * 3_600_000_000);
        cola.add(5 * 3_600_000_000 + 1, -1, 1);
        let window = Window { latest: Some(20), skus: BTreeMap::from([("cola".to_owned(), cola)]), oldest: None };
        let mut again: Window = bincode::deserialize(&crate::checkpoint::encode(&window)).unwrap();
        let was: Vec<_> = window.skus["cola"].by_time().collect();
        assert_eq!(again.skus["cola"].by_time().collect::<Vec<_>>(), was);
        assert_eq!(again.oldest, Some(5 * 3_600_000_000));
        let cola = again.skus.get_mut("cola").unwrap();
        cola.add(11 * 3_600_000_000, 11, 1);
        cola.add(11 * 3_600_000_000, 1, 1);
        cola.leave(6 * 3_600_000_000);
        assert_eq!(cola.by_time().next(), Some((7 * 3_600_000_000, 7, 1)));
        assert_eq!(cola.by_time().last(), Some((11 * 3_600_000_000, 12, 2)));
        assert_eq!((cola.units, cola.movements), (7 + 8 + 9 + 10 + 12, 6));
    }

    #[test]
    fn a_window_forgets_what_leaves_it_and_keeps_one_entry_per_time() {
        let mut window = Window::default();
        let mut out = Vec::new();
        let take = |at: i64, sku: &str, qty: i64| ((at, Some((sku.to_owned(), qty))), 1isize);
        window.apply("FR-1", 1, &[take(10, "cola", 2), take(10, "cola", 1), take(20, "salad", 1)], &(), &mut out);
        assert_eq!(window.skus["cola"].by_time().collect::<Vec<_>>(), [(10, 3, 2)]);
        out.clear();
        // The window now opens after 10: cola's movements leave it, salad's stay.
        window.apply("FR-1", 2, &[((10 + SALES_WINDOW_US, None), 1)], &(), &mut out);
        assert!(!window.skus.contains_key("cola"));
        assert_eq!(window.oldest, Some(20));
        assert_eq!(out, vec![((("FR-1".to_owned(), "cola".to_owned()), 3), -1)]);
        assert_eq!(window.held(), 2);
    }

    /// Appends, merges at the last time, late insertions, retractions to
    /// nothing and leaving from the front all keep the entries and their
    /// sums what a plain list of them would be.
    #[test]
    fn packed_movements_follow_a_plain_list_of_them() {
        let mut packed = Movements::default();
        let mut plain: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        let hour = 3_600_000_000i64;
        let steps: Vec<(i64, i64, i64)> = vec![
            (10 * hour, 2, 1),
            (10 * hour, 1, 1),
            (12 * hour, -1, 1),
            (11 * hour, 5, 1),
            (12 * hour, 1, -1),
            (9 * hour, i64::MAX / 4, 1),
            (14 * hour, 3, 1),
            (14 * hour, -3, -1),
            (13 * hour, 0, 2),
            (11 * hour, -5, -1),
        ];
        for (at, units, movements) in steps {
            packed.add(at, units, movements);
            let entry = plain.entry(at).or_insert((0, 0));
            (entry.0, entry.1) = (entry.0 + units, entry.1 + movements);
            if *entry == (0, 0) {
                plain.remove(&at);
            }
            let expected: Vec<(i64, i64, i64)> = plain.iter().map(|(at, (u, m))| (*at, *u, *m)).collect();
            assert_eq!(packed.by_time().collect::<Vec<_>>(), expected, "after {at} {units} {movements}");
            assert_eq!(packed.entries, expected.len());
            let sums = expected.iter().fold((0, 0), |(u, m), (_, du, dm)| (u + du, m + dm));
            assert_eq!((packed.units, packed.movements), sums);
        }
        packed.leave(10 * hour);
        assert_eq!(packed.by_time().collect::<Vec<_>>(), [(13 * hour, 0, 2)]);
        assert_eq!((packed.units, packed.movements), (0, 2));
        assert_eq!(packed.front(), Some(13 * hour));
        packed.add(15 * hour, 4, 1);
        packed.leave(13 * hour);
        assert_eq!(packed.by_time().collect::<Vec<_>>(), [(15 * hour, 4, 1)]);
        packed.leave(15 * hour);
        assert!(packed.is_empty() && packed.front().is_none());
        assert_eq!((packed.units, packed.movements), (0, 0));
    }

    #[test]
    fn the_window_is_the_168_hours_up_to_the_latest_event_and_a_backlog_fills_it_in() {
        let cola = || ("FR-1".to_owned(), "cola".to_owned());
        let telemetry = at(9, 200, Payload::Telemetry { temperature_c: Temperature(3.0), door_open: false });
        // Latest event at hour 200: the window is (32, 200].
        let early = vec![take(1, 32, 5), take(2, 33, 2), take(3, 150, 1), telemetry.clone()];
        assert_eq!(sales_7d_reference(&early), BTreeMap::from([(cola(), 3)]));
        assert_eq!(sales(vec![(1, early.clone())]), BTreeMap::from([(cola(), 3)]));
        // Offline for two days: the backlog (hours 160 to 207) arrives later and moves the window to (39, 207].
        let backlog = vec![
            take(10, 160, 4),
            at(11, 170, Payload::ItemReturned { session_id: "s10".into(), sku: "cola".into(), qty: 1 }),
            take(12, 207, 1),
        ];
        let mut all = early.clone();
        all.extend(backlog.clone());
        assert_eq!(sales_7d_reference(&all), BTreeMap::from([(cola(), 1 + 4 - 1 + 1)]));
        assert_eq!(sales(vec![(1, early), (2, backlog)]), sales_7d_reference(&all));
    }
}
