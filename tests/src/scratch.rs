//! Directories for the tests that start lossfs themselves instead of through
//! [`Mount`](crate::Mount) (a daemon that detaches, `lossfs run`, a second daemon mounting
//! while the first still exits): a fresh backing directory and mount point, the command
//! lines that start lossfs on them, and at drop an unmount of whatever is still mounted there
//! and the removal of it all, also when the test fails.

use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::{cache_args, check_preconditions, lossfs_bin, unique_tmp_dir, unmount_all};

/// A backing directory and a mount point under a fresh directory of their own.
pub struct ScratchMount {
    /// The directory holding everything below (and whatever else the test puts there).
    pub root: PathBuf,
    /// Backing directory (empty).
    pub backing: PathBuf,
    /// Mount point (nothing mounted yet).
    pub mnt: PathBuf,
}

impl ScratchMount {
    /// Makes them under a new directory named after `tag`; panics if mounted tests cannot
    /// run here.
    pub fn new(tag: &str) -> ScratchMount {
        check_preconditions();
        let root = unique_tmp_dir(tag);
        let s = ScratchMount {
            backing: root.join("backing"),
            mnt: root.join("mnt"),
            root,
        };
        fs::create_dir(&s.backing).expect("mkdir backing");
        fs::create_dir(&s.mnt).expect("mkdir mnt");
        s
    }

    /// `lossfs BACKING MNT` (in the cache mode of the run: `LOSSFS_TEST_CACHE`), for the caller to add `-f`, options and its stdio to.
    pub fn lossfs(&self) -> Command {
        let mut cmd = Command::new(lossfs_bin());
        cmd.arg(&self.backing).arg(&self.mnt).args(cache_args());
        cmd
    }

    /// The arguments of `lossfs run --backing BACKING --mount MNT` after the binary, for
    /// the caller to add options, `--` and PROGRAM to (or to run under another command).
    pub fn run_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "run".into(),
            "--backing".into(),
            self.backing.clone().into(),
            "--mount".into(),
            self.mnt.clone().into(),
        ];
        args.extend(cache_args().map(OsString::from));
        args
    }
}

impl Drop for ScratchMount {
    fn drop(&mut self) {
        // Never remove recursively what may still be a live mount.
        if unmount_all(&self.mnt) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}
