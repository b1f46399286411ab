//! How undo reports name a directory entry: its path under the mount root, read back from
//! the directory's fd.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The path of the directory `fd` relative to `root` (`.` for the root itself), for reports.
pub fn dir_path(fd: BorrowedFd<'_>, root: &Path) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let rel = link.strip_prefix(root).ok()?;
    if rel.as_os_str().is_empty() {
        return Some(".".into());
    }
    Some(String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned())
}

/// `dir/name` for reports, without a leading `./`.
pub fn join(dir: Option<&str>, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(OsStr::from_bytes(name).as_bytes()).into_owned();
    match dir {
        Some(".") => name,
        Some(d) => format!("{d}/{name}"),
        None => format!("(unknown dir)/{name}"),
    }
}
