//! The power cut: every tracked file into its crash state, and the report of what each
//! lost, with names found for files whose handle no longer gives one.

use super::crashstate::PrefixBuilder;
use super::fileio::{byte_ranges, restore, Restored};
use super::log::{LiveFile, Logged};
use super::{clear_undo_dir, Journal, Tracked};
use crate::filekey::FileKey;
use crate::handle::FileHandle;
use crate::keep::{KeepMode, KeepSpec};
use crate::rangeset::RangeSet;
use crate::report::FileLoss;
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

impl Journal {
    /// Power cut losing every unsynced byte: `cut` with `--keep none`.
    pub fn rollback_all(&self) -> io::Result<Vec<FileLoss>> {
        self.cut(&KeepSpec::none())
    }

    /// Power cut: puts every tracked file into its crash state as `spec` says (its durable
    /// content and size for `none`; docs/fault-model.md for the others), fdatasyncs them,
    /// resets the journal; returns per-file losses (and what was kept).  A deleted file (no
    /// name left) is not restored and comes back with `deleted` set; a file that cannot be
    /// restored is reported with `error`, not a failure of the cut.  The caller guarantees
    /// no [`FileGuard`](super::FileGuard) is alive (it freezes all operations first).
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
            let read = log.for_each_op(&ids, |id, entry| {
                if let Some(b) = prefixes.get_mut(&id) {
                    match entry {
                        Logged::Op(op) => b.feed(op),
                        Logged::Commit { start, end } => b.commit(start, end),
                    }
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
    pub(super) fn find_names<'a>(
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
pub(super) fn lost_of(t: &Tracked, size_before: u64) -> RangeSet {
    let mut lost = t.dirty.clone();
    lost.truncate(size_before.max(t.durable_size));
    lost.insert(t.durable_size, size_before.max(t.durable_size));
    lost
}

/// The report of a file put back into its durable state (`durable_size` bytes).
pub(super) fn restored(r: Restored, durable_size: u64) -> FileLoss {
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
pub(super) fn deleted(key: FileKey) -> FileLoss {
    tracing::debug!(ino = key.ino, "power cut: deleted file, nothing to restore");
    FileLoss {
        inode: Some(key.ino),
        deleted: true,
        ..Default::default()
    }
}

/// The report of a file a cut could not put back: all its unsynced bytes count as lost
/// (as data: the holes are unknown), and the error says why.
pub(super) fn not_restored(t: &Tracked, key: FileKey, e: io::Error) -> FileLoss {
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
pub(super) fn find_names<'a>(
    root_path: &Path,
    state_dir: &Path,
    files: impl Iterator<Item = (FileKey, &'a mut Option<String>, &'a mut Option<u64>)>,
) {
    let mut missing: Vec<_> = files.filter(|(_, path, _)| path.is_none()).collect();
    if missing.is_empty() {
        return;
    }
    let found = super::names::scan(
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
pub(super) fn unname_graveyard(
    root_path: &Path,
    state_dir: &Path,
    keys: &[FileKey],
    files: &mut [FileLoss],
) {
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
