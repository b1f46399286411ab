//! `-o sync_file_range=stable`: sees every sync_file_range(2) on the machine through the
//! kernel's syscall tracepoints, in a private tracefs instance, and hands the range of each
//! write-and-wait call (`SYNC_FILE_RANGE_WRITE|SYNC_FILE_RANGE_WAIT_AFTER`) that returned 0
//! on a file of this mount to a [`RangeSink`] (the journal's range commit).
//!
//! A FUSE daemon is sent nothing by sync_file_range, so the kernel's `sys_enter` and
//! `sys_exit` events of the syscall are read from the instance's `trace_pipe` by one
//! thread.  At the enter event the caller's fd is resolved through `/proc/<tid>/fd/<fd>`
//! (a file of this mount: its `st_dev` is the mount's, its `st_ino` our node id); the exit
//! event of the same thread with 0 commits it.  A marker written to the instance's
//! `trace_marker` ([`Tracer::drain`]) tells when every event recorded before it was handled
//! (trace_pipe merges the per-CPU buffers in time order).  Only plain file I/O on tracefs;
//! the instance is removed when the [`Tracer`] is dropped, and a stale one left by a killed
//! daemon at the next start.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where tracefs is mounted (and mounted by us when it is not).
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Our instances are named `lossfs-sfr-<pid>-<n>`.
const INSTANCE_PREFIX: &str = "lossfs-sfr-";
/// Markers we write: `lossfs-sfr-mark <n>` or `lossfs-sfr-mark stop`.
const MARK: &str = "lossfs-sfr-mark ";
const EVENTS: [&str; 2] = ["sys_enter_sync_file_range", "sys_exit_sync_file_range"];
const WRITE: u64 = libc::SYNC_FILE_RANGE_WRITE as u64;
const WAIT_AFTER: u64 = libc::SYNC_FILE_RANGE_WAIT_AFTER as u64;
/// Threads inside the call at once that we remember; more means lost exit events.
const MAX_PENDING: usize = 4096;
/// How long [`Tracer::stop`] waits for the reader thread to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// One line of the instance's trace_pipe, as far as we care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    Enter {
        tid: u32,
        fd: u64,
        offset: u64,
        nbytes: u64,
        flags: u64,
    },
    Exit {
        tid: u32,
        ret: i64,
    },
    /// One of our markers: its number.
    Mark(u64),
    /// Our stop marker.
    Stop,
    /// The ring buffer overflowed: events were dropped.
    Lost,
}

/// A number as the syscall events print it: `0x` hex, else decimal.
fn number(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The thread id of a line's header (`COMM-TID [CPU] FLAGS TIMESTAMP`; COMM may hold
/// spaces, dashes and brackets, and a `(TGID)` column may follow the thread id).
fn header_tid(header: &str) -> Option<u32> {
    // The CPU column: the last `[digits]`.
    let mut end = header.len();
    let cpu = loop {
        let open = header[..end].rfind('[')?;
        let close = open + header[open..].find(']')?;
        let inner = &header[open + 1..close];
        if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
            break open;
        }
        end = open;
    };
    let mut task = header[..cpu].trim_end();
    if task.ends_with(')') {
        task = task[..task.rfind('(')?].trim_end();
    }
    let (_, tid) = task.rsplit_once('-')?;
    tid.parse().ok()
}

/// Parses one trace_pipe line; `None` for anything else (other events, odd lines).
pub fn parse_line(line: &str) -> Option<TraceEvent> {
    let line = line.trim_end();
    if line.starts_with("CPU:") && line.contains("LOST") {
        return Some(TraceEvent::Lost);
    }
    if let Some(at) = line.rfind(": tracing_mark_write: ") {
        let text = line[at + ": tracing_mark_write: ".len()..].trim();
        let rest = text.strip_prefix(MARK.trim_end())?.trim();
        return match rest {
            "stop" => Some(TraceEvent::Stop),
            n => n.parse().ok().map(TraceEvent::Mark),
        };
    }
    let at = line.rfind(": sys_sync_file_range")?;
    let tid = header_tid(&line[..at])?;
    let rest = &line[at + ": sys_sync_file_range".len()..];
    if let Some(ret) = rest.strip_prefix(" -> ") {
        // `long ret`, printed as unsigned hex.
        return Some(TraceEvent::Exit {
            tid,
            ret: number(ret)? as i64,
        });
    }
    let args = rest.strip_prefix('(')?.strip_suffix(')')?;
    let (mut fd, mut offset, mut nbytes, mut flags) = (None, None, None, None);
    for arg in args.split(", ") {
        let (name, value) = arg.split_once(": ")?;
        let slot = match name.trim() {
            "fd" => &mut fd,
            "offset" => &mut offset,
            "nbytes" => &mut nbytes,
            "flags" => &mut flags,
            _ => continue,
        };
        *slot = Some(number(value)?);
    }
    Some(TraceEvent::Enter {
        tid,
        fd: fd?,
        offset: offset?,
        nbytes: nbytes?,
        flags: flags?,
    })
}

/// The byte range a write-and-wait call commits, or `None` for any other flag set (WRITE
/// alone only starts the writeback; WAIT_AFTER alone writes nothing out).  `nbytes` 0
/// means to the end of the file.
pub fn committed_range(offset: u64, nbytes: u64, flags: u64) -> Option<(u64, u64)> {
    if flags & (WRITE | WAIT_AFTER) != WRITE | WAIT_AFTER || offset > i64::MAX as u64 {
        return None;
    }
    let end = if nbytes == 0 {
        u64::MAX
    } else {
        offset.saturating_add(nbytes)
    };
    Some((offset, end))
}

/// Where committed ranges go.
pub trait RangeSink: Send + Sync {
    /// The current cut epoch: a range seen in one epoch is not committed in a later one.
    fn epoch(&self) -> u64;
    /// Commits `[start, end)` of node `ino` (its `st_ino` on the mount), seen in `epoch`.
    fn commit(&self, ino: u64, epoch: u64, start: u64, end: u64);
}

/// A call seen entering, waiting for its exit.
struct Pending {
    ino: u64,
    start: u64,
    end: u64,
    epoch: u64,
}

/// What the reader thread shares with the tracer.
struct Shared {
    /// The last marker the reader handled.
    seen: Mutex<u64>,
    seen_cond: Condvar,
    /// Set when the reader thread ends.
    done: Mutex<bool>,
    done_cond: Condvar,
}

/// A private tracefs instance with the sync_file_range events on, and its reader.
pub struct Tracer {
    dir: PathBuf,
    next_mark: AtomicU64,
    shared: Arc<Shared>,
    started: Mutex<bool>,
}

fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Mounts tracefs at [`TRACEFS`] unless it is there already.
fn ensure_tracefs() -> Result<(), String> {
    let root = Path::new(TRACEFS);
    if root.join("instances").is_dir() {
        return Ok(());
    }
    if !root.is_dir() {
        return Err(format!(
            "{TRACEFS} does not exist: this kernel has no tracing support (CONFIG_FTRACE); \
             use sync_file_range=volatile"
        ));
    }
    nix::mount::mount(
        Some("nodev"),
        root,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        let hint = match e {
            nix::errno::Errno::EPERM => "run lossfs as root",
            nix::errno::Errno::ENODEV => "this kernel has no tracefs (CONFIG_TRACING)",
            _ => "mount it by hand: mount -t tracefs nodev /sys/kernel/tracing",
        };
        format!("cannot mount tracefs on {TRACEFS}: {e} ({hint})")
    })
}

/// Removes the instances of lossfs daemons that are gone (killed before they could).
fn remove_stale_instances(instances: &Path) {
    let Ok(entries) = std::fs::read_dir(instances) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(INSTANCE_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir(e.path()) {
            Ok(()) => tracing::info!(
                "removed the tracefs instance {} of a lossfs that is gone",
                e.path().display()
            ),
            Err(err) => tracing::warn!(
                "cannot remove the stale tracefs instance {}: {err}",
                e.path().display()
            ),
        }
    }
}

impl Tracer {
    /// Makes the instance and turns the events on; nothing is read yet ([`Self::start`]).
    /// The error says what failed and what to do: the mount is refused with it.
    pub fn prepare() -> Result<Tracer, String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        ensure_tracefs()?;
        let instances = Path::new(TRACEFS).join("instances");
        remove_stale_instances(&instances);
        let name = format!(
            "{INSTANCE_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = instances.join(name);
        std::fs::create_dir(&dir).map_err(|e| {
            format!(
                "cannot create the tracefs instance {}: {e} (sync_file_range=stable needs root)",
                dir.display()
            )
        })?;
        let tracer = Tracer {
            dir,
            next_mark: AtomicU64::new(1),
            shared: Arc::new(Shared {
                seen: Mutex::new(0),
                seen_cond: Condvar::new(),
                done: Mutex::new(false),
                done_cond: Condvar::new(),
            }),
            started: Mutex::new(false),
        };
        for event in EVENTS {
            let enable = tracer
                .dir
                .join("events/syscalls")
                .join(event)
                .join("enable");
            if !enable.exists() {
                return Err(format!(
                    "the kernel has no syscall tracepoint {event} ({} is missing: a kernel \
                     built without CONFIG_FTRACE_SYSCALLS); use sync_file_range=volatile",
                    enable.display()
                ));
            }
            write_file(&enable, "1")
                .map_err(|e| format!("cannot enable {}: {e}", enable.display()))?;
        }
        Ok(tracer)
    }

    /// Starts the thread that reads the events: calls on files of device `dev` (the
    /// mount's) go to `sink`.
    pub fn start(&self, dev: u64, sink: Arc<dyn RangeSink>) -> Result<(), String> {
        let pipe_path = self.dir.join("trace_pipe");
        let pipe =
            File::open(&pipe_path).map_err(|e| format!("opening {}: {e}", pipe_path.display()))?;
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("lossfs-sfrtrace".into())
            .spawn(move || {
                read_events(pipe, dev, sink.as_ref(), &shared);
                *shared.done.lock() = true;
                shared.done_cond.notify_all();
            })
            .map_err(|e| format!("cannot start the sync_file_range tracer thread: {e}"))?;
        *self.started.lock() = true;
        tracing::info!(
            "sync_file_range=stable: tracing sync_file_range through {}",
            self.dir.display()
        );
        Ok(())
    }

    fn mark(&self, text: &str) -> std::io::Result<()> {
        write_file(&self.dir.join("trace_marker"), &format!("{MARK}{text}\n"))
    }

    /// Waits, at most `timeout`, until every event recorded before now was handled: a
    /// sync_file_range that returned before this call is committed when it returns true.
    pub fn drain(&self, timeout: Duration) -> bool {
        if !*self.started.lock() {
            return true;
        }
        let n = self.next_mark.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.mark(&n.to_string()) {
            tracing::warn!("sync_file_range tracer: cannot write a marker: {e}");
            return false;
        }
        let deadline = Instant::now() + timeout;
        let mut seen = self.shared.seen.lock();
        while *seen < n {
            if self
                .shared
                .seen_cond
                .wait_until(&mut seen, deadline)
                .timed_out()
            {
                return *seen >= n;
            }
        }
        true
    }

    /// Ends the reader thread (bounded wait).
    pub fn stop(&self) {
        let mut started = self.started.lock();
        if !*started {
            return;
        }
        *started = false;
        if let Err(e) = self.mark("stop") {
            tracing::warn!("sync_file_range tracer: cannot stop the reader: {e}");
            return;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut done = self.shared.done.lock();
        while !*done {
            if self
                .shared
                .done_cond
                .wait_until(&mut done, deadline)
                .timed_out()
            {
                tracing::warn!("sync_file_range tracer: the reader did not stop in time");
                return;
            }
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop();
        for event in EVENTS {
            let enable = self.dir.join("events/syscalls").join(event).join("enable");
            let _ = write_file(&enable, "0");
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(
                "cannot remove the tracefs instance {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// The file an fd of thread `tid` names, if it is a regular file of device `dev`: its
/// inode number.  Racy by nature: the fd may be closed or replaced since the call.  From
/// cached attributes: a plain stat could wait on this mount or another FUSE daemon.
fn resolve(tid: u32, fd: u64, dev: u64) -> Option<u64> {
    // The daemon's own write-and-wait calls (handing a live mount's pages over before a
    // `--no-kill` cut or a sync, see `pageflush`) make nothing durable.
    if fd > i32::MAX as u64 || Path::new(&format!("/proc/self/task/{tid}")).exists() {
        return None;
    }
    let path = std::ffi::CString::new(format!("/proc/{tid}/fd/{fd}")).ok()?;
    let (d, ino, is_file) = crate::sys::stat_cached(&path).ok()?;
    (d == dev && is_file).then_some(ino)
}

/// The reader thread: until the stop marker or the end of the pipe.
fn read_events(pipe: File, dev: u64, sink: &dyn RangeSink, shared: &Shared) {
    let mut reader = BufReader::new(pipe);
    let mut pending: HashMap<u32, Pending> = HashMap::new();
    let mut line = Vec::new();
    let mut lost_warned = false;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("sync_file_range tracer: reading trace_pipe: {e}");
                return;
            }
        }
        let text = String::from_utf8_lossy(&line);
        match parse_line(&text) {
            Some(TraceEvent::Enter {
                tid,
                fd,
                offset,
                nbytes,
                flags,
            }) => {
                let target = committed_range(offset, nbytes, flags)
                    .and_then(|(start, end)| Some((resolve(tid, fd, dev)?, start, end)));
                match target {
                    Some((ino, start, end)) => {
                        if pending.len() >= MAX_PENDING {
                            pending.clear();
                        }
                        let epoch = sink.epoch();
                        pending.insert(
                            tid,
                            Pending {
                                ino,
                                start,
                                end,
                                epoch,
                            },
                        );
                    }
                    None => {
                        pending.remove(&tid);
                    }
                }
            }
            Some(TraceEvent::Exit { tid, ret }) => {
                if let Some(p) = pending.remove(&tid) {
                    if ret == 0 {
                        sink.commit(p.ino, p.epoch, p.start, p.end);
                    }
                }
            }
            Some(TraceEvent::Mark(n)) => {
                let mut seen = shared.seen.lock();
                *seen = (*seen).max(n);
                shared.seen_cond.notify_all();
            }
            Some(TraceEvent::Stop) => return,
            Some(TraceEvent::Lost) if !lost_warned => {
                lost_warned = true;
                tracing::warn!(
                    "sync_file_range tracer: the kernel dropped events (ring buffer full): \
                     some sync_file_range calls may not have been committed"
                );
            }
            Some(TraceEvent::Lost) => {}
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_and_exit_lines_parse_with_hex_and_decimal_values() {
        let enter = "         python3-23094   [001] ..... 29205.897738: sys_sync_file_range(fd: 3, offset: 0x1388, nbytes: 0x1000, flags: 7)";
        assert_eq!(
            parse_line(enter),
            Some(TraceEvent::Enter {
                tid: 23094,
                fd: 3,
                offset: 0x1388,
                nbytes: 0x1000,
                flags: 7
            })
        );
        let exit = "         python3-23094   [001] ..... 29205.898553: sys_sync_file_range -> 0x0";
        assert_eq!(
            parse_line(exit),
            Some(TraceEvent::Exit { tid: 23094, ret: 0 })
        );
        let failed =
            "         python3-23094   [001] .N... 29205.898637: sys_sync_file_range -> 0xfffffffffffffff7";
        assert_eq!(
            parse_line(failed),
            Some(TraceEvent::Exit {
                tid: 23094,
                ret: -9
            })
        );
        let odd = "  python3-23094 [001] ..... 1.0: sys_sync_file_range(fd: 0xfffffffffffffffb, offset: 0xffffffffffffffff, nbytes: 0xbc614e, flags: 0x63)";
        assert_eq!(
            parse_line(odd),
            Some(TraceEvent::Enter {
                tid: 23094,
                fd: u64::MAX - 4,
                offset: u64::MAX,
                nbytes: 0xbc614e,
                flags: 0x63
            })
        );
    }

    #[test]
    fn command_names_with_spaces_dashes_brackets_and_a_tgid_column() {
        for (line, tid) in [
            (
                "  my prog-x-1-77 [000] ..... 5.5: sys_sync_file_range -> 0x0",
                77,
            ),
            (
                "  a [1] b-12   [003] d..1. 5.5: sys_sync_file_range -> 0x0",
                12,
            ),
            (
                "  kworker/u8:2-990 (  990) [002] ..... 5.5: sys_sync_file_range -> 0x0",
                990,
            ),
            (
                "x: sys_sync_file_range-5 [0] . 1.0: sys_sync_file_range -> 0x0",
                5,
            ),
        ] {
            assert_eq!(
                parse_line(line),
                Some(TraceEvent::Exit { tid, ret: 0 }),
                "{line}"
            );
        }
    }

    #[test]
    fn markers_and_lost_events_are_recognised() {
        let m = "            bash-23087   [000] ...1. 29205.907176: tracing_mark_write: lossfs-sfr-mark 42";
        assert_eq!(parse_line(m), Some(TraceEvent::Mark(42)));
        let s = "  lossfs-1 [000] ...1. 1.0: tracing_mark_write: lossfs-sfr-mark stop";
        assert_eq!(parse_line(s), Some(TraceEvent::Stop));
        let other = "  bash-1 [000] ...1. 1.0: tracing_mark_write: hello";
        assert_eq!(parse_line(other), None);
        assert_eq!(
            parse_line("CPU:1 [LOST 123 EVENTS]"),
            Some(TraceEvent::Lost)
        );
    }

    #[test]
    fn odd_lines_give_nothing() {
        for line in [
            "",
            "garbage",
            "  p-1 [000] ..... 1.0: sys_sync_file_range(fd: 3, offset: 0)",
            "  p-1 [000] ..... 1.0: sys_sync_file_range(fd: x, offset: 0, nbytes: 0, flags: 7)",
            "  p-1 [000] ..... 1.0: sys_sync_file_range -> ",
            "  p [000] ..... 1.0: sys_sync_file_range -> 0x0",
            "  p-x [000] ..... 1.0: sys_sync_file_range -> 0x0",
            "  p-1 ..... 1.0: sys_sync_file_range -> 0x0",
            "  p-1 [000] ..... 1.0: sys_fsync(fd: 3)",
            "  p-1 [000] ..... 1.0: sys_sync_file_range(fd: 3, offset: 0, nbytes: 0, flags: 7",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn only_write_and_wait_after_commits_and_zero_means_to_the_end() {
        let all = WRITE | WAIT_AFTER | libc::SYNC_FILE_RANGE_WAIT_BEFORE as u64;
        assert_eq!(committed_range(4096, 100, all), Some((4096, 4196)));
        assert_eq!(
            committed_range(0, 0, WRITE | WAIT_AFTER),
            Some((0, u64::MAX))
        );
        assert_eq!(committed_range(0, 100, WRITE), None);
        assert_eq!(committed_range(0, 100, WAIT_AFTER), None);
        assert_eq!(
            committed_range(0, 100, libc::SYNC_FILE_RANGE_WAIT_BEFORE as u64),
            None
        );
        assert_eq!(committed_range(u64::MAX, 1, all), None);
        assert_eq!(committed_range(10, u64::MAX, all), Some((10, u64::MAX)));
    }
}
