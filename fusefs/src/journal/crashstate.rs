//! What a power cut leaves of one file when part of its unsynced data survives
//! (`--keep random` and `--keep prefix`): the crash state computed as a plan (the size the
//! file ends with and, for each changed range, where its bytes come from), and the
//! application of that plan to the backing file.
//!
//! Rules (docs/fault-model.md states them for users):
//! - The unsynced bytes of a file are its dirty ranges plus everything between its durable
//!   size and its current size.
//! - `random`: those bytes are cut into aligned blocks of the granularity; each block is kept
//!   or lost by a coin of the file's generator, in ascending order.  A lost block gets its
//!   durable content back: its pre-image below the durable size, zeros past it.  Size: with
//!   the file now at least as large as its durable size, the end of the last kept byte,
//!   never beyond the current size, never below the durable size.  With the file now smaller
//!   than its durable size, the shrink is kept when the block holding the current end is
//!   kept, and otherwise the durable size comes back (kept blocks in between read as zeros).
//! - `prefix`: the file's unsynced operations (writes, truncates, fallocates) in the order
//!   they were made; `k` is drawn uniformly in `0..=n`, and the result is the durable state
//!   with exactly the first `k` operations applied.  It is computed backwards from the
//!   current content: the size is the size op `k` found, and each byte changed by op `k` or
//!   later gets the content the first such op found there (its per-op pre-image where it
//!   overwrote unsynced bytes, the durable content otherwise).
//! - A range commit (`sync_file_range` with `-o sync_file_range=stable`) rewrote the
//!   durable content of its bytes to what they held then, and made them clean.  In a
//!   `prefix` plan it is always kept, wherever it falls: when some of the operations before
//!   it are undone, the bytes they claimed inside the range take the committed content
//!   (the durable source) instead of what those operations found.

use super::fileio::{copy_range, zero_range};
use super::log::{Extent, OpRec};
use crate::prng::SplitMix64;
use crate::rangeset::RangeSet;
use std::io;
use std::os::fd::BorrowedFd;

/// Where a range of the crash state takes its bytes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The content the file had when it was last durable (a pre-image page; bytes without
    /// a saved page never changed).
    Durable,
    /// Zeros (past the durable size: no durable content exists there).
    Zero,
    /// Bytes of the undo file starting at this offset (a per-op pre-image).
    Undo(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub start: u64,
    pub end: u64,
    pub source: Source,
}

/// The crash state of one file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CrashPlan {
    /// Size after the cut.
    pub size: u64,
    /// Ranges whose bytes must be rewritten, disjoint, all below `size`.
    pub pieces: Vec<Piece>,
    /// Unsynced bytes that survive.
    pub kept: RangeSet,
    /// Unsynced bytes that do not.
    pub lost: RangeSet,
    /// For `prefix`: operations kept and recorded.
    pub ops: Option<(u64, u64)>,
}

/// The unsynced bytes: dirty ranges plus growth past the durable size.
pub(crate) fn unsynced(durable: u64, size: u64, dirty: &RangeSet) -> RangeSet {
    let mut u = dirty.clone();
    u.truncate(durable.max(size));
    u.insert(durable, size);
    u
}

/// Splits `[start, end)` at `durable`: below comes back as durable content, past it as zeros.
fn restore_pieces(out: &mut Vec<Piece>, start: u64, end: u64, durable: u64) {
    if start < end.min(durable) {
        out.push(Piece {
            start,
            end: end.min(durable),
            source: Source::Durable,
        });
    }
    if start.max(durable) < end {
        out.push(Piece {
            start: start.max(durable),
            end,
            source: Source::Zero,
        });
    }
}

/// `--keep random` (rules in the module header).
pub(crate) fn random_plan(
    durable: u64,
    size: u64,
    dirty: &RangeSet,
    granularity: u64,
    rng: &mut SplitMix64,
) -> CrashPlan {
    let g = granularity.max(1);
    let mut kept = RangeSet::new();
    let mut lost = RangeSet::new();
    let mut last: Option<(u64, bool)> = None;
    for (start, end) in unsynced(durable, size, dirty).iter() {
        let mut pos = start;
        while pos < end {
            let block = pos / g;
            let block_end = block.saturating_add(1).saturating_mul(g).min(end);
            let keep = match last {
                Some((b, k)) if b == block => k,
                _ => {
                    let k = rng.coin();
                    last = Some((block, k));
                    k
                }
            };
            if keep {
                kept.insert(pos, block_end);
            } else {
                lost.insert(pos, block_end);
            }
            pos = block_end;
        }
    }
    let new_size = if size >= durable {
        let last_kept = kept.iter().last().map_or(0, |(_, e)| e);
        durable.max(size.min(last_kept))
    } else if kept.covers(size, size + 1) {
        size
    } else {
        durable
    };
    let mut pieces = Vec::new();
    for (s, e) in lost.iter() {
        let e = e.min(new_size);
        if s < e {
            restore_pieces(&mut pieces, s, e, durable);
        }
    }
    // Shrink undone: bytes it cut off that are kept read as zeros, as after a truncate and
    // an extension.
    if size < new_size {
        for (s, e) in kept.overlapping(size, new_size) {
            pieces.push(Piece {
                start: s,
                end: e,
                source: Source::Zero,
            });
        }
    }
    pieces.sort_by_key(|p| p.start);
    CrashPlan {
        size: new_size,
        pieces,
        kept,
        lost,
        ops: None,
    }
}

/// `--keep prefix` with the first `k` of `ops` kept (rules in the module header).
#[cfg(test)]
pub(crate) fn prefix_plan(
    durable: u64,
    size: u64,
    dirty: &RangeSet,
    ops: &[OpRec],
    k: usize,
) -> CrashPlan {
    let mut b = PrefixBuilder::new(durable, k as u64);
    for op in ops {
        b.feed(op);
    }
    b.finish(size, dirty)
}

/// Builds a `--keep prefix` plan from the file's operations fed one at a time, in order, so
/// a cut streams them from the log: memory holds the plan's ranges, never the operations.
#[derive(Debug)]
pub(crate) struct PrefixBuilder {
    durable: u64,
    k: u64,
    seen: u64,
    /// The size op `k` found (the size after the kept prefix), once op `k` is seen.
    new_size: Option<u64>,
    claimed: RangeSet,
    pieces: Vec<Piece>,
}

impl PrefixBuilder {
    pub fn new(durable: u64, k: u64) -> Self {
        PrefixBuilder {
            durable,
            k,
            seen: 0,
            new_size: None,
            claimed: RangeSet::new(),
            pieces: Vec::new(),
        }
    }

    /// Operations fed so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The next operation of the file.  Ops before `k` are kept and need nothing; each later
    /// one gives the bytes it changed, that no earlier undone op claimed, the content it
    /// found there.
    pub fn feed(&mut self, op: &OpRec) {
        let i = self.seen;
        self.seen += 1;
        if i < self.k {
            return;
        }
        let new_size = *self.new_size.get_or_insert(op.size_before);
        let durable = self.durable;
        let end = op.end.min(new_size);
        for (a, b) in self.claimed.missing(op.start, end) {
            let mut pos = a;
            for x in &op.pre {
                let (xs, xe) = (x.start.max(a), x.start.saturating_add(x.len).min(b));
                if xs >= xe {
                    continue;
                }
                if pos < xs {
                    restore_pieces(&mut self.pieces, pos, xs, durable);
                }
                self.pieces.push(Piece {
                    start: xs,
                    end: xe,
                    source: Source::Undo(x.undo_off + (xs - x.start)),
                });
                pos = xe;
            }
            if pos < b {
                restore_pieces(&mut self.pieces, pos, b, durable);
            }
        }
        self.claimed.insert(op.start, end);
    }

    /// A range commit between the operations fed so far and the next ones.  When an
    /// operation before it is undone, the committed bytes must still hold the content they
    /// had at the commit (now their durable content), not what that operation found.
    pub fn commit(&mut self, start: u64, end: u64) {
        if self.seen <= self.k || start >= end {
            // Every operation before it is kept: the committed content is what they made.
            return;
        }
        let mut out = Vec::with_capacity(self.pieces.len() + 2);
        for p in self.pieces.drain(..) {
            let (s, e) = (p.start.max(start), p.end.min(end));
            if s >= e || p.source == Source::Zero {
                out.push(p);
                continue;
            }
            let part = |from: u64, to: u64| Piece {
                start: from,
                end: to,
                source: match p.source {
                    Source::Undo(off) => Source::Undo(off + (from - p.start)),
                    other => other,
                },
            };
            if p.start < s {
                out.push(part(p.start, s));
            }
            out.push(Piece {
                start: s,
                end: e,
                source: Source::Durable,
            });
            if e < p.end {
                out.push(part(e, p.end));
            }
        }
        self.pieces = out;
    }

    /// The plan, for a file now `size` bytes long with these dirty ranges.
    pub fn finish(mut self, size: u64, dirty: &RangeSet) -> CrashPlan {
        let new_size = self.new_size.unwrap_or(size);
        self.pieces.sort_by_key(|p| p.start);
        let all = unsynced(self.durable, size, dirty);
        let mut lost = self.claimed;
        lost.insert(new_size, size);
        let mut kept = all.clone();
        for (s, e) in lost.iter() {
            kept.remove(s, e);
        }
        let mut lost_report = RangeSet::new();
        for (s, e) in all.iter() {
            for (a, b) in lost.overlapping(s, e) {
                lost_report.insert(a, b);
            }
        }
        CrashPlan {
            size: new_size,
            pieces: self.pieces,
            kept,
            lost: lost_report,
            ops: Some((self.k.min(self.seen), self.seen)),
        }
    }
}

/// Puts the file into the plan's state: size first, then every piece.  `durable_pages` are
/// the file's saved pre-image pages; `undo` its undo file (needed when any are saved).
pub(crate) fn apply_plan(
    file: BorrowedFd<'_>,
    undo: Option<BorrowedFd<'_>>,
    durable_pages: &[Extent],
    plan: &CrashPlan,
) -> io::Result<()> {
    nix::unistd::ftruncate(file, plan.size as i64)?;
    // Saved pages never overlap (each is saved once per epoch); sorted, each piece finds
    // its pages by binary search instead of a scan of them all.
    let mut pages = durable_pages.to_vec();
    pages.sort_by_key(|x| x.start);
    let no_undo = || io::Error::new(io::ErrorKind::NotFound, "undo data is missing");
    for p in &plan.pieces {
        let end = p.end.min(plan.size);
        if p.start >= end {
            continue;
        }
        match p.source {
            Source::Zero => zero_range(file, p.start, end - p.start)?,
            Source::Undo(off) => {
                let undo = undo.ok_or_else(no_undo)?;
                copy_range(undo, off, file, p.start, end - p.start)?;
            }
            Source::Durable => {
                // Bytes no page covers were never changed: the file still has them.
                let first = pages.partition_point(|x| x.start.saturating_add(x.len) <= p.start);
                for x in pages[first..].iter().take_while(|x| x.start < end) {
                    let (s, e) = (x.start.max(p.start), x.start.saturating_add(x.len).min(end));
                    if s < e {
                        let undo = undo.ok_or_else(no_undo)?;
                        copy_range(undo, x.undo_off + (s - x.start), file, s, e - s)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[(u64, u64)]) -> RangeSet {
        let mut r = RangeSet::new();
        for &(s, e) in v {
            r.insert(s, e);
        }
        r
    }

    /// Applies a plan to in-memory content (the same rules as [`apply_plan`]).
    fn apply_mem(cur: &[u8], durable: &[u8], undo: &[u8], plan: &CrashPlan) -> Vec<u8> {
        let mut out = cur.to_vec();
        out.resize(plan.size as usize, 0);
        for p in &plan.pieces {
            for x in p.start..p.end.min(plan.size) {
                out[x as usize] = match p.source {
                    Source::Zero => 0,
                    Source::Durable => durable[x as usize],
                    Source::Undo(off) => undo[(off + x - p.start) as usize],
                };
            }
        }
        out
    }

    #[test]
    fn random_blocks_are_durable_or_latest_and_size_follows_the_last_kept_block() {
        let g = 512u64;
        let durable: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        for seed in 0..200u64 {
            // Overwrite 1000..2200 and append up to 5000.
            let mut cur = durable.clone();
            cur.resize(5000, 0);
            for (i, b) in cur.iter_mut().enumerate().skip(1000) {
                *b = 0x80 | (i % 127) as u8;
            }
            let dirty = set(&[(1000, 5000)]);
            let mut rng = SplitMix64::new(seed);
            let plan = random_plan(3000, 5000, &dirty, g, &mut rng);
            let out = apply_mem(&cur, &durable, &[], &plan);
            assert!(out.len() >= 3000 && out.len() <= 5000);
            let last_kept = plan.kept.iter().last().map_or(0, |(_, e)| e);
            assert_eq!(out.len() as u64, 3000u64.max(last_kept), "seed {seed}");
            for (b, chunk) in out.chunks(g as usize).enumerate() {
                let s = b * g as usize;
                let latest = &cur[s..s + chunk.len()];
                let old: Vec<u8> = (s..s + chunk.len())
                    .map(|i| durable.get(i).copied().unwrap_or(0))
                    .collect();
                assert!(
                    chunk == latest || chunk == old.as_slice(),
                    "seed {seed} block {b} is neither durable nor latest"
                );
            }
            let again = random_plan(3000, 5000, &dirty, g, &mut SplitMix64::new(seed));
            assert_eq!(plan, again, "same seed, same plan");
        }
    }

    #[test]
    fn random_shrink_is_kept_or_undone_as_a_whole() {
        let dirty = set(&[(1000, 8192)]);
        let mut kept_shrink = 0;
        for seed in 0..64 {
            let plan = random_plan(8192, 1000, &dirty, 4096, &mut SplitMix64::new(seed));
            assert!(plan.size == 1000 || plan.size == 8192);
            if plan.size == 1000 {
                kept_shrink += 1;
            }
        }
        assert!(kept_shrink > 0 && kept_shrink < 64);
    }

    /// A tiny model of the journal's recording: content, durable image, undo bytes, dirty
    /// set and op records, for writes and truncates.
    struct Model {
        durable: Vec<u8>,
        cur: Vec<u8>,
        undo: Vec<u8>,
        dirty: RangeSet,
        ops: Vec<OpRec>,
        states: Vec<Vec<u8>>,
    }

    impl Model {
        fn new(durable: Vec<u8>) -> Model {
            Model {
                cur: durable.clone(),
                states: vec![durable.clone()],
                durable,
                undo: Vec::new(),
                dirty: RangeSet::new(),
                ops: Vec::new(),
            }
        }
        fn record(&mut self, start: u64, end: u64) {
            let size_before = self.cur.len() as u64;
            let mut pre = Vec::new();
            for (s, e) in self.dirty.overlapping(start, end.min(size_before)) {
                pre.push(Extent {
                    start: s,
                    len: e - s,
                    undo_off: self.undo.len() as u64,
                });
                self.undo
                    .extend_from_slice(&self.cur[s as usize..e as usize]);
            }
            self.ops.push(OpRec {
                size_before,
                start,
                end,
                pre,
            });
        }
        fn write(&mut self, off: u64, data: &[u8]) {
            let end = off + data.len() as u64;
            self.record(off, end);
            let d = self.durable.len() as u64;
            if self.cur.len() < end as usize {
                self.cur.resize(end as usize, 0);
            }
            self.cur[off as usize..end as usize].copy_from_slice(data);
            self.dirty.insert(off, end);
            let _ = d;
            self.states.push(self.cur.clone());
        }
        fn truncate(&mut self, n: u64) {
            let old = self.cur.len() as u64;
            let d = self.durable.len() as u64;
            self.record(n.min(old), n.max(old));
            self.cur.resize(n as usize, 0);
            self.dirty.truncate(n.max(d));
            self.dirty.insert(n, d);
            self.dirty.insert(old.max(d), n);
            self.states.push(self.cur.clone());
        }
    }

    /// What happened to a model file, in order, for replaying a prefix by hand.
    enum Ev {
        Write(u64, Vec<u8>),
        Truncate(u64),
        /// A range commit: the bytes it set (their content at the commit).
        Commit(u64, Vec<u8>),
    }

    #[test]
    fn prefix_with_range_commits_keeps_the_committed_content_whatever_k() {
        for seed in 0..300u64 {
            let mut r = SplitMix64::new(seed);
            let durable0: Vec<u8> = (0..1 + r.below(6000)).map(|i| (i % 253) as u8).collect();
            let mut m = Model::new(durable0.clone());
            let mut evs = Vec::new();
            // The builder's input: ops and commits in order.
            let mut order: Vec<Option<(u64, u64)>> = Vec::new();
            for step in 0..r.below(12) {
                match r.below(6) {
                    0 => {
                        let n = r.below(9000);
                        m.truncate(n);
                        evs.push(Ev::Truncate(n));
                        order.push(None);
                    }
                    1 => {
                        // A commit inside the durable size and the current size, as the
                        // journal's (data of overwritten bytes only).
                        let limit = (m.durable.len().min(m.cur.len())) as u64;
                        if limit == 0 {
                            continue;
                        }
                        let s = r.below(limit);
                        let e = s + 1 + r.below(limit - s);
                        let content = m.cur[s as usize..e as usize].to_vec();
                        m.durable[s as usize..e as usize].copy_from_slice(&content);
                        m.dirty.remove(s, e);
                        evs.push(Ev::Commit(s, content));
                        order.push(Some((s, e)));
                    }
                    _ => {
                        let off = r.below(m.cur.len() as u64 + 2000);
                        let len = 1 + r.below(3000);
                        let data = vec![(step as u8).wrapping_mul(37) | 1; len as usize];
                        m.write(off, &data);
                        evs.push(Ev::Write(off, data));
                        order.push(None);
                    }
                }
            }
            for k in 0..=m.ops.len() {
                let mut b = PrefixBuilder::new(durable0.len() as u64, k as u64);
                let mut ops = m.ops.iter();
                for entry in &order {
                    match entry {
                        Some((s, e)) => b.commit(*s, *e),
                        None => b.feed(ops.next().unwrap()),
                    }
                }
                let plan = b.finish(m.cur.len() as u64, &m.dirty);
                let out = apply_mem(&m.cur, &m.durable, &m.undo, &plan);
                // By hand: the first k operations, and every commit where it happened.
                let mut want = durable0.clone();
                let mut i = 0;
                for ev in &evs {
                    match ev {
                        Ev::Write(off, data) => {
                            if i < k {
                                let end = *off as usize + data.len();
                                if want.len() < end {
                                    want.resize(end, 0);
                                }
                                want[*off as usize..end].copy_from_slice(data);
                            }
                            i += 1;
                        }
                        Ev::Truncate(n) => {
                            if i < k {
                                want.resize(*n as usize, 0);
                            }
                            i += 1;
                        }
                        Ev::Commit(s, content) => {
                            for (j, &byte) in content.iter().enumerate() {
                                if let Some(w) = want.get_mut(*s as usize + j) {
                                    *w = byte;
                                }
                            }
                        }
                    }
                }
                assert_eq!(out, want, "seed {seed}: prefix of {k} ops");
            }
        }
    }

    #[test]
    fn prefix_equals_the_durable_state_with_the_first_k_ops_replayed() {
        for seed in 0..300u64 {
            let mut r = SplitMix64::new(seed);
            let durable: Vec<u8> = (0..r.below(6000)).map(|i| (i % 253) as u8).collect();
            let mut m = Model::new(durable.clone());
            for step in 0..r.below(12) {
                if r.below(5) == 0 {
                    let n = r.below(9000);
                    m.truncate(n);
                } else {
                    let off = r.below(m.cur.len() as u64 + 2000);
                    let len = 1 + r.below(3000);
                    let byte = (step as u8).wrapping_mul(37) | 1;
                    m.write(off, &vec![byte; len as usize]);
                }
            }
            for k in 0..=m.ops.len() {
                let d = m.durable.len() as u64;
                let plan = prefix_plan(d, m.cur.len() as u64, &m.dirty, &m.ops, k);
                let out = apply_mem(&m.cur, &m.durable, &m.undo, &plan);
                assert_eq!(out, m.states[k], "seed {seed}: prefix of {k} ops");
                assert_eq!(plan.ops, Some((k as u64, m.ops.len() as u64)));
            }
        }
    }
}
