//! Byte moving and file inspection for the journal: copying ranges (holes kept as holes)
//! between a backing file and its undo file, restoring one file from its log records, and
//! naming a file for reports.

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

/// Ranges shorter than this are copied byte for byte: a hole in them costs at most this much
/// undo space, and the small copies of the write path pay no hole lookups.
const SPARSE_MIN: u64 = 64 << 10;

/// Makes `dst[dst_off..dst_off+n]` equal to `src[src_off..src_off+n]`, where `n` is `len` or
/// less when `src` ends first; returns `n`.  Ranges of [`SPARSE_MIN`] bytes or more keep
/// their holes: only `src`'s data is copied (copy_file_range when the filesystems allow it,
/// pread/pwrite otherwise), and the holes become holes of `dst` (punched, or past its end),
/// so saving or restoring a range of a sparse file costs its allocated bytes only.
pub(crate) fn copy_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: u64,
) -> io::Result<u64> {
    if len < SPARSE_MIN {
        return copy_dense(src, src_off, dst, dst_off, len);
    }
    let end = src_off.saturating_add(len);
    let at = |pos: u64| dst_off + (pos - src_off);
    let mut pos = src_off;
    while pos < end {
        match next_data(src, pos, end)? {
            Some((data, hole)) => {
                if data > pos {
                    zero_range(dst, at(pos), data - pos)?;
                }
                let copied = copy_dense(src, data, dst, at(data), hole - data)?;
                if copied < hole - data {
                    // `src` shrank under us: it ends here.
                    return Ok(data + copied - src_off);
                }
                pos = hole;
            }
            None => {
                // No data from `pos` on: a hole up to `src`'s end (if that is in range).
                let src_end = size_of(src)?.clamp(pos, end);
                if src_end > pos {
                    zero_range(dst, at(pos), src_end - pos)?;
                }
                return Ok(src_end - src_off);
            }
        }
    }
    Ok(end - src_off)
}

/// The first data segment of `fd` in `[pos, end)`, as `(data start, hole start)` clipped to
/// `end`; `None` when there is no data there.  A filesystem without hole reporting counts as
/// all data.
fn next_data(fd: BorrowedFd<'_>, pos: u64, end: u64) -> io::Result<Option<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let data = match lseek(fd, pos as i64, Whence::SeekData) {
        Ok(d) => d as u64,
        // Past the last data (or past the end).
        Err(Errno::ENXIO) => return Ok(None),
        Err(Errno::EINVAL | Errno::EOPNOTSUPP) => return Ok(Some((pos, end))),
        Err(e) => return Err(e.into()),
    };
    if data >= end {
        return Ok(None);
    }
    let hole = match lseek(fd, data as i64, Whence::SeekHole) {
        Ok(h) => h as u64,
        Err(Errno::ENXIO) => end,
        Err(e) => return Err(e.into()),
    };
    Ok(Some((data, hole.clamp(data + 1, end))))
}

/// The holes of `fd` in `[start, end)` (where it holds no data), in order.
pub(crate) fn holes_in(fd: BorrowedFd<'_>, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut holes = Vec::new();
    let mut pos = start;
    while pos < end {
        match next_data(fd, pos, end)? {
            Some((data, hole)) => {
                if data > pos {
                    holes.push((pos, data));
                }
                pos = hole;
            }
            None => {
                holes.push((pos, end));
                pos = end;
            }
        }
    }
    Ok(holes)
}

/// Makes `[off, off+len)` of `fd` read as zeros without allocating it: past the end it
/// grows the file, below the end it punches a hole (or, where the filesystem cannot punch,
/// writes zeros over the data that is there).
pub(crate) fn zero_range(fd: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<()> {
    let size = size_of(fd)?;
    let end = off.saturating_add(len);
    let inside = end.min(size);
    if off < inside {
        // SAFETY: valid fd; the kernel checks the range.
        let rc = unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as i64,
                (inside - off) as i64,
            )
        };
        match Errno::result(rc) {
            Ok(_) => {}
            Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => {
                let mut pos = off;
                while let Some((data, hole)) = next_data(fd, pos, inside)? {
                    write_zeros(fd, data, hole - data)?;
                    pos = hole;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    if end > size {
        nix::unistd::ftruncate(fd, end as i64)?;
    }
    Ok(())
}

/// Writes `len` zero bytes at `off`.
fn write_zeros(fd: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len() as u64) as usize;
        match nix::sys::uio::pwrite(fd, &ZEROS[..n], (off + done) as i64) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(w) => done += w as u64,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off`, holes included, with
/// copy_file_range when the filesystems allow it, pread/pwrite otherwise.  Returns how many
/// bytes were copied: fewer than `len` only when `src` ends first.
fn copy_dense(
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

/// The file has no name left on the backing filesystem: unlinked (by a program, or by the
/// commit of a namespace change), so nothing of it can be read again after a cut.  (An
/// unlink a namespace model may still undo keeps the file in the graveyard, with a name.)
pub(crate) fn is_deleted(fd: BorrowedFd<'_>) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_nlink == 0)
}

/// The handle names a file that no longer exists.
pub(crate) fn is_gone(e: &io::Error) -> bool {
    matches!(crate::error::errno_of(e), libc::ESTALE | libc::ENOENT)
}

/// How many bytes of `ranges` `fd` holds no data for: its holes (read as zeros, never
/// written), and what lies past its end `size` (cut off by a truncate).
pub(crate) fn hole_bytes(fd: BorrowedFd<'_>, ranges: &RangeSet, size: u64) -> io::Result<u64> {
    let mut holes = 0;
    for (start, end) in ranges.iter() {
        holes += end.saturating_sub(start.max(size));
        let end = end.min(size);
        let mut pos = start;
        while pos < end {
            match next_data(fd, pos, end)? {
                Some((data, hole)) => {
                    holes += data - pos;
                    pos = hole;
                }
                None => {
                    holes += end - pos;
                    pos = end;
                }
            }
        }
    }
    Ok(holes)
}

/// What restoring one file found.
pub(crate) struct Restored {
    pub size_before: u64,
    pub path: Option<String>,
    /// What the file lost, and how many of those bytes were holes.
    pub lost: RangeSet,
    pub lost_holes: u64,
}

/// Puts file `id` back into its durable state: truncate to the durable size, write every
/// pre-image back, fdatasync.  `lost_of` gives, from the size the file has before, the
/// ranges it loses (for the report).  Idempotent: the pre-images are the durable bytes, so
/// running it again after an interruption gives the same file.  `None`: the file is
/// deleted (see [`is_deleted`]; or gone, ESTALE), nothing to restore.
pub(crate) fn restore(
    root: BorrowedFd<'_>,
    root_path: &Path,
    undo_dir: &Path,
    id: u64,
    f: &LiveFile,
    lost_of: impl FnOnce(u64) -> RangeSet,
) -> io::Result<Option<Restored>> {
    let file = match f.handle.open(root, libc::O_RDWR) {
        Ok(file) => file,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => Err(e).ctx_ino("opening file to restore", f.ino)?,
    };
    if is_deleted(file.as_fd()) {
        return Ok(None);
    }
    let path = path_of(file.as_fd(), root_path);
    let name = || path.clone().unwrap_or_else(|| format!("inode {}", f.ino));
    let size_before = size_of(file.as_fd()).with_ctx(|| format!("fstat of {}", name()))?;
    let lost = lost_of(size_before);
    let lost_holes = hole_bytes(file.as_fd(), &lost, size_before)
        .with_ctx(|| format!("finding the holes of {}", name()))?;
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
    Ok(Some(Restored {
        size_before,
        path,
        lost,
        lost_holes,
    }))
}

/// Converts ranges to report form.
pub(crate) fn byte_ranges(r: &RangeSet) -> Vec<ByteRange> {
    r.iter()
        .map(|(start, end)| ByteRange { start, end })
        .collect()
}
