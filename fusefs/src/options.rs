//! The `lossfs BACKING MOUNTPOINT [-o OPTIONS] [-f]` command line as mount(8), mount.fuse3
//! and /etc/fstab hand it over: parsing the `-o` option lists, and the checks on the two
//! paths and on the FUSE setup that must pass before anything is mounted.

use crate::faults::FsyncError;
use crate::namespace::Model;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a mount does with an unclean journal left by a daemon that died.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recover {
    /// Roll the unsynced changes back, as a power cut would have.
    #[default]
    Rollback,
    /// Keep the files as they are and discard the journal.
    Keep,
}

/// Which CPU serves a program that fsyncs alone (see `cpupin`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncCpu {
    /// The CPU that takes the backing disk's completion interrupts, when there is one,
    /// followed when the interrupt moves.
    Auto,
    /// Wherever the scheduler puts it.  The default: the gain of `auto` depends on one
    /// machine's interrupt layout, and a wrong pin costs more than none.
    #[default]
    Off,
    /// This CPU.
    Cpu(usize),
}

/// `passthrough=off|ro`: kernel read passthrough (see `iomode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Passthrough {
    /// Every read reaches the daemon.
    #[default]
    Off,
    /// Opens for reading only read the backing file in the kernel, when no handle of the
    /// file is open for writing.
    Ro,
}

/// Where written data waits before it reaches the daemon (`cache=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cache {
    /// Every write(2) is a WRITE request, answered once the backing file has it.
    #[default]
    Writethrough,
    /// The kernel's writeback cache: writes fill the page cache and reach the daemon as
    /// page writebacks (at the latest at fsync, close, or the flush of a power cut).
    Writeback,
}

/// What a `sync_file_range(WRITE|WAIT_AFTER)` does to the range (`sync_file_range=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncFileRange {
    /// Nothing: the range reached the device's volatile cache only (no flush), so a cut
    /// rolls it back.  Nothing is traced.
    #[default]
    Volatile,
    /// The overwritten pages of the range become durable (a disk whose cache is stable),
    /// seen through the kernel's syscall tracepoints.
    Stable,
}

/// Everything `-o` and `-f` can set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub allow_other: bool,
    /// `state_dir=PATH`: where the undo journal lives.
    pub state_dir: Option<PathBuf>,
    /// `control=PATH`: the control socket.
    pub control: Option<PathBuf>,
    /// `log=LEVEL`: one of error, warn, info, debug, trace.
    pub log: Option<String>,
    /// `log_file=PATH`: the daemon's log (default: stderr, and `STATE_DIR/lossfs.log` once a
    /// daemon without `-f` has detached).
    pub log_file: Option<PathBuf>,
    /// `recover=rollback|keep`.
    pub recover: Recover,
    /// `threads=N`: FUSE worker threads, 1..=64.
    pub threads: Option<usize>,
    /// `lazyfs_fifo=PATH`: a LazyFS-style command FIFO.
    pub lazyfs_fifo: Option<PathBuf>,
    /// `read_ahead_kb=N`: the mount's kernel readahead window (None: the default,
    /// [`DEFAULT_READ_AHEAD_KB`]; 0 leaves the kernel's own).
    pub read_ahead_kb: Option<u32>,
    /// `dirty_ratio=N`: with `cache=writeback`, the percent of the system's dirty-page
    /// limit the mount may hold (None: [`DEFAULT_DIRTY_RATIO`]).
    pub dirty_ratio: Option<u32>,
    /// `writebehind=off|N`: start the disk writeback of large sequential writes every so
    /// many MiB (None: off).
    pub writebehind_mib: Option<u64>,
    /// `metadata=durable|journal|posix`: the namespace durability model.
    pub metadata: Model,
    /// `commit=SECONDS`: the journal model's periodic commit (`None`: the default, 5 s;
    /// 0 = never).
    pub commit: Option<u64>,
    /// `writeback=SECONDS`: unsynced data older than this becomes durable on its own.
    pub writeback: Option<u64>,
    /// `fsync_error=drop|retry`: what an injected fsync error does to unsynced data.
    pub fsync_error: FsyncError,
    /// `cache=writethrough|writeback`: the kernel's page cache for written data.
    pub cache: Cache,
    /// `sync_cpu=auto|off|N`.
    pub sync_cpu: SyncCpu,
    /// `sync_file_range=volatile|stable`.
    pub sync_file_range: SyncFileRange,
    /// `passthrough=off|ro`.
    pub passthrough: Passthrough,
    pub ro: bool,
    pub noatime: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    /// Set by `-f` (by the caller) and by the option `foreground`.
    pub foreground: bool,
}

/// Default of `commit=SECONDS`, as ext4's.
pub const DEFAULT_COMMIT_SECS: u64 = 5;

impl MountOptions {
    /// The journal model's commit interval; zero means never.
    pub fn commit_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.commit.unwrap_or(DEFAULT_COMMIT_SECS))
    }
}

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
const MAX_THREADS: usize = 64;
/// CPUs a `cpu_set_t` can name.
const MAX_CPU: usize = 1023;
/// One FUSE read request can carry 1 MiB (max_pages follows max_write); a window this size
/// lets sequential reads use whole requests instead of the kernel's 128 KiB default.
pub const DEFAULT_READ_AHEAD_KB: u32 = 1024;
const MAX_READ_AHEAD_KB: u32 = 65536;

/// `cache=writeback`'s dirty-page share when `dirty_ratio` is not given: all of the
/// system's limit, as the kernel lets a disk hold (it gives a FUSE mount 1%).
pub const DEFAULT_DIRTY_RATIO: u32 = 100;
/// `writebehind`'s largest chunk: past a GiB it would start nothing before most fsyncs.
const MAX_WRITEBEHIND_MIB: u64 = 1024;

/// A day: past that, writeback is as good as off (which leaving the option out says).
const MAX_WRITEBACK: u64 = 86_400;

/// Options mount(8) and fstab pass to every helper that mean nothing to lossfs.  `fsname`
/// and `subtype` are dropped too: lossfs names its mounts itself.
const IGNORED_FLAGS: [&str; 16] = [
    "rw", "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "nofail", "_netdev",
    "dev", "suid", "exec", "atime", "async", "relatime",
];
const IGNORED_WITH_VALUE: [&str; 3] = ["fsname", "subtype", "comment"];

/// Every lossfs mount lets the kernel check permissions from the file modes: the daemon
/// acts as root on the backing directory, so without the kernel's check a program could
/// do there what the backing file system would refuse it.  The option is accepted, as
/// fstab lines carry it, and changes nothing.
const ALWAYS_ON: &str = "default_permissions";
/// Names that would turn the kernel's check off; refused rather than ignored.
const PERMISSIONS_OFF: [&str; 3] = [
    "nodefault_permissions",
    "no_default_permissions",
    "default_permissions_off",
];

/// One `-o` option as `lossfs --help` and README.md's options table show it.
pub struct OptionDoc {
    pub name: &'static str,
    /// What follows `=`: the values (`a|b`) or a placeholder (PATH, N, SECONDS, LEVEL);
    /// empty for a flag.
    pub values: &'static str,
    pub meaning: &'static str,
}

const fn doc(name: &'static str, values: &'static str, meaning: &'static str) -> OptionDoc {
    OptionDoc {
        name,
        values,
        meaning,
    }
}

/// Every option the parser takes, one row each (the help is made from it; a unit test
/// checks it against the parser and README.md).
#[rustfmt::skip]
pub const OPTION_DOCS: &[OptionDoc] = &[
    doc("allow_other", "", "let users other than the mounting one use the mount"),
    doc("default_permissions", "", "always on (the kernel checks permissions from the file modes); cannot be turned off"),
    doc("state_dir", "PATH", "undo journal directory (default BACKING/.lossfs, hidden from the mount)"),
    doc("control", "PATH", "control socket (default /run/lossfs/<escaped mount point>.sock)"),
    doc("log", "LEVEL", "error|warn|info|debug|trace (default warn; also env LOSSFS_LOG)"),
    doc("log_file", "PATH", "append the log to PATH (default: stderr; once a daemon without -f has mounted, STATE_DIR/lossfs.log)"),
    doc("recover", "rollback|keep", "after the previous daemon was killed: undo its unsynced data (rollback, default: the same as a power cut) or make it durable (keep)"),
    doc("threads", "N", "FUSE worker threads, 1 to 64 (default 8)"),
    doc("sync_cpu", "off|auto|N", "the CPU serving a program that fsyncs alone: off (default) never pin, auto the backing disk's interrupt CPU when it has a single queue (followed when it moves), N that CPU"),
    doc("passthrough", "off|ro", "ro: a file opened for reading only is read by the kernel straight from BACKING while no handle of it is open for writing (fault rules and crash points on read do not see those reads); off (default): every read reaches lossfs"),
    doc("read_ahead_kb", "N", "the mount's kernel readahead window in KiB (default 1024; 0 keeps the kernel's own)"),
    doc("writebehind", "off|N", "start the backing disk's writeback of a file's large sequential writes (requests of 128 KiB or more) each time N MiB more are written, so that a later fsync finds little left; durability is unchanged (default off)"),
    doc("dirty_ratio", "N", "with cache=writeback: the percent of the system's dirty-page limit the mount's cache may hold (default 100, as a disk; the kernel's own for FUSE is 1)"),
    doc("metadata", "durable|journal|posix", "namespace durability at a power cut: durable (default: creates, renames, unlinks persist at once), journal (persist in order, at any fsync or every commit=SECONDS), posix (persist when the parent directory is fsynced)"),
    doc("commit", "SECONDS", "metadata=journal: periodic commit (default 5, 0 = never)"),
    doc("writeback", "SECONDS", "unsynced data first changed more than SECONDS ago becomes durable on its own, like the kernel's flusher (default off)"),
    doc("cache", "writethrough|writeback", "writethrough (default): every write(2) reaches the daemon at once; writeback: the kernel's writeback cache, writes reach it as page writebacks (at fsync, close, memory pressure or the cut's flush), with the same durability and power cuts"),
    doc("sync_file_range", "volatile|stable", "volatile (default): sync_file_range makes nothing durable (no cache flush); stable: its write-and-wait form makes the overwritten pages of its range durable (needs root and the kernel's syscall tracepoints)"),
    doc("fsync_error", "drop|retry", "after an injected fsync error: drop the file's unsynced data (default, as Linux) or keep it for a later fsync"),
    doc("lazyfs_fifo", "PATH", "LazyFS command FIFO: lazyfs::clear-cache (power cut, no kill), lazyfs::cache-checkpoint (sync), lazyfs::display-cache-usage, lazyfs::unsynced-data-report (logged at level info)"),
    doc("foreground", "", "stay in the foreground, as -f"),
    doc("ro", "", "as for mount(8)"),
    doc("noatime", "", "as for mount(8)"),
    doc("nosuid", "", "as for mount(8)"),
    doc("nodev", "", "as for mount(8)"),
    doc("noexec", "", "as for mount(8)"),
];

/// The `Options (-o):` part of `lossfs --help`, from [`OPTION_DOCS`].
pub fn options_help() -> String {
    const KEY: usize = 24;
    const WIDTH: usize = 92;
    let mut out = String::from("Options (-o):\n");
    for d in OPTION_DOCS {
        let key = if d.values.is_empty() {
            d.name.to_string()
        } else {
            format!("{}={}", d.name, d.values)
        };
        out.push_str("  ");
        out.push_str(&key);
        let mut col = 2 + key.len();
        if col + 1 > KEY {
            out.push('\n');
            col = 0;
        }
        for word in d.meaning.split(' ') {
            let start = if col <= KEY { KEY } else { col + 1 };
            if start > KEY && start + word.len() > WIDTH {
                out.push('\n');
                col = 0;
                continue_at(&mut out, &mut col, KEY, word);
            } else {
                continue_at(&mut out, &mut col, start, word);
            }
        }
        out.push('\n');
    }
    out
}

/// Writes `word` at column `at` of the current line (padding from `col`).
fn continue_at(out: &mut String, col: &mut usize, at: usize, word: &str) {
    out.extend(std::iter::repeat_n(' ', at.saturating_sub(*col)));
    out.push_str(word);
    *col = at.max(*col) + word.len();
}

/// Option values the kernel will not combine with read passthrough: it silently turns
/// passthrough off when the writeback cache is asked for too (process_init_reply), and
/// every passthrough open would then fail.
const PASSTHROUGH_CONFLICTS: [(&str, &str); 1] = [("cache", "writeback")];

/// Refuses `passthrough=ro` together with an option in [`PASSTHROUGH_CONFLICTS`] (the last
/// value of each option counts, as for the parser).
fn check_passthrough_conflicts<'a>(items: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut last: Vec<(&str, &str)> = Vec::new();
    for item in items {
        if let Some((n, v)) = item.split_once('=') {
            last.retain(|(name, _)| *name != n);
            last.push((n, v));
        }
    }
    if !last.contains(&("passthrough", "ro")) {
        return Ok(());
    }
    match PASSTHROUGH_CONFLICTS.iter().find(|c| last.contains(c)) {
        Some((n, v)) => Err(format!(
            "mount options passthrough=ro and {n}={v} cannot be combined: the kernel does not \
             pass reads through on a mount with its writeback cache; choose one"
        )),
        None => Ok(()),
    }
}

/// The value of a two-way option `name=v` as the choice it names, or the error that lists
/// both.
fn one_of<T: Copy>(name: &str, v: &str, choices: [(&str, T); 2]) -> Result<T, String> {
    let [(a, _), (b, _)] = choices;
    choices
        .iter()
        .find(|(n, _)| *n == v)
        .map(|&(_, t)| t)
        .ok_or_else(|| format!("mount option {name}={v}: must be {a} or {b}"))
}

/// Parses `-o` arguments; each element is one comma separated list.
pub fn parse_mount_options(opts: &[String]) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    check_passthrough_conflicts(opts.iter().flat_map(|list| list.split(',')))?;
    for item in opts.iter().flat_map(|list| list.split(',')) {
        if item.is_empty() {
            continue;
        }
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (item, None),
        };
        if name.starts_with("x-") || IGNORED_WITH_VALUE.contains(&name) {
            continue;
        }
        if IGNORED_FLAGS.contains(&name) {
            no_value(name, value)?;
            continue;
        }
        if name == ALWAYS_ON {
            if let Some(v) = value {
                return Err(permissions_off(&format!("{name}={v}")));
            }
            continue;
        }
        if PERMISSIONS_OFF.contains(&name) {
            return Err(permissions_off(item));
        }
        let flag = match name {
            "allow_other" => Some(&mut o.allow_other),
            "ro" => Some(&mut o.ro),
            "noatime" => Some(&mut o.noatime),
            "nosuid" => Some(&mut o.nosuid),
            "nodev" => Some(&mut o.nodev),
            "noexec" => Some(&mut o.noexec),
            "foreground" => Some(&mut o.foreground),
            _ => None,
        };
        if let Some(flag) = flag {
            no_value(name, value)?;
            *flag = true;
            continue;
        }
        let value = value.ok_or_else(|| format!("mount option {name} needs a value ({name}=...)"));
        match name {
            "state_dir" => o.state_dir = Some(path_value(name, value?)?),
            "control" => o.control = Some(path_value(name, value?)?),
            "lazyfs_fifo" => o.lazyfs_fifo = Some(path_value(name, value?)?),
            "log_file" => o.log_file = Some(path_value(name, value?)?),
            "log" => {
                let v = value?;
                if !LOG_LEVELS.contains(&v) {
                    return Err(format!(
                        "mount option log={v}: the level must be one of {}",
                        LOG_LEVELS.join(", ")
                    ));
                }
                o.log = Some(v.to_string());
            }
            "cache" => {
                o.cache = one_of(
                    name,
                    value?,
                    [
                        ("writethrough", Cache::Writethrough),
                        ("writeback", Cache::Writeback),
                    ],
                )?
            }
            "sync_file_range" => {
                o.sync_file_range = one_of(
                    name,
                    value?,
                    [
                        ("volatile", SyncFileRange::Volatile),
                        ("stable", SyncFileRange::Stable),
                    ],
                )?
            }
            "fsync_error" => {
                o.fsync_error = one_of(
                    name,
                    value?,
                    [("drop", FsyncError::Drop), ("retry", FsyncError::Retry)],
                )?
            }
            "recover" => {
                o.recover = one_of(
                    name,
                    value?,
                    [("rollback", Recover::Rollback), ("keep", Recover::Keep)],
                )?
            }
            "metadata" => {
                let v = value?;
                o.metadata = Model::parse(v).ok_or_else(|| {
                    format!("mount option metadata={v}: must be durable, journal or posix")
                })?;
            }
            "commit" => {
                let v = value?;
                match v.parse::<u64>() {
                    Ok(n) if n <= 86_400 => o.commit = Some(n),
                    _ => {
                        return Err(format!(
                            "mount option commit={v}: must be a number of seconds from 0 \
                             (never) to 86400"
                        ))
                    }
                }
            }
            "writeback" => {
                let v = value?;
                match v.parse::<u64>() {
                    Ok(n) if (1..=MAX_WRITEBACK).contains(&n) => o.writeback = Some(n),
                    _ => {
                        return Err(format!(
                            "mount option writeback={v}: must be a number of seconds from 1 to {MAX_WRITEBACK}"
                        ))
                    }
                }
            }
            "passthrough" => {
                o.passthrough = one_of(
                    name,
                    value?,
                    [("off", Passthrough::Off), ("ro", Passthrough::Ro)],
                )?
            }
            "sync_cpu" => {
                let v = value?;
                o.sync_cpu = match v {
                    "auto" => SyncCpu::Auto,
                    "off" => SyncCpu::Off,
                    n => match n.parse::<usize>() {
                        Ok(n) if n <= MAX_CPU => SyncCpu::Cpu(n),
                        _ => {
                            return Err(format!(
                                "mount option sync_cpu={v}: must be auto, off or a CPU number from 0 to {MAX_CPU}"
                            ))
                        }
                    },
                };
            }
            "threads" => {
                let v = value?;
                match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_THREADS).contains(&n) => o.threads = Some(n),
                    _ => {
                        return Err(format!(
                            "mount option threads={v}: must be a number from 1 to {MAX_THREADS}"
                        ))
                    }
                }
            }
            "read_ahead_kb" => {
                let v = value?;
                match v.parse::<u32>() {
                    Ok(n) if n <= MAX_READ_AHEAD_KB => o.read_ahead_kb = Some(n),
                    _ => {
                        return Err(format!(
                            "mount option read_ahead_kb={v}: must be a number of KiB from 0 \
                             (the kernel's default) to {MAX_READ_AHEAD_KB}"
                        ))
                    }
                }
            }
            "writebehind" => {
                let v = value?;
                match v.parse::<u64>() {
                    _ if v == "off" => o.writebehind_mib = None,
                    Ok(n) if (1..=MAX_WRITEBEHIND_MIB).contains(&n) => o.writebehind_mib = Some(n),
                    _ => {
                        return Err(format!(
                            "mount option writebehind={v}: must be off or a number of MiB from 1 \
                             to {MAX_WRITEBEHIND_MIB}"
                        ))
                    }
                }
            }
            "dirty_ratio" => {
                let v = value?;
                match v.parse::<u32>() {
                    Ok(n) if (1..=100).contains(&n) => o.dirty_ratio = Some(n),
                    _ => {
                        return Err(format!(
                            "mount option dirty_ratio={v}: must be a percent from 1 to 100"
                        ))
                    }
                }
            }
            _ => return Err(format!("unknown mount option {name:?} (in {item:?})")),
        }
    }
    if o.dirty_ratio.is_some() && o.cache != Cache::Writeback {
        return Err(
            "mount option dirty_ratio needs cache=writeback: without the writeback cache the \
             mount holds no dirty pages"
                .into(),
        );
    }
    Ok(o)
}

fn permissions_off(item: &str) -> String {
    format!(
        "mount option {item}: lossfs always mounts with default_permissions (the kernel checks \
         permissions from the file modes and ACLs; the daemon acts as root and checks none \
         itself), and it cannot be turned off"
    )
}

fn no_value(name: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        None => Ok(()),
        Some(v) => Err(format!(
            "mount option {name} takes no value (got {name}={v})"
        )),
    }
}

fn path_value(name: &str, value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err(format!("mount option {name}= needs a path"));
    }
    Ok(PathBuf::from(value))
}

/// Checks and canonicalises the two paths; errors (as text a user can act on) for: BACKING
/// missing, BACKING not a directory, MOUNTPOINT missing, MOUNTPOINT not a directory, the two
/// the same, MOUNTPOINT inside BACKING, BACKING inside MOUNTPOINT; state_dir (if given) inside
/// MOUNTPOINT.
pub fn check_paths(
    backing: &Path,
    mountpoint: &Path,
    state_dir: Option<&Path>,
) -> Result<(PathBuf, PathBuf), String> {
    let backing_meta = dir_metadata("BACKING", backing)?;
    let mount_meta = dir_metadata("MOUNTPOINT", mountpoint)?;
    let b = fs::canonicalize(backing).map_err(|e| {
        format!(
            "BACKING {}: cannot resolve the path: {e}",
            backing.display()
        )
    })?;
    let m = fs::canonicalize(mountpoint).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            disconnected(mountpoint)
        } else {
            format!(
                "MOUNTPOINT {}: cannot resolve the path: {e}",
                mountpoint.display()
            )
        }
    })?;
    // Comparing (dev, ino) also catches one being a bind mount of the other.
    if b == m || (backing_meta.dev(), backing_meta.ino()) == (mount_meta.dev(), mount_meta.ino()) {
        return Err(format!(
            "BACKING {} and MOUNTPOINT {} are the same directory: mount lossfs on an empty \
             directory elsewhere",
            backing.display(),
            mountpoint.display()
        ));
    }
    if m.starts_with(&b) {
        return Err(format!(
            "MOUNTPOINT {} is inside BACKING {}: the mount would contain itself; choose a \
             mount point outside the backing directory",
            m.display(),
            b.display()
        ));
    }
    if b.starts_with(&m) {
        return Err(format!(
            "BACKING {} is inside MOUNTPOINT {}: the mount would hide it and lossfs would \
             serve itself; choose a backing directory outside the mount point",
            b.display(),
            m.display()
        ));
    }
    if let Some(state) = state_dir {
        let s = canonicalize_existing_prefix(state).map_err(|e| {
            format!(
                "state_dir {}: cannot resolve the path: {e}",
                state.display()
            )
        })?;
        if s.starts_with(&m) {
            return Err(format!(
                "state_dir {} is inside MOUNTPOINT {}: the journal must live outside the \
                 mount so it survives a power cut; choose another state_dir",
                s.display(),
                m.display()
            ));
        }
    }
    Ok((b, m))
}

fn disconnected(mountpoint: &Path) -> String {
    format!(
        "MOUNTPOINT {0} is a disconnected FUSE mount; run fusermount3 -u {0}",
        mountpoint.display()
    )
}

fn dir_metadata(role: &str, path: &Path) -> Result<fs::Metadata, String> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(m),
        Ok(_) => Err(format!("{role} {} is not a directory", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("{role} {} does not exist", path.display()))
        }
        Err(e) if role == "MOUNTPOINT" && e.raw_os_error() == Some(libc::ENOTCONN) => {
            Err(disconnected(path))
        }
        Err(e) => Err(format!("{role} {}: {e}", path.display())),
    }
}

/// Canonicalises a path that may not exist yet: its longest existing ancestor is resolved
/// and the rest appended as written.
fn canonicalize_existing_prefix(path: &Path) -> io::Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match fs::canonicalize(existing) {
            Ok(mut c) => {
                for part in rest.iter().rev() {
                    c.push(part);
                }
                return Ok(c);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match (existing.parent(), existing.file_name()) {
                    (Some(parent), Some(name)) => {
                        rest.push(name.to_os_string());
                        existing = parent;
                    }
                    // `..` or the root: nothing more to strip.
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// /dev/fuse present and a char device; fusermount3 on PATH (needed to unmount as a user and
/// by mount.fuse3); clear messages naming the package to install (fuse3).
pub fn check_fuse_available() -> Result<(), String> {
    // mount(8) runs helpers such as mount.fuse3 -> lossfs with no PATH at all; search the
    // system path then, as execvp(3) does.
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    check_fuse_at(Path::new("/dev/fuse"), Some(&path))
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn check_fuse_at(dev: &Path, path_var: Option<&OsStr>) -> Result<(), String> {
    match fs::metadata(dev) {
        Ok(m) if m.file_type().is_char_device() => {}
        Ok(_) => {
            return Err(format!(
                "{} is not a character device: recreate it with `mknod {} c 10 229` or reboot",
                dev.display(),
                dev.display()
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "{} does not exist: load the fuse kernel module (`modprobe fuse`; package \
                 fuse3 on Debian/Ubuntu), or in a container pass `--device /dev/fuse`",
                dev.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", dev.display())),
    }
    let found = path_var
        .map(|p| std::env::split_paths(p).any(|dir| is_executable(&dir.join("fusermount3"))))
        .unwrap_or(false);
    if !found {
        return Err(
            "fusermount3 not found on PATH: install the fuse3 package (`apt-get install fuse3`, \
             `dnf install fuse3`)"
                .to_string(),
        );
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    use crate::testdir::TempDir;

    #[test]
    fn dirty_ratio_is_a_percent_of_the_writeback_cache() {
        let o = parse_mount_options(&s(&["cache=writeback,dirty_ratio=20"])).unwrap();
        assert_eq!((o.cache, o.dirty_ratio), (Cache::Writeback, Some(20)));
        let o = parse_mount_options(&s(&["cache=writeback"])).unwrap();
        assert_eq!(o.dirty_ratio, None);
        for items in [
            &["dirty_ratio=20"][..],
            &["cache=writethrough", "dirty_ratio=5"],
        ] {
            let e = parse_mount_options(&s(items)).unwrap_err();
            assert!(
                e.contains("dirty_ratio needs cache=writeback"),
                "{items:?}: {e}"
            );
        }
    }

    #[test]
    fn passthrough_is_off_or_ro_and_refused_with_the_writeback_cache() {
        let o = parse_mount_options(&s(&["passthrough=ro"])).unwrap();
        assert_eq!(o.passthrough, Passthrough::Ro);
        let o = parse_mount_options(&s(&["passthrough=ro,passthrough=off"])).unwrap();
        assert_eq!(o.passthrough, Passthrough::Off);
        let e = parse_mount_options(&s(&["passthrough=rw"])).unwrap_err();
        assert!(e.contains("must be off or ro"), "{e}");
        let e = parse_mount_options(&s(&["passthrough=ro", "cache=writeback"])).unwrap_err();
        assert!(
            e.contains("passthrough=ro and cache=writeback cannot be combined"),
            "{e}"
        );
        let e = parse_mount_options(&s(&["cache=writeback,passthrough=ro"])).unwrap_err();
        assert!(e.contains("cannot be combined"), "{e}");
        // The last value counts.
        let r = parse_mount_options(&s(&["cache=writeback,passthrough=ro,passthrough=off"]));
        assert!(
            !matches!(&r, Err(e) if e.contains("cannot be combined")),
            "{r:?}"
        );
    }

    #[test]
    fn fstab_style_list_parses() {
        let o = parse_mount_options(&s(&[
            "rw,nofail,allow_other,state_dir=/var/lib/x=y,x-systemd.requires=foo",
        ]))
        .unwrap();
        assert_eq!(
            o,
            MountOptions {
                allow_other: true,
                state_dir: Some(PathBuf::from("/var/lib/x=y")),
                ..MountOptions::default()
            }
        );
        assert_eq!(o.recover, Recover::Rollback);
    }

    #[test]
    fn writebehind_is_a_number_of_mib_or_off() {
        let o = parse_mount_options(&s(&["writebehind=16"])).unwrap();
        assert_eq!(o.writebehind_mib, Some(16));
        let o = parse_mount_options(&s(&["writebehind=16,writebehind=off"])).unwrap();
        assert_eq!(o.writebehind_mib, None);
        assert_eq!(parse_mount_options(&s(&[])).unwrap().writebehind_mib, None);
    }

    #[test]
    fn every_option_sets_its_field() {
        let o = parse_mount_options(&s(&[
            "default_permissions,control=/run/l.sock,log=debug,log_file=/var/log/l.log",
            "recover=keep,threads=8,ro,noatime,nosuid,nodev,noexec,foreground",
            "lazyfs_fifo=/tmp/lazyfs.fifo,read_ahead_kb=4096,metadata=posix,commit=0",
            "writeback=30,writebehind=16",
            "fsync_error=retry,sync_cpu=3,passthrough=ro,cache=writethrough",
            "sync_file_range=stable",
        ]))
        .unwrap();
        assert_eq!(
            o,
            MountOptions {
                allow_other: false,
                state_dir: None,
                control: Some(PathBuf::from("/run/l.sock")),
                log: Some("debug".into()),
                log_file: Some(PathBuf::from("/var/log/l.log")),
                recover: Recover::Keep,
                threads: Some(8),
                lazyfs_fifo: Some(PathBuf::from("/tmp/lazyfs.fifo")),
                read_ahead_kb: Some(4096),
                dirty_ratio: None,
                writebehind_mib: Some(16),
                metadata: Model::Posix,
                commit: Some(0),
                writeback: Some(30),
                fsync_error: FsyncError::Retry,
                cache: Cache::Writethrough,
                sync_cpu: SyncCpu::Cpu(3),
                sync_file_range: SyncFileRange::Stable,
                passthrough: Passthrough::Ro,
                ro: true,
                noatime: true,
                nosuid: true,
                nodev: true,
                noexec: true,
                foreground: true,
            }
        );
        assert_eq!(
            parse_mount_options(&s(&["sync_cpu=0"])).unwrap().sync_cpu,
            SyncCpu::Cpu(0)
        );
        assert_eq!(
            parse_mount_options(&s(&["sync_cpu=off"])).unwrap().sync_cpu,
            SyncCpu::Off
        );
        assert_eq!(
            parse_mount_options(&s(&["sync_cpu=auto"]))
                .unwrap()
                .sync_cpu,
            SyncCpu::Auto
        );
        assert_eq!(parse_mount_options(&[]).unwrap().sync_cpu, SyncCpu::Off);
        assert_eq!(
            parse_mount_options(&s(&["sync_cpu=off,sync_cpu=auto"]))
                .unwrap()
                .sync_cpu,
            SyncCpu::Auto
        );
        assert_eq!(
            parse_mount_options(&s(&["fsync_error=drop"]))
                .unwrap()
                .fsync_error,
            FsyncError::Drop
        );
        assert!(parse_mount_options(&s(&["fsync_error=ignore"]))
            .unwrap_err()
            .contains("must be drop or retry"));
        assert_eq!(
            parse_mount_options(&s(&["recover=rollback,threads=1", "threads=64"]))
                .unwrap()
                .threads,
            Some(64)
        );
    }

    #[test]
    fn permission_checks_cannot_be_turned_off() {
        // Accepted (fstab lines carry it) and the same as leaving it out.
        assert_eq!(
            parse_mount_options(&s(&["allow_other,default_permissions"])).unwrap(),
            parse_mount_options(&s(&["allow_other"])).unwrap()
        );
        for off in [
            "nodefault_permissions",
            "no_default_permissions",
            "default_permissions_off",
            "default_permissions=no",
        ] {
            let err = parse_mount_options(&s(&["allow_other", off])).unwrap_err();
            assert!(
                err.contains(off) && err.contains("cannot be turned off"),
                "{off}: {err}"
            );
        }
    }

    #[test]
    fn helper_options_and_empty_items_are_ignored() {
        let o = parse_mount_options(&s(&[
            ",,defaults,auto,noauto,user,users,nouser,_netdev,dev,suid,exec,atime,async,",
            "fsname=foo,subtype=bar,x-gvfs-show,x-systemd.automount,,",
            "",
        ]))
        .unwrap();
        assert_eq!(o, MountOptions::default());
        assert_eq!(parse_mount_options(&[]).unwrap(), MountOptions::default());
    }

    #[test]
    fn unknown_options_and_bad_values_name_the_option() {
        let cases: &[(&str, &str)] = &[
            ("rw,bogus", "bogus"),
            ("sync", "sync"),
            ("log=loud", "log=loud"),
            ("log", "log"),
            ("recover=maybe", "recover=maybe"),
            ("threads=0", "threads=0"),
            ("threads=65", "threads=65"),
            ("threads=two", "threads=two"),
            ("sync_cpu=1024", "sync_cpu=1024"),
            ("sync_cpu=-1", "sync_cpu=-1"),
            ("sync_cpu=irq", "sync_cpu=irq"),
            ("sync_cpu", "sync_cpu"),
            ("read_ahead_kb=-1", "read_ahead_kb=-1"),
            ("read_ahead_kb=65537", "read_ahead_kb=65537"),
            ("cache=writeback,dirty_ratio=0", "dirty_ratio=0"),
            ("cache=writeback,dirty_ratio=101", "dirty_ratio=101"),
            ("cache=writeback,dirty_ratio", "dirty_ratio"),
            ("threads=", "threads="),
            ("writeback=0", "writeback=0"),
            ("writebehind=0", "writebehind=0"),
            ("writebehind=1025", "writebehind=1025"),
            ("writebehind=on", "writebehind=on"),
            ("writeback=1.5", "writeback=1.5"),
            ("writeback=86401", "writeback=86401"),
            ("writeback", "writeback"),
            ("state_dir=", "state_dir"),
            ("state_dir", "state_dir"),
            ("control", "control"),
            ("log_file", "log_file"),
            ("log_file=", "log_file"),
            ("allow_other=1", "allow_other"),
            ("nofail=yes", "nofail"),
            ("metadata=ext4", "metadata=ext4"),
            ("metadata", "metadata"),
            ("cache=none", "cache=none"),
            ("cache", "cache"),
            ("sync_file_range=flushed", "sync_file_range=flushed"),
            ("sync_file_range", "sync_file_range"),
            ("commit=-1", "commit=-1"),
            ("commit=soon", "commit=soon"),
            ("default_permissions=0", "default_permissions=0"),
            ("nodefault_permissions", "nodefault_permissions"),
            ("no_default_permissions", "no_default_permissions"),
        ];
        for (opt, named) in cases {
            let err = parse_mount_options(&s(&[opt])).unwrap_err();
            assert!(err.contains(named), "{opt}: {err}");
        }
    }

    #[test]
    fn good_paths_are_canonicalised() {
        let t = TempDir::new("options-good");
        let b = t.dir("backing");
        let m = t.dir("mnt");
        fs::create_dir(b.join("sub")).unwrap();
        symlink(&m, t.path().join("link")).unwrap();
        let (cb, cm) = check_paths(
            &b.join("sub/.."),
            &t.path().join("link"),
            Some(&t.path().join("state/not/yet")),
        )
        .unwrap();
        assert_eq!(cb, fs::canonicalize(&b).unwrap());
        assert_eq!(cm, fs::canonicalize(&m).unwrap());
        // A state dir inside BACKING is allowed (only inside MOUNTPOINT is refused).
        check_paths(&b, &m, Some(&b.join("state"))).unwrap();
    }

    #[test]
    fn bad_paths_are_refused_with_reasons() {
        let t = TempDir::new("options-bad");
        let b = t.dir("backing");
        let m = t.dir("mnt");
        let file = t.path().join("file");
        fs::write(&file, b"x").unwrap();
        let missing = t.path().join("missing");

        let err = check_paths(&missing, &m, None).unwrap_err();
        assert!(
            err.contains("BACKING") && err.contains("does not exist"),
            "{err}"
        );
        let err = check_paths(&file, &m, None).unwrap_err();
        assert!(
            err.contains("BACKING") && err.contains("not a directory"),
            "{err}"
        );
        let err = check_paths(&b, &missing, None).unwrap_err();
        assert!(
            err.contains("MOUNTPOINT") && err.contains("does not exist"),
            "{err}"
        );
        let err = check_paths(&b, &file, None).unwrap_err();
        assert!(
            err.contains("MOUNTPOINT") && err.contains("not a directory"),
            "{err}"
        );
        let err = check_paths(&b, &b.join("."), None).unwrap_err();
        assert!(err.contains("same directory"), "{err}");
        let inner = t.dir("backing/inner");
        let err = check_paths(&b, &inner, None).unwrap_err();
        assert!(
            err.contains("MOUNTPOINT") && err.contains("inside BACKING"),
            "{err}"
        );
        let under_mnt = t.dir("mnt/data");
        let err = check_paths(&under_mnt, &m, None).unwrap_err();
        assert!(
            err.contains("BACKING") && err.contains("inside MOUNTPOINT"),
            "{err}"
        );
        let err = check_paths(&b, &m, Some(&m.join("state/new"))).unwrap_err();
        assert!(
            err.contains("state_dir") && err.contains("inside MOUNTPOINT"),
            "{err}"
        );
        // Through a symlink into the mount point counts as inside too.
        symlink(&m, t.path().join("to-mnt")).unwrap();
        let err = check_paths(&b, &m, Some(&t.path().join("to-mnt/state"))).unwrap_err();
        assert!(err.contains("inside MOUNTPOINT"), "{err}");
    }

    #[test]
    fn bind_mount_of_backing_counts_as_the_same_directory() {
        crate::testdir::require_root("it bind-mounts");
        let t = TempDir::new("options-bind");
        let b = t.dir("backing");
        let m = t.dir("mnt");
        nix::mount::mount(
            Some(&b),
            &m,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("bind mount failed: {e} (this test needs root)"));
        let r = check_paths(&b, &m, None);
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        let err = r.unwrap_err();
        assert!(err.contains("same directory"), "{err}");
    }

    #[test]
    fn disconnected_fuse_mount_is_reported() {
        crate::testdir::require_root("it mounts FUSE");
        let t = TempDir::new("options-stale");
        let b = t.dir("backing");
        let m = t.dir("mnt");
        // A FUSE mount whose daemon is gone: mount with an fd of /dev/fuse, then close it.
        let fuse = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap_or_else(|e| panic!("open /dev/fuse: {e}"));
        let data = {
            use std::os::fd::AsRawFd;
            format!(
                "fd={},rootmode=40000,user_id=0,group_id=0",
                fuse.as_raw_fd()
            )
        };
        nix::mount::mount(
            Some("lossfs-test"),
            &m,
            Some("fuse.lossfs-test"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap_or_else(|e| panic!("fuse mount failed: {e} (this test needs root)"));
        drop(fuse);
        let r = check_paths(&b, &m, None);
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        let err = r.unwrap_err();
        assert!(
            err.contains("disconnected FUSE mount") && err.contains("fusermount3 -u"),
            "{err}"
        );
    }

    #[test]
    fn fuse_availability_checks() {
        let t = TempDir::new("options-fuse");
        let bin = t.dir("bin");
        let empty = t.dir("empty");
        let fm = bin.join("fusermount3");
        fs::write(&fm, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&fm, fs::Permissions::from_mode(0o755)).unwrap();
        let dev = Path::new("/dev/fuse");

        check_fuse_at(dev, Some(bin.as_os_str())).unwrap();
        let err = check_fuse_at(dev, Some(empty.as_os_str())).unwrap_err();
        assert!(
            err.contains("fusermount3") && err.contains("fuse3"),
            "{err}"
        );
        let err = check_fuse_at(dev, None).unwrap_err();
        assert!(err.contains("fusermount3"), "{err}");
        let err = check_fuse_at(&t.path().join("nofuse"), Some(bin.as_os_str())).unwrap_err();
        assert!(
            err.contains("does not exist") && err.contains("fuse3"),
            "{err}"
        );
        let err = check_fuse_at(&fm, Some(bin.as_os_str())).unwrap_err();
        assert!(err.contains("not a character device"), "{err}");
        // A non-executable fusermount3 does not count.
        fs::set_permissions(&fm, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_fuse_at(dev, Some(bin.as_os_str())).is_err());
        // This machine has both.
        check_fuse_available().unwrap();
    }

    /// README.md's options table: the options named in its first column, each with what
    /// follows its `=` (empty for a flag).
    fn readme_options() -> Vec<(String, String)> {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("| option | meaning |")
            .nth(1)
            .expect("README.md has an options table headed | option | meaning |");
        let mut found = Vec::new();
        for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
            let first = row.split(" | ").next().unwrap_or_default();
            for item in first.split('`').skip(1).step_by(2) {
                let item = item.replace("\\|", "|");
                let (name, values) = item.split_once('=').unwrap_or((&item, ""));
                found.push((name.to_string(), values.to_string()));
            }
        }
        found
    }

    #[test]
    fn the_option_table_matches_the_parser_the_help_and_the_readme() {
        let help = options_help();
        for d in OPTION_DOCS {
            // A valid value other than the default: the last listed one (defaults come
            // first), or one for the placeholder.
            let last = d.values.split('|').next_back().unwrap_or_default();
            let sample = match last {
                "" => d.name.to_string(),
                "PATH" => format!("{}=/x", d.name),
                "N" | "SECONDS" => format!("{}=1", d.name),
                "LEVEL" => format!("{}=info", d.name),
                v => format!("{}={v}", d.name),
            };
            // An option that only means something beside another comes with it.
            let sample = match d.name {
                "dirty_ratio" => format!("cache=writeback,{sample}"),
                _ => sample,
            };
            let parsed = parse_mount_options(&s(&[&sample]));
            assert!(parsed.is_ok(), "{sample} is in the table: {parsed:?}");
            // The one option that is always on is accepted and, by design, changes nothing.
            if d.name != ALWAYS_ON {
                assert_ne!(
                    parsed.unwrap(),
                    MountOptions::default(),
                    "{sample} sets nothing"
                );
            }
            assert!(
                help.contains(&format!("  {}", d.name)),
                "{} not in the help",
                d.name
            );
        }
        let ours: Vec<(String, String)> = OPTION_DOCS
            .iter()
            .map(|d| (d.name.to_string(), d.values.to_string()))
            .collect();
        let readme = readme_options();
        for o in &ours {
            assert!(readme.contains(o), "README.md's options table lacks {o:?}");
        }
        for o in &readme {
            assert!(
                ours.contains(o),
                "README.md names {o:?}, which OPTION_DOCS lacks"
            );
        }
        assert!(help.lines().all(|l| l.len() <= 92), "{help}");
    }
}
