//! The durability journal: per-file durable state (durable size, saved pre-image pages,
//! dirty byte ranges), the on-disk undo store that makes a power cut possible with
//! write-through I/O, and the rollback/sync/replay operations built on it.
//!
//! Writes go straight to the backing file.  Before a change first touches bytes of a file
//! that were durable, their old content (the pre-image, whole 4096-byte pages clipped to the
//! durable size) is copied once per sync epoch into `state_dir/undo/<id>` and a record naming
//! it is appended to `state_dir/journal` (format: see the private `log` module).  Appends
//! past the durable size need no pre-image: a rollback truncates them away.  Memory holds
//! ranges only, never data.  Holes stay holes (the private `fileio` module): a pre-image
//! costs the saved range's allocated bytes.  A file with no name left (deleted) has
//! nothing to restore: its state goes at the close of a handle ([`Journal::closed`]), and
//! status, sync and cuts skip it.
//!
//! For partial cuts (`--keep`, computed in the private `crashstate` module) every write,
//! truncate and fallocate is also recorded in order (op records, batched in the log's
//! bounded buffer), and an operation that overwrites bytes already unsynced first copies
//! them byte-exact to the undo file.  `-o writeback` uses the time a file was first dirtied.
//!
//! Threat model: the log and the undo data are written with plain write(2) and never
//! fsynced.  They protect against the lossfs daemon itself being SIGKILLed (a `docker kill`):
//! the kernel's page cache survives that, so the next [`Journal::open`] on the same state dir
//! finds the records and rolls the files back.  A crash of the host is out of scope (the
//! backing files would lose their own unsynced data anyway, by the host's rules).
//!
//! Dropping a [`Journal`] does not clean it: a drop is the same as the daemon being killed,
//! and the next open replays.  A clean unmount calls [`Journal::sync_all`] first, as a real
//! unmount writes dirty pages back.
//!
//! Errors from [`FileGuard`] methods keep their raw OS error (the FUSE layer replies with that
//! errno, e.g. ENOSPC when the undo store is full) and log their context at warn level;
//! errors of the whole-journal operations carry their context in the message.

mod crashstate;
mod expire;
mod fileio;
#[cfg(test)]
mod keep_tests;
mod log;
mod names;
mod partial;
#[cfg(test)]
mod sparse_tests;
#[cfg(test)]
mod tests;

use self::crashstate::PrefixBuilder;
use self::fileio::{
    byte_ranges, copy_range, hole_bytes, is_deleted, is_gone, path_of, restore, size_of, Restored,
};
use self::log::{Extent, LiveFile, Log, OpRec, Record};
use crate::error::{Context as _, FsError};
use crate::filekey::FileKey;
use crate::handle::FileHandle;
use crate::keep::{KeepMode, KeepSpec};
use crate::rangeset::RangeSet;
use crate::report::{FileLoss, FileStatus, SyncReport};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Pre-image granularity.
const PAGE: u64 = 4096;

const FALLOC_KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
const FALLOC_PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
const FALLOC_COLLAPSE_RANGE: i32 = libc::FALLOC_FL_COLLAPSE_RANGE;
const FALLOC_ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;
const FALLOC_INSERT_RANGE: i32 = libc::FALLOC_FL_INSERT_RANGE;
const FALLOC_UNSHARE_RANGE: i32 = libc::FALLOC_FL_UNSHARE_RANGE;

/// A file's state in the current sync epoch (exists from its first change until it is
/// durable again).
struct Tracked {
    /// Names the file's records and undo file; never reused within a daemon.
    id: u64,
    /// Size a power cut leaves the file with.
    durable_size: u64,
    /// Page-aligned ranges whose pre-image is saved.
    saved: RangeSet,
    /// Bytes changed since the file was durable.
    dirty: RangeSet,
    /// Bytes used in the undo file.
    undo_len: u64,
    /// Size of the file as the recorded operations left it (kept without an fstat per
    /// write; re-read by every truncate and fallocate).
    size: u64,
    /// Unsynced operations recorded (for `--keep prefix`).
    ops: u64,
    /// When the file first changed since it was last durable (the kernel's
    /// `dirtied_when`), for `-o writeback`.
    dirtied_at: Instant,
    /// The undo file, kept open for the epoch's next pre-images (see [`UndoFile`]).
    undo: Option<UndoFile>,
}

/// Most undo files kept open at once across the journal: every overwrite of saved-for
/// bytes would otherwise open and close one (a path lookup each), but thousands of files
/// with unsynced overwrites must not each hold a descriptor.
const MAX_OPEN_UNDO: usize = 256;

/// An undo file open for appending pre-images; while `open_count` is set it counts
/// against [`MAX_OPEN_UNDO`] and is kept in its [`Tracked`].
struct UndoFile {
    file: File,
    open_count: Option<Arc<AtomicUsize>>,
}

impl Drop for UndoFile {
    fn drop(&mut self) {
        if let Some(n) = &self.open_count {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct SlotState {
    /// Held by a live [`FileGuard`].
    busy: bool,
    handle: FileHandle,
    tracked: Option<Tracked>,
}

/// One file's entry.  `busy` is the per-file lock a [`FileGuard`] holds across the caller's
/// syscall; the mutex itself is held only briefly, so `status` never waits on a slow write.
struct Slot {
    state: Mutex<SlotState>,
    freed: Condvar,
}

/// The durability journal of one mount.  `Send + Sync`; shared by every FUSE worker.
pub struct Journal {
    state_dir: PathBuf,
    /// `/proc/self/fd/N` of `_undo_fd`: names the undo store wherever it is now, so renaming
    /// BACKING (and the state dir with it) under a running mount loses no pre-image.
    undo_dir: PathBuf,
    _undo_fd: File,
    root: OwnedFd,
    root_path: PathBuf,
    /// Held for the journal's life: one daemon per state dir.
    _lock: Flock<File>,
    files: Mutex<HashMap<FileKey, Arc<Slot>>>,
    /// Lock order: a slot's state, then the log.
    log: Mutex<Log>,
    next_id: AtomicU64,
    /// Undo files held open by tracked files.
    open_undo: Arc<AtomicUsize>,
}

fn mkdir_private(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .ctx_path("creating state dir", dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .ctx_path("chmod 0700", dir)?;
    Ok(())
}

/// Deletes every undo file (they are worthless once the log is reset).
fn clear_undo_dir(dir: &Path) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "journal: cannot list undo store");
            return;
        }
    };
    for entry in entries.flatten() {
        if let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!(file = %entry.path().display(), error = %e, "journal: cannot delete undo data");
        }
    }
}

fn remove_undo(undo_dir: &Path, id: u64) {
    let path = undo_dir.join(id.to_string());
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "journal: cannot delete undo data")
        }
    }
}

impl Journal {
    /// Creates `state_dir` if needed (mode 0700), takes an exclusive non-blocking flock on
    /// `state_dir/lock` (an error naming the dir "is in use by another lossfs" if held),
    /// replays an unclean journal left by a killed daemon: `rollback = true` restores the
    /// durable state exactly like a power cut, `rollback = false` makes the current content
    /// durable instead (fsync).  Returns what it did (`None` when the journal was clean).
    /// Files are opened with [`FileHandle::open`] relative to `backing_root`; paths in reports
    /// are made relative to `backing_root_path`.
    pub fn open(
        state_dir: &Path,
        backing_root: OwnedFd,
        backing_root_path: &Path,
        rollback: bool,
    ) -> io::Result<(Journal, Option<Vec<FileLoss>>)> {
        mkdir_private(state_dir)?;
        let lock_path = state_dir.join("lock");
        let lock_file = crate::sys::open_private(&lock_path, "lock file")?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "state dir {} is in use by another lossfs (lock {} is held)",
                        state_dir.display(),
                        lock_path.display()
                    ),
                ))
            }
            Err((_, e)) => Err(e).ctx_path("flock", &lock_path)?,
        };
        let undo_dir = state_dir.join("undo");
        mkdir_private(&undo_dir)?;
        let root_path = std::fs::canonicalize(backing_root_path)
            .unwrap_or_else(|_| backing_root_path.to_path_buf());
        let (mut log, live) = Log::open(&state_dir.join("journal"))?;
        let report = if live.is_empty() {
            None
        } else {
            let files = replay(backing_root.as_fd(), &root_path, &undo_dir, &live, rollback)?;
            // Only reserved epochs of files left as they were: the journal was clean.
            (!files.is_empty()).then(|| {
                tracing::warn!(
                    files = files.len(),
                    rollback,
                    "journal: found an unclean journal left by a killed lossfs"
                );
                files
            })
        };
        // Only now, with every file restored or synced, may the records go: a daemon killed
        // during the replay replays again.
        log.reset()?;
        if report.is_some() {
            crate::pause::point("replay-after-reset");
        }
        clear_undo_dir(&undo_dir);
        let undo_fd = File::open(&undo_dir).ctx_path("opening undo dir", &undo_dir)?;
        let journal = Journal {
            state_dir: state_dir.to_path_buf(),
            undo_dir: PathBuf::from(format!("/proc/self/fd/{}", undo_fd.as_raw_fd())),
            _undo_fd: undo_fd,
            root: backing_root,
            root_path,
            _lock: lock,
            files: Mutex::new(HashMap::new()),
            log: Mutex::new(log),
            next_id: AtomicU64::new(1),
            open_undo: Arc::new(AtomicUsize::new(0)),
        };
        Ok((journal, report))
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Current size of the on-disk log, for status and monitoring.
    pub fn log_bytes(&self) -> u64 {
        self.log.lock().len()
    }

    /// Locks one file's durability state for the duration of a change; the caller keeps the
    /// guard across its own syscall that changes the file (so concurrent writers to the same
    /// file serialise here, writers to different files do not).
    pub fn lock(&self, key: FileKey, handle: &FileHandle) -> FileGuard<'_> {
        let (slot, retired) = {
            let mut files = self.files.lock();
            // Same (dev, ino), other handle: the inode number was reused, so the file the
            // slot describes is gone (an open file, even unlinked, keeps its number).  Its
            // state must not be inherited by the new file.
            let retired = match files.get(&key) {
                Some(s) if s.state.lock().handle != *handle => files.remove(&key),
                _ => None,
            };
            let slot = files
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Slot {
                        state: Mutex::new(SlotState {
                            busy: false,
                            handle: handle.clone(),
                            tracked: None,
                        }),
                        freed: Condvar::new(),
                    })
                })
                .clone();
            (slot, retired)
        };
        if let Some(old) = retired {
            // Nothing of it can be restored any more: retire its records and undo data.
            if let Err(e) = self.acquire(key, old).end_epoch(None) {
                tracing::warn!(ino = key.ino, error = %e, "retiring a reused inode's journal state");
            }
        }
        self.acquire(key, slot)
    }

    /// Call when a handle of the file is closed (`file` is its fd, still open): a tracked
    /// file with no name left (unlinked, and no namespace undo can bring it back) has
    /// nothing to restore, so its records and undo data go now, not at the next sync or cut.
    /// Any later change through another handle still open starts a new epoch.  Costs a map
    /// lookup for an untracked file, an fstat for a tracked one.
    pub fn closed(&self, key: FileKey, handle: &FileHandle, file: BorrowedFd<'_>) {
        let tracked = self
            .files
            .lock()
            .get(&key)
            .is_some_and(|s| s.state.lock().tracked.is_some());
        if !tracked || !is_deleted(file) {
            return;
        }
        if let Err(e) = self.lock(key, handle).end_epoch(None) {
            tracing::warn!(ino = key.ino, error = %e, "journal: dropping a deleted file's state");
        }
    }

    fn acquire(&self, key: FileKey, slot: Arc<Slot>) -> FileGuard<'_> {
        {
            let mut st = slot.state.lock();
            while st.busy {
                slot.freed.wait(&mut st);
            }
            st.busy = true;
        }
        FileGuard {
            journal: self,
            key,
            slot,
        }
    }

    fn slots(&self) -> Vec<(FileKey, Arc<Slot>)> {
        self.files
            .lock()
            .iter()
            .map(|(k, s)| (*k, Arc::clone(s)))
            .collect()
    }

    /// Unsynced state of every tracked file.  Opens each file by handle to find its size and
    /// path (never done on the write path).  Deleted files (no name left: nothing of them
    /// can come back) are left out.
    pub fn status(&self) -> Vec<FileStatus> {
        let mut out = Vec::new();
        let mut keys = Vec::new();
        for (key, slot) in self.slots() {
            let (handle, durable_size, mut dirty) = {
                let st = slot.state.lock();
                let Some(t) = &st.tracked else { continue };
                (st.handle.clone(), t.durable_size, t.dirty.clone())
            };
            // Readable, for its holes (lseek); an O_PATH fd still gives name and size.
            let fd = handle
                .open(self.root.as_fd(), libc::O_RDONLY)
                .or_else(|_| handle.open(self.root.as_fd(), libc::O_PATH));
            let (fd, path, size) = match fd {
                Ok(fd) if is_deleted(fd.as_fd()) => continue,
                Ok(fd) => {
                    let path = path_of(fd.as_fd(), &self.root_path);
                    let size = size_of(fd.as_fd()).unwrap_or(durable_size);
                    (Some(fd), path, size)
                }
                Err(e) if is_gone(&e) => continue,
                Err(_) => (None, None, durable_size),
            };
            // Growth past the durable size is unsynced even where no write landed (a hole
            // left by a write past EOF and a truncate back into it).
            dirty.insert(durable_size, size.max(durable_size));
            let unsynced = byte_ranges(&dirty);
            let unsynced_bytes = unsynced.iter().map(|r| r.len()).sum();
            let holes = fd
                .and_then(|fd| hole_bytes(fd.as_fd(), &dirty, size).ok())
                .unwrap_or(0)
                .min(unsynced_bytes);
            keys.push(key);
            out.push(FileStatus {
                path,
                inode: None,
                durable_size,
                size,
                unsynced,
                unsynced_bytes,
                unsynced_data_bytes: unsynced_bytes - holes,
                unsynced_hole_bytes: holes,
            });
        }
        self.find_names(
            keys.into_iter()
                .zip(out.iter_mut())
                .map(|(k, f)| (k, &mut f.path, &mut f.inode)),
        );
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Sum of every tracked file's dirty bytes.
    pub fn unsynced_bytes(&self) -> u64 {
        let files = self.files.lock();
        files
            .values()
            .map(|s| {
                s.state
                    .lock()
                    .tracked
                    .as_ref()
                    .map_or(0, |t| t.dirty.total_len())
            })
            .sum()
    }

    /// Number of files with changes not yet durable.
    pub fn tracked_files(&self) -> usize {
        let files = self.files.lock();
        files
            .values()
            .filter(|s| s.state.lock().tracked.is_some())
            .count()
    }

    /// fsyncs every tracked file (opened by handle), marks it durable and resets the
    /// journal.  A file that no longer exists (unlinked and closed) has nothing left to make
    /// durable and is just forgotten.  Every file is tried; the first error is returned.
    pub fn sync_all(&self) -> io::Result<SyncReport> {
        let mut report = SyncReport::default();
        let mut first_err = None;
        for (key, slot) in self.slots() {
            let mut guard = self.acquire(key, slot);
            let (handle, bytes) = {
                let st = guard.slot.state.lock();
                match &st.tracked {
                    Some(t) => (st.handle.clone(), t.dirty.total_len()),
                    None => continue,
                }
            };
            let synced = match handle.open(self.root.as_fd(), libc::O_RDONLY) {
                // Nothing of a deleted file can come back: no fsync needed.
                Ok(fd) if is_deleted(fd.as_fd()) => false,
                Ok(fd) => match nix::unistd::fsync(&fd) {
                    Ok(()) => true,
                    Err(e) => {
                        let what = path_of(fd.as_fd(), &self.root_path)
                            .unwrap_or_else(|| format!("inode {}", key.ino));
                        first_err
                            .get_or_insert(FsError::from(e).context(format!("fsync of {what}")));
                        continue;
                    }
                },
                Err(e) if is_gone(&e) => false,
                Err(e) => {
                    first_err
                        .get_or_insert(FsError::from(e).context("opening to sync").ino(key.ino));
                    continue;
                }
            };
            if let Err(e) = guard.mark_durable() {
                first_err.get_or_insert(FsError::from(e).context("marking durable").ino(key.ino));
                continue;
            }
            if synced {
                report.files_synced += 1;
                report.bytes_synced += bytes;
            }
            crate::pause::point("sync-after-file");
        }
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    }

    /// Power cut losing every unsynced byte: `cut` with `--keep none`.
    pub fn rollback_all(&self) -> io::Result<Vec<FileLoss>> {
        self.cut(&KeepSpec::none())
    }

    /// Power cut: puts every tracked file into its crash state as `spec` says (its durable
    /// content and size for `none`; docs/fault-model.md for the others), fdatasyncs them,
    /// resets the journal; returns per-file losses (and what was kept).  A deleted file (no
    /// name left) is not restored and comes back with `deleted` set; a file that cannot be
    /// restored is reported with `error`, not a failure of the cut.  The caller guarantees
    /// no [`FileGuard`] is alive (it freezes all operations first).
    pub fn cut(&self, spec: &KeepSpec) -> io::Result<Vec<FileLoss>> {
        crate::pause::point("rollback-start");
        let drained: Vec<(Tracked, FileHandle, FileKey)> = {
            let mut files = self.files.lock();
            let mut v: Vec<_> = files
                .drain()
                .filter_map(|(key, slot)| {
                    let mut st = slot.state.lock();
                    let handle = st.handle.clone();
                    st.tracked.take().map(|t| (t, handle, key))
                })
                .collect();
            v.sort_by_key(|(t, _, _)| t.id);
            v
        };
        let mut log = self.log.lock();
        let mut mode = spec.mode;
        let mut prefixes = HashMap::new();
        if mode == KeepMode::Prefix {
            // Each file's k first (it needs the file's name), then one pass over the log.
            for (t, handle, key) in &drained {
                let k = self.draw_prefix_len(t, handle, *key, spec.seed);
                prefixes.insert(t.id, PrefixBuilder::new(t.durable_size, k));
            }
            let ids: HashSet<u64> = prefixes.keys().copied().collect();
            let read = log.for_each_op(&ids, |id, op| {
                if let Some(b) = prefixes.get_mut(&id) {
                    b.feed(op);
                }
            });
            if let Err(e) = read {
                tracing::warn!(error = %e, "power cut: cannot read the operation order; keeping nothing");
                mode = KeepMode::None;
            } else if log.ops_lost() {
                tracing::warn!(
                    "power cut: operation order incomplete (a log write failed); keeping nothing"
                );
                mode = KeepMode::None;
            }
        }
        let mut losses = Vec::new();
        let mut keys = Vec::new();
        for (t, handle, key) in drained {
            let fallback;
            let live = match log.live().get(&t.id) {
                Some(live) => live,
                None => {
                    fallback = LiveFile {
                        handle,
                        dev: key.dev,
                        ino: key.ino,
                        durable_size: t.durable_size,
                        extents: Vec::new(),
                        reserved: false,
                    };
                    &fallback
                }
            };
            let prefix = prefixes.remove(&t.id);
            let loss = match mode {
                KeepMode::None => self.restore_durable(&t, live, key),
                KeepMode::Prefix if prefix.as_ref().map_or(0, |b| b.seen()) != t.ops => {
                    // The log lost some of this file's records: no prefix can be trusted.
                    tracing::warn!(
                        ino = key.ino,
                        "power cut: operation order incomplete; keeping nothing of this file"
                    );
                    self.restore_durable(&t, live, key)
                }
                KeepMode::All | KeepMode::Random | KeepMode::Prefix => self
                    .restore_partial(&t, live, spec, mode, prefix)
                    .unwrap_or_else(|e| not_restored(&t, key, e)),
            };
            losses.push(loss);
            keys.push(key);
            crate::pause::point("rollback-after-file");
        }
        log.reset()?;
        crate::pause::point("rollback-after-reset");
        clear_undo_dir(&self.undo_dir);
        unname_graveyard(&self.root_path, &self.state_dir, &keys, &mut losses);
        self.find_names(
            keys.into_iter()
                .zip(losses.iter_mut())
                .filter(|(_, l)| !l.deleted && l.inode.is_none())
                .map(|(k, l)| (k, &mut l.path, &mut l.inode)),
        );
        losses.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(losses)
    }

    /// Names the files of a cut or recovery report that have none (`inode` only), by where
    /// they are now: call after the namespace undo, which brings the files a cut found in
    /// the graveyard (an unlink not committed) back to their names.
    pub fn name_unnamed(&self, mut files: Vec<FileLoss>) -> Vec<FileLoss> {
        let Ok(dev) = nix::sys::stat::fstat(self.root.as_fd()).map(|st| st.st_dev) else {
            return files;
        };
        self.find_names(
            files
                .iter_mut()
                .filter(|l| !l.deleted && l.path.is_none())
                .filter_map(|l| {
                    let ino = l.inode?;
                    Some((FileKey { dev, ino }, &mut l.path, &mut l.inode))
                }),
        );
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }

    /// [`find_names`] in this journal's backing tree.
    fn find_names<'a>(
        &self,
        files: impl Iterator<Item = (FileKey, &'a mut Option<String>, &'a mut Option<u64>)>,
    ) {
        find_names(&self.root_path, &self.state_dir, files)
    }

    /// `--keep none` for one file: back to its durable content and size.
    fn restore_durable(&self, t: &Tracked, live: &LiveFile, key: FileKey) -> FileLoss {
        match restore(
            self.root.as_fd(),
            &self.root_path,
            &self.undo_dir,
            t.id,
            live,
            |size_before| lost_of(t, size_before),
        ) {
            Ok(Some(r)) => restored(r, t.durable_size),
            Ok(None) => deleted(key),
            Err(e) => not_restored(t, key, e),
        }
    }
}

/// What a file with state `t` and `size_before` bytes loses when it goes back to its
/// durable state: its changes within the larger of both sizes, and any growth (even where
/// no write landed: a hole left by a write past EOF and a truncate back into it).
fn lost_of(t: &Tracked, size_before: u64) -> RangeSet {
    let mut lost = t.dirty.clone();
    lost.truncate(size_before.max(t.durable_size));
    lost.insert(t.durable_size, size_before.max(t.durable_size));
    lost
}

/// The report of a file put back into its durable state (`durable_size` bytes).
fn restored(r: Restored, durable_size: u64) -> FileLoss {
    let lost_bytes = r.lost.total_len();
    FileLoss {
        path: r.path,
        size_before: r.size_before,
        size_after: durable_size,
        lost_bytes,
        lost_data_bytes: lost_bytes - r.lost_holes.min(lost_bytes),
        lost_hole_bytes: r.lost_holes.min(lost_bytes),
        lost: byte_ranges(&r.lost),
        ..Default::default()
    }
}

/// The report of a deleted file: nothing to restore, nothing lost that anyone could read.
fn deleted(key: FileKey) -> FileLoss {
    tracing::debug!(ino = key.ino, "power cut: deleted file, nothing to restore");
    FileLoss {
        inode: Some(key.ino),
        deleted: true,
        ..Default::default()
    }
}

/// The report of a file a cut could not put back: all its unsynced bytes count as lost
/// (as data: the holes are unknown), and the error says why.
fn not_restored(t: &Tracked, key: FileKey, e: io::Error) -> FileLoss {
    tracing::warn!(ino = key.ino, error = %e, "power cut: file not restored");
    let mut lost = t.dirty.clone();
    lost.insert(t.durable_size, t.size.max(t.durable_size));
    FileLoss {
        inode: Some(key.ino),
        size_before: t.durable_size,
        size_after: t.durable_size,
        lost_bytes: lost.total_len(),
        lost_data_bytes: lost.total_len(),
        lost: byte_ranges(&lost),
        error: Some(e.to_string()),
        ..Default::default()
    }
}

/// Fills in the names [`path_of`] did not find (the file's dentry was dropped, so the
/// handle opened a disconnected one), by one bounded scan of the backing tree (not into
/// `state_dir`) for all of them; the backing inode number stands for the name of a file not
/// found.
fn find_names<'a>(
    root_path: &Path,
    state_dir: &Path,
    files: impl Iterator<Item = (FileKey, &'a mut Option<String>, &'a mut Option<u64>)>,
) {
    let mut missing: Vec<_> = files.filter(|(_, path, _)| path.is_none()).collect();
    if missing.is_empty() {
        return;
    }
    let found = names::scan(
        root_path,
        state_dir,
        missing.iter().map(|(k, _, _)| *k).collect(),
    );
    for (key, path, inode) in missing.iter_mut() {
        **path = found.get(key).cloned();
        **inode = path.is_none().then_some(key.ino);
    }
}

/// A file a report found in the state dir (the graveyard of a namespace model: unlinked,
/// not committed) is about to get its name back from the namespace undo: its graveyard
/// path would mislead, so it keeps only its inode number, for
/// [`Journal::name_unnamed`] to name once the undo is done.
fn unname_graveyard(root_path: &Path, state_dir: &Path, keys: &[FileKey], files: &mut [FileLoss]) {
    let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let Ok(rel) = state_dir.strip_prefix(root_path) else {
        return;
    };
    if rel.as_os_str().is_empty() {
        return;
    }
    for (key, f) in keys.iter().zip(files.iter_mut()) {
        if f.path
            .as_deref()
            .is_some_and(|p| Path::new(p).starts_with(rel))
        {
            f.path = None;
            f.inode = Some(key.ino);
        }
    }
}

/// Replays the live records of a killed daemon's log.
fn replay(
    root: BorrowedFd<'_>,
    root_path: &Path,
    undo_dir: &Path,
    live: &BTreeMap<u64, LiveFile>,
    rollback: bool,
) -> io::Result<Vec<FileLoss>> {
    let mut out = Vec::new();
    let mut keys = Vec::new();
    for (&id, f) in live {
        // An epoch reserved at the file's last fsync and never started (or started by a
        // change that failed) describes a file that is its durable self: nothing to report.
        let untouched = |size: u64| f.reserved && f.extents.is_empty() && size == f.durable_size;
        let key = FileKey {
            dev: f.dev,
            ino: f.ino,
        };
        let loss = if rollback {
            // Dirty ranges were never logged (that would cost a write per write): what was
            // lost is at most the pre-imaged pages and the growth.
            let lost_of = |size_before| {
                let mut lost = RangeSet::new();
                for x in &f.extents {
                    lost.insert(x.start, x.start + x.len);
                }
                lost.insert(f.durable_size, size_before);
                lost
            };
            match restore(root, root_path, undo_dir, id, f, lost_of) {
                Ok(Some(r)) if untouched(r.size_before) => None,
                Ok(Some(r)) => Some(restored(r, f.durable_size)),
                // Deleted since: none of its bytes can be read back, none is restored.
                Ok(None) if f.reserved && f.extents.is_empty() => None,
                Ok(None) => Some(deleted(key)),
                // Anything else (EIO, ENOSPC...) must stop the mount: the records stay and
                // the next attempt replays them again.
                Err(e) => return Err(e),
            }
        } else {
            keep(root, root_path, f)?.filter(|k| !untouched(k.size_before))
        };
        if let Some(loss) = loss {
            out.push(loss);
            keys.push(key);
        }
        crate::pause::point("replay-after-file");
    }
    let state_dir = undo_dir.parent().unwrap_or(undo_dir);
    unname_graveyard(root_path, state_dir, &keys, &mut out);
    find_names(
        root_path,
        state_dir,
        keys.into_iter()
            .zip(out.iter_mut())
            .filter(|(_, l)| !l.deleted && l.inode.is_none())
            .map(|(k, l)| (k, &mut l.path, &mut l.inode)),
    );
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Replay without rollback: the current content becomes durable.
fn keep(root: BorrowedFd<'_>, root_path: &Path, f: &LiveFile) -> io::Result<Option<FileLoss>> {
    let gone = || {
        let key = FileKey {
            dev: f.dev,
            ino: f.ino,
        };
        Ok((!f.reserved || !f.extents.is_empty()).then(|| deleted(key)))
    };
    let fd = match f.handle.open(root, libc::O_RDONLY) {
        Ok(fd) if is_deleted(fd.as_fd()) => return gone(),
        Ok(fd) => fd,
        Err(e) if is_gone(&e) => return gone(),
        Err(e) => Err(e).ctx_ino("opening to sync", f.ino)?,
    };
    let path = path_of(fd.as_fd(), root_path);
    let name = || path.clone().unwrap_or_else(|| format!("inode {}", f.ino));
    let size = size_of(fd.as_fd()).with_ctx(|| format!("fstat of {}", name()))?;
    nix::unistd::fsync(&fd).with_ctx(|| format!("fsync of {}", name()))?;
    Ok(Some(FileLoss {
        path,
        size_before: size,
        size_after: size,
        ..Default::default()
    }))
}

/// Exclusive access to one file's durability state.  Dropping it lets the next writer of
/// that file in.
pub struct FileGuard<'a> {
    journal: &'a Journal,
    key: FileKey,
    slot: Arc<Slot>,
}

/// Notes a refused change at debug level and hands the error back unchanged: the caller's
/// request fails with it, and the FUSE adapter logs that failure at the error's level.
fn note_refusal(key: FileKey, op: &str, e: io::Error) -> io::Error {
    tracing::debug!(dev = key.dev, ino = key.ino, op, error = %e, "journal: refusing change");
    e
}

impl FileGuard<'_> {
    /// Starts the file's epoch on its first change: the epoch reserved when the file was
    /// last made durable, or else one fstat and one log write.
    fn tracked<'s>(
        &self,
        st: &'s mut SlotState,
        file: BorrowedFd<'_>,
    ) -> io::Result<&'s mut Tracked> {
        if st.tracked.is_none() {
            let reserved = {
                let mut log = self.journal.log.lock();
                match log.take_reserved(self.key.dev, self.key.ino) {
                    Some(r) if r.handle == st.handle => Some(r),
                    Some(stale) => {
                        // Reserved for a file that had this inode number before.
                        log.append(&Record::Durable { id: stale.id })?;
                        None
                    }
                    None => None,
                }
            };
            let (id, durable_size) = match reserved {
                Some(r) => (r.id, r.durable_size),
                None => {
                    let stat = nix::sys::stat::fstat(file)?;
                    let id = self.journal.next_id.fetch_add(1, Ordering::Relaxed);
                    let durable_size = stat.st_size as u64;
                    self.journal.log.lock().append(&Record::File {
                        id,
                        dev: stat.st_dev,
                        ino: stat.st_ino,
                        durable_size,
                        handle: st.handle.clone(),
                        reserved: false,
                    })?;
                    (id, durable_size)
                }
            };
            st.tracked = Some(Tracked {
                id,
                durable_size,
                saved: RangeSet::new(),
                dirty: RangeSet::new(),
                undo_len: 0,
                size: durable_size,
                ops: 0,
                dirtied_at: Instant::now(),
                undo: None,
            });
        }
        match st.tracked.as_mut() {
            Some(t) => Ok(t),
            None => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    /// Saves the pre-image of every not yet saved page holding durable bytes in
    /// `[start, end)`, before they change.
    fn protect(
        &self,
        t: &mut Tracked,
        file: BorrowedFd<'_>,
        start: u64,
        end: u64,
    ) -> io::Result<()> {
        let end = end.min(t.durable_size);
        if start >= end {
            return Ok(());
        }
        let page_start = start / PAGE * PAGE;
        let page_end = end.div_ceil(PAGE) * PAGE;
        if t.saved.covers(page_start, page_end) {
            return Ok(());
        }
        let undo = self.undo_file(t)?;
        for (s, e) in t.saved.missing(page_start, page_end) {
            let len = e.min(t.durable_size) - s;
            let copied = copy_range(file, s, undo.file.as_fd(), t.undo_len, len)?;
            if copied > 0 {
                self.journal.log.lock().append(&Record::PreImage {
                    id: t.id,
                    extent: Extent {
                        start: s,
                        len: copied,
                        undo_off: t.undo_len,
                    },
                })?;
                t.undo_len += copied;
            }
            t.saved.insert(s, e);
        }
        self.keep_undo(t, undo);
        Ok(())
    }

    /// The file's undo file: the one kept open, or opened now.  Hand it back with
    /// [`Self::keep_undo`] once done (an error on the way just closes it).
    fn undo_file(&self, t: &mut Tracked) -> io::Result<UndoFile> {
        if let Some(u) = t.undo.take() {
            return Ok(u);
        }
        let undo_path = self.journal.undo_dir.join(t.id.to_string());
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(t.undo_len == 0)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&undo_path)?;
        let n = &self.journal.open_undo;
        let counted = n
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                (k < MAX_OPEN_UNDO).then_some(k + 1)
            })
            .is_ok();
        Ok(UndoFile {
            file,
            open_count: counted.then(|| n.clone()),
        })
    }

    /// Keeps `undo` open in `t` if it counts against the limit; closes it otherwise.
    fn keep_undo(&self, t: &mut Tracked, undo: UndoFile) {
        if undo.open_count.is_some() {
            t.undo = Some(undo);
        }
    }

    /// Records the next operation of the file for `--keep prefix`: it may change
    /// `[start, end)`, the file having `t.size` bytes.  Where it overwrites bytes already
    /// unsynced, their current content is copied to the undo file first (byte-exact, the
    /// only I/O here); otherwise the record just joins the log's pending buffer.  Call after
    /// [`Self::protect`] and before `t.dirty` takes the operation in.
    fn record_op(
        &self,
        t: &mut Tracked,
        file: BorrowedFd<'_>,
        start: u64,
        end: u64,
    ) -> io::Result<()> {
        let mut op = OpRec {
            size_before: t.size,
            start,
            end,
            pre: Vec::new(),
        };
        let over = end.min(t.size);
        if t.dirty.intersects(start, over) {
            let undo = self.undo_file(t)?;
            for (s, e) in t.dirty.overlapping(start, over) {
                let copied = copy_range(file, s, undo.file.as_fd(), t.undo_len, e - s)?;
                if copied > 0 {
                    op.pre.push(Extent {
                        start: s,
                        len: copied,
                        undo_off: t.undo_len,
                    });
                    t.undo_len += copied;
                }
            }
            self.keep_undo(t, undo);
        }
        self.journal.log.lock().append_op(t.id, &op)?;
        t.ops += 1;
        Ok(())
    }

    /// Call before writing `[off, off+len)` of the file (also for the destination of
    /// copy_file_range).  `file` is a readable and writable fd of the backing file; the
    /// change has not happened yet.  On error the caller must not change the file and
    /// returns the errno (e.g. ENOSPC when the undo store cannot be written).
    pub fn before_write(&mut self, file: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let slot = Arc::clone(&self.slot);
        let mut st = slot.state.lock();
        let end = off.saturating_add(len);
        let res = self.tracked(&mut st, file).and_then(|t| {
            self.protect(t, file, off, end)?;
            self.record_op(t, file, off, end)?;
            t.dirty.insert(off, end);
            t.size = t.size.max(end);
            Ok(())
        });
        res.map_err(|e| note_refusal(self.key, "write", e))
    }

    /// Call before truncating the file to `new_size`.  Truncating below the durable size
    /// counts `[new_size, durable size)` as changed.
    pub fn before_truncate(&mut self, file: BorrowedFd<'_>, new_size: u64) -> io::Result<()> {
        let slot = Arc::clone(&self.slot);
        let mut st = slot.state.lock();
        let res = self.tracked(&mut st, file).and_then(|t| {
            let old = size_of(file)?;
            let d = t.durable_size;
            if new_size < d {
                self.protect(t, file, new_size, d)?;
            }
            t.size = old;
            self.record_op(t, file, new_size.min(old), new_size.max(old))?;
            t.size = new_size;
            // Bytes past both sizes exist neither in the file nor on the durable disk.
            t.dirty.truncate(new_size.max(d));
            t.dirty.insert(new_size, d);
            t.dirty.insert(old.max(d), new_size);
            Ok(())
        });
        res.map_err(|e| note_refusal(self.key, "truncate", e))
    }

    /// Call before fallocate(2) with any mode: 0 (may extend the size), KEEP_SIZE,
    /// PUNCH_HOLE, ZERO_RANGE (with or without KEEP_SIZE), COLLAPSE_RANGE and INSERT_RANGE
    /// (these shift everything after `off`, so `[off, durable size)` is saved).
    pub fn before_fallocate(
        &mut self,
        file: BorrowedFd<'_>,
        mode: i32,
        off: u64,
        len: u64,
    ) -> io::Result<()> {
        let slot = Arc::clone(&self.slot);
        let mut st = slot.state.lock();
        let end = off.saturating_add(len);
        let res = self.tracked(&mut st, file).and_then(|t| {
            let old = size_of(file)?;
            let d = t.durable_size;
            t.size = old;
            let keep_size = mode & FALLOC_KEEP_SIZE != 0;
            let shifts = mode & (FALLOC_COLLAPSE_RANGE | FALLOC_INSERT_RANGE) != 0;
            let known = FALLOC_KEEP_SIZE
                | FALLOC_UNSHARE_RANGE
                | FALLOC_PUNCH_HOLE
                | FALLOC_ZERO_RANGE
                | FALLOC_COLLAPSE_RANGE
                | FALLOC_INSERT_RANGE;
            // The content it may change, and the size it leaves, for the op record.
            let (changed, new_size) = if shifts || mode & !known != 0 {
                let reach = old.max(end).saturating_add(len);
                let new = if mode & FALLOC_COLLAPSE_RANGE != 0 {
                    old.saturating_sub(len)
                } else if mode & FALLOC_INSERT_RANGE != 0 {
                    old.saturating_add(len)
                } else {
                    old.max(end)
                };
                ((off, reach), new)
            } else if mode & (FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE) != 0 {
                if keep_size {
                    ((off, end.min(old)), old)
                } else {
                    ((off, end), old.max(end))
                }
            } else if keep_size {
                ((off, off), old)
            } else {
                ((old, old.max(end)), old.max(end))
            };
            if shifts {
                self.protect(t, file, off, d)?;
            } else if mode & (FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE) != 0 {
                self.protect(t, file, off, end)?;
            } else if mode & !(FALLOC_KEEP_SIZE | FALLOC_UNSHARE_RANGE) != 0 {
                self.protect(t, file, off, d)?;
            }
            self.record_op(t, file, changed.0, changed.1.max(changed.0))?;
            t.size = new_size;
            if shifts {
                let grown = if mode & FALLOC_INSERT_RANGE != 0 {
                    len
                } else {
                    0
                };
                t.dirty.insert(off, old.max(d).saturating_add(grown));
            } else if mode & (FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE) != 0 {
                let changed_end = if keep_size { end.min(old.max(d)) } else { end };
                t.dirty.insert(off, changed_end);
            } else if mode & !(FALLOC_KEEP_SIZE | FALLOC_UNSHARE_RANGE) != 0 {
                // A mode this version does not know: assume it may change everything
                // from `off` on.
                t.dirty.insert(off, old.max(d).max(end));
            } else if !keep_size {
                // Plain allocation keeps existing bytes; only growth is new.
                t.dirty.insert(old.max(d), end);
            }
            Ok(())
        });
        res.map_err(|e| note_refusal(self.key, "fallocate", e))
    }

    /// Call after fsyncing/fdatasyncing the backing file, still holding this guard (so no
    /// write slips in between): everything in the file is durable now.  The file's records
    /// are retired and its undo data deleted.
    pub fn mark_durable(&mut self) -> io::Result<()> {
        self.end_epoch(None)
    }

    /// [`FileGuard::mark_durable`] for the fsync of an open file (`file`): also registers
    /// the file's next epoch, in the same log write, so that the next change of a file
    /// written and fsynced in a loop costs no log write and no fstat.
    pub fn mark_durable_and_reserve(&mut self, file: BorrowedFd<'_>) -> io::Result<()> {
        self.end_epoch(Some(file))
    }

    /// Ends the file's epoch; with `file`, reserves its next one, starting at the size the
    /// file has now.
    fn end_epoch(&mut self, file: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let mut st = self.slot.state.lock();
        if st.tracked.is_none() {
            return Ok(());
        }
        // Read before taking anything: one fstat per fsync replaces the fstat and the log
        // write the next change would cost.  A file that is not ours after all (it cannot
        // be, short of a bug) gets no reservation.
        let reserve_size = file
            .and_then(|f| nix::sys::stat::fstat(f).ok())
            .filter(|s| s.st_dev == self.key.dev && s.st_ino == self.key.ino)
            .map(|s| s.st_size as u64);
        let Some(t) = st.tracked.take() else {
            return Ok(());
        };
        crate::pause::point("durable-before-record");
        {
            let mut log = self.journal.log.lock();
            let next = reserve_size.map(|size| {
                let id = self.journal.next_id.fetch_add(1, Ordering::Relaxed);
                (id, size, st.handle.clone())
            });
            if let Err(e) = log.end_epoch(t.id, self.key.dev, self.key.ino, next) {
                // Still described by the log: keep tracking so memory and disk agree.
                st.tracked = Some(t);
                return Err(note_refusal(self.key, "fsync", e));
            }
            if let Err(e) = log.maybe_compact() {
                // The log stays valid (old or new), only bigger than it needs to be.
                tracing::warn!(error = %e, "journal: compaction failed");
            }
        }
        if t.undo_len > 0 {
            remove_undo(&self.journal.undo_dir, t.id);
        }
        Ok(())
    }

    /// Call when a write announced with [`FileGuard::before_write`] failed or was short
    /// (ENOSPC, EIO...): bytes past both the file's size and the durable size were never
    /// written, so they are not unsynced data, and no report may count them as lost.
    pub fn after_short_write(&mut self, file: BorrowedFd<'_>) {
        let mut st = self.slot.state.lock();
        if let Some(t) = st.tracked.as_mut() {
            if let Ok(size) = size_of(file) {
                t.dirty.truncate(size.max(t.durable_size));
                // The size the op record announced was never reached.
                t.size = size;
            }
        }
    }

    /// Puts the file back into its durable state now and retires its records: what a
    /// failed fsync does to the unsynced data under Linux semantics (the pages are marked
    /// clean without reaching the disk).  Returns the bytes lost.  On error the file stays
    /// tracked, so a later cut still rolls it back.
    pub fn discard_unsynced(&mut self) -> io::Result<u64> {
        let mut st = self.slot.state.lock();
        let Some(t) = st.tracked.take() else {
            return Ok(0);
        };
        let mut log = self.journal.log.lock();
        let live = log.live().get(&t.id).cloned().unwrap_or_else(|| LiveFile {
            handle: st.handle.clone(),
            dev: self.key.dev,
            ino: self.key.ino,
            durable_size: t.durable_size,
            extents: Vec::new(),
            reserved: false,
        });
        let restored = restore(
            self.journal.root.as_fd(),
            &self.journal.root_path,
            &self.journal.undo_dir,
            t.id,
            &live,
            |size_before| lost_of(&t, size_before),
        )
        .and_then(|r| {
            log.append(&Record::Durable { id: t.id })?;
            Ok(r)
        });
        match restored {
            Ok(r) => {
                drop(log);
                if t.undo_len > 0 {
                    remove_undo(&self.journal.undo_dir, t.id);
                }
                // A deleted file lost nothing anyone can read.
                Ok(r.map_or(0, |r| r.lost.total_len()))
            }
            Err(e) => {
                st.tracked = Some(t);
                Err(note_refusal(self.key, "discard after fsync error", e))
            }
        }
    }

    /// The durable size, if the file has changes not yet durable.
    pub fn durable_size(&self) -> Option<u64> {
        self.slot
            .state
            .lock()
            .tracked
            .as_ref()
            .map(|t| t.durable_size)
    }
}

impl Drop for FileGuard<'_> {
    fn drop(&mut self) {
        let clean = {
            let mut st = self.slot.state.lock();
            st.busy = false;
            st.tracked.is_none()
        };
        self.slot.freed.notify_one();
        if clean {
            // Forget files with nothing to undo, so memory follows tracked files only.  Under
            // the map lock nobody can take a new reference: a count of two (map + us) means
            // no one else holds or waits for this slot.
            let mut files = self.journal.files.lock();
            let ours = files
                .get(&self.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot));
            if ours && Arc::strong_count(&self.slot) == 2 {
                let st = self.slot.state.lock();
                if !st.busy && st.tracked.is_none() {
                    files.remove(&self.key);
                }
            }
        }
    }
}
