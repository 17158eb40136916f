//! A small least-recently-used map for the statement caches, whose pinned
//! entries (the declared statements) never leave.
//!
//! Capacities are about a hundred entries and eviction happens only on a
//! miss when full, so eviction scans for the oldest entry instead of keeping
//! a linked list: a hit is one hash lookup and a counter write.

use std::collections::HashMap;

/// A map of SQL text to `V` holding at most `capacity` unpinned entries.
#[derive(Debug)]
pub(crate) struct Lru<V> {
    capacity: usize,
    tick: u64,
    unpinned: usize,
    entries: HashMap<String, Entry<V>>,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    used: u64,
    pinned: bool,
}

impl<V: Clone> Lru<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), tick: 0, unpinned: 0, entries: HashMap::new() }
    }

    /// The value for `key`, now the most recently used.
    pub(crate) fn get(&mut self, key: &str) -> Option<V> {
        self.tick += 1;
        let entry = self.entries.get_mut(key)?;
        entry.used = self.tick;
        Some(entry.value.clone())
    }

    /// Puts `value` in under `key`, and returns what left to make room (or
    /// what it replaced), for the caller to drop outside any lock.
    pub(crate) fn insert(&mut self, key: String, value: V, pinned: bool) -> Vec<V> {
        self.tick += 1;
        let mut gone = Vec::new();
        if let Some(old) = self.entries.insert(key, Entry { value, used: self.tick, pinned }) {
            self.unpinned -= usize::from(!old.pinned);
            gone.push(old.value);
        }
        self.unpinned += usize::from(!pinned);
        while self.unpinned > self.capacity {
            let Some(oldest) =
                self.entries.iter().filter(|(_, e)| !e.pinned).min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(entry) = self.entries.remove(&oldest) {
                self.unpinned -= 1;
                gone.push(entry.value);
            }
        }
        gone
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.unpinned -= usize::from(!entry.pinned);
        Some(entry.value)
    }

    /// Empties the map, pinned entries included.
    pub(crate) fn clear(&mut self) -> Vec<V> {
        self.unpinned = 0;
        self.entries.drain().map(|(_, e)| e.value).collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_unpinned_entry_leaves_first() {
        let mut lru = Lru::new(2);
        assert!(lru.insert("declared".into(), 0, true).is_empty());
        assert!(lru.insert("a".into(), 1, false).is_empty());
        assert!(lru.insert("b".into(), 2, false).is_empty());
        assert_eq!(lru.get("a"), Some(1));
        assert_eq!(lru.insert("c".into(), 3, false), [2], "b was used least recently");
        assert_eq!(lru.get("b"), None);
        assert_eq!(lru.insert("d".into(), 4, false), [1]);
        assert_eq!(lru.get("declared"), Some(0), "pinned entries never leave");
        assert_eq!(lru.len(), 3);
    }

    #[test]
    fn many_distinct_keys_stay_within_the_capacity() {
        let mut lru = Lru::new(100);
        lru.insert("declared".into(), 0, true);
        let mut evicted = 0;
        for i in 0..10_000 {
            evicted += lru.insert(format!("SELECT {i}"), i, false).len();
        }
        assert_eq!(lru.len(), 101);
        assert_eq!(evicted, 9_900);
        assert_eq!(lru.remove("SELECT 9999"), Some(9999));
        assert_eq!(lru.clear().len(), 100);
        assert_eq!(lru.len(), 0);
    }

    #[test]
    fn a_removed_entry_frees_its_room_and_a_removed_pinned_one_frees_none() {
        let mut lru = Lru::new(2);
        lru.insert("a".into(), 1, false);
        lru.insert("b".into(), 2, false);
        lru.insert("p".into(), 0, true);
        assert_eq!(lru.remove("a"), Some(1));
        assert!(lru.insert("c".into(), 3, false).is_empty(), "a's room is free again");
        assert_eq!(lru.remove("p"), Some(0));
        assert_eq!(lru.insert("d".into(), 4, false), [2], "removing a pinned entry freed no unpinned room");
        assert_eq!(lru.remove("nope"), None);
    }

    #[test]
    fn replacing_a_key_keeps_the_count_right() {
        let mut lru = Lru::new(1);
        lru.insert("a".into(), 1, false);
        assert_eq!(lru.insert("a".into(), 2, false), [1]);
        assert!(lru.insert("p".into(), 0, true).is_empty());
        assert_eq!(lru.insert("b".into(), 3, false), [2]);
        assert_eq!(lru.get("b"), Some(3));
    }
}
