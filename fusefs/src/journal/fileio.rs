//! Byte moving and file inspection for the journal: copying ranges between a backing file
//! and its undo file, restoring one file from its log records, and naming a file for reports.

use super::log::LiveFile;
use crate::error::Context as _;
use crate::rangeset::RangeSet;
use crate::report::ByteRange;
use nix::errno::Errno;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Largest single copy request; keeps one syscall's work bounded.
const CHUNK: u64 = 1 << 30;
/// Buffer for the pread/pwrite fallback.
const BUF: usize = 64 << 10;

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off`, with copy_file_range
/// when the filesystems allow it, pread/pwrite otherwise.  Returns how many bytes were copied:
/// fewer than `len` only when `src` ends first.
pub(crate) fn copy_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: u64,
) -> io::Result<u64> {
    let mut done = 0u64;
    let mut kernel_copy = true;
    let mut buf = Vec::new();
    while done < len {
        let want = (len - done).min(CHUNK);
        if kernel_copy {
            let mut i = (src_off + done) as i64;
            let mut o = (dst_off + done) as i64;
            // SAFETY: both fds are valid for the call (borrowed), the offset pointers point to
            // live i64s the kernel may update, and no buffer of ours is involved.
            let rc = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut i,
                    dst.as_raw_fd(),
                    &mut o,
                    want as usize,
                    0,
                )
            };
            match Errno::result(rc) {
                Ok(0) => break,
                Ok(n) => done += n as u64,
                Err(Errno::EINTR) => {}
                // Cross-filesystem, unsupported or special files: copy by hand.
                Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                    kernel_copy = false
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            if buf.is_empty() {
                buf = vec![0u8; BUF];
            }
            let n = (want as usize).min(BUF);
            let got = match nix::sys::uio::pread(src, &mut buf[..n], (src_off + done) as i64) {
                Ok(0) => break,
                Ok(got) => got,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut written = 0;
            while written < got {
                match nix::sys::uio::pwrite(
                    dst,
                    &buf[written..got],
                    (dst_off + done) as i64 + written as i64,
                ) {
                    Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
                    Ok(w) => written += w,
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            done += got as u64;
        }
    }
    Ok(done)
}

/// Current size of a file.
pub(crate) fn size_of(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(nix::sys::stat::fstat(fd)?.st_size as u64)
}

/// The file's path relative to `root`, found through /proc; `None` when it has no name any
/// more (unlinked) or lives outside `root`.  Never called on the write path.
pub(crate) fn path_of(fd: BorrowedFd<'_>, root: &Path) -> Option<String> {
    if nix::sys::stat::fstat(fd).ok()?.st_nlink == 0 {
        return None;
    }
    let link = nix::fcntl::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str()).ok()?;
    let rel = Path::new(&link).strip_prefix(root).ok()?;
    if rel.as_os_str().is_empty() {
        return Some(".".to_string());
    }
    Some(String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned())
}

/// What restoring one file found.
pub(crate) struct Restored {
    pub size_before: u64,
    pub path: Option<String>,
}

/// Puts file `id` back into its durable state: truncate to the durable size, write every
/// pre-image back, fdatasync.  Idempotent: the pre-images are the durable bytes, so running
/// it again after an interruption gives the same file.
pub(crate) fn restore(
    root: BorrowedFd<'_>,
    root_path: &Path,
    undo_dir: &Path,
    id: u64,
    f: &LiveFile,
) -> io::Result<Restored> {
    // The errno stays readable through the context: the replay at mount tells a file that
    // is gone (ESTALE), which it reports and skips, from a failure, which stops it.
    let file = f
        .handle
        .open(root, libc::O_RDWR)
        .ctx_ino("opening file to restore", f.ino)?;
    let path = path_of(file.as_fd(), root_path);
    let name = || path.clone().unwrap_or_else(|| format!("inode {}", f.ino));
    let size_before = size_of(file.as_fd()).with_ctx(|| format!("fstat of {}", name()))?;
    nix::unistd::ftruncate(&file, f.durable_size as i64)
        .with_ctx(|| format!("truncating {} to {}", name(), f.durable_size))?;
    crate::pause::point("restore-after-truncate");
    if !f.extents.is_empty() {
        let undo_path = undo_dir.join(id.to_string());
        let undo = std::fs::File::open(&undo_path).ctx_path("opening undo data", &undo_path)?;
        for x in &f.extents {
            // Pre-images never reach past the durable size; clip anyway so a damaged log
            // cannot grow the file.
            let len = x.len.min(f.durable_size.saturating_sub(x.start));
            copy_range(undo.as_fd(), x.undo_off, file.as_fd(), x.start, len).with_ctx(|| {
                format!(
                    "restoring bytes {}..{} of {}",
                    x.start,
                    x.start + len,
                    name()
                )
            })?;
        }
    }
    nix::unistd::fdatasync(&file).with_ctx(|| format!("fdatasync of {}", name()))?;
    Ok(Restored { size_before, path })
}

/// Converts ranges to report form.
pub(crate) fn byte_ranges(r: &RangeSet) -> Vec<ByteRange> {
    r.iter()
        .map(|(start, end)| ByteRange { start, end })
        .collect()
}
