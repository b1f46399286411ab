//! What a user can ask of the fault engine, as data: the operations rules match, crash
//! point and fault rule specifications with their strict validation, and errno names.
//! Shared by the daemon, the control protocol and `lossctl`; what the engine reports back
//! is in `report` (which depends on this module, not the other way round); the engine,
//! [`crate::faults`], uses both.

pub mod glob;

use self::glob::Glob;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// A filesystem operation, as fault rules and crash points name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Lookup,
    Getattr,
    /// setattr without a size: chmod, chown, utimens.
    Setattr,
    /// setattr with a size: truncate(2), ftruncate(2).
    Truncate,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Create,
    Read,
    Write,
    Flush,
    Fsync,
    Fdatasync,
    Opendir,
    Readdir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Fallocate,
    Lseek,
    CopyFileRange,
}

impl Op {
    pub const ALL: [Op; 30] = [
        Op::Lookup,
        Op::Getattr,
        Op::Setattr,
        Op::Truncate,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Create,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Fsync,
        Op::Fdatasync,
        Op::Opendir,
        Op::Readdir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Truncate => "truncate",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Create => "create",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Fsync => "fsync",
            Op::Fdatasync => "fdatasync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
        }
    }

    pub fn parse(s: &str) -> Result<Op, String> {
        Op::ALL.into_iter().find(|o| o.name() == s).ok_or_else(|| {
            format!(
                "unknown operation {:?} (one of: {})",
                s,
                Op::ALL.map(Op::name).join(", ")
            )
        })
    }

    /// The operations whose success makes data durable: the ones a lie can fake.
    pub fn is_sync(self) -> bool {
        matches!(self, Op::Fsync | Op::Fdatasync | Op::Fsyncdir)
    }
}

/// Errno names a rule may inject.  ENOSYS is not among them: the kernel would stop sending
/// that operation for the rest of the mount (and treat fsync as always successful).
const ERRNOS: [(&str, i32); 27] = [
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("ENXIO", libc::ENXIO),
    ("EBADF", libc::EBADF),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EINVAL", libc::EINVAL),
    ("ENFILE", libc::ENFILE),
    ("EMFILE", libc::EMFILE),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("EROFS", libc::EROFS),
    ("EMLINK", libc::EMLINK),
    ("ENAMETOOLONG", libc::ENAMETOOLONG),
    ("ENOTEMPTY", libc::ENOTEMPTY),
    ("EOVERFLOW", libc::EOVERFLOW),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ESTALE", libc::ESTALE),
    ("EDQUOT", libc::EDQUOT),
];

/// The number of an errno name (`EIO`, case-insensitive).
pub fn errno_value(name: &str) -> Result<i32, String> {
    let up = name.to_ascii_uppercase();
    ERRNOS
        .iter()
        .find(|(n, _)| *n == up)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            format!(
                "unknown or unsupported errno {:?} (one of: {})",
                name,
                ERRNOS.map(|(n, _)| n).join(", ")
            )
        })
}

/// Errors of a failed writeback: an fsync failing with one of them loses the file's
/// unsynced data under the default `fsync_error=drop`.
pub fn is_writeback_error(errno: i32) -> bool {
    matches!(errno, libc::EIO | libc::ENOSPC | libc::EDQUOT)
}

/// Longest injected delay (one hour): a typo must not wedge a request for days.
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// Whether a crash point cuts before the operation is applied or after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    #[default]
    Before,
    After,
}

fn one() -> u64 {
    1
}

/// `lossctl arm powercut --op OP [--path GLOB] [--nth N] [--before|--after]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashSpec {
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default = "one")]
    pub nth: u64,
    #[serde(default)]
    pub when: When,
}

impl CrashSpec {
    /// Checks the values; returns the compiled path pattern.
    pub fn check(&self) -> Result<Option<Glob>, String> {
        if self.nth == 0 {
            return Err("nth must be at least 1 (the first match is 1)".into());
        }
        self.path.as_deref().map(Glob::new).transpose()
    }
}

/// `lossctl fault add`: which operations, what to do to them, and when.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub op: Option<Op>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Fail with this errno (a name such as `EIO`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    /// Delay the operation by this many milliseconds, then do it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// fsync, fdatasync or fsyncdir only: answer success and make nothing durable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lie: bool,
    /// Fire from the Nth match on (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nth: Option<u64>,
    /// Fire on each match with this probability, drawn from a generator seeded with `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Fire at most this many times (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

// NaN is refused by `check`, so equality is an equivalence on every stored spec.
impl Eq for FaultSpec {}

/// What a fault rule does to an operation it fires on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    Errno(i32),
    DelayMs(u64),
    Lie,
}

impl FaultSpec {
    /// Checks the values: an operation, exactly one action that fits it, nth xor
    /// probability (with a seed), counts at least 1.  Returns the action and the pattern.
    pub fn check(&self) -> Result<(Op, FaultAction, Option<Glob>), String> {
        let op = self.op.ok_or("a fault needs an operation (op)")?;
        let actions = [self.errno.is_some(), self.delay_ms.is_some(), self.lie]
            .iter()
            .filter(|&&b| b)
            .count();
        if actions != 1 {
            return Err("a fault needs exactly one of errno, delay or lie".into());
        }
        let action = if let Some(e) = &self.errno {
            FaultAction::Errno(errno_value(e)?)
        } else if let Some(ms) = self.delay_ms {
            if ms == 0 || ms > MAX_DELAY_MS {
                return Err(format!(
                    "delay must be from 1 ms to {MAX_DELAY_MS} ms, got {ms} ms"
                ));
            }
            FaultAction::DelayMs(ms)
        } else {
            if !op.is_sync() {
                return Err(format!(
                    "lie applies to fsync, fdatasync and fsyncdir only, not {}",
                    op.name()
                ));
            }
            FaultAction::Lie
        };
        if self.nth == Some(0) {
            return Err("nth must be at least 1 (the first match is 1)".into());
        }
        if self.count == Some(0) {
            return Err("count must be at least 1".into());
        }
        match (self.probability, self.seed) {
            (Some(p), Some(_)) => {
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("probability must be from 0 to 1, got {p}"));
                }
                if self.nth.is_some() {
                    return Err("give either nth or probability, not both".into());
                }
            }
            (Some(_), None) => {
                return Err("a probability needs a seed, so that runs can be replayed".into())
            }
            (None, Some(_)) => return Err("a seed goes with a probability".into()),
            (None, None) => {}
        }
        let glob = self.path.as_deref().map(Glob::new).transpose()?;
        Ok((op, action, glob))
    }
}

pub(crate) fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

pub(crate) fn path_text(p: &Option<String>) -> String {
    match p {
        Some(p) => format!(" on {p:?}"),
        None => String::new(),
    }
}

impl FaultSpec {
    /// One line: `write on "wal*": errno EIO, from the 3rd match, at most 1 time`.
    pub fn to_text(&self) -> String {
        let op = self.op.map(Op::name).unwrap_or("?");
        let mut s = format!("{op}{}: ", path_text(&self.path));
        if let Some(e) = &self.errno {
            let _ = write!(s, "errno {e}");
        } else if let Some(ms) = self.delay_ms {
            let _ = write!(s, "delay {ms} ms");
        } else if self.lie {
            s.push_str("lie (success, nothing made durable)");
        }
        if let (Some(p), Some(seed)) = (self.probability, self.seed) {
            let _ = write!(s, ", probability {p} (seed {seed})");
        } else if let Some(n) = self.nth.filter(|&n| n > 1) {
            let _ = write!(s, ", from the {} match", ordinal(n));
        }
        if let Some(c) = self.count {
            let _ = write!(s, ", at most {c} times");
        }
        s
    }
}

/// A control request to the fault engine (the commands `arm`, `disarm`, `fault_add`,
/// `fault_list`, `fault_clear`, `disk_full` of the control protocol, whose wire form is in
/// `control::protocol`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultCommand {
    Arm(CrashSpec),
    Disarm,
    Add(FaultSpec),
    List,
    /// One rule by id, or all.
    Clear(Option<u64>),
    /// Disk-full mode with this limit in bytes, or off.
    DiskFull(Option<u64>),
}
