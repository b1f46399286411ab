//! The daemon's own file descriptors: its `O_PATH` cache stays within its bound while the
//! kernel looks files up, forgets them when it drops its caches, and looks them up again;
//! the daemon starts with its fd limit raised as far as it may go; and where that limit is
//! low, the cache gives its fds back to the files programs open.

use lossfs_tests::{Mount, MountSetup};
use std::fs;
use std::path::Path;

/// The cache's design bound (inode.rs `FD_CACHE`).
const FD_CACHE: u64 = 8192;

/// (soft, hard) RLIMIT_NOFILE of a process, from `/proc/PID/limits`.
fn nofile_of(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn fds_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the daemon's fd directory")
        .count()
}

/// Makes the kernel drop every unused dentry and inode, which makes it forget our inodes.
fn drop_kernel_caches() {
    fs::write("/proc/sys/vm/drop_caches", "2").expect("write /proc/sys/vm/drop_caches");
}

fn stat_all(dir: &Path, n: u64) {
    for i in 0..n {
        fs::metadata(dir.join(i.to_string())).expect("stat through the mount");
    }
}

#[test]
fn fd_cache_stays_bounded_when_the_kernel_drops_its_caches() {
    // A low limit keeps the file count small: the cache takes at most half the limit.
    let m = Mount::new_with(
        &[],
        MountSetup {
            nofile: Some((1024, 1024)),
            ..Default::default()
        },
    );
    let pid = m.daemon_pid().expect("daemon pid");
    let (soft, _) = nofile_of(pid);
    let cap = FD_CACHE.min(soft / 2);
    let files = 2 * cap + 100;
    let dir = m.path("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..files {
        fs::write(dir.join(i.to_string()), b"").unwrap();
    }
    drop_kernel_caches();
    let baseline = fds_of(pid);
    // Room for the fds a request holds briefly besides the cache.
    let bound = baseline + cap as usize + 16;
    for round in 0..3 {
        stat_all(&dir, files);
        let held = fds_of(pid);
        assert!(
            held <= bound,
            "round {round}: the daemon holds {held} fds after {files} lookups; its cache of \
             {cap} plus the {baseline} it had at rest allow {bound}"
        );
        drop_kernel_caches();
    }
}

/// The reported case at the daemon's default limits: after the kernel dropped its caches
/// between two scans of many files, a program could open only a few thousand files at once
/// through the mount (the daemon's leaked fds took the rest of its limit).
#[test]
fn a_program_opens_thousands_of_files_after_a_cache_drop() {
    const OPEN: usize = 5000;
    let m = Mount::new(&[]);
    let pid = m.daemon_pid().expect("daemon pid");
    let (soft, _) = nofile_of(pid);
    let cap = FD_CACHE.min(soft / 2);
    // Enough files to fill the cache twice over; made on the backing disk directly (fast).
    let files = 2 * cap + 500;
    let backing = m.backing_path("many");
    fs::create_dir(&backing).unwrap();
    for i in 0..files {
        fs::write(backing.join(i.to_string()), b"").unwrap();
    }
    let dir = m.path("many");
    stat_all(&dir, files);
    drop_kernel_caches();
    stat_all(&dir, files);
    let mut held = Vec::with_capacity(OPEN);
    for i in 0..OPEN {
        match fs::File::open(dir.join(i.to_string())) {
            Ok(f) => held.push(f),
            Err(e) => panic!(
                "open number {} through the mount failed: {e} (the daemon holds {} fds)",
                i + 1,
                fds_of(pid)
            ),
        }
    }
}

#[test]
fn daemon_raises_its_fd_limit() {
    let m = Mount::new_with(
        &[],
        MountSetup {
            nofile: Some((256, 2048)),
            ..Default::default()
        },
    );
    let (soft, hard) = nofile_of(m.daemon_pid().expect("daemon pid"));
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
    let nr_open: u64 = fs::read_to_string("/proc/sys/fs/nr_open")
        .expect("read nr_open")
        .trim()
        .parse()
        .expect("nr_open is a number");
    // Whether the hard limit may rise here (root without CAP_SYS_RESOURCE in a container
    // may not): ask the kernel the same way, from a child with the daemon's start limits.
    let may_raise = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 2048 && ulimit -Hn {nr_open}"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run sh")
        .success();
    let want = if may_raise { nr_open } else { 2048 };
    assert_eq!(
        hard, want,
        "hard limit (nr_open {nr_open}, raising allowed: {may_raise})"
    );
}

/// Sets the (soft, hard) RLIMIT_NOFILE of another process, as `prlimit --pid` does.
fn set_nofile_of(pid: u32, limit: u64) {
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: valid resource id and rlimit; no old limit is asked for.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &rl, std::ptr::null_mut()) };
    assert_eq!(
        r,
        0,
        "prlimit --pid {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// A daemon whose fd limit is low and cannot rise (here lowered under it, as a container
/// limit or `prlimit --pid` does): once the kernel has made it cache fds for many files, a
/// program must still be able to open nearly its limit's worth of files at once.  The cache
/// gives its idle fds back when an open runs short.
#[test]
fn a_low_fd_limit_goes_to_the_files_programs_open() {
    const LIMIT: u64 = 1024;
    // Room for the fds a request holds for a moment.
    const SLACK: usize = 16;
    let m = Mount::new(&[]);
    let pid = m.daemon_pid().expect("daemon pid");
    let files = 3 * LIMIT;
    let backing = m.backing_path("many");
    fs::create_dir(&backing).unwrap();
    for i in 0..files {
        fs::write(backing.join(i.to_string()), b"").unwrap();
    }
    let baseline = fds_of(pid);
    set_nofile_of(pid, LIMIT);
    assert_eq!(nofile_of(pid), (LIMIT, LIMIT));
    // Fills the cache: every lookup leaves an fd in it.
    let dir = m.path("many");
    for i in 0..files {
        if let Err(e) = fs::metadata(dir.join(i.to_string())) {
            panic!(
                "stat number {} through the mount failed: {e} (the daemon holds {} fds, \
                 limit {LIMIT})",
                i + 1,
                fds_of(pid)
            );
        }
    }
    let want = LIMIT as usize - baseline - SLACK;
    let mut held = Vec::with_capacity(want);
    for i in 0..want {
        match fs::File::open(dir.join(i.to_string())) {
            Ok(f) => held.push(f),
            Err(e) => panic!(
                "open number {} of {want} through the mount failed: {e} (the daemon holds {} \
                 fds, limit {LIMIT}, {baseline} at rest)",
                i + 1,
                fds_of(pid)
            ),
        }
    }
    // They all close, and the daemon still answers.
    drop(held);
    assert!(fs::metadata(dir.join((files - 1).to_string())).is_ok());
}
