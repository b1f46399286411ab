//! Range commits (`-o sync_file_range=stable`) through the real journal on temp files:
//! whole pages, partial pages, the durable size, holes, status and cut reports, a replay
//! after a killed daemon, and a partial cut after a commit.

use super::tests::{pattern, Dirs, TFile, JOURNAL_NEEDS_ROOT};
use super::*;
use crate::keep::{KeepMode, KeepSpec};
use crate::report::ByteRange;
use crate::testdir::require_root;
use std::os::unix::fs::FileExt;

impl TFile {
    fn commit(&self, j: &Journal, start: u64, end: u64) -> u64 {
        j.commit_range(self.key, &self.handle, start, end).unwrap()
    }
}

fn ranges(v: &[(u64, u64)]) -> Vec<ByteRange> {
    v.iter()
        .map(|&(start, end)| ByteRange { start, end })
        .collect()
}

/// `content` with `data` written at `off`.
fn with(content: &[u8], off: usize, data: &[u8]) -> Vec<u8> {
    let mut out = content.to_vec();
    if out.len() < off + data.len() {
        out.resize(off + data.len(), 0);
    }
    out[off..off + data.len()].copy_from_slice(data);
    out
}

#[test]
fn committed_pages_survive_a_cut_and_the_others_do_not() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("commit-pages");
    let (j, _) = d.open(true);
    j.enable_range_commits();
    let orig = pattern(5 * 4096, 1);
    let f = TFile::create(&d, "a", &orig);
    // Pages 1, 2 and 3 overwritten; the commit touches pages 1 and 2 only (partly).
    f.write(&j, 4096, &[7u8; 3 * 4096]);
    assert_eq!(f.commit(&j, 4096 + 100, 2 * 4096 + 10), 2 * 4096);
    assert_eq!(j.unsynced_bytes(), 4096);
    assert_eq!(j.status()[0].unsynced, ranges(&[(3 * 4096, 4 * 4096)]));
    // Committing again, or an untouched page, commits nothing new but is harmless.
    f.commit(&j, 4096, 2 * 4096);
    assert_eq!(f.commit(&j, 0, 4096), 0);
    let losses = j.rollback_all().unwrap();
    let expected = with(&orig, 4096, &[7u8; 2 * 4096]);
    assert_eq!(f.content(), expected);
    assert_eq!(losses[0].lost, ranges(&[(3 * 4096, 4 * 4096)]));
    assert_eq!(losses[0].lost_bytes, 4096);
}

#[test]
fn a_commit_keeps_the_content_at_the_commit_not_later_writes() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("commit-later");
    let (j, _) = d.open(true);
    j.enable_range_commits();
    let orig = pattern(3 * 4096, 2);
    let f = TFile::create(&d, "a", &orig);
    f.write(&j, 10, &[1u8; 100]);
    f.commit(&j, 0, 4096);
    f.write(&j, 50, &[2u8; 10]);
    assert_eq!(j.status()[0].unsynced, ranges(&[(50, 60)]));
    let losses = j.rollback_all().unwrap();
    assert_eq!(f.content(), with(&orig, 10, &[1u8; 100]));
    assert_eq!(losses[0].lost, ranges(&[(50, 60)]));
}

#[test]
fn appends_and_the_size_stay_unsynced_and_zero_length_means_to_the_end() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("commit-append");
    let (j, _) = d.open(true);
    j.enable_range_commits();
    let orig = pattern(10_000, 3);
    let f = TFile::create(&d, "a", &orig);
    // Overwrites 9000..10000 (inside the durable size, in its last partial page) and
    // appends 10000..14000.
    f.write(&j, 9000, &[5u8; 5000]);
    // What the tracer passes for nbytes 0.
    assert_eq!(f.commit(&j, 8192, u64::MAX), 10_000 - 8192);
    let losses = j.rollback_all().unwrap();
    assert_eq!(f.content(), with(&orig, 9000, &[5u8; 1000]));
    assert_eq!(losses[0].size_after, 10_000);
    assert_eq!(losses[0].lost, ranges(&[(10_000, 14_000)]));
}

#[test]
fn a_commit_after_a_shrink_leaves_the_shrink_unsynced() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("commit-shrink");
    let (j, _) = d.open(true);
    j.enable_range_commits();
    let orig = pattern(4 * 4096, 4);
    let f = TFile::create(&d, "a", &orig);
    f.write(&j, 0, &[9u8; 4096]);
    f.truncate(&j, 4096);
    assert_eq!(f.commit(&j, 0, 4 * 4096), 4096);
    j.rollback_all().unwrap();
    assert_eq!(f.content(), with(&orig, 0, &[9u8; 4096]));
}

#[test]
fn writes_into_holes_stay_unsynced() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("commit-holes");
    let (j, _) = d.open(true);
    j.enable_range_commits();
    // Page 0 data, pages 1..16 a hole, page 16 data.
    let f = TFile::create(&d, "a", &[3u8; 4096]);
    f.file.set_len(17 * 4096).unwrap();
    f.file.write_all_at(&[4u8; 4096], 16 * 4096).unwrap();
    f.file.sync_all().unwrap();
    let durable = f.content();
    if super::fileio::holes_in(f.file.as_fd(), 4096, 16 * 4096)
        .unwrap()
        .is_empty()
    {
        panic!("the temp dir's filesystem reports no holes: this test cannot check them");
    }
    f.write(&j, 0, &[6u8; 17 * 4096]);
    let committed = f.commit(&j, 0, u64::MAX);
    assert_eq!(committed, 2 * 4096, "pages 0 and 16 only");
    let losses = j.rollback_all().unwrap();
    let mut expected = durable.clone();
    expected[..4096].fill(6);
    expected[16 * 4096..].fill(6);
    assert_eq!(f.content(), expected);
    assert_eq!(losses[0].lost, ranges(&[(4096, 16 * 4096)]));
}

#[test]
fn a_replay_after_a_killed_daemon_keeps_committed_pages() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("commit-replay");
    let orig = pattern(4 * 4096, 5);
    let f;
    {
        let (j, _) = d.open(true);
        j.enable_range_commits();
        f = TFile::create(&d, "a", &orig);
        f.write(&j, 0, &[1u8; 4 * 4096]);
        f.commit(&j, 4096, 2 * 4096);
        f.write(&j, 4096, &[2u8; 10]);
        f.write(&j, 4 * 4096, &[3u8; 100]);
        // Dropped without a cut or a sync: what a SIGKILL of the daemon leaves.
        drop(j);
    }
    let (_j, replayed) = d.open(true);
    assert!(replayed.is_some());
    // Page 1 as committed (the later 10 bytes are lost), everything else back.
    assert_eq!(f.content(), with(&orig, 4096, &[1u8; 4096]));
}

#[test]
fn a_random_cut_never_touches_committed_pages() {
    require_root(JOURNAL_NEEDS_ROOT);
    for seed in 0..16 {
        let d = Dirs::new("commit-random");
        let (j, _) = d.open(true);
        j.enable_range_commits();
        let orig = pattern(4 * 4096, 6);
        let f = TFile::create(&d, "a", &orig);
        f.write(&j, 0, &[1u8; 4 * 4096]);
        f.commit(&j, 4096, 3 * 4096);
        let spec = KeepSpec {
            mode: KeepMode::Random,
            seed,
            granularity: 512,
        };
        let losses = j.cut(&spec).unwrap();
        let out = f.content();
        assert!(out[4096..3 * 4096].iter().all(|&b| b == 1), "seed {seed}");
        let reported: u64 = losses[0].lost_bytes + losses[0].kept_bytes;
        assert_eq!(
            reported,
            2 * 4096,
            "seed {seed}: only pages 0 and 3 were unsynced"
        );
    }
}

#[test]
fn a_prefix_cut_before_the_commit_keeps_the_committed_content() {
    require_root(JOURNAL_NEEDS_ROOT);
    // k is drawn from the seed: try seeds until both k = 0 and k = 3 were met.
    let mut met = std::collections::HashSet::new();
    for seed in 0..64 {
        let d = Dirs::new("commit-prefix");
        let (j, _) = d.open(true);
        j.enable_range_commits();
        let orig = pattern(2 * 4096, 7);
        let f = TFile::create(&d, "a", &orig);
        f.write(&j, 0, &[1u8; 100]); // op 0
        f.write(&j, 4096, &[2u8; 100]); // op 1: page 1, not committed
        f.write(&j, 50, &[3u8; 100]); // op 2
        f.commit(&j, 0, 4096);
        f.write(&j, 20, &[4u8; 10]); // op 3
        let spec = KeepSpec {
            mode: KeepMode::Prefix,
            seed,
            granularity: 4096,
        };
        let losses = j.cut(&spec).unwrap();
        let k = losses[0].ops_kept.unwrap();
        met.insert(k);
        let committed = with(&with(&orig, 0, &[1u8; 100]), 50, &[3u8; 100]);
        let mut expected = committed.clone();
        if k >= 2 {
            expected = with(&expected, 4096, &[2u8; 100]);
        }
        if k >= 4 {
            expected = with(&expected, 20, &[4u8; 10]);
        }
        assert_eq!(f.content(), expected, "seed {seed}, k {k}");
    }
    assert!(met.contains(&0) && met.contains(&4), "{met:?}");
}
