//! Disk-full accounting: what the mount "holds" is the sum of the allocated bytes
//! (`st_blocks * 512`) of the regular files and symlinks under it, each inode counted once,
//! measured by a walk when the mode is set and then kept current by the hooks (the file's
//! allocation measured before and after each write, truncate, fallocate and
//! copy_file_range; a file's allocation subtracted when its last name is unlinked or
//! renamed over).

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Allocated bytes of a file from its stat.
pub fn allocated(st: &libc::stat) -> u64 {
    (st.st_blocks as u64).saturating_mul(512)
}

/// Allocated bytes of every regular file and symlink under `root`, skipping `skip` (the
/// state directory) and never leaving `root`'s filesystem.
pub fn walk(root: &Path, skip: &Path) -> io::Result<u64> {
    let dev = std::fs::symlink_metadata(root)?.dev();
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // Removed while we walk: nothing to count.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == skip {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if md.dev() != dev {
                continue;
            }
            if md.is_dir() {
                stack.push(path);
            } else if seen.insert(md.ino()) {
                total = total.saturating_add(md.blocks().saturating_mul(512));
            }
        }
    }
    Ok(total)
}

/// Bytes a write of `[off, off+len)` may add to a file of `size` bytes holding `alloc`
/// allocated bytes: the growth past the end in whole pages for a file without holes, the
/// whole write (rounded up to pages) for a sparse one, whose holes a write may fill.
pub fn write_may_add(size: u64, alloc: u64, off: u64, len: u64) -> u64 {
    const PAGE: u64 = 4096;
    let up = |v: u64| v.div_ceil(PAGE).saturating_mul(PAGE);
    if alloc >= up(size).saturating_sub(PAGE) {
        up(off.saturating_add(len)).saturating_sub(up(size))
    } else {
        up(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_estimate() {
        // Appending 10 bytes to an empty file needs one page.
        assert_eq!(write_may_add(0, 0, 0, 10), 4096);
        // Overwriting inside a dense file adds nothing.
        assert_eq!(write_may_add(8192, 8192, 0, 100), 0);
        // Growing a dense file by one page.
        assert_eq!(write_may_add(8192, 8192, 8192, 4096), 4096);
        // A sparse file (1 MiB, nothing allocated): the write may fill a hole.
        assert_eq!(write_may_add(1 << 20, 0, 0, 100), 4096);
    }

    #[test]
    fn walk_counts_files_once() {
        let scratch = crate::testdir::TempDir::new("diskfull");
        let dir = scratch.path();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(dir.join(".state")).unwrap();
        std::fs::write(dir.join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::write(dir.join("sub/b"), vec![1u8; 5_000]).unwrap();
        std::fs::hard_link(dir.join("a"), dir.join("sub/a2")).unwrap();
        std::fs::write(dir.join(".state/big"), vec![1u8; 100_000]).unwrap();
        let total = walk(dir, &dir.join(".state")).unwrap();
        let alloc = |p: &str| std::fs::metadata(dir.join(p)).unwrap().blocks() * 512;
        assert_eq!(total, alloc("a") + alloc("sub/b"));
    }
}
