//! Kernel file handles (`name_to_handle_at` / `open_by_handle_at`): how lossfs names a
//! backing file without holding an fd for it, and how the journal names a file so that a
//! later daemon (after a SIGKILL) can find the same file again, whatever it was renamed to.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// MAX_HANDLE_SZ from <linux/exportfs.h>.
const MAX_HANDLE_SZ: usize = 128;

/// An opaque, persistent name of a backing file, valid across daemon restarts on the same
/// filesystem.  Comparable and hashable so it can key maps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileHandle {
    /// The handle type the filesystem chose (`f_handle.handle_type`).
    pub handle_type: i32,
    /// The filesystem's opaque handle bytes.
    pub bytes: Vec<u8>,
}

#[repr(C)]
struct RawHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

impl FileHandle {
    /// The handle of the file `fd` refers to (an `O_PATH` fd is enough).  Symlinks are named
    /// themselves, never followed.
    pub fn of_fd(fd: BorrowedFd<'_>) -> io::Result<FileHandle> {
        let mut raw = RawHandle {
            handle_bytes: MAX_HANDLE_SZ as libc::c_uint,
            handle_type: 0,
            f_handle: [0; MAX_HANDLE_SZ],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `raw` is a properly sized, writable file_handle with handle_bytes set to the
        // capacity of f_handle; the path is a valid NUL-terminated empty string used with
        // AT_EMPTY_PATH, and mount_id points to a writable int.
        let rc = unsafe {
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                c"".as_ptr(),
                (&mut raw as *mut RawHandle).cast(),
                &mut mount_id,
                libc::AT_EMPTY_PATH,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
        Ok(FileHandle {
            handle_type: raw.handle_type,
            bytes: raw.f_handle[..len].to_vec(),
        })
    }

    /// Opens the file this handle names.  `mount_fd` is any fd on the same filesystem (the
    /// backing root).  Needs CAP_DAC_READ_SEARCH.  `flags` are open(2) flags such as
    /// `O_PATH | O_NOFOLLOW` or `O_RDWR`; O_CLOEXEC is always added.
    pub fn open(&self, mount_fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
        if self.bytes.len() > MAX_HANDLE_SZ {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut raw = RawHandle {
            handle_bytes: self.bytes.len() as libc::c_uint,
            handle_type: self.handle_type,
            f_handle: [0; MAX_HANDLE_SZ],
        };
        raw.f_handle[..self.bytes.len()].copy_from_slice(&self.bytes);
        // SAFETY: `raw` is a valid file_handle whose handle_bytes does not exceed the
        // buffer; open_by_handle_at only reads it.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount_fd.as_raw_fd(),
                (&mut raw as *mut RawHandle).cast(),
                flags | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: open_by_handle_at returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Serialises to `type:hexbytes`, the form the journal stores.
    pub fn to_text(&self) -> String {
        let mut s = format!("{}:", self.handle_type);
        for b in &self.bytes {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses the form written by [`FileHandle::to_text`].
    pub fn from_text(s: &str) -> Option<FileHandle> {
        let (ty, hex) = s.split_once(':')?;
        if hex.len() % 2 != 0 || hex.len() / 2 > MAX_HANDLE_SZ {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(FileHandle {
            handle_type: ty.parse().ok()?,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn text_roundtrip() {
        let h = FileHandle {
            handle_type: 1,
            bytes: vec![0, 1, 0xab, 0xff],
        };
        assert_eq!(h.to_text(), "1:0001abff");
        assert_eq!(FileHandle::from_text(&h.to_text()), Some(h));
        assert_eq!(FileHandle::from_text("x:00"), None);
        assert_eq!(FileHandle::from_text("1:0"), None);
    }

    #[test]
    fn handle_survives_rename() {
        crate::testdir::require_root("open_by_handle_at needs CAP_DAC_READ_SEARCH");
        let scratch = crate::testdir::TempDir::new("handle");
        let dir = scratch.path();
        let a = dir.join("a");
        std::fs::write(&a, b"hello").unwrap();
        let f = std::fs::File::open(&a).unwrap();
        let h = FileHandle::of_fd(f.as_fd()).unwrap();
        std::fs::rename(&a, dir.join("b")).unwrap();
        let root = std::fs::File::open(dir).unwrap();
        let fd = h.open(root.as_fd(), libc::O_RDONLY).unwrap();
        let text = std::fs::read_to_string(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(text, "hello");
    }
}
