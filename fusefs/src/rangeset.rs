//! Sets of disjoint, merged, half-open `u64` ranges: how the journal remembers which bytes of
//! a file are dirty and which pages already have a saved pre-image.  Memory grows with the
//! number of separate ranges, never with the number of bytes they cover, which is what keeps
//! the daemon's RSS flat however much unsynced data a program writes.

use std::collections::BTreeMap;
use std::ops::Bound;

/// Disjoint half-open ranges `[start, end)`, stored merged: two stored ranges never overlap
/// or touch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `[start, end)`, merging with every overlapping or adjacent range.  Extending
    /// the range an append continues updates it in place: no allocation on that path.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut new_start = start;
        let mut new_end = end;
        // The only range starting at or before `start` that can touch it is the last one.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                if e >= end {
                    return;
                }
                new_start = s;
            }
        }
        // Every other range starting inside (new_start, end] overlaps or is adjacent.
        while let Some((&s, &e)) = self
            .map
            .range((Bound::Excluded(new_start), Bound::Included(end)))
            .next()
        {
            new_end = new_end.max(e);
            self.map.remove(&s);
        }
        match self.map.get_mut(&new_start) {
            Some(e) => *e = new_end,
            None => {
                self.map.insert(new_start, new_end);
            }
        }
    }

    /// Removes `[start, end)`, splitting ranges that straddle its edges.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.map.range(..start).next_back() {
            if e > start {
                self.map.insert(s, start);
                if e > end {
                    self.map.insert(end, e);
                    return;
                }
            }
        }
        while let Some((&s, &e)) = self.map.range(start..end).next() {
            self.map.remove(&s);
            if e > end {
                self.map.insert(end, e);
                break;
            }
        }
    }

    /// The sub-ranges of `[start, end)` that no stored range covers, in order.
    pub fn missing(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let mut cursor = start;
        if let Some((_, &e)) = self.map.range(..start).next_back() {
            cursor = cursor.max(e);
        }
        for (&s, &e) in self.map.range(start..end) {
            if s > cursor {
                out.push((cursor, s));
            }
            cursor = cursor.max(e);
            if cursor >= end {
                break;
            }
        }
        if cursor < end {
            out.push((cursor, end));
        }
        out
    }

    /// True when `[start, end)` is entirely covered.  Cheaper than `missing` (no allocation),
    /// which matters on the write path.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        match self.map.range(..=start).next_back() {
            Some((_, &e)) => e >= end,
            None => false,
        }
    }

    /// True when some stored range overlaps `[start, end)`.  No allocation: the write path
    /// asks this for every write.
    pub fn intersects(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        if let Some((_, &e)) = self.map.range(..=start).next_back() {
            if e > start {
                return true;
            }
        }
        self.map.range(start..end).next().is_some()
    }

    /// The parts of `[start, end)` that stored ranges cover, in order.
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        if let Some((_, &e)) = self.map.range(..start).next_back() {
            if e > start {
                out.push((start, e.min(end)));
            }
        }
        for (&s, &e) in self.map.range(start..end) {
            out.push((s, e.min(end)));
        }
        out
    }

    /// Drops everything at or past `at`.
    pub fn truncate(&mut self, at: u64) {
        self.remove(at, u64::MAX);
    }

    /// The ranges, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&s, &e)| (s, e))
    }

    /// Number of bytes covered.
    pub fn total_len(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }

    /// Number of separate ranges stored (what memory grows with).
    pub fn range_count(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Removes every range.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(r: &RangeSet) -> Vec<(u64, u64)> {
        r.iter().collect()
    }

    #[test]
    fn insert_merges_overlapping_and_adjacent() {
        let mut r = RangeSet::new();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(v(&r), vec![(10, 20), (30, 40)]);
        r.insert(20, 25);
        assert_eq!(v(&r), vec![(10, 25), (30, 40)]);
        r.insert(25, 30);
        assert_eq!(v(&r), vec![(10, 40)]);
        r.insert(5, 50);
        assert_eq!(v(&r), vec![(5, 50)]);
        r.insert(7, 9);
        assert_eq!(v(&r), vec![(5, 50)]);
        r.insert(60, 60);
        assert_eq!(r.range_count(), 1);
        assert_eq!(r.total_len(), 45);
    }

    #[test]
    fn remove_splits() {
        let mut r = RangeSet::new();
        r.insert(0, 100);
        r.remove(10, 20);
        assert_eq!(v(&r), vec![(0, 10), (20, 100)]);
        r.remove(5, 30);
        assert_eq!(v(&r), vec![(0, 5), (30, 100)]);
        r.remove(0, 5);
        assert_eq!(v(&r), vec![(30, 100)]);
        r.insert(200, 300);
        r.remove(50, 250);
        assert_eq!(v(&r), vec![(30, 50), (250, 300)]);
        r.truncate(260);
        assert_eq!(v(&r), vec![(30, 50), (250, 260)]);
        r.truncate(0);
        assert!(r.is_empty());
    }

    #[test]
    fn missing_and_covers() {
        let mut r = RangeSet::new();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.missing(0, 50), vec![(0, 10), (20, 30), (40, 50)]);
        assert_eq!(r.missing(15, 35), vec![(20, 30)]);
        assert_eq!(r.missing(12, 18), vec![]);
        assert_eq!(r.missing(40, 45), vec![(40, 45)]);
        assert!(r.covers(10, 20));
        assert!(r.covers(12, 13));
        assert!(!r.covers(15, 25));
        assert!(!r.covers(0, 5));
    }

    /// Checks every operation against a bitmap model over a small universe.
    #[test]
    fn randomized_against_bitmap() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        const N: u64 = 200;
        let mut model = [false; N as usize];
        let mut r = RangeSet::new();
        for _ in 0..20_000 {
            let a = next() % N;
            let b = next() % N;
            let (s, e) = (a.min(b), a.max(b));
            match next() % 4 {
                0 | 1 => {
                    r.insert(s, e);
                    (s..e).for_each(|i| model[i as usize] = true);
                }
                2 => {
                    r.remove(s, e);
                    (s..e).for_each(|i| model[i as usize] = false);
                }
                _ => {
                    r.truncate(s);
                    (s..N).for_each(|i| model[i as usize] = false);
                }
            }
            let mut expect = RangeSet::new();
            for i in 0..N {
                if model[i as usize] {
                    expect.insert(i, i + 1);
                }
            }
            assert_eq!(r, expect);
            let missing: Vec<u64> = r
                .missing(s, e)
                .into_iter()
                .flat_map(|(a, b)| a..b)
                .collect();
            let want: Vec<u64> = (s..e).filter(|&i| !model[i as usize]).collect();
            assert_eq!(missing, want);
            assert_eq!(r.covers(s, e), want.is_empty());
        }
    }
}
