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
//! Range commits (`-o sync_file_range=stable`, [`FileGuard::commit_range`]): the saved
//! pre-images of the committed pages are overwritten in place with their current content,
//! so every later rollback, partial cut or replay restores that content; the pages leave
//! the dirty set.  To leave out pages that were holes at the durable state (a write there
//! allocates blocks: metadata, which stays unsynced), the holes under each pre-image are
//! noted when it is saved, only once [`Journal::enable_range_commits`] was called.
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
//! Where it lives: the per-file state and the whole-journal operations here; the write path
//! ([`FileGuard`]) in the private `guard` module, replay at open in `replay`, the power cut
//! in `cut`.
//!
//! Errors from [`FileGuard`] methods keep their raw OS error (the FUSE layer replies with that
//! errno, e.g. ENOSPC when the undo store is full) and log their context at warn level;
//! errors of the whole-journal operations carry their context in the message.

#[cfg(test)]
mod commit_tests;
mod crashstate;
mod cut;
mod expire;
mod fileio;
mod guard;
#[cfg(test)]
mod keep_tests;
mod log;
mod names;
mod partial;
mod replay;
use self::replay::replay;
#[cfg(test)]
mod sparse_tests;
#[cfg(test)]
mod tests;

use self::cut::deleted;
use self::fileio::{byte_ranges, hole_bytes, is_deleted, is_gone, path_of, size_of};
pub use self::guard::FileGuard;
use self::log::Log;
use crate::error::{Context as _, FsError};
use crate::filekey::FileKey;
use crate::handle::FileHandle;
use crate::rangeset::RangeSet;
use crate::report::{FileLoss, FileStatus, SyncReport};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::fs::{DirBuilder, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// Holes of the durable state under the saved pages (noted only with range commits on).
    holes: RangeSet,
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
    /// Range commits may come ([`Self::enable_range_commits`]): note holes under pre-images.
    range_commits: AtomicBool,
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
            range_commits: AtomicBool::new(false),
        };
        Ok((journal, report))
    }

    /// Call before the first change when range commits ([`FileGuard::commit_range`]) will
    /// be used: from then on, saving a pre-image also notes the holes under it (one or two
    /// lseeks), so that a commit can leave writes into holes unsynced.
    pub fn enable_range_commits(&self) {
        self.range_commits.store(true, Ordering::Relaxed);
    }

    /// Commits `[start, end)` of the file `key`/`handle` (see [`FileGuard::commit_range`]),
    /// opening it by its handle.  Returns the bytes committed; 0 for a file with no
    /// unsynced change or one that no longer exists.
    pub fn commit_range(
        &self,
        key: FileKey,
        handle: &FileHandle,
        start: u64,
        end: u64,
    ) -> io::Result<u64> {
        let file = match handle.open(self.root.as_fd(), libc::O_RDONLY) {
            Ok(f) => f,
            Err(e) if is_gone(&e) => return Ok(0),
            Err(e) => Err(e).ctx_ino("opening file to commit a range", key.ino)?,
        };
        let committed = self
            .lock(key, handle)
            .commit_range(file.as_fd(), start, end)
            .with_ctx(|| format!("committing bytes {start}..{end} of inode {}", key.ino))?;
        Ok(committed)
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
}
