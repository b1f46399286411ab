//! Replay at open: what the log of a killed daemon says is done again, rolling its files
//! back (or, with `recover=keep`, making their current content durable).

use super::cut::{deleted, find_names, restored, unname_graveyard};
use super::fileio::{is_deleted, is_gone, path_of, restore, size_of};
use super::log::LiveFile;
use crate::error::Context as _;
use crate::filekey::FileKey;
use crate::rangeset::RangeSet;
use crate::report::FileLoss;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// Replays the live records of a killed daemon's log.
pub(super) fn replay(
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
pub(super) fn keep(
    root: BorrowedFd<'_>,
    root_path: &Path,
    f: &LiveFile,
) -> io::Result<Option<FileLoss>> {
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
