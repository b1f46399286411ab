//! The daemon's own file descriptors: its `O_PATH` cache stays within its bound while the
//! kernel looks files up, forgets them when it drops its caches, and looks them up again;
//! and the daemon starts with its fd limit raised as far as it may go.

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
