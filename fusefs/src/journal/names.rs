//! Names for reports of files whose kernel file handle no longer leads to a path: once the
//! kernel drops a file's dentry, `open_by_handle_at` gives a disconnected one, whose
//! `/proc/self/fd` link names no directory.  One bounded walk of the backing tree finds
//! them all by inode number.  Never on the write path: status and cut reports only.

use super::FileKey;
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Directory entries one walk reads at most: a tree bigger than this (a status on a mount
/// with millions of files) leaves the rest unnamed rather than stall the answer.
const MAX_ENTRIES: usize = 200_000;

/// Walks `root` breadth first (not into `skip`, the state dir, nor through symlinks) until
/// every file of `wanted` has a name or [`MAX_ENTRIES`] entries were read; returns the
/// paths found, relative to `root` (the shallowest name of a file with several).
pub(crate) fn scan(root: &Path, skip: &Path, wanted: Vec<FileKey>) -> HashMap<FileKey, String> {
    let wanted: HashSet<FileKey> = wanted.into_iter().collect();
    let inos: HashSet<u64> = wanted.iter().map(|k| k.ino).collect();
    let skip = std::fs::canonicalize(skip).unwrap_or_else(|_| skip.to_path_buf());
    let mut found = HashMap::new();
    let mut queue = VecDeque::from([PathBuf::new()]);
    let mut read = 0usize;
    while let Some(rel) = queue.pop_front() {
        let dir = root.join(&rel);
        if dir == skip {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            read += 1;
            if read > MAX_ENTRIES {
                tracing::debug!(root = %root.display(), "naming files: walk stopped at its bound");
                return found;
            }
            let path = rel.join(entry.file_name());
            // d_ino first, so only candidates cost a stat (which also checks the device).
            if inos.contains(&entry.ino()) {
                if let Ok(md) = entry.metadata() {
                    let key = FileKey {
                        dev: md.dev(),
                        ino: md.ino(),
                    };
                    if wanted.contains(&key) && !found.contains_key(&key) {
                        let name = String::from_utf8_lossy(path.as_os_str().as_bytes());
                        found.insert(key, name.into_owned());
                        if found.len() == wanted.len() {
                            return found;
                        }
                    }
                }
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(path);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::tests::Dirs;
    use super::*;
    use std::fs;

    fn key(p: &Path) -> FileKey {
        let md = fs::metadata(p).unwrap();
        FileKey {
            dev: md.dev(),
            ino: md.ino(),
        }
    }

    #[test]
    fn finds_files_by_inode_outside_the_skipped_dir_and_not_others() {
        let d = Dirs::new("names");
        let root = &d.data;
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("state")).unwrap();
        fs::write(root.join("a/b/deep"), b"x").unwrap();
        fs::write(root.join("top"), b"x").unwrap();
        fs::write(root.join("state/hidden"), b"x").unwrap();
        let deep = key(&root.join("a/b/deep"));
        let top = key(&root.join("top"));
        let hidden = key(&root.join("state/hidden"));
        let absent = FileKey {
            dev: top.dev,
            ino: u64::MAX,
        };
        let found = scan(root, &root.join("state"), vec![deep, top, hidden, absent]);
        assert_eq!(found.get(&deep).map(String::as_str), Some("a/b/deep"));
        assert_eq!(found.get(&top).map(String::as_str), Some("top"));
        assert_eq!(found.get(&hidden), None);
        assert_eq!(found.get(&absent), None);
    }
}
