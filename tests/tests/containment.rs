//! Nothing outside BACKING is reachable through a lossfs mount: a symlink pointing outside is
//! handed to the kernel as a link (resolved in the caller's namespace, never followed by the
//! daemon), `..` at the mount root stays at the root, and the state directory (default
//! location BACKING/.lossfs) is neither visible nor writable by name.  Names with `/` never
//! reach the daemon through FUSE; the unit tests in fusefs/src/fs.rs check it refuses them.

use lossfs_tests::{
    cpath, last_err, output_text, read_all, renameat2, run_bounded, Mount, CMD_TIMEOUT,
};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::process::Command;

fn errno(r: std::io::Result<impl std::fmt::Debug>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

/// A symlink to an absolute path outside BACKING: readlink gives the target verbatim, the
/// operations that do not follow links act on the link, and the operations that do follow
/// resolve the target in the caller's mount namespace, not the daemon's.
#[test]
fn a_symlink_out_of_backing_is_a_link_the_daemon_never_follows() {
    let m = Mount::new(&[]);
    let outside = m.root.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"daemon's view").unwrap();
    let target = outside.to_str().unwrap().to_string();
    symlink(&target, m.path("esc")).unwrap();
    let before = fs::metadata(&outside).unwrap();

    // Returned as a link, verbatim.
    let md = fs::symlink_metadata(m.path("esc")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!(md.len(), target.len() as u64, "st_size of the link");
    assert_eq!(fs::read_link(m.path("esc")).unwrap(), outside);
    assert_eq!(fs::read_link(m.backing_path("esc")).unwrap(), outside);

    // Operations on the link itself stay on the link.
    let esc = cpath(&m.path("esc"));
    // SAFETY: valid C string; ids are plain numbers.
    let rc = unsafe { libc::lchown(esc.as_ptr(), 4321, 4321) };
    assert_eq!(rc, 0, "lchown of the link: {}", last_err());
    assert_eq!(
        fs::symlink_metadata(m.backing_path("esc")).unwrap().uid(),
        4321
    );
    let xattr_rc =
        // SAFETY: valid C strings and buffer.
        unsafe { libc::lsetxattr(esc.as_ptr(), c"user.x".as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(xattr_rc, -1, "user xattr set on a symlink");
    fs::hard_link(m.path("esc"), m.path("esc2")).unwrap();
    assert!(fs::symlink_metadata(m.backing_path("esc2"))
        .unwrap()
        .file_type()
        .is_symlink());
    fs::rename(m.path("esc2"), m.path("esc3")).unwrap();
    fs::remove_file(m.path("esc3")).unwrap();
    let after = fs::metadata(&outside).unwrap();
    assert_eq!(
        (after.uid(), after.mode(), after.nlink(), after.ino()),
        (before.uid(), before.mode(), before.nlink(), before.ino()),
        "the link's target outside BACKING changed"
    );
    assert_eq!(read_all(&outside.join("secret")), b"daemon's view");

    // Following the link is the caller's business: in a mount namespace where the target
    // is another directory, reads and creates through the link land there, which only
    // happens if the kernel (in the caller's namespace) resolves it and the daemon never does.
    let callers = m.root.join("callers_view");
    fs::create_dir(&callers).unwrap();
    fs::write(callers.join("secret"), b"caller's view").unwrap();
    let script = format!(
        "set -e; mount --bind '{c}' '{o}'; cat '{l}/secret'; echo created > '{l}/new'",
        c = callers.display(),
        o = outside.display(),
        l = m.path("esc").display()
    );
    let out = run_bounded(
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]),
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "unshare: {}", output_text(&out));
    assert_eq!(out.stdout, b"caller's view", "{}", output_text(&out));
    assert_eq!(read_all(&callers.join("new")), b"created\n");
    assert!(
        !outside.join("new").exists(),
        "created in the daemon's view"
    );
    assert!(!m.backing_path("new").exists());
}

/// `..` of the mount root is the parent of the mount point, whatever the path looks like:
/// never the backing directory's parent or anything in it.
#[test]
fn dotdot_at_the_mount_root_stays_at_the_root() {
    let m = Mount::new(&[]);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.root.join("beside_backing"), b"x").unwrap();
    let root_md = fs::metadata(&m.mnt).unwrap();
    for rel in ["d/..", "d/../d/..", "./d/../."] {
        let md = fs::metadata(m.path(rel)).unwrap();
        assert_eq!(
            (md.dev(), md.ino()),
            (root_md.dev(), root_md.ino()),
            "{rel} is not the mount root"
        );
    }
    // The mount's own ".." is the kernel's: the directory holding the mount point.
    assert_eq!(fs::canonicalize(m.path("..")).unwrap(), m.root);
    assert_eq!(
        fs::canonicalize(m.path("d/../../mnt/d")).unwrap(),
        m.path("d")
    );
    // An entry named ".." never lists the backing directory's siblings.
    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("d")]);
    // A symlink to ".." at the root goes where the kernel says, next to the mount point.
    symlink("..", m.path("up")).unwrap();
    assert_eq!(fs::canonicalize(m.path("up")).unwrap(), m.root);
    assert!(m.path("up/beside_backing").exists());
    assert!(!m.path("beside_backing").exists());
}

/// The default state directory BACKING/.lossfs: absent from readdir, lookup and stat, and
/// no name operation through the mount creates, replaces or removes it.
#[test]
fn the_state_dir_is_neither_visible_nor_writable() {
    let m = Mount::new(&[]);
    let state = m.backing_path(".lossfs");
    assert!(
        state.join("journal").is_file(),
        "state dir not where expected"
    );
    fs::write(m.path("f"), b"f").unwrap();
    fs::create_dir(m.path("d")).unwrap();

    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n == ".lossfs"),
        "readdir lists it: {names:?}"
    );
    let p = m.path(".lossfs");
    assert_eq!(errno(fs::symlink_metadata(&p), "lstat"), libc::ENOENT);
    assert_eq!(
        errno(fs::read(p.join("journal")), "read journal"),
        libc::ENOENT
    );
    assert_eq!(errno(fs::read_dir(&p), "opendir"), libc::ENOENT);
    assert_eq!(errno(fs::read_link(&p), "readlink"), libc::ENOENT);

    // Creating the name in any way is refused; so is renaming onto it.
    assert_eq!(errno(fs::create_dir(&p), "mkdir"), libc::EACCES);
    assert_eq!(errno(fs::write(&p, b"x"), "create"), libc::EACCES);
    assert_eq!(errno(symlink("f", &p), "symlink"), libc::EACCES);
    assert_eq!(errno(fs::hard_link(m.path("f"), &p), "link"), libc::EACCES);
    assert_eq!(
        errno(fs::rename(m.path("f"), &p), "rename file onto"),
        libc::EACCES
    );
    assert_eq!(
        errno(fs::rename(m.path("d"), &p), "rename dir onto"),
        libc::EACCES
    );
    // RENAME_EXCHANGE needs both names, one of them hidden.
    assert!(
        renameat2(&m.path("d"), &p, libc::RENAME_EXCHANGE).is_err(),
        "rename exchange with the state dir"
    );
    // Removing it: the kernel finds nothing to remove.
    assert_eq!(errno(fs::remove_dir_all(&p), "rmdir"), libc::ENOENT);
    assert_eq!(errno(fs::remove_file(&p), "unlink"), libc::ENOENT);

    // The state dir is as it was, and nothing leaked into the mount.
    assert!(state.is_dir() && state.join("journal").is_file());
    assert!(fs::symlink_metadata(state.join("journal"))
        .unwrap()
        .file_type()
        .is_file());
    assert_eq!(read_all(&m.path("f")), b"f");
    assert!(m.path("d").is_dir());
    // Only the top-level name is reserved: `.lossfs` in a subdirectory is an ordinary name.
    fs::create_dir(m.path("d/.lossfs")).unwrap();
    assert!(m.backing_path("d/.lossfs").is_dir());
    assert!(m.path("d/.lossfs").is_dir());
}
