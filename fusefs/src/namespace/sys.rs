//! The few `*at()` syscalls the namespace models need, on borrowed directory fds and
//! C-string names, with errors that keep their raw OS error.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// lstat of `name` in `dir`; `None` when there is no such entry.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    // SAFETY: an all-zero stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dir fd, valid C string, writable stat.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match cvt(rc) {
        Ok(_) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn rename_at(
    from: BorrowedFd<'_>,
    name: &CStr,
    to: BorrowedFd<'_>,
    new_name: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: valid dir fds and C strings; the kernel validates the flags.
    cvt(unsafe {
        libc::renameat2(
            from.as_raw_fd(),
            name.as_ptr(),
            to.as_raw_fd(),
            new_name.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

/// A second name for the entry `name` (never following a symlink).
pub fn link_at(
    from: BorrowedFd<'_>,
    name: &CStr,
    to: BorrowedFd<'_>,
    new_name: &CStr,
) -> io::Result<()> {
    // SAFETY: valid dir fds and C strings.
    cvt(unsafe {
        libc::linkat(
            from.as_raw_fd(),
            name.as_ptr(),
            to.as_raw_fd(),
            new_name.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, rmdir: bool) -> io::Result<()> {
    let flags = if rmdir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid dir fd and C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

/// Opens a directory entry of `dir` as a directory (not following symlinks).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: valid dir fd and C string; the result is checked.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `O_PATH` fd of entry `name` of `dir` (a symlink itself, not its target).
pub fn open_path_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid dir fd and C string; the result is checked.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// True when directory `name` of `dir` holds nothing but `.` and `..`.
pub fn dir_is_empty(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<bool> {
    let fd = open_dir_at(dir, name, libc::O_RDONLY)?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: valid fd and writable buffer of the given size.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n == 0 {
            return Ok(true);
        }
        let mut pos = 0;
        while pos + 19 <= n {
            let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
            if reclen == 0 || pos + reclen > n {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let name = &buf[pos + 19..pos + reclen];
            let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            if &name[..len] != b"." && &name[..len] != b".." {
                return Ok(false);
            }
            pos += reclen;
        }
    }
}

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
