//! Named pause points for crash tests of the daemon itself.
//!
//! `LOSSFS_TEST_PAUSE=POINT:N:MARKER` makes the daemon stop the N-th time (counted from 1,
//! per process) it reaches the point named POINT: it creates the file MARKER (content: the
//! point, N and the pid) and then sleeps, so a test can SIGKILL it right there and check
//! that the next mount recovers.  After [`PAUSE_LIMIT`] it goes on, with an error in the
//! log, so a forgotten variable cannot hang a daemon for ever.
//!
//! Always compiled in, not behind a cargo feature: the mounted tests run the ordinary
//! `lossfs` binary (a feature would have to be unified into every workspace build, and
//! tests of a packaged binary could not use it), and an unset variable costs one
//! initialised-`OnceLock` read per point, on rollback, replay and sync paths only, never on
//! the write path.
//!
//! Points (see docs/testing.md): `rollback-start`, `restore-after-truncate`,
//! `rollback-after-file`, `rollback-after-reset`, `replay-after-file`, `replay-after-reset`,
//! `sync-after-file`, `durable-before-record`, `compact-before-rename`,
//! `compact-after-rename`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable that arms a pause point.
pub const ENV: &str = "LOSSFS_TEST_PAUSE";
/// How long a pause lasts at most.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(300);

struct Armed {
    point: String,
    nth: u64,
    marker: PathBuf,
    hits: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Parses `POINT:N:MARKER`.
fn parse(v: &str) -> Result<(String, u64, PathBuf), String> {
    let mut it = v.splitn(3, ':');
    let (Some(point), Some(n), Some(marker)) = (it.next(), it.next(), it.next()) else {
        return Err(format!("{ENV}={v:?}: expected POINT:N:MARKER"));
    };
    let nth: u64 = n
        .parse()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| format!("{ENV}={v:?}: N must be a number >= 1"))?;
    if point.is_empty() || marker.is_empty() {
        return Err(format!("{ENV}={v:?}: POINT and MARKER must not be empty"));
    }
    Ok((point.to_string(), nth, PathBuf::from(marker)))
}

fn armed() -> Option<&'static Armed> {
    ARMED
        .get_or_init(|| {
            let v = std::env::var(ENV).ok()?;
            match parse(&v) {
                Ok((point, nth, marker)) => Some(Armed {
                    point,
                    nth,
                    marker,
                    hits: AtomicU64::new(0),
                }),
                Err(e) => {
                    tracing::error!("{e}; no pause point armed");
                    None
                }
            }
        })
        .as_ref()
}

/// Reads the variable once at start, so a bad value or an armed point shows in the log
/// before anything else happens.
pub fn init() {
    if let Some(a) = armed() {
        tracing::warn!(
            point = %a.point,
            nth = a.nth,
            marker = %a.marker.display(),
            "{ENV} is set: this daemon will stop at a test pause point"
        );
    }
}

/// A named pause point: returns at once unless it is the armed one and this is its N-th hit.
pub fn point(name: &str) {
    let Some(a) = armed() else { return };
    if a.point != name || a.hits.fetch_add(1, Ordering::SeqCst) + 1 != a.nth {
        return;
    }
    let text = format!("{name}:{} pid {}\n", a.nth, std::process::id());
    if let Err(e) = std::fs::write(&a.marker, text) {
        tracing::error!(marker = %a.marker.display(), error = %e, "pause point: cannot create the marker");
    }
    tracing::warn!(
        point = name,
        nth = a.nth,
        "pause point reached: waiting to be killed"
    );
    let until = Instant::now() + PAUSE_LIMIT;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::error!(
        point = name,
        "pause point: not killed within {PAUSE_LIMIT:?}; going on"
    );
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_point_count_and_marker_with_colons() {
        let (p, n, m) = parse("rollback-after-file:2:/tmp/a:b").unwrap();
        assert_eq!(p, "rollback-after-file");
        assert_eq!(n, 2);
        assert_eq!(m.to_str(), Some("/tmp/a:b"));
    }

    #[test]
    fn rejects_malformed_values() {
        for v in ["", "x", "x:1", "x:0:/m", "x:y:/m", ":1:/m", "x:1:"] {
            assert!(parse(v).is_err(), "{v:?} must be refused");
        }
    }
}
