//! The one error type of lossfs: the errno a program (or a control client) is answered
//! with, what was being done, to which inode or path, the error it came from, and the level
//! a failure is logged at.
//!
//! Every layer below the FUSE adapter that still speaks `io::Result` (journal, namespace,
//! control socket) carries an [`FsError`] inside its `io::Error` (see
//! `From<FsError> for io::Error`), so an errno the OS gave deep down (ENOSPC from the journal's
//! own disk, EDQUOT, EIO) reaches the program unchanged, with every context on the way.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use tracing::Level;

/// An operation's failure.  `errno` goes back to the program; the rest goes to the log.
#[derive(Debug)]
pub struct FsError {
    pub errno: i32,
    /// What was being done ("journal write", "opening journal log"), or what went wrong.
    /// Borrowed on the request path, so building an expected error allocates nothing.
    what: Cow<'static, str>,
    ino: Option<u64>,
    path: Option<PathBuf>,
    /// The error this one comes from, with its own context if it had any.
    source: Option<io::Error>,
    level: Level,
    /// A message written for people ([`FsError::msg`]): shown without the errno's text.
    complete: bool,
}

/// Errors a program provokes on its own (no such file, exists, not empty...) are normal
/// traffic, not something to warn about.
fn expected(errno: i32) -> bool {
    matches!(
        errno,
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

fn level_of(errno: i32) -> Level {
    if expected(errno) {
        Level::DEBUG
    } else {
        Level::WARN
    }
}

/// The errno an `io::Error` stands for: its raw OS error, the errno of an [`FsError`] it
/// carries, or the nearest errno of its kind (EIO when there is none).
pub fn errno_of(e: &io::Error) -> i32 {
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    if let Some(inner) = e.get_ref().and_then(|r| r.downcast_ref::<FsError>()) {
        return inner.errno;
    }
    match e.kind() {
        io::ErrorKind::NotFound => libc::ENOENT,
        io::ErrorKind::PermissionDenied => libc::EACCES,
        io::ErrorKind::AlreadyExists => libc::EEXIST,
        io::ErrorKind::WouldBlock => libc::EAGAIN,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        io::ErrorKind::Interrupted => libc::EINTR,
        io::ErrorKind::OutOfMemory => libc::ENOMEM,
        io::ErrorKind::Unsupported => libc::EOPNOTSUPP,
        io::ErrorKind::AddrInUse => libc::EADDRINUSE,
        io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        _ => libc::EIO,
    }
}

impl FsError {
    /// An error of our own making (no source), e.g. a refused name.
    pub fn new(errno: i32, what: &'static str) -> FsError {
        FsError {
            errno,
            what: Cow::Borrowed(what),
            ino: None,
            path: None,
            source: None,
            level: level_of(errno),
            complete: false,
        }
    }

    /// An error whose message, built at run time, says all a person needs (a refused
    /// control request, a timeout): shown without the errno's text.
    pub fn msg(errno: i32, what: impl Into<String>) -> FsError {
        FsError {
            what: Cow::Owned(what.into()),
            complete: true,
            ..FsError::new(errno, "")
        }
    }

    /// The inode the failed operation was about.
    pub fn ino(mut self, ino: u64) -> FsError {
        self.ino = Some(ino);
        self
    }

    /// The file the failed operation was about.
    pub fn path(mut self, path: impl Into<PathBuf>) -> FsError {
        self.path = Some(path.into());
        self
    }

    /// Logs this error at `level` instead of the errno's default (DEBUG for errors programs
    /// provoke themselves, WARN for the rest).
    pub fn at_level(mut self, level: Level) -> FsError {
        self.level = level;
        self
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// The error this one was made from, if any.
    pub fn cause(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }

    /// Adds what was being done.  An error that says nothing yet takes it as its own; one
    /// that already has context becomes the source of a new one, with the same errno.
    pub fn context(mut self, what: impl Into<Cow<'static, str>>) -> FsError {
        let what = what.into();
        if self.what.is_empty() && self.ino.is_none() && self.path.is_none() {
            self.what = what;
            return self;
        }
        let (errno, level) = (self.errno, self.level);
        FsError {
            errno,
            what,
            ino: None,
            path: None,
            source: Some(self.into()),
            level,
            complete: false,
        }
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = !self.what.is_empty();
        f.write_str(&self.what)?;
        if let Some(p) = &self.path {
            write!(f, "{}{}", if said { " " } else { "" }, p.display())?;
            said = true;
        }
        if let Some(ino) = self.ino {
            write!(f, "{}(inode {ino})", if said { " " } else { "" })?;
            said = true;
        }
        match &self.source {
            Some(s) if said => write!(f, ": {s}"),
            Some(s) => write!(f, "{s}"),
            None if self.complete => Ok(()),
            None if said => write!(f, ": {}", io::Error::from_raw_os_error(self.errno)),
            None => write!(f, "{}", io::Error::from_raw_os_error(self.errno)),
        }
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<io::Error> for FsError {
    /// Keeps the raw OS errno; an `io::Error` that carries an `FsError` gives it back whole.
    fn from(e: io::Error) -> FsError {
        match e.downcast::<FsError>() {
            Ok(inner) => inner,
            Err(e) => {
                let errno = errno_of(&e);
                FsError {
                    source: Some(e),
                    ..FsError::new(errno, "")
                }
            }
        }
    }
}

impl From<nix::errno::Errno> for FsError {
    fn from(e: nix::errno::Errno) -> FsError {
        io::Error::from(e).into()
    }
}

impl From<FsError> for io::Error {
    /// An `io::Error` of the errno's kind carrying the whole error: [`errno_of`] and
    /// `From<io::Error> for FsError` find it again.
    fn from(e: FsError) -> io::Error {
        let kind = io::Error::from_raw_os_error(e.errno).kind();
        io::Error::new(kind, e)
    }
}

/// `tracing::event!` at a level known only at run time (the macro wants a constant), such
/// as [`FsError::level`].
macro_rules! event_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            ::tracing::Level::ERROR => ::tracing::event!(::tracing::Level::ERROR, $($rest)+),
            ::tracing::Level::WARN => ::tracing::event!(::tracing::Level::WARN, $($rest)+),
            ::tracing::Level::INFO => ::tracing::event!(::tracing::Level::INFO, $($rest)+),
            ::tracing::Level::DEBUG => ::tracing::event!(::tracing::Level::DEBUG, $($rest)+),
            _ => ::tracing::event!(::tracing::Level::TRACE, $($rest)+),
        }
    };
}
pub(crate) use event_at;

/// Attaches what was being done to a failed result, keeping its errno.  The context is
/// built only when there is an error, so the success path pays nothing.
pub trait Context<T> {
    fn ctx(self, what: &'static str) -> FsResult<T>;
    /// What was being done, to which file (the path is copied only on failure).
    fn ctx_path(self, what: &'static str, path: &Path) -> FsResult<T>;
    /// What was being done, to which inode.
    fn ctx_ino(self, what: &'static str, ino: u64) -> FsResult<T>;
    /// Context with details (sizes, ranges, names) formatted only on failure.
    fn with_ctx(self, what: impl FnOnce() -> String) -> FsResult<T>;
}

impl<T, E: Into<FsError>> Context<T> for Result<T, E> {
    fn ctx(self, what: &'static str) -> FsResult<T> {
        self.map_err(|e| e.into().context(Cow::Borrowed(what)))
    }

    fn ctx_path(self, what: &'static str, path: &Path) -> FsResult<T> {
        self.map_err(|e| {
            let mut e = e.into().context(Cow::Borrowed(what));
            e.path = Some(path.to_path_buf());
            e
        })
    }

    fn ctx_ino(self, what: &'static str, ino: u64) -> FsResult<T> {
        self.map_err(|e| {
            let mut e = e.into().context(Cow::Borrowed(what));
            e.ino = Some(ino);
            e
        })
    }

    fn with_ctx(self, what: impl FnOnce() -> String) -> FsResult<T> {
        self.map_err(|e| e.into().context(Cow::Owned(what())))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn the_os_errno_survives_every_layer_of_context() {
        for errno in [libc::ENOSPC, libc::EDQUOT, libc::EIO, libc::ESTALE] {
            // A journal layer (io::Result) adds context, the file system another.
            let journal: io::Result<()> = os(errno)
                .ctx_path("writing journal log", Path::new("/state/journal"))
                .map_err(io::Error::from);
            let e = journal.as_ref().unwrap_err();
            assert_eq!(errno_of(e), errno);
            assert_eq!(e.kind(), io::Error::from_raw_os_error(errno).kind());
            let fs = journal.ctx_ino("journal write", 7).unwrap_err();
            assert_eq!(fs.errno, errno);
            let text = fs.to_string();
            assert!(
                text.starts_with("journal write (inode 7): writing journal log /state/journal: "),
                "{text}"
            );
            assert!(
                text.ends_with(&io::Error::from_raw_os_error(errno).to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn nix_and_plain_io_errors_convert_by_errno_or_kind() {
        let e: FsResult<()> = Err(nix::errno::Errno::EDQUOT).ctx("fsync");
        assert_eq!(e.unwrap_err().errno, libc::EDQUOT);
        let plain = io::Error::new(io::ErrorKind::NotFound, "gone");
        assert_eq!(FsError::from(plain).errno, libc::ENOENT);
        let other = io::Error::other("something odd");
        assert_eq!(FsError::from(other).errno, libc::EIO);
    }

    #[test]
    fn context_is_built_only_on_failure_and_levels_follow_the_errno() {
        let ok: io::Result<u32> = Ok(3);
        let v = ok.with_ctx(|| panic!("context built on success")).unwrap();
        assert_eq!(v, 3);
        assert_eq!(FsError::new(libc::ENOENT, "lookup").level(), Level::DEBUG);
        assert_eq!(FsError::new(libc::ENOSPC, "write").level(), Level::WARN);
        let e = FsError::new(libc::EIO, "old handle").at_level(Level::INFO);
        let wrapped: FsResult<()> = Err(e);
        assert_eq!(wrapped.ctx("read").unwrap_err().level(), Level::INFO);
    }

    #[test]
    fn display_names_the_operation_and_its_subject() {
        let e = FsError::new(libc::EINVAL, "name is not one path component");
        assert_eq!(
            e.to_string(),
            format!(
                "name is not one path component: {}",
                io::Error::from_raw_os_error(libc::EINVAL)
            )
        );
        let e = FsError::new(libc::ENOENT, "no such rule").ino(3);
        assert!(e.to_string().starts_with("no such rule (inode 3): "), "{e}");
        let e = FsError::msg(libc::EINVAL, "--keep random needs --seed");
        assert_eq!(e.to_string(), "--keep random needs --seed");
        let e = e.context("powercut");
        assert_eq!(e.to_string(), "powercut: --keep random needs --seed");
        assert_eq!(e.errno, libc::EINVAL);
    }
}
