//! Partial power cuts (`--keep all|random|prefix`) through the real journal on temp files:
//! the crash state against the recorded history of the file, determinism of the seed, and
//! the op records surviving compaction.

use super::tests::{pattern, Dirs, TFile, JOURNAL_NEEDS_ROOT};
use super::*;
use crate::keep::{KeepMode, KeepSpec};
use crate::prng::SplitMix64;
use crate::testdir::require_root;
use crate::writeback::expired;
use std::time::Duration;

fn spec(mode: KeepMode, seed: u64, granularity: u64) -> KeepSpec {
    KeepSpec {
        mode,
        seed,
        granularity,
    }
}

/// One run of a fixed op sequence on a fresh dir, cut with `spec`: the file's content after
/// the cut, its history (content after each op, the durable one first) and the report.
fn run(spec: &KeepSpec, ops_seed: u64) -> (Vec<u8>, Vec<Vec<u8>>, FileLoss) {
    let d = Dirs::new("keep");
    let (j, _) = d.open(true);
    let f = TFile::create(&d, "f", &pattern(20_000, 3));
    let mut history = vec![f.content()];
    let mut r = SplitMix64::new(ops_seed);
    for step in 0..(3 + r.below(12)) {
        let size = f.content().len() as u64;
        match r.below(10) {
            0 => f.truncate(&j, r.below(30_000)),
            1 => {
                let mode = if r.coin() {
                    FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE
                } else {
                    FALLOC_ZERO_RANGE
                };
                f.fallocate(&j, mode, r.below(size + 1), 1 + r.below(9000))
                    .unwrap();
            }
            _ => {
                let off = r.below(size + 3000);
                let len = 1 + r.below(9000) as usize;
                f.write(&j, off, &vec![(step as u8) * 16 + 1; len]);
            }
        }
        history.push(f.content());
    }
    let losses = j.cut(spec).unwrap();
    assert_eq!(losses.len(), 1, "{losses:?}");
    (f.content(), history, losses[0].clone())
}

#[test]
fn prefix_gives_the_durable_state_with_exactly_the_first_k_ops() {
    require_root(JOURNAL_NEEDS_ROOT);
    let mut seen_k = std::collections::HashSet::new();
    for ops_seed in 0..40 {
        let s = spec(KeepMode::Prefix, 1000 + ops_seed, 4096);
        let (got, history, loss) = run(&s, ops_seed);
        let n = history.len() as u64 - 1;
        assert_eq!(loss.ops_total, Some(n), "ops seed {ops_seed}");
        let k = loss.ops_kept.unwrap();
        assert!(k <= n);
        seen_k.insert(k == n);
        assert!(
            got == history[k as usize],
            "ops seed {ops_seed}: the cut is not the state after {k} of {n} ops"
        );
        assert_eq!(loss.size_after, got.len() as u64);
        assert!(loss.error.is_none());
    }
    assert_eq!(seen_k.len(), 2, "some cuts keep every op, some do not");
}

#[test]
fn random_blocks_are_durable_or_latest_and_the_seed_replays() {
    require_root(JOURNAL_NEEDS_ROOT);
    let mut torn = 0;
    for seed in 0..30u64 {
        for g in [512u64, 4096] {
            let s = spec(KeepMode::Random, seed, g);
            let (got, history, loss) = run(&s, 77);
            let durable = &history[0];
            let latest = history.last().unwrap();
            let (d, cur) = (durable.len() as u64, latest.len() as u64);
            let size = got.len() as u64;
            assert!(size >= d.min(cur) && size <= d.max(cur), "size {size}");
            for (b, chunk) in got.chunks(g as usize).enumerate() {
                let at = |v: &Vec<u8>, i: usize| v.get(i).copied().unwrap_or(0);
                let s0 = b * g as usize;
                let is = |v: &Vec<u8>| chunk.iter().enumerate().all(|(i, &x)| x == at(v, s0 + i));
                assert!(
                    is(durable) || is(latest),
                    "seed {seed} g {g}: block {b} is neither durable nor latest"
                );
            }
            if loss.kept_bytes > 0 && loss.lost_bytes > 0 {
                torn += 1;
            }
            let (again, _, loss2) = run(&s, 77);
            assert_eq!(got, again, "seed {seed}: same seed, same bytes");
            assert_eq!(loss.kept, loss2.kept);
        }
    }
    assert!(torn > 0, "some cuts keep part of the unsynced data");
}

#[test]
fn all_keeps_everything_and_it_is_durable() {
    require_root(JOURNAL_NEEDS_ROOT);
    let s = spec(KeepMode::All, 0, 4096);
    let (got, history, loss) = run(&s, 5);
    assert_eq!(&got, history.last().unwrap());
    assert_eq!(loss.lost_bytes, 0);
    assert!(loss.kept_bytes > 0);
}

#[test]
fn op_records_survive_compaction_and_a_failed_order_falls_back() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("keep-compact");
    let (j, _) = d.open(true);
    let f = TFile::create(&d, "f", &pattern(100, 4));
    let busy = TFile::create(&d, "busy", &pattern(100, 5));
    let mut history = vec![f.content()];
    for i in 0..40u64 {
        f.write(&j, i * 10, &[i as u8 + 1; 10]);
        history.push(f.content());
        // Enough fsyncs of another file in between to compact the log several times.
        for _ in 0..2000 {
            busy.write(&j, 0, &[9]);
            let mut g = j.lock(busy.key, &busy.handle);
            g.mark_durable().unwrap();
        }
    }
    let losses = j.cut(&spec(KeepMode::Prefix, 11, 4096)).unwrap();
    let loss = losses
        .iter()
        .find(|l| l.path.as_deref() == Some("f"))
        .unwrap();
    assert_eq!(loss.ops_total, Some(40));
    let k = loss.ops_kept.unwrap() as usize;
    assert_eq!(f.content(), history[k]);
}

#[test]
fn writeback_makes_only_files_dirtied_before_the_window_durable() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("writeback");
    let (j, _) = d.open(true);
    let old = TFile::create(&d, "old", &pattern(100, 6));
    let fresh = TFile::create(&d, "fresh", &pattern(100, 7));
    let t0 = Instant::now();
    old.write(&j, 100, b"old data");
    let window = Duration::from_secs(30);
    // Nothing is due inside the window.
    assert_eq!(
        j.writeback_expired(|t| expired(t, t0 + Duration::from_secs(29), window)),
        0
    );
    let later = Instant::now() + window;
    fresh.write(&j, 100, b"fresh data");
    // `later` is past old's window (dirtied before it was computed) but not fresh's.
    let due = j.writeback_expired(|t| expired(t, later, window));
    assert_eq!(due, 1);
    assert_eq!(j.tracked_files(), 1);
    // Written back data is durable: a cut keeps it; the fresh write is lost.
    j.rollback_all().unwrap();
    assert_eq!(&old.content()[100..], b"old data");
    assert_eq!(fresh.content().len(), 100);
    // A later write starts a new window.
    old.write(&j, 0, b"x");
    assert_eq!(j.writeback_expired(|t| expired(t, later, window)), 0);
}

#[test]
fn small_appends_write_no_log_record_each() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("keep-batch");
    let (j, _) = d.open(true);
    let f = TFile::create(&d, "wal", b"");
    f.write(&j, 0, b"first");
    let after_first = j.log.lock().len();
    // About 30 bytes of record each: 500 appends fit the 64 KiB buffer, so the log file
    // does not grow (no write(2)) until it fills.
    for i in 0..500u64 {
        f.write(&j, 5 + i * 10, b"0123456789");
    }
    assert_eq!(
        j.log.lock().len(),
        after_first,
        "records wait in the buffer"
    );
    for i in 500..5000u64 {
        f.write(&j, 5 + i * 10, b"0123456789");
    }
    let len = j.log.lock().len();
    assert!(len > after_first, "a full buffer is written out");
    assert!(j.log.lock().pending_len() < 64 << 10);
    // And a cut still sees every one of them.
    let losses = j.cut(&spec(KeepMode::Prefix, 3, 4096)).unwrap();
    assert_eq!(losses[0].ops_total, Some(5001));
    let k = losses[0].ops_kept.unwrap();
    let expect = if k == 0 { 0 } else { 5 + (k - 1) * 10 };
    assert_eq!(f.content().len() as u64, expect);
}
