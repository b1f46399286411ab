//! Journal tests against real files in temp dirs under /tmp (root is needed for
//! open_by_handle_at): every change kind, rollback byte for byte, a seeded model test,
//! SIGKILL replay, corrupt logs, locking, compaction and flat memory.

use super::*;
use crate::prng::SplitMix64;
use crate::testdir::{require_root, TempDir};

/// Why most journal tests need root (the ones that make it reopen a file).
pub(super) const JOURNAL_NEEDS_ROOT: &str =
    "the journal reopens files with open_by_handle_at, which needs CAP_DAC_READ_SEARCH";
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};

pub(super) struct Dirs {
    /// Removed on drop; `None` in a child process working in its parent's directory.
    scratch: Option<TempDir>,
    pub(super) data: PathBuf,
    pub(super) state: PathBuf,
}

impl Dirs {
    pub(super) fn new(name: &str) -> Dirs {
        let scratch = TempDir::new(&format!("journal-{name}"));
        let data = scratch.path().join("data");
        let state = scratch.path().join("state");
        fs::create_dir_all(&data).unwrap();
        Dirs {
            scratch: Some(scratch),
            data,
            state,
        }
    }

    pub(super) fn open(&self, rollback: bool) -> (Journal, Option<Vec<FileLoss>>) {
        let root: OwnedFd = File::open(&self.data).unwrap().into();
        Journal::open(&self.state, root, &self.data, rollback).unwrap()
    }

    fn try_open(&self) -> io::Result<(Journal, Option<Vec<FileLoss>>)> {
        let root: OwnedFd = File::open(&self.data).unwrap().into();
        Journal::open(&self.state, root, &self.data, true)
    }
}

pub(super) struct TFile {
    pub(super) key: FileKey,
    pub(super) handle: FileHandle,
    pub(super) file: File,
}

impl TFile {
    /// A durable file with `content`.
    pub(super) fn create(d: &Dirs, name: &str, content: &[u8]) -> TFile {
        let path = d.data.join(name);
        fs::write(&path, content).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        file.sync_all().unwrap();
        let md = file.metadata().unwrap();
        TFile {
            key: FileKey {
                dev: md.dev(),
                ino: md.ino(),
            },
            handle: FileHandle::of_fd(file.as_fd()).unwrap(),
            file,
        }
    }

    pub(super) fn write(&self, j: &Journal, off: u64, data: &[u8]) {
        let mut g = j.lock(self.key, &self.handle);
        g.before_write(self.file.as_fd(), off, data.len() as u64)
            .unwrap();
        self.file.write_all_at(data, off).unwrap();
    }

    pub(super) fn truncate(&self, j: &Journal, size: u64) {
        let mut g = j.lock(self.key, &self.handle);
        g.before_truncate(self.file.as_fd(), size).unwrap();
        self.file.set_len(size).unwrap();
    }

    pub(super) fn fallocate(
        &self,
        j: &Journal,
        mode: i32,
        off: u64,
        len: u64,
    ) -> Result<(), Errno> {
        let mut g = j.lock(self.key, &self.handle);
        g.before_fallocate(self.file.as_fd(), mode, off, len)
            .unwrap();
        nix::fcntl::fallocate(
            &self.file,
            nix::fcntl::FallocateFlags::from_bits_retain(mode),
            off as i64,
            len as i64,
        )
    }

    pub(super) fn fsync(&self, j: &Journal) {
        let mut g = j.lock(self.key, &self.handle);
        self.file.sync_all().unwrap();
        g.mark_durable().unwrap();
    }

    /// fsync as the FUSE fsync does it: the next epoch is reserved.
    pub(super) fn fsync_reserving(&self, j: &Journal) {
        let mut g = j.lock(self.key, &self.handle);
        self.file.sync_all().unwrap();
        g.mark_durable_and_reserve(self.file.as_fd()).unwrap();
    }

    pub(super) fn content(&self) -> Vec<u8> {
        let len = self.file.metadata().unwrap().len() as usize;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, 0).unwrap();
        buf
    }
}

pub(super) fn pattern(n: usize, seed: u64) -> Vec<u8> {
    SplitMix64::new(seed).bytes(n)
}

fn ranges(v: &[(u64, u64)]) -> Vec<ByteRange> {
    v.iter()
        .map(|&(start, end)| ByteRange { start, end })
        .collect()
}

use crate::report::ByteRange;

#[test]
fn overwrite_and_append_roll_back_and_are_reported() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("basic");
    let (j, replayed) = d.open(true);
    assert_eq!(replayed, None);
    let orig = pattern(10_000, 1);
    let f = TFile::create(&d, "a", &orig);
    f.write(&j, 100, &[7u8; 100]);
    f.write(&j, 10_000, &[8u8; 5000]);
    assert_eq!(j.tracked_files(), 1);
    assert_eq!(j.unsynced_bytes(), 5100);
    let status = j.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].path.as_deref(), Some("a"));
    assert_eq!(status[0].durable_size, 10_000);
    assert_eq!(status[0].size, 15_000);
    assert_eq!(status[0].unsynced, ranges(&[(100, 200), (10_000, 15_000)]));
    assert_ne!(f.content(), orig);

    let losses = j.rollback_all().unwrap();
    assert_eq!(f.content(), orig);
    assert_eq!(losses.len(), 1);
    assert_eq!(losses[0].path.as_deref(), Some("a"));
    assert_eq!(losses[0].size_before, 15_000);
    assert_eq!(losses[0].size_after, 10_000);
    assert_eq!(losses[0].lost, ranges(&[(100, 200), (10_000, 15_000)]));
    assert_eq!(losses[0].lost_bytes, 5100);
    assert_eq!(losses[0].error, None);
    assert_eq!(j.tracked_files(), 0);
    assert_eq!(j.unsynced_bytes(), 0);
    assert_eq!(fs::read_dir(d.state.join("undo")).unwrap().count(), 0);
    assert_eq!(fs::metadata(d.state.join("journal")).unwrap().len(), 0);
}

#[test]
fn fsync_in_between_moves_the_durable_state() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("fsync");
    let (j, _) = d.open(true);
    let f = TFile::create(&d, "a", &pattern(9000, 2));
    f.write(&j, 5000, &[1u8; 6000]);
    f.fsync(&j);
    let durable = f.content();
    assert_eq!(j.tracked_files(), 0);
    f.write(&j, 0, &[2u8; 20_000]);
    f.write(&j, 4095, &[3u8; 2]);
    let losses = j.rollback_all().unwrap();
    assert_eq!(f.content(), durable);
    assert_eq!(losses[0].lost, ranges(&[(0, 20_000)]));
    assert_eq!(losses[0].size_before, 20_000);
    assert_eq!(losses[0].size_after, 11_000);
}

#[test]
fn truncate_down_then_up_rolls_back() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("trunc");
    let (j, _) = d.open(true);
    let orig = pattern(10_000, 3);
    let f = TFile::create(&d, "a", &orig);
    f.truncate(&j, 3000);
    f.truncate(&j, 20_000);
    f.write(&j, 5000, &[9u8; 10]);
    let mut expect = orig[..3000].to_vec();
    expect.resize(20_000, 0);
    expect[5000..5010].fill(9);
    assert_eq!(f.content(), expect);
    let st = j.status();
    assert_eq!(st[0].unsynced, ranges(&[(3000, 20_000)]));
    let losses = j.rollback_all().unwrap();
    assert_eq!(f.content(), orig);
    assert_eq!(losses[0].lost, ranges(&[(3000, 20_000)]));

    // Growth that is cut back again is not reported as lost.
    f.write(&j, 10_000, &[1u8; 500]);
    f.truncate(&j, 10_200);
    let losses = j.rollback_all().unwrap();
    assert_eq!(f.content(), orig);
    assert_eq!(losses[0].lost, ranges(&[(10_000, 10_200)]));
}

#[test]
fn every_fallocate_mode_rolls_back() {
    require_root(JOURNAL_NEEDS_ROOT);
    let modes = [
        ("alloc", 0, 1000, 30_000),
        ("keep", FALLOC_KEEP_SIZE, 1000, 30_000),
        ("punch", FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE, 4096, 8192),
        (
            "punch-unaligned",
            FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE,
            100,
            5000,
        ),
        ("zero", FALLOC_ZERO_RANGE, 3000, 30_000),
        (
            "zero-keep",
            FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE,
            3000,
            30_000,
        ),
        ("collapse", FALLOC_COLLAPSE_RANGE, 4096, 8192),
        ("insert", FALLOC_INSERT_RANGE, 4096, 8192),
    ];
    for (name, mode, off, len) in modes {
        let d = Dirs::new(name);
        let (j, _) = d.open(true);
        let orig = pattern(5 * 4096 + 100, 4);
        let f = TFile::create(&d, "a", &orig);
        match f.fallocate(&j, mode, off, len) {
            Ok(()) => {}
            Err(e) => {
                // Only a filesystem that lacks the mode may skip it.
                assert_eq!(e, Errno::EOPNOTSUPP, "mode {name}");
                eprintln!("fallocate {name}: EOPNOTSUPP on this filesystem, skipped");
                continue;
            }
        }
        let changed = f.content() != orig;
        assert_eq!(
            changed,
            !matches!(name, "keep"),
            "mode {name} changed the file"
        );
        // A write after the fallocate must not save the shifted bytes as pre-image.
        f.write(&j, 4096 * 2, &[5u8; 100]);
        let losses = j.rollback_all().unwrap();
        assert_eq!(f.content(), orig, "mode {name}");
        assert_eq!(losses[0].size_after, orig.len() as u64);
    }
}

#[test]
fn mark_durable_deletes_undo_data_and_retires_records() {
    let d = Dirs::new("undo");
    let (j, _) = d.open(true);
    let f = TFile::create(&d, "a", &pattern(3 * 4096, 5));
    f.write(&j, 10, &[1; 10]);
    f.write(&j, 8200, &[1; 10]);
    let undo = d.state.join("undo").join("1");
    assert_eq!(fs::metadata(&undo).unwrap().len(), 2 * 4096);
    assert!(j.log.lock().len() > 0);
    f.fsync(&j);
    assert!(!undo.exists());
    // The log is not truncated on every fsync (that would cost each fdatasync an extra
    // journal commit); its records are retired, so a replay finds nothing to do.
    assert!(
        j.log.lock().live().is_empty(),
        "no live records after fsync"
    );
    assert_eq!(j.files.lock().len(), 0, "clean files are forgotten");
}

/// Applies the same random operations to real files and to an in-memory model, checking
/// the files against the model after every operation and against the durable model after
/// every power cut and every simulated daemon kill.
#[test]
fn randomized_against_model() {
    require_root(JOURNAL_NEEDS_ROOT);
    for seed in [0x2545_f491_4f6c_dd1d, 0x9e37_79b9_7f4a_7c15, 42] {
        run_model(seed, 3000);
    }
}

fn run_model(seed: u64, steps: usize) {
    let d = Dirs::new("model");
    let (mut j, _) = d.open(true);
    let mut rng = SplitMix64::new(seed);
    const FILES: usize = 3;
    let files: Vec<TFile> = (0..FILES)
        .map(|i| {
            TFile::create(
                &d,
                &format!("f{i}"),
                &pattern(rng.below(40_000) as usize, i as u64 + 9),
            )
        })
        .collect();
    let mut current: Vec<Vec<u8>> = files.iter().map(|f| f.content()).collect();
    let mut durable = current.clone();
    let mut cuts = 0;
    for step in 0..steps {
        let i = rng.below(FILES as u64) as usize;
        let f = &files[i];
        let size = current[i].len() as u64;
        match rng.below(100) {
            0..=34 => {
                let off = rng.below(size + 8192);
                let n = rng.below(10_000) as usize + 1;
                let data = rng.bytes(n);
                f.write(&j, off, &data);
                let end = off as usize + data.len();
                if current[i].len() < end {
                    current[i].resize(end, 0);
                }
                current[i][off as usize..end].copy_from_slice(&data);
            }
            35..=49 => {
                let n = rng.below(3000) as usize + 1;
                let data = rng.bytes(n);
                f.write(&j, size, &data);
                current[i].extend_from_slice(&data);
            }
            50..=57 => {
                let new = rng.below(size + 10_000);
                f.truncate(&j, new);
                current[i].resize(new as usize, 0);
            }
            58..=71 => {
                let kinds = [
                    0,
                    FALLOC_KEEP_SIZE,
                    FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE,
                    FALLOC_ZERO_RANGE,
                    FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE,
                    FALLOC_COLLAPSE_RANGE,
                    FALLOC_INSERT_RANGE,
                ];
                let mode = kinds[rng.below(kinds.len() as u64) as usize];
                let shifting = mode & (FALLOC_COLLAPSE_RANGE | FALLOC_INSERT_RANGE) != 0;
                let (off, len) = if shifting {
                    (rng.below(size / 4096 + 1) * 4096, (rng.below(3) + 1) * 4096)
                } else {
                    (rng.below(size + 8192), rng.below(20_000) + 1)
                };
                if f.fallocate(&j, mode, off, len).is_ok() {
                    let (o, l, end) = (off as usize, len as usize, (off + len) as usize);
                    let c = &mut current[i];
                    if mode == FALLOC_COLLAPSE_RANGE {
                        c.drain(o..end);
                    } else if mode == FALLOC_INSERT_RANGE {
                        c.splice(o..o, vec![0; l]);
                    } else if mode & FALLOC_KEEP_SIZE != 0 {
                        if mode != FALLOC_KEEP_SIZE {
                            let e = end.min(c.len());
                            if o < e {
                                c[o..e].fill(0);
                            }
                        }
                    } else {
                        if c.len() < end {
                            c.resize(end, 0);
                        }
                        if mode == FALLOC_ZERO_RANGE {
                            c[o..end].fill(0);
                        }
                    }
                }
            }
            72..=76 => {
                f.fsync(&j);
                durable[i] = current[i].clone();
            }
            77..=81 => {
                f.fsync_reserving(&j);
                durable[i] = current[i].clone();
            }
            82..=83 => {
                j.sync_all().unwrap();
                durable = current.clone();
            }
            84..=93 => {
                j.rollback_all().unwrap();
                cuts += 1;
                for (k, f) in files.iter().enumerate() {
                    assert_eq!(
                        f.content(),
                        durable[k],
                        "seed {seed:#x}: file {k} after power cut, step {step}"
                    );
                }
                current = durable.clone();
            }
            _ => {
                // The daemon is killed: nothing is cleaned, the next one replays.
                drop(j);
                let (nj, _) = d.open(true);
                j = nj;
                cuts += 1;
                for (k, f) in files.iter().enumerate() {
                    assert_eq!(
                        f.content(),
                        durable[k],
                        "seed {seed:#x}: file {k} after replay, step {step}"
                    );
                }
                current = durable.clone();
            }
        }
        assert_eq!(
            f.content(),
            current[i],
            "seed {seed:#x}: file {i} after step {step}"
        );
    }
    assert!(cuts > 100, "the run exercised rollbacks ({cuts})");
    j.rollback_all().unwrap();
    for (k, f) in files.iter().enumerate() {
        assert_eq!(f.content(), durable[k]);
    }
}

#[test]
fn killed_daemon_is_rolled_back_on_next_open_and_replay_is_idempotent() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("kill");
    let orig_a = pattern(20_000, 6);
    let orig_b = pattern(5000, 7);
    let (a, b) = {
        let (j, _) = d.open(true);
        let a = TFile::create(&d, "a", &orig_a);
        let b = TFile::create(&d, "b", &orig_b);
        a.write(&j, 1000, &[1u8; 9000]);
        a.truncate(&j, 15_000);
        b.write(&j, 5000, &[2u8; 3000]);
        // No clean shutdown: the journal stays as the killed daemon left it.
        drop(j);
        (a, b)
    };
    // Keep a copy of the unclean state, as if the recovering daemon were killed mid-way.
    let snapshot = Dirs::new("kill-snap");
    copy_tree(&d.state, &snapshot.state);

    let (j, report) = d.open(true);
    let report = report.expect("unclean journal found");
    assert_eq!(a.content(), orig_a);
    assert_eq!(b.content(), orig_b);
    assert_eq!(report.len(), 2);
    assert_eq!(report[0].path.as_deref(), Some("a"));
    assert_eq!(report[0].size_before, 15_000);
    assert_eq!(report[0].lost, ranges(&[(0, 20_000)]));
    assert_eq!(report[1].path.as_deref(), Some("b"));
    assert_eq!(report[1].lost, ranges(&[(5000, 8000)]));
    drop(j);
    let (j, again) = d.open(true);
    assert_eq!(again, None, "the replay left a clean journal");
    drop(j);

    // Replaying the same records again (recovery interrupted) gives the same result.
    a.write_raw(500, &[3u8; 100]);
    fs::remove_dir_all(&d.state).unwrap();
    copy_tree(&snapshot.state, &d.state);
    let (_j, report2) = d.open(true);
    assert_eq!(a.content(), orig_a);
    assert_eq!(b.content(), orig_b);
    let report2 = report2.unwrap();
    assert_eq!(report2.len(), 2);
    for (r1, r2) in report.iter().zip(&report2) {
        assert_eq!((&r1.path, r1.size_after), (&r2.path, r2.size_after));
    }
}

/// The real thing: a process holding the journal is SIGKILLed mid-run (its page cache
/// survives), and the next open rolls back what it changed.  The test binary re-runs this
/// very test as the child.
#[test]
fn sigkilled_process_is_rolled_back() {
    require_root(JOURNAL_NEEDS_ROOT);
    const CHILD: &str = "LOSSFS_JOURNAL_KILL_CHILD";
    if let Ok(base) = std::env::var(CHILD) {
        let d = Dirs {
            scratch: None,
            data: PathBuf::from(&base).join("data"),
            state: PathBuf::from(&base).join("state"),
        };
        let (j, _) = d.open(true);
        let f = TFile::create(&d, "victim", &pattern(50_000, 30));
        f.write(&j, 10, &[1u8; 30_000]);
        f.truncate(&j, 20_000);
        f.write(&j, 20_000, &[2u8; 70_000]);
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
        unreachable!("SIGKILL returned");
    }
    let d = Dirs::new("sigkill");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "journal::tests::sigkilled_process_is_rolled_back",
            "--test-threads=1",
        ])
        .env(CHILD, d.scratch.as_ref().map(TempDir::path).unwrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let victim = d.data.join("victim");
    assert_eq!(fs::metadata(&victim).unwrap().len(), 90_000);
    let (j, report) = d.open(true);
    let report = report.expect("the killed process left an unclean journal");
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].path.as_deref(), Some("victim"));
    assert_eq!(report[0].size_before, 90_000);
    assert_eq!(report[0].size_after, 50_000);
    assert_eq!(fs::read(&victim).unwrap(), pattern(50_000, 30));
    assert_eq!(j.tracked_files(), 0);
}

#[test]
fn killed_daemon_without_rollback_keeps_the_data_durable() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("keep");
    let f = TFile::create(&d, "a", &pattern(9000, 8));
    {
        let (j, _) = d.open(true);
        f.write(&j, 0, &[4u8; 12_000]);
        drop(j);
    }
    let kept = f.content();
    let (j, report) = d.open(false);
    let report = report.unwrap();
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].lost_bytes, 0);
    assert_eq!(report[0].size_after, 12_000);
    assert_eq!(f.content(), kept);
    assert_eq!(j.rollback_all().unwrap(), vec![]);
    assert_eq!(f.content(), kept);
}

#[test]
fn corrupt_or_torn_tail_records_are_ignored() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("torn");
    let orig = pattern(10_000, 10);
    let f = TFile::create(&d, "a", &orig);
    {
        let (j, _) = d.open(true);
        f.write(&j, 0, &[1u8; 100]);
        drop(j);
    }
    let journal = d.state.join("journal");
    let mut text = fs::read(&journal).unwrap();
    text.extend_from_slice(b"0badc0de P 1 4096 4096 4096\n");
    text.extend_from_slice(b"1234");
    fs::write(&journal, &text).unwrap();
    let (_j, report) = d.open(true);
    assert_eq!(f.content(), orig);
    assert_eq!(report.unwrap()[0].lost, ranges(&[(0, 4096)]));
}

#[test]
fn a_truncated_journal_still_rolls_back_what_it_describes() {
    let d = Dirs::new("cut");
    let orig = pattern(10_000, 11);
    let f = TFile::create(&d, "a", &orig);
    {
        let (j, _) = d.open(true);
        f.write(&j, 10_000, &[1u8; 100]);
        drop(j);
    }
    // The tail record (the file's F record) torn: nothing is known, the file is left alone.
    let journal = d.state.join("journal");
    let len = fs::metadata(&journal).unwrap().len();
    let file = OpenOptions::new().write(true).open(&journal).unwrap();
    file.set_len(len - 3).unwrap();
    let (_j, report) = d.open(true);
    assert_eq!(report, None);
    assert_eq!(f.content().len(), 10_100);
}

#[test]
fn second_open_of_a_state_dir_fails_clearly() {
    let d = Dirs::new("lock");
    let (j, _) = d.open(true);
    let err = d.try_open().err().expect("second open must fail");
    assert!(
        err.to_string().contains("is in use by another lossfs"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&d.state.display().to_string()),
        "{err}"
    );
    drop(j);
    assert!(d.try_open().is_ok(), "the lock goes with the journal");
    let mode = fs::metadata(&d.state).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn memory_does_not_grow_with_appended_bytes() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("mem");
    let (j, _) = d.open(true);
    let f = TFile::create(&d, "a", &pattern(5000, 12));
    let chunk = [6u8; 10];
    for k in 0..100_000u64 {
        let mut g = j.lock(f.key, &f.handle);
        g.before_write(f.file.as_fd(), 5000 + k * 10, 10).unwrap();
        f.file.write_all_at(&chunk, 5000 + k * 10).unwrap();
    }
    {
        let files = j.files.lock();
        let st = files[&f.key].state.lock();
        let t = st.tracked.as_ref().unwrap();
        assert_eq!(t.dirty.range_count(), 1);
        assert_eq!(t.saved.range_count(), 0);
        assert_eq!(t.undo_len, 0);
    }
    assert_eq!(j.unsynced_bytes(), 1_000_000);
    // Appends write only their op records, a few dozen bytes each, batched: memory holds
    // at most one pending buffer.
    assert!(j.log.lock().len() < 100_000 * 48, "op records stay small");
    assert!(j.log.lock().pending_len() <= 64 << 10);
    j.rollback_all().unwrap();
    assert_eq!(f.content().len(), 5000);
}

#[test]
fn sync_all_makes_everything_durable() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("sync");
    let (j, _) = d.open(true);
    let a = TFile::create(&d, "a", &pattern(100, 13));
    let b = TFile::create(&d, "b", &pattern(100, 14));
    a.write(&j, 0, &[1u8; 50]);
    b.write(&j, 100, &[1u8; 70]);
    let report = j.sync_all().unwrap();
    assert_eq!(report.files_synced, 2);
    assert_eq!(report.bytes_synced, 120);
    assert_eq!(j.tracked_files(), 0);
    let (ca, cb) = (a.content(), b.content());
    assert!(j.rollback_all().unwrap().is_empty());
    assert_eq!((a.content(), b.content()), (ca, cb));
}

#[test]
fn a_deleted_file_is_not_restored_and_only_flagged() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("unlink");
    let (j, _) = d.open(true);
    let orig = pattern(8000, 15);
    let a = TFile::create(&d, "a", &orig);
    // One deleted and closed (gone: ESTALE), one deleted but still open (no name left).
    let gone = TFile::create(&d, "gone", &pattern(100, 16));
    let open = TFile::create(&d, "open", &pattern(100, 17));
    a.write(&j, 0, &[1u8; 10]);
    gone.write(&j, 0, &[1u8; 10]);
    open.write(&j, 50, &[1u8; 100]);
    fs::remove_file(d.data.join("gone")).unwrap();
    fs::remove_file(d.data.join("open")).unwrap();
    drop(gone);
    let st = j.status();
    assert_eq!(st.len(), 1, "deleted files are not in the status: {st:?}");
    assert_eq!(st[0].path.as_deref(), Some("a"));
    let losses = j.rollback_all().unwrap();
    assert_eq!(a.content(), orig);
    assert_eq!(losses.len(), 3);
    let deleted: Vec<_> = losses.iter().filter(|l| l.deleted).collect();
    assert_eq!(deleted.len(), 2, "{losses:?}");
    assert!(deleted
        .iter()
        .all(|l| l.error.is_none() && l.lost_bytes == 0 && l.path.is_none()));
    // The open one was left as it was.
    assert_eq!(open.content().len(), 150);
    assert!(losses
        .iter()
        .any(|l| l.path.as_deref() == Some("a") && l.error.is_none() && l.lost_bytes == 10));
}

#[test]
fn closing_a_deleted_file_drops_its_records_and_undo_data() {
    let d = Dirs::new("closed");
    let (j, _) = d.open(true);
    let kept = TFile::create(&d, "kept", &pattern(8192, 18));
    let del = TFile::create(&d, "del", &pattern(8192, 19));
    kept.write(&j, 0, &[1u8; 10]);
    del.write(&j, 0, &[1u8; 10]);
    let undo_files = || fs::read_dir(d.state.join("undo")).unwrap().count();
    assert_eq!(undo_files(), 2);
    // Closing a file that still has a name keeps everything.
    j.closed(kept.key, &kept.handle, kept.file.as_fd());
    assert_eq!(j.tracked_files(), 2);
    fs::remove_file(d.data.join("del")).unwrap();
    j.closed(del.key, &del.handle, del.file.as_fd());
    assert_eq!(j.tracked_files(), 1);
    assert_eq!(undo_files(), 1);
    // A killed daemon's replay has nothing of it either.
    drop(del);
    drop(j);
    let (_j, report) = d.open(true);
    let report = report.unwrap();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].path.as_deref(), Some("kept"));
}

#[test]
fn renamed_file_is_still_restored_and_named() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("rename");
    let (j, _) = d.open(true);
    let orig = pattern(5000, 17);
    let a = TFile::create(&d, "a", &orig);
    a.write(&j, 0, &[1u8; 10]);
    fs::create_dir(d.data.join("sub")).unwrap();
    fs::rename(d.data.join("a"), d.data.join("sub/b")).unwrap();
    assert_eq!(j.status()[0].path.as_deref(), Some("sub/b"));
    let losses = j.rollback_all().unwrap();
    assert_eq!(losses[0].path.as_deref(), Some("sub/b"));
    assert_eq!(a.content(), orig);
}

#[test]
fn log_is_compacted_and_stays_valid() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("compact");
    let orig = pattern(8192, 18);
    let keep = TFile::create(&d, "keep", &orig);
    let busy = TFile::create(&d, "busy", &pattern(8192, 19));
    {
        let (j, _) = d.open(true);
        keep.write(&j, 0, &[1u8; 10]);
        let mut max_len = 0;
        let mut compacted = false;
        for _ in 0..20_000 {
            let before = j.log.lock().len();
            let mut g = j.lock(busy.key, &busy.handle);
            g.before_write(busy.file.as_fd(), 0, 1).unwrap();
            busy.file.write_all_at(&[2], 0).unwrap();
            // The journal does not care whether a real fsync happened; skip it for speed.
            g.mark_durable().unwrap();
            let after = j.log.lock().len();
            max_len = max_len.max(after);
            // The busy file's own records are gone too: only `keep`'s stay.
            compacted |= before > 1 << 19 && after < 1024;
        }
        assert!(max_len <= (1 << 20) + 4096, "log grew to {max_len}");
        assert!(
            compacted,
            "compaction kept only live records (max {max_len})"
        );
        // The compacted log replaced the old one: as private as the state dir's other files.
        let mode = fs::metadata(d.state.join("journal"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "compacted journal mode {mode:o}");
        drop(j);
    }
    let (_j, report) = d.open(true);
    assert_eq!(report.unwrap().len(), 1);
    assert_eq!(keep.content(), orig);
}

#[test]
fn concurrent_writers_to_one_file_serialise() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("threads");
    let (j, _) = d.open(true);
    let orig = pattern(64 * 1024, 20);
    let f = TFile::create(&d, "a", &orig);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (j, f) = (&j, &f);
            s.spawn(move || {
                for k in 0..200u64 {
                    let off = ((t * 200 + k) * 97) % (80 * 1024);
                    f.write(j, off, &[t as u8; 300]);
                }
            });
        }
    });
    j.rollback_all().unwrap();
    assert_eq!(f.content(), orig);
}

#[test]
fn writers_to_different_files_do_not_wait_for_each_other() {
    let d = Dirs::new("parallel");
    let (j, _) = d.open(true);
    let a = TFile::create(&d, "a", b"aaaa");
    let b = TFile::create(&d, "b", b"bbbb");
    let held = j.lock(a.key, &a.handle);
    let (tx, rx) = std::sync::mpsc::channel();
    let (j, a, b) = (&j, &a, &b);
    std::thread::scope(|s| {
        s.spawn(move || {
            b.write(j, 0, b"B");
            tx.send(()).unwrap();
        });
        let other_file = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert!(other_file.is_ok(), "a guard on a blocked b");
        // The same file does wait.
        let (tx2, rx2) = std::sync::mpsc::channel();
        s.spawn(move || {
            a.write(j, 0, b"A");
            tx2.send(()).unwrap();
        });
        let same_file = rx2.recv_timeout(std::time::Duration::from_millis(200));
        assert!(
            same_file.is_err(),
            "a second writer of a got in while a was locked"
        );
        drop(held);
        assert!(rx2.recv_timeout(std::time::Duration::from_secs(5)).is_ok());
    });
    assert_eq!(j.tracked_files(), 2);
}

#[test]
fn full_undo_store_refuses_the_change() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("enospc");
    fs::create_dir_all(&d.state).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &d.state,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    let result = std::panic::catch_unwind(|| {
        let (j, _) = d.open(true);
        let orig = pattern(1 << 20, 21);
        let f = TFile::create(&d, "a", &orig);
        let mut g = j.lock(f.key, &f.handle);
        let err = g.before_write(f.file.as_fd(), 0, 1 << 20).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        drop(g);
        // Pre-images saved before the failure are still valid: a rollback is exact.
        j.rollback_all().unwrap();
        assert_eq!(f.content(), orig);
    });
    nix::mount::umount(&d.state).unwrap();
    result.unwrap();
}

impl TFile {
    /// A change behind the journal's back (simulates what a killed recovery left).
    fn write_raw(&self, off: u64, data: &[u8]) {
        self.file.write_all_at(data, off).unwrap();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn discard_unsynced_restores_the_file_at_once_and_forgets_it() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("discard");
    let (j, _) = d.open(true);
    let f = TFile::create(&d, "f", &pattern(10_000, 1));
    f.write(&j, 100, b"overwritten");
    f.write(&j, 10_000, b"appended");
    let lost = j.lock(f.key, &f.handle).discard_unsynced().unwrap();
    assert_eq!(lost, 11 + 8);
    assert_eq!(f.content(), pattern(10_000, 1));
    assert_eq!(j.tracked_files(), 0);
    assert_eq!(j.unsynced_bytes(), 0);
    // Nothing left to discard, and a later cut has nothing to undo.
    assert_eq!(j.lock(f.key, &f.handle).discard_unsynced().unwrap(), 0);
    f.write(&j, 0, b"later");
    assert_eq!(j.rollback_all().unwrap()[0].lost_bytes, 5);
    assert_eq!(f.content(), pattern(10_000, 1));
    // The log agrees: a reopen after a kill replays nothing.
    drop(j);
    let (_j, recovered) = d.open(true);
    assert!(recovered.is_none_or(|r| r.iter().all(|l| l.lost_bytes == 0)));
}

#[test]
fn a_reserved_epoch_makes_the_next_change_free_and_rolls_back_to_the_fsynced_state() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("reserve");
    let (j, _) = d.open(true);
    let f = TFile::create(&d, "wal", &pattern(5000, 1));
    f.write(&j, 5000, &[7; 4096]);
    f.fsync_reserving(&j);
    let synced = f.content();
    {
        let log = j.log.lock();
        let live: Vec<_> = log.live().values().cloned().collect();
        assert_eq!(
            live.len(),
            1,
            "exactly the reserved epoch is live: {live:?}"
        );
        assert_eq!(live[0].durable_size, synced.len() as u64);
        assert!(live[0].extents.is_empty());
        assert_eq!(log.reserved_count(), 1);
    }
    assert_eq!(j.files.lock().len(), 0, "the clean file is still forgotten");
    let len = j.log.lock().len();
    f.write(&j, 9096, &[8; 4096]);
    assert_eq!(
        j.log.lock().len(),
        len,
        "starting a reserved epoch must not write the log"
    );
    assert_eq!(
        j.log.lock().reserved_count(),
        0,
        "the reservation is used up"
    );
    let losses = j.rollback_all().unwrap();
    assert_eq!(f.content(), synced, "rolled back to the fsynced content");
    assert_eq!(losses.len(), 1);
    assert_eq!(losses[0].lost_bytes, 4096);
}

#[test]
fn a_killed_journal_holding_only_reserved_epochs_is_clean_and_a_started_one_rolls_back() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("reserve-kill");
    let (j, _) = d.open(true);
    let f = TFile::create(&d, "wal", &pattern(3000, 2));
    f.write(&j, 3000, &[1; 100]);
    f.fsync_reserving(&j);
    let synced = f.content();
    drop(j); // the daemon is killed
    let (j, report) = d.open(true);
    assert_eq!(
        report, None,
        "an untouched reserved epoch is nothing to replay"
    );
    assert_eq!(f.content(), synced);

    f.write(&j, 10, &[9; 20]);
    f.write(&j, 3100, &[2; 50]);
    f.fsync_reserving(&j);
    let synced = f.content();
    f.write(&j, 3150, &[3; 70]);
    drop(j);
    let (_j, report) = d.open(true);
    let report = report.expect("a started reserved epoch is replayed");
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].size_after, synced.len() as u64);
    assert_eq!(f.content(), synced, "rolled back to the last fsync");
}

#[test]
fn reservations_are_bounded_and_the_oldest_is_retired() {
    require_root(JOURNAL_NEEDS_ROOT);
    use super::log::MAX_RESERVED;
    let d = Dirs::new("reserve-many");
    let (j, _) = d.open(true);
    let files: Vec<TFile> = (0..MAX_RESERVED + 5)
        .map(|i| TFile::create(&d, &format!("f{i}"), &pattern(100, i as u64)))
        .collect();
    for f in &files {
        f.write(&j, 100, &[1; 10]);
        f.fsync_reserving(&j);
    }
    {
        let log = j.log.lock();
        assert_eq!(log.reserved_count(), MAX_RESERVED);
        assert_eq!(
            log.live().len(),
            MAX_RESERVED,
            "retired reservations are not live"
        );
    }
    // The first files lost their reservation: their next change starts an epoch the
    // ordinary way, and a cut still restores every file.
    for f in &files {
        f.write(&j, 0, &[5; 3]);
    }
    j.rollback_all().unwrap();
    for (i, f) in files.iter().enumerate() {
        let mut want = pattern(100, i as u64);
        want.extend_from_slice(&[1; 10]);
        assert_eq!(f.content(), want, "file {i}");
    }
}

#[test]
fn a_reservation_left_by_another_file_is_retired_not_used() {
    let d = Dirs::new("reserve-stale");
    let (j, _) = d.open(true);
    let a = TFile::create(&d, "a", &pattern(200, 3));
    let b = TFile::create(&d, "b", &pattern(300, 4));
    a.write(&j, 200, &[1; 10]);
    a.fsync_reserving(&j);
    // The same (dev, ino) with another handle: what a reused inode number looks like.
    let impostor = TFile {
        key: a.key,
        handle: b.handle.clone(),
        file: a.file.try_clone().unwrap(),
    };
    impostor.write(&j, 0, &[9; 5]);
    let log = j.log.lock();
    assert_eq!(log.reserved_count(), 0);
    let live: Vec<_> = log.live().values().cloned().collect();
    assert_eq!(live.len(), 1, "the stale reservation is retired: {live:?}");
    assert_eq!(
        live[0].handle, b.handle,
        "a fresh epoch, with the new handle"
    );
    assert_eq!(live[0].durable_size, 210, "its size read from the file");
}

#[test]
fn undo_files_stay_open_within_a_bound_and_close_with_their_epoch() {
    require_root(JOURNAL_NEEDS_ROOT);
    let d = Dirs::new("undo-open");
    let (j, _) = d.open(true);
    let n = MAX_OPEN_UNDO + 10;
    let files: Vec<(TFile, Vec<u8>)> = (0..n)
        .map(|i| {
            let orig = pattern(8192, i as u64);
            (TFile::create(&d, &format!("f{i}"), &orig), orig)
        })
        .collect();
    for (i, (f, _)) in files.iter().enumerate() {
        // Two overwrites of durable pages and one of bytes already unsynced: the undo
        // file is used three times, opened once (while the bound allows).
        f.write(&j, 10, &[1u8; 100]);
        f.write(&j, 5000, &[2u8; 100]);
        f.write(&j, 50, &[3u8; 10]);
        let open = j.open_undo.load(Ordering::Relaxed);
        assert_eq!(open, (i + 1).min(MAX_OPEN_UNDO), "after file {i}");
    }
    // One epoch ends: its descriptor is released.
    files[0].0.fsync(&j);
    assert_eq!(j.open_undo.load(Ordering::Relaxed), MAX_OPEN_UNDO - 1);
    j.rollback_all().unwrap();
    assert_eq!(
        j.open_undo.load(Ordering::Relaxed),
        0,
        "a cut closes them all"
    );
    for (i, (f, orig)) in files.iter().enumerate().skip(1) {
        assert_eq!(&f.content(), orig, "file {i} rolled back");
    }
}
