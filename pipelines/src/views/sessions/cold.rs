//! Sessions behind the horizon, packed into one buffer per fridge.
//!
//! Most of the sessions a fridge holds are waiting out the payment wait
//! (72 hours by default) long after their last event fell behind the
//! horizon (6 hours): all that can still reach one is a payment result, a
//! price change older than its close, or, rarely, one of its own events
//! within the horizon. As a [`Session`] in the fridge's map each costs a
//! map slot of about 200 bytes and four or five allocations (its id, its
//! closes, payment results and basket, and each basket SKU's name). Here it
//! is one entry of a byte buffer: integers as variable-length numbers,
//! times relative to the session's latest event, basket SKUs by a number
//! the fridge gives each name once, and an index slot by id. A session
//! that is touched again is unpacked back into the map.
//!
//! An entry is `length u32 | records held u32 | latest event time i64 |
//! latest close i64 (i64::MIN for none)`, then the id, the revenue share,
//! and the session's facts and row. Taking an entry out marks it; once
//! marked entries fill a quarter of the buffer, the live ones are copied
//! into a new one. A checkpoint holds the live entries as they are
//! ([`StoredCold`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Serialize, Serializer};

use super::{Session, SessionRow, SessionStatus};
use crate::varint::{Bytes, Reader, put, put_option, put_signed, put_str, reserve};

/// The fixed part of an entry.
const HEADER: usize = 24;
/// The records-held field of an entry that was taken out.
const TAKEN: u32 = u32::MAX;

/// A fridge's packed sessions.
#[derive(Default)]
pub(super) struct ColdSessions {
    bytes: Vec<u8>,
    /// The offset of every live entry, by the hash of its id.
    index: HashTable<usize>,
    hasher: DefaultHashBuilder,
    /// Basket SKU names by number, and numbers by name.
    skus: Vec<Box<str>>,
    numbers: HashMap<Box<str>, u32>,
    /// Live entries, the records they hold, and the bytes of taken ones.
    live: usize,
    held: usize,
    taken_bytes: usize,
    /// `hour → live entries whose revenue share falls in it`.
    earned: BTreeMap<i64, usize>,
}

/// An entry's fixed part.
#[derive(Clone, Copy)]
struct Header {
    length: usize,
    held: u32,
    last: i64,
    closed: Option<i64>,
}

fn header(bytes: &[u8], at: usize) -> Header {
    let field = |from: usize, to: usize| -> [u8; 8] {
        let mut out = [0; 8];
        out[..to - from].copy_from_slice(&bytes[at + from..at + to]);
        out
    };
    let closed = i64::from_le_bytes(field(16, 24));
    Header {
        length: u64::from_le_bytes(field(0, 4)) as usize,
        held: u64::from_le_bytes(field(4, 8)) as u32,
        last: i64::from_le_bytes(field(8, 16)),
        closed: (closed != i64::MIN).then_some(closed),
    }
}

/// The id of the entry at `at`.
fn id_at(bytes: &[u8], at: usize) -> &str {
    Reader { bytes, at: at + HEADER }.str()
}

impl ColdSessions {
    /// Records the sessions hold, as [`Session::held`] counts them.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Whether a held session's revenue share falls in `hour`.
    pub(super) fn earns_in(&self, hour: i64) -> bool {
        self.earned.contains_key(&hour)
    }

    /// The latest close of session `id`, if it is held here and closed.
    pub(super) fn closed_at(&self, id: &str) -> Option<i64> {
        let at = self.find(id)?;
        header(&self.bytes, at).closed
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.index.find(self.hasher.hash_one(id), |&at| id_at(&self.bytes, at) == id).copied()
    }

    /// Packs `session`, which must not be held here already.
    pub(super) fn put(&mut self, id: &str, session: &Session) {
        let start = self.bytes.len();
        reserve(&mut self.bytes, HEADER + 64);
        self.bytes.extend_from_slice(&[0; HEADER]);
        let last = session.last;
        put_str(&mut self.bytes, id);
        match session.earned {
            None => put(&mut self.bytes, 0),
            Some((hour, cents, units)) => {
                put(&mut self.bytes, 1);
                put_signed(&mut self.bytes, hour.wrapping_sub(last));
                put_signed(&mut self.bytes, cents);
                put_signed(&mut self.bytes, units);
            }
        }
        put_signed(&mut self.bytes, session.events as i64);
        put(&mut self.bytes, session.closes.len() as u64);
        for (&(at, seq), &n) in session.closes.iter() {
            put_signed(&mut self.bytes, at.wrapping_sub(last));
            put(&mut self.bytes, seq);
            put_signed(&mut self.bytes, n as i64);
        }
        put(&mut self.bytes, session.payments.len() as u64);
        for (&(at, seq, amount), &n) in session.payments.iter() {
            put_signed(&mut self.bytes, at.wrapping_sub(last));
            put(&mut self.bytes, seq);
            put_option(&mut self.bytes, amount);
            put_signed(&mut self.bytes, n as i64);
        }
        put(&mut self.bytes, session.basket.len() as u64);
        for (sku, &qty) in session.basket.iter() {
            let number = match self.numbers.get(sku.as_str()) {
                Some(&number) => number,
                None => {
                    let number = self.skus.len() as u32;
                    self.skus.push(sku.as_str().into());
                    self.numbers.insert(sku.as_str().into(), number);
                    number
                }
            };
            put(&mut self.bytes, u64::from(number));
            put_signed(&mut self.bytes, qty);
        }
        match &session.row {
            None => put(&mut self.bytes, 0),
            Some(row) => {
                let status = SessionStatus::ALL.iter().position(|s| *s == row.status).expect("every status is listed");
                put(&mut self.bytes, status as u64 + 1);
                put_option(&mut self.bytes, row.expected_cents);
                put_option(&mut self.bytes, row.captured_cents);
                put_signed(&mut self.bytes, row.units);
                put_option(&mut self.bytes, row.closed_at.map(|at| at.wrapping_sub(last)));
            }
        }
        let held = session.held();
        let closed = session.closed_at().unwrap_or(i64::MIN);
        // An entry is far below 4 GiB: it would take a basket of hundreds
        // of millions of SKUs.
        let length = (self.bytes.len() - start) as u32;
        let fields = [length.to_le_bytes(), (held as u32).to_le_bytes()].concat();
        self.bytes[start..start + 8].copy_from_slice(&fields);
        self.bytes[start + 8..start + 16].copy_from_slice(&last.to_le_bytes());
        self.bytes[start + 16..start + 24].copy_from_slice(&closed.to_le_bytes());
        let Self { bytes, index, hasher, .. } = self;
        index.insert_unique(hasher.hash_one(id), start, |&at| hasher.hash_one(id_at(bytes, at)));
        self.live += 1;
        self.held += held;
        if let Some((hour, _, _)) = session.earned {
            *self.earned.entry(hour).or_insert(0) += 1;
        }
    }

    /// Unpacks session `id`, which is no longer held here.
    pub(super) fn take(&mut self, id: &str) -> Option<Session> {
        let at = self.find(id)?;
        let (_, session) = self.decode(at);
        self.remove(at, id, session.earned.map(|(hour, _, _)| hour));
        self.compact_if_sparse();
        Some(session)
    }

    /// Unpacks every session for which `wanted` holds.
    pub(super) fn take_if(&mut self, wanted: impl Fn(&Session) -> bool) -> Vec<(String, Session)> {
        let found: Vec<(usize, String, Session)> = self
            .offsets()
            .filter_map(|at| {
                let (id, session) = self.decode(at);
                wanted(&session).then(|| (at, id.to_owned(), session))
            })
            .collect();
        let taken = found
            .into_iter()
            .map(|(at, id, session)| {
                self.remove(at, &id, session.earned.map(|(hour, _, _)| hour));
                (id, session)
            })
            .collect();
        self.compact_if_sparse();
        taken
    }

    /// Forgets every session for which `keep(latest event, latest close)`
    /// does not hold.
    pub(super) fn retain(&mut self, keep: impl Fn(i64, Option<i64>) -> bool) {
        let gone: Vec<usize> = self
            .offsets()
            .filter(|&at| {
                let header = header(&self.bytes, at);
                !keep(header.last, header.closed)
            })
            .collect();
        for at in gone {
            let (id, hour) = {
                let mut reader = Reader { bytes: &self.bytes, at: at + HEADER };
                let id = reader.str().to_owned();
                let hour = (reader.next() == 1).then(|| reader.signed().wrapping_add(header(&self.bytes, at).last));
                (id, hour)
            };
            self.remove(at, &id, hour);
        }
        self.compact_if_sparse();
    }

    /// Every session held, unpacked, in the order they were packed.
    pub(super) fn sessions(&self) -> impl Iterator<Item = (&str, Session)> {
        self.offsets().map(|at| self.decode(at))
    }

    /// The offsets of the live entries.
    fn offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            while at < self.bytes.len() {
                let entry = header(&self.bytes, at);
                let here = at;
                at += entry.length;
                if entry.held != TAKEN {
                    return Some(here);
                }
            }
            None
        })
    }

    fn remove(&mut self, at: usize, id: &str, earned_hour: Option<i64>) {
        let entry = header(&self.bytes, at);
        if let Ok(slot) = self.index.find_entry(self.hasher.hash_one(id), |&offset| offset == at) {
            slot.remove();
        }
        self.bytes[at + 4..at + 8].copy_from_slice(&TAKEN.to_le_bytes());
        self.live -= 1;
        self.held -= entry.held as usize;
        self.taken_bytes += entry.length;
        if let Some(hour) = earned_hour
            && let Some(count) = self.earned.get_mut(&hour)
        {
            *count -= 1;
            if *count == 0 {
                self.earned.remove(&hour);
            }
        }
    }

    /// Copies the live entries into a new buffer once taken ones fill a
    /// quarter of it (most leave from the front, as their payment wait
    /// ends, so this is mostly one move of the tail). The SKU numbers stay;
    /// they are renumbered only when the fridge has named more SKUs than
    /// twice those its sessions hold.
    fn compact_if_sparse(&mut self) {
        if self.taken_bytes * 4 <= self.bytes.len() {
            return;
        }
        if self.skus.len() > 64 && self.skus.len() > 2 * self.named() {
            let live: Vec<(String, Session)> = self.sessions().map(|(id, session)| (id.to_owned(), session)).collect();
            let capacity = self.bytes.len() - self.taken_bytes;
            *self = ColdSessions { bytes: Vec::with_capacity(capacity), ..ColdSessions::default() };
            for (id, session) in &live {
                self.put(id, session);
            }
            return;
        }
        let mut bytes = Vec::with_capacity((self.bytes.len() - self.taken_bytes) * 9 / 8);
        for at in self.offsets() {
            bytes.extend_from_slice(&self.bytes[at..at + header(&self.bytes, at).length]);
        }
        self.bytes = bytes;
        self.taken_bytes = 0;
        self.index.clear();
        let mut at = 0;
        while at < self.bytes.len() {
            let Self { bytes, index, hasher, .. } = self;
            index.insert_unique(hasher.hash_one(id_at(bytes, at)), at, |&at| hasher.hash_one(id_at(bytes, at)));
            at += header(&self.bytes, at).length;
        }
        self.index.shrink_to_fit(|&at| self.hasher.hash_one(id_at(&self.bytes, at)));
    }

    /// How many distinct SKUs the held sessions' baskets name.
    fn named(&self) -> usize {
        let mut named = std::collections::HashSet::new();
        for (_, session) in self.sessions() {
            named.extend(session.basket.keys().cloned());
        }
        named.len()
    }

    /// The entry at `at`.
    fn decode(&self, at: usize) -> (&str, Session) {
        self.decode_checked(at).expect("entries are written by `put`")
    }

    /// The entry at `at`, or `None` if the bytes there are not one.
    fn decode_checked(&self, at: usize) -> Option<(&str, Session)> {
        let entry = header(&self.bytes, at);
        let (last, end) = (entry.last, at + entry.length);
        let mut reader = Reader { bytes: self.bytes.get(..end)?, at: at + HEADER };
        // A count of items is at most the bytes left, one or more each.
        let count = |reader: &mut Reader| {
            let n = reader.next();
            (n <= (end.saturating_sub(reader.at)) as u64).then_some(n)
        };
        let id = reader.str();
        let earned = match reader.next() {
            0 => None,
            _ => Some((reader.signed().wrapping_add(last), reader.signed(), reader.signed())),
        };
        let events = reader.signed() as isize;
        let closes = (0..count(&mut reader)?)
            .map(|_| ((reader.signed().wrapping_add(last), reader.next()), reader.signed() as isize))
            .collect();
        let payments = (0..count(&mut reader)?)
            .map(|_| ((reader.signed().wrapping_add(last), reader.next(), reader.option()), reader.signed() as isize))
            .collect();
        let basket = (0..count(&mut reader)?)
            .map(|_| Some((self.skus.get(reader.next() as usize)?.to_string(), reader.signed())))
            .collect::<Option<_>>()?;
        let row = match reader.next() {
            0 => None,
            status => Some(SessionRow {
                status: *SessionStatus::ALL.get(status as usize - 1)?,
                expected_cents: reader.option(),
                captured_cents: reader.option(),
                units: reader.signed(),
                closed_at: reader.option().map(|at| at.wrapping_add(last)),
            }),
        };
        (reader.at == end).then_some((id, Session { events, closes, payments, basket, last, row, earned }))
    }

    /// The buffer's live entries and the SKU names they number, as a
    /// checkpoint holds them: a copy of the bytes, not a session at a time.
    pub(super) fn stored(&self) -> StoredCold<'_> {
        StoredCold(self)
    }

    /// The sessions a checkpoint held ([`ColdSessions::stored`]), or why
    /// the bytes are not such.
    pub(super) fn restore(bytes: Vec<u8>, skus: Vec<String>) -> Result<ColdSessions, String> {
        let mut cold = ColdSessions { bytes, ..ColdSessions::default() };
        for (number, sku) in skus.into_iter().enumerate() {
            cold.numbers.insert(sku.as_str().into(), number as u32);
            cold.skus.push(sku.into());
        }
        let mut at = 0;
        while at < cold.bytes.len() {
            let entry = (cold.bytes.len() - at >= HEADER).then(|| header(&cold.bytes, at));
            let Some(entry) = entry.filter(|e| e.length > HEADER && e.length <= cold.bytes.len() - at) else {
                return Err(format!("a packed session at byte {at} is cut short"));
            };
            let Some((id, session)) = cold.decode_checked(at) else {
                return Err(format!("the packed session at byte {at} does not decode"));
            };
            if entry.held != session.held() as u32 || entry.closed != session.closed_at() {
                return Err(format!("the packed session {id} disagrees with its header"));
            }
            let (hash, earned) = (cold.hasher.hash_one(id), session.earned.map(|(hour, _, _)| hour));
            let Self { bytes, index, hasher, .. } = &mut cold;
            if index.find(hash, |&other| id_at(bytes, other) == id_at(bytes, at)).is_some() {
                return Err(format!("session {} is packed twice", id_at(bytes, at)));
            }
            index.insert_unique(hash, at, |&at| hasher.hash_one(id_at(bytes, at)));
            cold.live += 1;
            cold.held += entry.held as usize;
            if let Some(hour) = earned {
                *cold.earned.entry(hour).or_insert(0) += 1;
            }
            at += entry.length;
        }
        Ok(cold)
    }
}

/// A fridge's packed sessions as a checkpoint holds them: `(bytes, SKU
/// names)`, the bytes the live entries back to back.
pub(super) struct StoredCold<'a>(&'a ColdSessions);

impl Serialize for StoredCold<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let cold = self.0;
        let live: std::borrow::Cow<'_, [u8]> = if cold.taken_bytes == 0 {
            std::borrow::Cow::Borrowed(&cold.bytes)
        } else {
            let mut live = Vec::with_capacity(cold.bytes.len() - cold.taken_bytes);
            for at in cold.offsets() {
                live.extend_from_slice(&cold.bytes[at..at + header(&cold.bytes, at).length]);
            }
            std::borrow::Cow::Owned(live)
        };
        let skus: Vec<&str> = cold.skus.iter().map(|sku| &**sku).collect();
        (Bytes(&live), skus).serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::sessions::Fact;

    fn session(id: u64) -> Session {
        let mut session = Session::default();
        let at = 1_767_225_600_000_000 + id as i64 * 3_600_000_000;
        session.add(at, &Fact::Named, 1);
        session.add(at + 1_000, &Fact::Item(format!("sku-{}", id % 7), 2), 1);
        session.add(at + 2_000, &Fact::Item("cola-330".into(), -1), 1);
        if !id.is_multiple_of(3) {
            session.add(at + 9_000, &Fact::Closed(id * 10), 1);
        }
        if id % 4 == 1 {
            session.add(at - 5_000, &Fact::Payment(id * 10 + 1, Some(-450)), 1);
            session.add(at + 90_000_000_000, &Fact::Payment(id * 10 + 2, None), 2);
        }
        session.row = (!id.is_multiple_of(5)).then(|| SessionRow {
            status: SessionStatus::ALL[id as usize % 8],
            expected_cents: id.is_multiple_of(2).then_some(i64::MAX - id as i64),
            captured_cents: Some(i64::MIN + 1),
            units: 1,
            closed_at: session.closed_at(),
        });
        session.earned = (id % 2 == 1).then_some((at - at.rem_euclid(3_600_000_000), 450, -3));
        session
    }

    #[test]
    fn a_packed_session_unpacks_to_what_it_was_and_leaves_no_trace() {
        let mut cold = ColdSessions::default();
        for id in 0..200 {
            cold.put(&format!("S{id:07}"), &session(id));
        }
        assert_eq!((cold.live, cold.held()), (200, (0..200).map(|id| session(id).held()).sum()));
        assert_eq!(cold.closed_at("S0000001"), session(1).closed_at());
        assert_eq!(cold.closed_at("S0000003"), None, "held but open");
        assert_eq!(cold.closed_at("nope"), None);
        for id in (0..200).step_by(2) {
            assert_eq!(cold.take(&format!("S{id:07}")), Some(session(id)), "session {id}");
        }
        assert_eq!(cold.take("S0000000"), None, "taken once");
        // Half were taken: the buffer was compacted, the rest still found.
        assert!(cold.taken_bytes * 2 <= cold.bytes.len());
        let rest: Vec<(String, Session)> = cold.sessions().map(|(id, s)| (id.to_owned(), s)).collect();
        assert_eq!(rest.len(), 100);
        for (id, unpacked) in rest {
            let number: u64 = id[1..].parse().unwrap();
            assert_eq!(unpacked, session(number), "session {id}");
        }
        let odd = cold.take_if(|s| s.payments.len() == 2);
        assert_eq!(odd.len(), 50, "ids 1, 5, 9, …");
        assert!(cold.earns_in(session(3).earned.unwrap().0));
        assert!(!cold.earns_in(session(1).earned.unwrap().0), "its only earner was taken");
        cold.retain(|_, closed| closed.is_some());
        assert!(cold.sessions().all(|(_, s)| s.closed_at().is_some()));
        assert_eq!(cold.held(), cold.sessions().map(|(_, s)| s.held()).sum::<usize>());
        let left = cold.live;
        assert_eq!(left, (0..200).filter(|id| id % 2 == 1 && id % 4 != 1 && id % 3 != 0).count());
        for id in (0..200).filter(|id| id % 2 == 1 && id % 4 != 1 && id % 3 != 0) {
            assert_eq!(cold.take(&format!("S{id:07}")), Some(session(id)));
        }
        assert_eq!((cold.live, cold.held()), (0, 0));
        assert!(cold.earned.is_empty());
    }

    /// A fridge that named many SKUs once does not keep their names: when
    /// the sessions that named them leave, the buffer is rewritten with
    /// only the names still held.
    #[test]
    fn sku_names_no_session_holds_are_forgotten() {
        let mut cold = ColdSessions::default();
        let with_sku = |n: u64| {
            let mut session = session(n);
            session.add(session.last, &Fact::Item(format!("invented-{n}"), 1), 1);
            session
        };
        for n in 0..200 {
            cold.put(&format!("S{n:07}"), &with_sku(n));
        }
        assert!(cold.skus.len() > 200);
        for n in 0..150 {
            assert_eq!(cold.take(&format!("S{n:07}")), Some(with_sku(n)));
        }
        assert!(cold.skus.len() < 100, "{} names kept", cold.skus.len());
        for n in 150..200 {
            assert_eq!(cold.take(&format!("S{n:07}")), Some(with_sku(n)));
        }
    }
}
