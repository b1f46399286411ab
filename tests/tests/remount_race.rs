//! A mount right after `fusermount3 -u` succeeds: the kernel ends the unmount before the
//! old daemon has finished its final sync and let go of the state dir, so the new daemon
//! waits for it instead of refusing.

use lossfs_tests::scratch::ScratchMount;
use lossfs_tests::{
    fusermount_u, is_lossfs_mounted, kill_child, unmount_all, wait_bounded, ChildGuard,
    MOUNT_TIMEOUT,
};
use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

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
fn start(dirs: &ScratchMount, stderr: PathBuf) -> Daemon {
    let err = File::create(&stderr).expect("create the daemon's stderr file");
    let child = dirs
        .lossfs()
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
    while !is_lossfs_mounted(&dirs.mnt) {
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
    // Made before the daemons, so dropped (unmounted and removed) after them.
    let dirs = ScratchMount::new("remount");
    let (root, mnt) = (&dirs.root, &dirs.mnt);
    let block = vec![0x5a_u8; 1 << 20];
    let mut daemon = start(&dirs, root.join("daemon0.stderr"));
    for round in 1..=20 {
        // Unsynced data gives the old daemon a final sync to do after the unmount.
        for i in 0..8 {
            let mut f = File::create(mnt.join(format!("f{i}"))).unwrap();
            f.write_all(&block).unwrap();
        }
        assert!(fusermount_u(mnt, false), "fusermount3 -u, round {round}");
        let next = start(&dirs, root.join(format!("daemon{round}.stderr")));
        let mut old = std::mem::replace(&mut daemon, next);
        let st = wait_bounded(&mut old.child.0, Duration::from_secs(15));
        assert!(
            st.is_some_and(|s| s.success()),
            "round {round}: the old daemon ended with {st:?}:\n{}",
            old.log()
        );
    }
    assert!(unmount_all(mnt), "final unmount");
    let st = wait_bounded(&mut daemon.child.0, Duration::from_secs(15));
    if st.is_none() {
        kill_child(&mut daemon.child.0);
    }
    assert!(st.is_some_and(|s| s.success()), "last daemon: {st:?}");
}
