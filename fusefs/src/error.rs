//! The one error type of filesystem operations: an errno for the kernel plus what was being
//! done, so a log line says which file and which operation failed.

use std::fmt;
use std::io;

/// An operation's failure.  `errno` goes back to the program; `what` goes to the log.
#[derive(Debug)]
pub struct FsError {
    pub errno: i32,
    pub what: &'static str,
}

impl FsError {
    pub fn new(errno: i32, what: &'static str) -> FsError {
        FsError { errno, what }
    }

    /// Errors a program provokes on its own (no such file, exists, not empty...) are normal
    /// traffic, not something to warn about.
    pub fn is_expected(&self) -> bool {
        matches!(
            self.errno,
            libc::ENOENT
                | libc::EEXIST
                | libc::ENOTEMPTY
                | libc::ENODATA
                | libc::ERANGE
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::EACCES
                | libc::EPERM
                | libc::EINVAL
                | libc::ENXIO
                | libc::ELOOP
                | libc::EXDEV
                | libc::ENAMETOOLONG
                | libc::EOPNOTSUPP
        )
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.what,
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

/// Attaches the operation name to an `io::Error`, keeping its raw OS error.
pub trait Context<T> {
    fn ctx(self, what: &'static str) -> Result<T, FsError>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: &'static str) -> Result<T, FsError> {
        self.map_err(|e| FsError::new(e.raw_os_error().unwrap_or(libc::EIO), what))
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// Turns a libc return value into an io::Result, reading errno on failure.
pub fn cvt<T: PartialOrd + Default>(rc: T) -> io::Result<T> {
    if rc < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
