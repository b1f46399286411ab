//! Permissions through a mount: a program that is not root gets, for every operation on a
//! file it may not touch, exactly the answer it gets on the backing directory itself, with
//! `allow_other` alone and with `allow_other,default_permissions`.  The daemon acts as
//! root on the backing directory, so any check the mount forgets shows up here as an
//! operation that succeeds through the mount and fails on the backing directory.
//!
//! Each case builds two identical trees in the backing directory, runs the same script as
//! an unprivileged user (setpriv) on one directly and on the other through the mount, and
//! compares the two answers operation by operation, including the owner, group and mode of
//! what the user may create.  access(2) is among them: the kernel answers it from the modes
//! (with `default_permissions` it never asks the daemon), so it must agree with the opens.

use lossfs_tests::{run_bounded, Mount, MountSetup, CMD_TIMEOUT, PYTHON};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// A group the user may be given as a supplementary group (staff on Debian).
const GROUP: u32 = 50;
/// Runs every operation on the tree at argv[1] and prints {operation: 0 or errno name}.
const SCRIPT: &str = r#"
import errno, json, os, sys
T = sys.argv[1]
res = {}
def p(*a):
    return os.path.join(T, *a)
def run(name, f):
    try:
        f()
        res[name] = 0
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
def read(path):
    with open(path, 'rb') as f:
        f.read()
def append(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b'x')
    finally:
        os.close(fd)
def create(path, mode=0o644):
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
def access(name, path, mode):
    res[name] = 0 if os.access(path, mode) else 'refused'
uid, gid = os.getuid(), os.getgid()
for what, mode in [('F', os.F_OK), ('R', os.R_OK), ('W', os.W_OK), ('X', os.X_OK)]:
    for name in ['secret', 'public', 'locked', 'groupdir', 'acl', 'sgid']:
        access('access %s %s' % (what, name), p(name), mode)
run('read secret', lambda: read(p('secret')))
run('read public', lambda: read(p('public')))
run('append public', lambda: append(p('public')))
run('open O_TRUNC public', lambda: os.close(os.open(p('public'), os.O_WRONLY | os.O_TRUNC)))
run('truncate public', lambda: os.truncate(p('public'), 0))
run('chmod public', lambda: os.chmod(p('public'), 0o666))
run('chown public', lambda: os.chown(p('public'), uid, -1))
run('chgrp public', lambda: os.chown(p('public'), -1, gid))
run('utime public to a time', lambda: os.utime(p('public'), (1, 1)))
run('utime public to now', lambda: os.utime(p('public')))
run('setxattr user public', lambda: os.setxattr(p('public'), 'user.x', b'1'))
run('setxattr trusted public', lambda: os.setxattr(p('public'), 'trusted.x', b'1'))
run('removexattr user public', lambda: os.removexattr(p('public'), 'user.y'))
run('unlink locked/victim', lambda: os.unlink(p('locked', 'victim')))
run('rename in locked', lambda: os.rename(p('locked', 'victim'), p('locked', 'v2')))
run('rename out of locked', lambda: os.rename(p('locked', 'victim'), p('open', 'v3')))
run('rmdir locked/sub', lambda: os.rmdir(p('locked', 'sub')))
run('link secret', lambda: os.link(p('secret'), p('open', 'lnk')))
run('create in locked', lambda: create(p('locked', 'new')))
run('mkdir in locked', lambda: os.mkdir(p('locked', 'd')))
run('symlink in locked', lambda: os.symlink('x', p('locked', 's')))
run('unlink sticky', lambda: os.unlink(p('open', 'rootfile')))
run('rename sticky', lambda: os.rename(p('open', 'rootfile'), p('open', 'r2')))
run('read acl', lambda: read(p('acl')))
run('append acl', lambda: append(p('acl')))
run('create in open', lambda: create(p('open', 'mine')))
run('chmod mine', lambda: os.chmod(p('open', 'mine'), 0o600))
run('create in groupdir', lambda: create(p('groupdir', 'mine')))
run('create setgid in sgid', lambda: create(p('sgid', 'mine'), 0o2775))
run('mkdir in sgid', lambda: os.mkdir(p('sgid', 'd'), 0o775))
for name in ['open/mine', 'groupdir/mine', 'sgid/mine', 'sgid/d']:
    try:
        st = os.lstat(p(*name.split('/')))
        res['owner of ' + name] = [st.st_uid, st.st_gid, oct(st.st_mode)]
    except OSError as e:
        res['owner of ' + name] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(res))
"#;

/// Operations the user may never do in these trees, whoever it is here.
const REFUSED: [&str; 26] = [
    "access R secret",
    "access W public",
    "access X public",
    "access W locked",
    "read secret",
    "append public",
    "open O_TRUNC public",
    "truncate public",
    "chmod public",
    "chown public",
    "chgrp public",
    "utime public to a time",
    "utime public to now",
    "setxattr user public",
    "setxattr trusted public",
    "removexattr user public",
    "unlink locked/victim",
    "rename in locked",
    "rename out of locked",
    "rmdir locked/sub",
    "link secret",
    "create in locked",
    "mkdir in locked",
    "symlink in locked",
    "unlink sticky",
    "rename sticky",
];

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    // SAFETY: valid C strings and a live buffer of value.len() bytes.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// A POSIX access ACL in the kernel's xattr format: (tag, permissions, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Builds the tree the script expects at `t` (as root, in the backing directory).
fn build_tree(t: &Path) {
    fs::create_dir(t).unwrap();
    set_mode(t, 0o755);
    let file = |rel: &str, mode: u32| {
        let p = t.join(rel);
        fs::write(&p, b"root's data\n").unwrap();
        set_mode(&p, mode);
        p
    };
    let dir = |rel: &str, mode: u32, gid: u32| {
        let p = t.join(rel);
        fs::create_dir(&p).unwrap();
        chown(&p, Some(0), Some(gid)).unwrap();
        set_mode(&p, mode);
        p
    };
    file("secret", 0o600);
    let public = file("public", 0o644);
    set_xattr(&public, "user.y", b"root's");
    dir("locked", 0o755, 0);
    file("locked/victim", 0o644);
    dir("locked/sub", 0o755, 0);
    dir("open", 0o1777, 0);
    file("open/rootfile", 0o644);
    dir("groupdir", 0o770, GROUP);
    dir("sgid", 0o2777, GROUP);
    // user::rw- user:1:rw- group::--- mask::rw- other::---: the mode's group bits show the
    // mask (rw), but the owning group's entry grants nothing.
    let a = file("acl", 0o660);
    set_xattr(
        &a,
        "system.posix_acl_access",
        &acl(&[(1, 6, 0), (2, 6, 1), (4, 0, 0), (0x10, 6, 0), (0x20, 0, 0)]),
    );
    assert_eq!(
        fs::metadata(&a).unwrap().permissions().mode() & 0o777,
        0o660,
        "the ACL's mask is the group bits"
    );
}

/// Runs the script as the user `setpriv_args` describe on the tree at `tree`.
fn run_as(setpriv_args: &[&str], tree: &Path) -> serde_json::Map<String, serde_json::Value> {
    assert!(
        Path::new(PYTHON).is_file(),
        "{PYTHON} is missing: these tests run a python3 script as user nobody (apt-get \
         install python3)"
    );
    let out = run_bounded(
        Command::new("setpriv")
            .args(setpriv_args)
            .arg("--")
            .arg(PYTHON)
            .arg("-c")
            .arg(SCRIPT)
            .arg(tree)
            .current_dir("/"),
        CMD_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "script as {setpriv_args:?} on {}: {:?}\nstdout: {}\nstderr: {}",
        tree.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout) {
        Ok(serde_json::Value::Object(m)) => m,
        r => panic!(
            "script output is not a JSON object ({r:?}): {}",
            String::from_utf8_lossy(&out.stdout)
        ),
    }
}

/// One user: the same script on a tree of the backing directory and on its twin through
/// the mount; every answer must be the same.
fn compare(m: &Mount, who: &str, setpriv_args: &[&str]) {
    let direct = m.backing.join(format!("{who}-direct"));
    let via = format!("{who}-via");
    build_tree(&direct);
    build_tree(&m.backing.join(&via));
    let expected = run_as(setpriv_args, &direct);
    let got = run_as(setpriv_args, &m.path(&via));
    // The trees hold what the script needs: the refused operations are refused on the
    // backing directory, and reading a public file works.
    for op in REFUSED {
        assert_ne!(
            expected.get(op),
            Some(&serde_json::json!(0)),
            "{who}: {op} succeeds on the backing directory itself; the tree is wrong"
        );
    }
    assert_eq!(expected.get("read public"), Some(&serde_json::json!(0)));
    let mut diffs = Vec::new();
    for (op, want) in &expected {
        let have = got.get(op).unwrap_or(&serde_json::Value::Null);
        if have != want {
            diffs.push(format!(
                "  {op}: backing directory {want}, through the mount {have}"
            ));
        }
    }
    assert!(
        diffs.is_empty() && got.len() == expected.len(),
        "{who} on a mount with -o {}: answers differ from the backing directory's:\n{}\n\
         backing: {expected:?}\nmount: {got:?}",
        m.opts.join(","),
        diffs.join("\n")
    );
}

fn every_user(opts: &[&str]) {
    let m = Mount::new(opts);
    for p in [&m.root, &m.backing] {
        set_mode(p, 0o755);
    }
    compare(
        &m,
        "nobody",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
    );
    // Supplementary groups decide the creates in groupdir and the set-group-id bit in sgid.
    compare(
        &m,
        "nobody-staff",
        &[
            "--reuid=65534",
            "--regid=65534",
            &format!("--groups={GROUP}"),
            "--inh-caps=-all",
        ],
    );
    // Group root by the ACL's owning-group entry is refused, whatever the mode bits say.
    compare(
        &m,
        "nobody-gid0",
        &[
            "--reuid=65534",
            "--regid=0",
            "--clear-groups",
            "--inh-caps=-all",
        ],
    );
}

#[test]
fn allow_other_alone_refuses_what_the_backing_refuses() {
    every_user(&["allow_other"]);
}

#[test]
fn allow_other_with_default_permissions_refuses_what_the_backing_refuses() {
    every_user(&["allow_other", "default_permissions"]);
}

/// A BACKING on a noexec file system runs nothing, so neither does its mount (fuser mounts
/// nosuid and nodev always; noexec is taken from BACKING).
#[test]
fn a_noexec_backing_makes_a_noexec_mount() {
    let m = Mount::new_with(
        &["allow_other"],
        MountSetup {
            prepare_backing: Some(Box::new(|b: &Path| {
                let out = run_bounded(
                    Command::new("mount")
                        .args(["-t", "tmpfs", "-o", "noexec,size=1m,mode=755"])
                        .arg("lossfs-test")
                        .arg(b),
                    CMD_TIMEOUT,
                );
                assert!(out.status.success(), "mount tmpfs: {out:?}");
            })),
            ..MountSetup::default()
        },
    );
    let script = m.backing.join("run.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    set_mode(&script, 0o755);
    let direct = Command::new(&script).status().map_err(|e| e.raw_os_error());
    let via = Command::new(m.path("run.sh"))
        .status()
        .map_err(|e| e.raw_os_error());
    assert!(direct.is_err(), "BACKING is noexec, yet it ran: {direct:?}");
    assert_eq!(
        via.map(|s| s.code()),
        direct.map(|s| s.code()),
        "through the mount"
    );
}
