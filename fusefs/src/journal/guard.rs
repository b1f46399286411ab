//! [`FileGuard`], the write path: exclusive access to one file's durability state, which
//! saves the pre-images a change needs and records it before the change reaches the
//! backing file, and ends the file's epoch when it is made durable.

use super::cut::lost_of;
use super::fileio::{copy_range, holes_in, restore, size_of};
use super::log::{Extent, LiveFile, OpRec, Record};
use super::{
    remove_undo, Journal, Slot, SlotState, Tracked, UndoFile, FALLOC_COLLAPSE_RANGE,
    FALLOC_INSERT_RANGE, FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE, FALLOC_UNSHARE_RANGE,
    FALLOC_ZERO_RANGE, MAX_OPEN_UNDO, PAGE,
};
use crate::filekey::FileKey;
use crate::rangeset::RangeSet;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Exclusive access to one file's durability state.  Dropping it lets the next writer of
/// that file in.
pub struct FileGuard<'a> {
    pub(super) journal: &'a Journal,
    pub(super) key: FileKey,
    pub(super) slot: Arc<Slot>,
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
                holes: RangeSet::new(),
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
        let note_holes = self.journal.range_commits.load(Ordering::Relaxed);
        for (s, e) in t.saved.missing(page_start, page_end) {
            let len = e.min(t.durable_size) - s;
            if note_holes {
                for (hs, he) in holes_in(file, s, s + len)? {
                    t.holes.insert(hs, he);
                }
            }
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
    pub(super) fn end_epoch(&mut self, file: Option<BorrowedFd<'_>>) -> io::Result<()> {
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

    /// A `sync_file_range(WRITE|WAIT_AFTER)` of `[start, end)` returned on a disk whose
    /// cache is stable media: the data of the whole 4096-byte pages it touches becomes
    /// durable where it overwrote durable bytes; metadata does not: bytes past the durable
    /// size (appends), the size, and pages that were holes at the durable state (their
    /// blocks are allocated by the write) stay unsynced.  `file` is a readable fd of the
    /// backing file, which holds the range's data now.  The pages' saved pre-images are
    /// overwritten in place with their current content (so a rollback, a partial cut and a
    /// replay after a killed daemon all restore it), a `C` record marks the commit in the
    /// operation order, and the bytes leave the dirty set.  Returns the bytes committed.
    pub fn commit_range(&mut self, file: BorrowedFd<'_>, start: u64, end: u64) -> io::Result<u64> {
        let slot = Arc::clone(&self.slot);
        let mut st = slot.state.lock();
        let Some(t) = st.tracked.as_mut() else {
            return Ok(0);
        };
        // A shrink is metadata: bytes cut off since the durable point stay as they are.
        let limit = t.durable_size.min(size_of(file)?);
        let first = start / PAGE * PAGE;
        let last = end.div_ceil(PAGE).saturating_mul(PAGE).min(limit);
        if first >= last {
            return Ok(0);
        }
        // Only saved pages can differ from their durable content; never a page with a hole.
        let mut runs = RangeSet::new();
        for (s, e) in t.saved.overlapping(first, last) {
            runs.insert(s, e);
        }
        for (hs, he) in t.holes.overlapping(first, last) {
            runs.remove(hs / PAGE * PAGE, he.div_ceil(PAGE) * PAGE);
        }
        if runs.is_empty() {
            return Ok(0);
        }
        let extents: Vec<Extent> = {
            let log = self.journal.log.lock();
            log.live()
                .get(&t.id)
                .map(|f| {
                    f.extents
                        .iter()
                        .filter(|x| runs.intersects(x.start, x.start.saturating_add(x.len)))
                        .copied()
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut committed = RangeSet::new();
        if !extents.is_empty() {
            let undo = self.undo_file(t)?;
            for x in &extents {
                for (s, e) in runs.overlapping(x.start, x.start.saturating_add(x.len)) {
                    let copied = copy_range(
                        file,
                        s,
                        undo.file.as_fd(),
                        x.undo_off + (s - x.start),
                        e - s,
                    )?;
                    if copied > 0 {
                        committed.insert(s, s + copied);
                    }
                }
            }
            self.keep_undo(t, undo);
        }
        // Saved pages without an extent held nothing (past the file's end when saved): as
        // durable as they can be already.
        let mut log = self.journal.log.lock();
        for (s, e) in committed.iter() {
            log.append(&Record::Commit {
                id: t.id,
                start: s,
                end: e,
            })?;
            t.dirty.remove(s, e);
        }
        Ok(committed.total_len())
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
