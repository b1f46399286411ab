//! A mount right after `fusermount3 -u` succeeds: the kernel ends the unmount before the
//! old daemon has finished its final sync and let go of the state dir, so the new daemon
//! waits for it instead of refusing.

use lossfs_tests::{
    cache_args, check_preconditions, fusermount_u, is_lossfs_mounted, kill_child, lossfs_bin,
    unique_tmp_dir, unmount_all, wait_bounded, ChildGuard, MOUNT_TIMEOUT,
};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Unmounts and removes the test's directory at the end, also when the test fails.
struct Cleanup {
    root: PathBuf,
    mnt: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if unmount_all(&self.mnt) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

struct Daemon {
    child: ChildGuard,
    stderr: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Starts `lossfs -f` and waits until it mounted (or died: then panics with its log).
fn start(backing: &Path, mnt: &Path, stderr: PathBuf) -> Daemon {
    let err = File::create(&stderr).expect("create the daemon's stderr file");
    let child = Command::new(lossfs_bin())
        .arg(backing)
        .arg(mnt)
        .args(cache_args())
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn lossfs");
    let mut d = Daemon {
        child: ChildGuard(child),
        stderr,
    };
    let deadline = Instant::now() + MOUNT_TIMEOUT + Duration::from_secs(10);
    while !is_lossfs_mounted(mnt) {
        if let Ok(Some(st)) = d.child.0.try_wait() {
            panic!("lossfs exited ({st:?}) instead of mounting:\n{}", d.log());
        }
        assert!(
            Instant::now() < deadline,
            "lossfs did not mount within {:?}:\n{}",
            deadline.elapsed(),
            d.log()
        );
        thread::sleep(Duration::from_millis(5));
    }
    d
}

#[test]
fn mount_right_after_unmount_waits_for_the_old_daemon() {
    check_preconditions();
    let root = unique_tmp_dir("remount");
    let backing = root.join("backing");
    let mnt = root.join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    // Declared before the daemons, so dropped after them.
    let _cleanup = Cleanup {
        root: root.clone(),
        mnt: mnt.clone(),
    };
    let block = vec![0x5a_u8; 1 << 20];
    let mut daemon = start(&backing, &mnt, root.join("daemon0.stderr"));
    for round in 1..=20 {
        // Unsynced data gives the old daemon a final sync to do after the unmount.
        for i in 0..8 {
            let mut f = File::create(mnt.join(format!("f{i}"))).unwrap();
            f.write_all(&block).unwrap();
        }
        assert!(fusermount_u(&mnt, false), "fusermount3 -u, round {round}");
        let next = start(&backing, &mnt, root.join(format!("daemon{round}.stderr")));
        let mut old = std::mem::replace(&mut daemon, next);
        let st = wait_bounded(&mut old.child.0, Duration::from_secs(15));
        assert!(
            st.is_some_and(|s| s.success()),
            "round {round}: the old daemon ended with {st:?}:\n{}",
            old.log()
        );
    }
    assert!(unmount_all(&mnt), "final unmount");
    let st = wait_bounded(&mut daemon.child.0, Duration::from_secs(15));
    if st.is_none() {
        kill_child(&mut daemon.child.0);
    }
    assert!(st.is_some_and(|s| s.success()), "last daemon: {st:?}");
}
