//! Creating files as the program that asked: a guard that gives the current thread the
//! caller's filesystem uid and gid and its supplementary groups, and gives the daemon's own
//! back when dropped.
//!
//! The kernel has already checked the caller's permissions (every mount has
//! `default_permissions`), so this is not a second check: it makes what the backing file
//! system does on a create depend on the caller as it would without lossfs.  The new file
//! belongs to the caller; under a set-group-id directory its group and its own set-group-id
//! bit follow the caller's group memberships, supplementary ones included.
//!
//! Linux keeps credentials per thread; the libc wrappers of setgroups(2) change every thread
//! of the process, so the raw system call is used, as for setfsuid(2) and setfsgid(2).

use std::io;
use std::sync::OnceLock;

/// The supplementary groups the kernel lets one process hold (NGROUPS_MAX).
const MAX_GROUPS: usize = 65_536;

/// The daemon thread runs with the caller's filesystem credentials while this lives.
pub struct AsCaller {
    switched: bool,
}

impl AsCaller {
    /// Switches the current thread to `uid`, `gid` and the supplementary groups of process
    /// `pid` (none if it is gone).  Root's requests need no switch: the thread already has
    /// root's credentials, and a create-heavy program runs as one user.
    pub fn new(uid: u32, gid: u32, pid: u32) -> io::Result<AsCaller> {
        if uid == 0 && gid == 0 {
            return Ok(AsCaller { switched: false });
        }
        let groups = supplementary_groups(pid);
        let guard = AsCaller { switched: true };
        // If a step fails, dropping `guard` puts the daemon's credentials back.
        set_thread_groups(&groups)?;
        switch_fsgid(gid)?;
        switch_fsuid(uid)?;
        Ok(guard)
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        if !self.switched {
            return;
        }
        // Root's fsuid first: it brings back the capabilities setgroups needs.
        let restored = switch_fsuid(0)
            .and_then(|()| switch_fsgid(0))
            .and_then(|()| set_thread_groups(daemon_groups()));
        if let Err(e) = restored {
            // A worker thread left with a caller's credentials would serve later requests
            // as that caller: better to stop than to go on wrong.
            tracing::error!("cannot restore the daemon's credentials after a create: {e}");
            std::process::abort();
        }
    }
}

/// The daemon's own supplementary groups, read once (before any thread switched).
fn daemon_groups() -> &'static [libc::gid_t] {
    static GROUPS: OnceLock<Vec<libc::gid_t>> = OnceLock::new();
    GROUPS.get_or_init(|| {
        nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default()
    })
}

/// The supplementary groups of process (or thread) `pid`, from `/proc/PID/status`.  A
/// process that is gone has none, which can only refuse it more than its own groups would.
fn supplementary_groups(pid: u32) -> Vec<libc::gid_t> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(parse_groups)
        .unwrap_or_default()
}

/// The `Groups:` line of a `/proc/PID/status` text.
fn parse_groups(status: &str) -> Option<Vec<libc::gid_t>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace()
        .take(MAX_GROUPS)
        .map(|g| g.parse().ok())
        .collect()
}

fn set_thread_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // Taken before any switch, so it holds root's groups, not a caller's.
    daemon_groups();
    // SAFETY: the pointer and length describe a live slice of gid_t; the raw system call
    // changes only this thread's credentials.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// setfsuid(2) reports no error; it answers the previous id.  Asking again with an id that
/// is never valid (-1) answers the current one, which says whether the switch happened.
fn switch_fsuid(uid: u32) -> io::Result<()> {
    // SAFETY: changes only this thread's filesystem uid; -1 changes nothing.
    let now = unsafe {
        libc::setfsuid(uid);
        libc::setfsuid(u32::MAX)
    };
    if now as u32 != uid {
        return Err(io::Error::other(format!(
            "setfsuid({uid}) left the filesystem uid at {now}"
        )));
    }
    Ok(())
}

fn switch_fsgid(gid: u32) -> io::Result<()> {
    // SAFETY: changes only this thread's filesystem gid; -1 changes nothing.
    let now = unsafe {
        libc::setfsgid(gid);
        libc::setfsgid(u32::MAX)
    };
    if now as u32 != gid {
        return Err(io::Error::other(format!(
            "setfsgid({gid}) left the filesystem gid at {now}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_status() -> String {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap()
    }

    /// The credential lines of this thread's status: ids, groups, capabilities.
    fn thread_creds() -> String {
        thread_status()
            .lines()
            .filter(|l| {
                ["Uid:", "Gid:", "Groups:", "Cap"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn fs_ids(status: &str, key: &str) -> u32 {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {status}"));
        // Real, effective, saved, filesystem.
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    #[test]
    fn groups_line_parses() {
        let status = "Name:\tx\nUid:\t0\t0\t0\t0\nGroups:\t4 24 27 \nNgid:\t0\n";
        assert_eq!(parse_groups(status), Some(vec![4, 24, 27]));
        assert_eq!(parse_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_groups("Groups:\tx\n"), None);
        assert_eq!(parse_groups("Uid:\t0\n"), None);
    }

    #[test]
    fn switch_and_restore_on_this_thread_only() {
        // A thread of its own, so the test runner's threads never see the switch.
        std::thread::spawn(|| {
            // SAFETY: geteuid has no preconditions.
            assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
            let before = thread_creds();
            // A caller with groups of its own, different from the daemon's.
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30");
            // SAFETY: setgroups in the forked child before exec, on its own stack data.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    let g: [libc::gid_t; 2] = [4, 24];
                    if libc::setgroups(2, g.as_ptr()) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd.spawn().unwrap();
            let switched = AsCaller::new(65534, 65533, child.id()).map(|g| {
                let during = thread_status();
                // The main thread still has root's filesystem ids.
                let main = std::fs::read_to_string(format!(
                    "/proc/self/task/{}/status",
                    std::process::id()
                ))
                .unwrap();
                drop(g);
                (during, main)
            });
            let _ = child.kill();
            let _ = child.wait();
            let (during, main) = switched.unwrap();
            assert_eq!(fs_ids(&during, "Uid:"), 65534, "{during}");
            assert_eq!(fs_ids(&during, "Gid:"), 65533, "{during}");
            assert_eq!(parse_groups(&during), Some(vec![4, 24]), "{during}");
            assert_eq!(fs_ids(&main, "Uid:"), 0, "{main}");
            assert_ne!(parse_groups(&before), Some(vec![4, 24]));
            assert_eq!(thread_creds(), before);
            // A process that is gone: no supplementary groups at all.
            {
                let _g = AsCaller::new(65534, 65534, u32::MAX).unwrap();
                assert_eq!(parse_groups(&thread_status()).unwrap(), Vec::<u32>::new());
            }
            assert_eq!(thread_creds(), before);
        })
        .join()
        .unwrap();
    }
}
