//! Scratch directories for unit tests: tempfile's (unique, removed on drop, also when the
//! test fails), named after the test so a leftover one tells where it came from.  And the
//! one check of the unit tests that need root, so that without root they fail at once
//! saying so, not later with a bare EPERM.

use std::path::{Path, PathBuf};

/// Fails the calling test unless it runs as root; `why` names the privileged call.
pub(crate) fn require_root(why: &str) {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "this unit test needs root ({why}) and runs as uid {euid}: run the tests as root, as \
         CI does (tests/README.md lists what runs without root)"
    );
}

pub(crate) struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lossfs-{tag}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a scratch directory for {tag}: {e}"));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// `name` under the directory, created (with its parents).
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }
}
