//! [`VecMap`]: a map kept as one sorted vector, for the many small maps of
//! per-session state (a session's closes, payment results and basket hold
//! a handful of entries each). A `BTreeMap` allocates a whole node for its
//! first entry, several hundred bytes; this holds exactly its entries.
//!
//! It is written and read as a map, entries in key order, so a state that
//! held a `BTreeMap` where it now holds a `VecMap` encodes to the same bytes
//! and checkpoints taken with either restore into the other.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A map of few entries, sorted by key in one vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.0.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// The value of `key`, inserted as the default if missing (the key is
    /// copied only then).
    pub fn value_mut<Q: Ord + ToOwned<Owned = K> + ?Sized>(&mut self, key: &Q) -> &mut V
    where
        K: Borrow<Q>,
        V: Default,
    {
        let index = match self.find(key) {
            Ok(index) => index,
            Err(index) => {
                // One entry at a time: the map stays as small as it is.
                self.0.reserve_exact(1);
                self.0.insert(index, (key.to_owned(), V::default()));
                index
            }
        };
        &mut self.0[index].1
    }

    /// Whether `key` has an entry.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Removes the entry of `key`, returning its value.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let index = self.find(key).ok()?;
        Some(self.0.remove(index).1)
    }

    /// The entries with a key below `bound`, in key order.
    pub fn below(&self, bound: &K) -> impl DoubleEndedIterator<Item = (&K, &V)> {
        let end = self.0.partition_point(|(k, _)| k < bound);
        self.0[..end].iter().map(|(k, v)| (k, v))
    }

    /// The entries with a key at or below `bound`, in key order.
    pub fn up_to(&self, bound: &K) -> impl DoubleEndedIterator<Item = (&K, &V)> {
        let end = self.0.partition_point(|(k, _)| k <= bound);
        self.0[..end].iter().map(|(k, v)| (k, v))
    }

    /// Splits off the entries with a key at or above `from`.
    pub fn split_off(&mut self, from: &K) -> VecMap<K, V> {
        let start = self.0.partition_point(|(k, _)| k < from);
        let rest = VecMap(self.0.split_off(start));
        self.0.shrink_to_fit();
        rest
    }

    /// Removes the entry of the largest key.
    pub fn pop_last(&mut self) -> Option<(K, V)> {
        self.0.pop()
    }

    /// Keeps the entries for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.0.iter().map(|(k, _)| k)
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    /// A map of the entries, which must have distinct keys.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut entries: Vec<(K, V)> = entries.into_iter().collect();
        entries.sort_by(|(a, _), (b, _)| a.cmp(b));
        debug_assert!(entries.windows(2).all(|pair| pair[0].0 != pair[1].0), "a key twice");
        VecMap(entries)
    }
}

impl<K: Serialize, V: Serialize> Serialize for VecMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for VecMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<K, V>::deserialize(deserializer)?;
        Ok(VecMap(map.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_its_entries_sorted_and_encodes_like_a_btree_map() {
        let mut map: VecMap<String, i64> = VecMap::default();
        *map.value_mut("water") += 2;
        *map.value_mut("cola") += 1;
        *map.value_mut("water") -= 2;
        *map.value_mut("salad") += 3;
        assert_eq!(map.keys().collect::<Vec<_>>(), ["cola", "salad", "water"]);
        map.retain(|_, qty| *qty != 0);
        assert!(!map.contains_key("water") && map.contains_key("cola"));
        let btree = BTreeMap::from([("cola".to_owned(), 1i64), ("salad".to_owned(), 3)]);
        let bytes = bincode::serialize(&map).unwrap();
        assert_eq!(bytes, bincode::serialize(&btree).unwrap());
        let back: VecMap<String, i64> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, map);
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn ranges_splits_and_removals_match_a_btree_map() {
        let entries = [(1i64, 'a'), (3, 'b'), (5, 'c'), (7, 'd')];
        let mut map: VecMap<i64, char> = entries.into_iter().collect();
        let btree: BTreeMap<i64, char> = entries.into_iter().collect();
        for bound in 0..9 {
            assert!(map.below(&bound).eq(btree.range(..bound)), "below {bound}");
            assert!(map.up_to(&bound).eq(btree.range(..=bound)), "up to {bound}");
        }
        assert_eq!(map.remove(&3), Some('b'));
        assert_eq!(map.remove(&3), None);
        let rest = map.split_off(&5);
        assert_eq!(rest.keys().collect::<Vec<_>>(), [&5, &7]);
        assert_eq!(map.keys().collect::<Vec<_>>(), [&1]);
        assert_eq!(map.pop_last(), Some((1, 'a')));
        assert!(map.is_empty());
    }
}
