//! `-o lazyfs_fifo=PATH`: the command FIFO of LazyFS, so harnesses written for LazyFS
//! (Jepsen's among them) can drive lossfs unchanged.  One command per line:
//!
//! | line | lossfs does |
//! | --- | --- |
//! | `lazyfs::clear-cache` | a power cut without kill (`lossctl powercut --no-kill`) |
//! | `lazyfs::cache-checkpoint` | make everything durable (`lossctl sync`) |
//! | `lazyfs::display-cache-usage` | log the unsynced byte and file counts |
//! | `lazyfs::unsynced-data-report` | log the unsynced ranges per file (`lossctl status`) |
//!
//! Results are logged at level info (`-o log=info`); an unknown or malformed line (other
//! LazyFS commands such as its fault injection, non-UTF-8, over 4 KiB) and a failed
//! command are logged as errors and never reported as done.  The FIFO is created (mode
//! 0600) if missing; an existing path must be a FIFO that belongs to the daemon's user (or
//! root) and that no one else may write, since whoever writes to it cuts and syncs the mount.

use crate::control::ControlHandler;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Longest line accepted; longer ones are malformed.
const MAX_LINE: usize = 4096;

/// A command read from the FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    ClearCache,
    Checkpoint,
    DisplayCacheUsage,
    UnsyncedDataReport,
}

/// Parses one line (without its newline); `Err` says why it is not a command.
pub fn parse(line: &[u8]) -> Result<Command, String> {
    let text = std::str::from_utf8(line)
        .map_err(|_| format!("not UTF-8: {:?}", String::from_utf8_lossy(line)))?;
    match text.trim() {
        "lazyfs::clear-cache" => Ok(Command::ClearCache),
        "lazyfs::cache-checkpoint" => Ok(Command::Checkpoint),
        "lazyfs::display-cache-usage" => Ok(Command::DisplayCacheUsage),
        "lazyfs::unsynced-data-report" => Ok(Command::UnsyncedDataReport),
        other => Err(format!("unknown command {other:?}")),
    }
}

/// Carries out one command; `Ok` is the message to log as done.
pub fn execute(cmd: Command, h: &dyn ControlHandler) -> Result<String, String> {
    let done = match cmd {
        Command::ClearCache => h.powercut(true).map(|r| {
            format!(
                "clear-cache done (power cut, no kill): {}",
                r.to_text().trim_end()
            )
        }),
        Command::Checkpoint => h
            .sync()
            .map(|r| format!("cache-checkpoint done (sync): {}", r.to_text().trim_end())),
        Command::DisplayCacheUsage => h.status().map(|s| {
            format!(
                "display-cache-usage: {} unsynced bytes in {} files",
                s.unsynced_bytes,
                s.files.len()
            )
        }),
        Command::UnsyncedDataReport => h
            .status()
            .map(|s| format!("unsynced-data-report: {}", s.to_text().trim_end())),
    };
    done.map_err(|e| e.to_string())
}

/// Handles every line of `input` until EOF, logging each result.
pub fn serve_lines(input: impl Read, path: &Path, h: &dyn ControlHandler) {
    let mut r = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("lazyfs fifo {}: read: {e}", path.display());
                return;
            }
        }
        if line.len() > MAX_LINE && line.last() != Some(&b'\n') {
            tracing::error!(
                "lazyfs fifo {}: malformed line (over {MAX_LINE} bytes), ignored",
                path.display()
            );
            // Skip the rest of the long line.
            let mut rest = Vec::new();
            if r.read_until(b'\n', &mut rest).is_err() {
                return;
            }
            continue;
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse(body).and_then(|c| execute(c, h)) {
            Ok(msg) => tracing::info!("lazyfs fifo {}: {msg}", path.display()),
            Err(e) => tracing::error!("lazyfs fifo {}: {e}; not done", path.display()),
        }
    }
}

/// Creates the FIFO if missing (an existing path must be a FIFO), opens it and serves it
/// from a background thread for the life of the process.
pub fn start(path: &Path, h: Arc<dyn ControlHandler>) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_fifo() => {}
        Ok(_) => {
            return Err(format!(
                "lazyfs_fifo={}: exists and is not a FIFO",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let c = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| format!("lazyfs_fifo={}: path contains NUL", path.display()))?;
            // SAFETY: valid C string; mkfifo has no memory effects on our side.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(format!(
                    "lazyfs_fifo={}: mkfifo: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
        Err(e) => return Err(format!("lazyfs_fifo={}: {e}", path.display())),
    }
    // Read and write: the open does not wait for a writer, and the FIFO never reaches EOF
    // when a writer closes, so one open serves every writer.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("lazyfs_fifo={}: open: {e}", path.display()))?;
    // Checked on what was opened, so a path swapped after the look above changes nothing.
    let meta = f
        .metadata()
        .map_err(|e| format!("lazyfs_fifo={}: fstat: {e}", path.display()))?;
    check_private(path, &meta, nix::unistd::geteuid().as_raw())?;
    let p: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("lossfs-lazyfs".into())
        .spawn(move || serve_lines(f, &p, &*h))
        .map_err(|e| format!("lazyfs fifo thread: {e}"))?;
    tracing::info!("lazyfs fifo {} ready", path.display());
    Ok(())
}

/// Only the daemon's user and root may write commands: the FIFO must be theirs and not
/// writable by its group or by others.
fn check_private(path: &Path, meta: &std::fs::Metadata, euid: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !meta.file_type().is_fifo() {
        return Err(format!(
            "lazyfs_fifo={}: exists and is not a FIFO",
            path.display()
        ));
    }
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(format!(
            "lazyfs_fifo={}: belongs to uid {}, who could cut and sync this mount through it; \
             the FIFO must belong to root or uid {euid} (remove it and lossfs creates one, \
             mode 0600)",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "lazyfs_fifo={}: mode {:04o} lets other users write commands that cut and sync \
             this mount; make it writable by its owner only (chmod go-w)",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{FsError, FsResult};
    use crate::report::{PowercutReport, StatusReport, SyncReport};
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        fail: bool,
    }

    impl ControlHandler for Fake {
        fn status(&self) -> FsResult<StatusReport> {
            self.calls.lock().push("status".into());
            Ok(StatusReport {
                unsynced_bytes: 42,
                ..Default::default()
            })
        }
        fn sync(&self) -> FsResult<SyncReport> {
            self.calls.lock().push("sync".into());
            if self.fail {
                return Err(FsError::new(libc::EIO, "disk on fire"));
            }
            Ok(SyncReport::default())
        }
        fn powercut(&self, no_kill: bool) -> FsResult<PowercutReport> {
            self.calls
                .lock()
                .push(format!("powercut no_kill={no_kill}"));
            Ok(PowercutReport::default())
        }
    }

    #[test]
    fn parses_the_four_commands_and_rejects_the_rest() {
        assert_eq!(parse(b"lazyfs::clear-cache"), Ok(Command::ClearCache));
        assert_eq!(
            parse(b" lazyfs::cache-checkpoint \r"),
            Ok(Command::Checkpoint)
        );
        assert_eq!(
            parse(b"lazyfs::display-cache-usage"),
            Ok(Command::DisplayCacheUsage)
        );
        assert_eq!(
            parse(b"lazyfs::unsynced-data-report"),
            Ok(Command::UnsyncedDataReport)
        );
        for bad in [
            &b"lazyfs::crash::timing=before::op=write::from_rgx=x"[..],
            b"lazyfs::clear-cache extra",
            b"clear-cache",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn lines_dispatch_to_the_handler_and_errors_are_not_done() {
        let h = Fake::default();
        let input = b"lazyfs::clear-cache\n\nbogus\nlazyfs::cache-checkpoint\nlazyfs::display-cache-usage\n\xff\nlazyfs::unsynced-data-report";
        serve_lines(&input[..], Path::new("/fifo"), &h);
        assert_eq!(
            *h.calls.lock(),
            ["powercut no_kill=true", "sync", "status", "status"]
        );
        let failing = Fake {
            fail: true,
            ..Default::default()
        };
        let e = parse(b"lazyfs::cache-checkpoint")
            .and_then(|c| execute(c, &failing))
            .expect_err("a failed sync is reported as done");
        assert!(e.contains("disk on fire"), "{e}");
        assert!(execute(Command::DisplayCacheUsage, &h)
            .expect("status")
            .contains("42 unsynced bytes"));
    }

    #[test]
    fn an_overlong_line_is_skipped_whole() {
        let h = Fake::default();
        let mut input = vec![b'x'; MAX_LINE * 2];
        input.extend_from_slice(b"lazyfs::clear-cache\nlazyfs::cache-checkpoint\n");
        serve_lines(&input[..], Path::new("/fifo"), &h);
        // The command glued to the long line is part of it; the next line runs.
        assert_eq!(*h.calls.lock(), ["sync"]);
    }

    #[test]
    fn only_a_fifo_of_the_daemons_user_closed_to_others_is_served() {
        use std::os::unix::fs::PermissionsExt;
        let t = crate::testdir::TempDir::new("lazyfs-private");
        let fifo = t.path().join("cmd.fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let meta = || std::fs::symlink_metadata(&fifo).unwrap();
        let chmod =
            |mode| std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(mode)).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        check_private(&fifo, &meta(), me).unwrap();
        // Readable by all is fine: reading steals a command, it issues none.
        chmod(0o644);
        check_private(&fifo, &meta(), me).unwrap();
        for mode in [0o620, 0o602, 0o666] {
            chmod(mode);
            let e = check_private(&fifo, &meta(), me).unwrap_err();
            assert!(
                e.contains("chmod go-w") && e.contains(&format!("{mode:04o}")),
                "{e}"
            );
        }
        chmod(0o600);
        // Another user's FIFO, as this daemon would see it if it ran as uid 12345 while the
        // FIFO belongs to root: fine (root); the reverse is refused.
        check_private(&fifo, &meta(), 12345).unwrap();
        std::os::unix::fs::chown(&fifo, Some(65534), None).expect("chown (needs root)");
        let e = check_private(&fifo, &meta(), me).unwrap_err();
        assert!(e.contains("belongs to uid 65534"), "{e}");
        check_private(&fifo, &meta(), 65534).unwrap();
        let plain = t.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let e = check_private(&plain, &std::fs::metadata(&plain).unwrap(), me).unwrap_err();
        assert!(e.contains("not a FIFO"), "{e}");
    }
}
