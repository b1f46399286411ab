//! Where the daemon's log goes and what it leaves out.
//!
//! The log starts on stderr.  A daemon that detaches from its terminal moves it to a file
//! ([`to_file`]: `log_file=PATH`, or `STATE_DIR/lossfs.log` by default), so its warnings are
//! not written to /dev/null.  Colour codes are only written to a terminal.  Messages that
//! report expected events as failures are dropped ([`Expected`]): fuser's failure to send
//! the reply to a request whose process died meanwhile (the kernel has dropped the request:
//! ENOENT), its warnings about poll and ioctl, which we leave to the kernel's default answer
//! (ENOSYS), and its failed second unmount after `fusermount3 -u` already unmounted
//! (EINVAL).

use parking_lot::Mutex;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The file the log goes to; None: stderr.
static FILE: Mutex<Option<File>> = Mutex::new(None);

/// The default level filter: our warnings; fuser's own only when they are errors (its
/// warnings are about requests it answers by default, which is what we want).
const DEFAULT_FILTER: &str = "warn,fuser=error";

/// Sets up logging at `level` (`log=LEVEL`; else env `LOSSFS_LOG`, a full filter spec;
/// else warnings), to stderr.  `may_colour`: the log may stay on stderr, so colour it if
/// stderr is a terminal.  A second call changes nothing.
pub(crate) fn init(level: Option<&str>, may_colour: bool) {
    let filter = match level {
        Some(l) => EnvFilter::new(level_filter(l)),
        None => {
            EnvFilter::try_from_env("LOSSFS_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
        }
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(Sink)
        .with_ansi(may_colour && io::stderr().is_terminal())
        .with_filter(Expected);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

/// The filter for `log=LEVEL`: at error, warn and info, fuser's own messages only when
/// they are errors, as by default; debug and trace show everything.
fn level_filter(level: &str) -> String {
    match level {
        "error" | "warn" | "info" => format!("{level},fuser=error"),
        other => other.to_string(),
    }
}

/// Sends the log to `path` from now on (appended; created mode 0600, as it may name files).
pub(crate) fn to_file(path: &Path) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))?;
    *FILE.lock() = Some(file);
    Ok(())
}

/// The writer of every log line: the file if there is one, else stderr.
struct Sink;

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;
    fn make_writer(&'a self) -> Sink {
        Sink
    }
}

impl Write for Sink {
    // The formatter hands over each event whole, in one write_all.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match FILE.lock().as_mut() {
            Some(f) => f.write(buf),
            None => io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match FILE.lock().as_mut() {
            Some(f) => f.flush(),
            None => io::stderr().flush(),
        }
    }
}

/// Drops the messages that report expected events as failures (see the module header).
struct Expected;

/// An event's message and target (`log.target` for events bridged from the `log` crate,
/// which fuser uses).
#[derive(Default)]
struct Fields {
    message: String,
    log_target: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "log.target" => self.log_target = Some(value.to_string()),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

/// True for a message that reports an expected event as a failure.
fn is_expected(target: &str, message: &str) -> bool {
    match target {
        // The process behind the request died (or was interrupted): the kernel dropped it.
        "fuser::reply" => {
            message.starts_with("Failed to send FUSE reply") && message.contains("(os error 2)")
        }
        // fuser unmounts again when the session ends, also after `fusermount3 -u` did.
        "fuser::session" => {
            message.starts_with("Failed to umount filesystem") && message.contains("(os error 22)")
        }
        // The kernel's default for these (ENOSYS) is what we want: nothing is missing.
        "fuser" => {
            message.starts_with("[Not Implemented] poll(")
                || message.starts_with("[Not Implemented] ioctl(")
        }
        _ => false,
    }
}

impl<S> Filter<S> for Expected {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if !meta.target().starts_with("fuser") && meta.target() != "log" {
            return true;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let target = f.log_target.as_deref().unwrap_or(meta.target());
        !is_expected(target, &f.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_noise_is_recognised_and_nothing_else() {
        assert!(is_expected(
            "fuser::reply",
            "Failed to send FUSE reply: No such file or directory (os error 2)"
        ));
        assert!(is_expected(
            "fuser::session",
            "Failed to umount filesystem: Invalid argument (os error 22)"
        ));
        assert!(is_expected(
            "fuser",
            "[Not Implemented] ioctl(ino: 0x2, fh: 3, flags: 0, cmd: 21505, in_data.len(): 0, out_size: 36)"
        ));
        assert!(!is_expected(
            "fuser",
            "[Not Implemented] fsync(ino: 0x2, fh: 3, datasync: false)"
        ));
        // Other failures stay visible.
        assert!(!is_expected(
            "fuser::reply",
            "Failed to send FUSE reply: Invalid argument (os error 22)"
        ));
        assert!(!is_expected(
            "fuser::session",
            "Failed to umount filesystem: Device or resource busy (os error 16)"
        ));
        assert!(!is_expected(
            "lossfs::fs",
            "Failed to send FUSE reply: No such file or directory (os error 2)"
        ));
    }

    #[test]
    fn plain_levels_keep_fuser_at_errors() {
        assert_eq!(level_filter("warn"), "warn,fuser=error");
        assert_eq!(level_filter("info"), "info,fuser=error");
        assert_eq!(level_filter("debug"), "debug");
    }
}
