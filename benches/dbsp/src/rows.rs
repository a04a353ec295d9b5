//! The rows the compare bench writes, read into per-hour input batches.
//!
//! The first line is `events N`: how many events the workload has in all.
//! Every other line is tab-separated:
//!
//! ```text
//! hour  kind  fridge  sku  event_time  seq  a  b  active
//! ```
//!
//! where `kind` is `C` (stock counted: `a` = qty), `P` (planogram set: `a` =
//! par, `b` = min), `T` (item taken: `a` = qty), `R` (item returned: `a` =
//! qty), `D` (restock delivered: `a` = qty) or `A` (any other fridge event),
//! and `active` is 1 when the event counts as the fridge's latest activity.

use std::collections::HashMap;
use std::io::BufRead;

use dbsp::ZWeight;
use dbsp::utils::{Tup2, Tup3, Tup4};

/// `(fridge, sku)`, both interned.
pub type Shelf = Tup2<u32, u32>;

/// One insertion of `value` under `key`.
type Insert<K, V> = Tup2<K, Tup2<V, ZWeight>>;

/// The input batches of one hour of event time.
#[derive(Default)]
pub struct Hour {
    pub counts: Vec<Insert<Shelf, Tup3<i64, u64, i64>>>,
    pub plans: Vec<Insert<Shelf, Tup4<i64, u64, i64, i64>>>,
    pub moves: Vec<Insert<Shelf, Tup3<i64, i64, bool>>>,
    pub active: Vec<Insert<u32, i64>>,
}

/// The whole workload.
pub struct Rows {
    pub events: u64,
    pub hours: Vec<Hour>,
    pub fridges: Vec<String>,
    pub skus: Vec<String>,
}

#[derive(Default)]
struct Interner {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        id
    }
}

impl Rows {
    pub fn read(path: &str) -> Result<Rows, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let mut lines = std::io::BufReader::new(file).lines();
        let header = lines.next().ok_or(format!("{path}: empty"))?.map_err(|e| format!("{path}: {e}"))?;
        let events = header
            .strip_prefix("events ")
            .and_then(|n| n.parse().ok())
            .ok_or(format!("{path}: the first line is not `events N`"))?;
        let (mut fridges, mut skus) = (Interner::default(), Interner::default());
        let mut hours: Vec<Hour> = Vec::new();
        for (number, line) in lines.enumerate() {
            let line = line.map_err(|e| format!("{path}: {e}"))?;
            let bad = || format!("{path}:{}: malformed row {line:?}", number + 2);
            let fields: Vec<&str> = line.split('\t').collect();
            let [hour, kind, fridge, sku, time, seq, a, b, active] = fields[..] else { return Err(bad()) };
            let int = |field: &str| field.parse::<i64>().map_err(|_| bad());
            let hour = int(hour)? as usize;
            if hours.len() <= hour {
                hours.resize_with(hour + 1, Hour::default);
            }
            let batch = &mut hours[hour];
            let (fridge, time, seq, a) = (fridges.id(fridge), int(time)?, int(seq)? as u64, int(a)?);
            let shelf = Tup2(fridge, skus.id(sku));
            match kind {
                "C" => batch.counts.push(Tup2(shelf, Tup2(Tup3(time, seq, a), 1))),
                "P" => batch.plans.push(Tup2(shelf, Tup2(Tup4(time, seq, a, int(b)?), 1))),
                "T" => batch.moves.push(Tup2(shelf, Tup2(Tup3(time, -a, true), 1))),
                "R" => batch.moves.push(Tup2(shelf, Tup2(Tup3(time, a, true), 1))),
                "D" => batch.moves.push(Tup2(shelf, Tup2(Tup3(time, a, false), 1))),
                "A" => {}
                _ => return Err(bad()),
            }
            if active == "1" {
                batch.active.push(Tup2(fridge, Tup2(time, 1)));
            }
        }
        Ok(Rows { events, hours, fridges: fridges.names, skus: skus.names })
    }
}
