//! The namespace models without a mount: changes made through [`Namespace`] on a temp
//! directory, then undone, committed or replayed after a simulated kill (dropping the state).

use super::*;
use crate::testdir::{require_root, TempDir};

/// Why most of these tests need root (the ones that make the journal reopen a file).
const JOURNAL_NEEDS_ROOT: &str =
    "the journal reopens files with open_by_handle_at, which needs CAP_DAC_READ_SEARCH";
use std::fs;
use std::os::unix::fs::MetadataExt;

struct Tmp {
    root: TempDir,
}

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let root = TempDir::new(&format!("ns-{tag}"));
        root.dir("backing");
        Tmp { root }
    }
    fn backing(&self) -> PathBuf {
        self.root.path().join("backing")
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.backing().join(rel)
    }
    fn open(&self, model: Model, rollback: bool) -> Mounted {
        let root = fs::File::open(self.backing()).unwrap();
        let state = self.p(".lossfs");
        let (journal, _) = Journal::open(
            &state,
            root.try_clone().unwrap().into(),
            &self.backing(),
            rollback,
        )
        .unwrap();
        let journal = Arc::new(journal);
        let (ns, report) = Namespace::open(
            &state,
            root.into(),
            &self.backing(),
            journal,
            model,
            rollback,
        )
        .unwrap();
        Mounted { ns, report }
    }
}

struct Mounted {
    ns: Arc<Namespace>,
    report: Option<Vec<NamespaceUndo>>,
}

/// A directory as `LossFs` would hand it over.
struct DirFd {
    fd: OwnedFd,
    key: FileKey,
    handle: FileHandle,
}

impl DirFd {
    fn new(p: &Path) -> DirFd {
        let fd: OwnedFd = fs::File::open(p).unwrap().into();
        let st = crate::sys::fstat(fd.as_fd()).unwrap();
        let handle = FileHandle::of_fd(fd.as_fd()).unwrap();
        DirFd {
            fd,
            key: key_of(&st),
            handle,
        }
    }
    fn parent(&self) -> Parent<'_> {
        Parent {
            key: self.key,
            handle: &self.handle,
            fd: self.fd.as_fd(),
        }
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn key_at(p: &Path) -> FileKey {
    let m = fs::symlink_metadata(p).unwrap();
    FileKey {
        dev: m.dev(),
        ino: m.ino(),
    }
}

/// Creates `name` in `dir` through the namespace, as `LossFs::create` does.
fn create_file(ns: &Namespace, dir: &Path, name: &str, content: &[u8]) {
    let d = DirFd::new(dir);
    let creating = ns.before_create(d.parent(), &c(name), Kind::File).unwrap();
    fs::write(dir.join(name), content).unwrap();
    creating.done(key_at(&dir.join(name)));
}

fn mkdir(ns: &Namespace, dir: &Path, name: &str) {
    let d = DirFd::new(dir);
    let creating = ns.before_create(d.parent(), &c(name), Kind::Dir).unwrap();
    fs::create_dir(dir.join(name)).unwrap();
    creating.done(key_at(&dir.join(name)));
}

fn rename(ns: &Namespace, from: &Path, name: &str, to: &Path, new_name: &str) {
    let (f, t) = (DirFd::new(from), DirFd::new(to));
    ns.rename(f.parent(), &c(name), t.parent(), &c(new_name), 0)
        .unwrap();
}

fn unlink(ns: &Namespace, dir: &Path, name: &str) {
    let d = DirFd::new(dir);
    ns.remove(d.parent(), &c(name), false).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lossfs")
        .collect();
    v.sort();
    v
}

#[test]
fn undo_reverses_every_kind_of_change() {
    require_root(JOURNAL_NEEDS_ROOT);
    let t = Tmp::new("undo");
    fs::write(t.p("data"), b"old").unwrap();
    fs::write(t.p("victim"), b"durable").unwrap();
    fs::create_dir(t.p("gone")).unwrap();
    let old_data = key_at(&t.p("data"));
    let m = t.open(Model::Posix, true);
    let ns = &m.ns;
    let b = t.backing();
    // write temp + rename over, unlink, rmdir, mkdir with a file, hard link.
    create_file(ns, &b, "tmp", b"new");
    rename(ns, &b, "tmp", &b, "data");
    unlink(ns, &b, "victim");
    ns.remove(DirFd::new(&b).parent(), &c("gone"), true)
        .unwrap();
    mkdir(ns, &b, "d");
    create_file(ns, &t.p("d"), "f", b"x");
    {
        let d = DirFd::new(&b);
        let creating = ns
            .before_create(d.parent(), &c("link"), Kind::HardLink)
            .unwrap();
        fs::hard_link(t.p("data"), t.p("link")).unwrap();
        creating.done(key_at(&t.p("link")));
    }
    assert_eq!(names(&b), vec!["d", "data", "link"]);
    assert_eq!(ns.uncommitted(), 7);
    let (undone, touched) = ns.undo_all();
    assert_eq!(undone.len(), 7, "{undone:?}");
    assert!(undone.iter().all(|u| u.error.is_none()), "{undone:?}");
    assert_eq!(undone[0].op, "link");
    assert_eq!(undone.last().map(|u| u.op.as_str()), Some("create"));
    assert!(touched.iter().any(|(_, n)| n == b"data"));
    assert_eq!(names(&b), vec!["data", "gone", "victim"]);
    assert_eq!(fs::read(t.p("data")).unwrap(), b"old");
    assert_eq!(
        key_at(&t.p("data")),
        old_data,
        "the replaced file itself came back"
    );
    assert_eq!(fs::read(t.p("victim")).unwrap(), b"durable");
    assert!(t.p("gone").is_dir());
    assert_eq!(ns.uncommitted(), 0);
    assert!(names(&t.p(".lossfs/graveyard")).is_empty());
}

#[test]
fn posix_dir_fsync_commits_its_changes_and_their_parent_chain() {
    require_root(JOURNAL_NEEDS_ROOT);
    let t = Tmp::new("posix");
    let m = t.open(Model::Posix, true);
    let ns = &m.ns;
    let b = t.backing();
    mkdir(ns, &b, "a");
    mkdir(ns, &t.p("a"), "b");
    create_file(ns, &t.p("a/b"), "seg1", b"1");
    create_file(ns, &b, "other", b"2");
    // fsync of the file's directory: commits the file and the creation of a and a/b.
    ns.dir_synced(key_at(&t.p("a/b"))).unwrap();
    assert_eq!(ns.uncommitted(), 1, "only 'other' waits (for the root)");
    // A rename across directories waits for both.
    rename(ns, &t.p("a/b"), "seg1", &t.p("a"), "seg1");
    ns.dir_synced(key_at(&t.p("a"))).unwrap();
    assert_eq!(ns.uncommitted(), 2);
    ns.file_synced().unwrap();
    assert_eq!(
        ns.uncommitted(),
        2,
        "a file fsync commits nothing in the posix model"
    );
    let (undone, _) = ns.undo_all();
    assert_eq!(undone.len(), 2, "{undone:?}");
    assert_eq!(names(&b), vec!["a"]);
    assert_eq!(names(&t.p("a/b")), vec!["seg1"]);
}

#[test]
fn journal_model_commits_everything_on_any_fsync() {
    require_root(JOURNAL_NEEDS_ROOT);
    let t = Tmp::new("journal");
    fs::write(t.p("old"), b"x").unwrap();
    let m = t.open(Model::Journal, true);
    let ns = &m.ns;
    let b = t.backing();
    create_file(ns, &b, "seg", b"1");
    unlink(ns, &b, "old");
    assert_eq!(names(&t.p(".lossfs/graveyard")), vec!["2"]);
    ns.file_synced().unwrap();
    assert_eq!(ns.uncommitted(), 0);
    assert!(
        names(&t.p(".lossfs/graveyard")).is_empty(),
        "commit deletes for real"
    );
    create_file(ns, &b, "seg2", b"2");
    let (undone, _) = ns.undo_all();
    assert_eq!(undone.len(), 1);
    assert_eq!(names(&b), vec!["seg"]);
}

#[test]
fn unlinking_one_hard_link_brings_back_exactly_that_name() {
    require_root(JOURNAL_NEEDS_ROOT);
    let t = Tmp::new("links");
    fs::write(t.p("a"), b"x").unwrap();
    fs::hard_link(t.p("a"), t.p("b")).unwrap();
    let m = t.open(Model::Posix, true);
    unlink(&m.ns, &t.backing(), "b");
    assert_eq!(names(&t.backing()), vec!["a"]);
    m.ns.undo_all();
    assert_eq!(names(&t.backing()), vec!["a", "b"]);
    assert_eq!(key_at(&t.p("a")), key_at(&t.p("b")));
}

#[test]
fn replay_after_a_kill_finishes_an_interrupted_undo_exactly_once() {
    require_root(JOURNAL_NEEDS_ROOT);
    let t = Tmp::new("replay");
    fs::write(t.p("data"), b"old").unwrap();
    fs::write(t.p("victim"), b"v").unwrap();
    {
        let m = t.open(Model::Posix, true);
        let ns = &m.ns;
        let b = t.backing();
        create_file(ns, &b, "tmp", b"new");
        rename(ns, &b, "tmp", &b, "data");
        unlink(ns, &b, "victim");
        // The undo of the newest change is done but not recorded, then the daemon dies.
        let st = ns.state.lock();
        let (seq, change) = st.log.live().iter().next_back().unwrap();
        let u = ns.undo_one(*seq, change);
        assert!(u.error.is_none(), "{u:?}");
        // Dropped without reset: the log and the graveyard stay as a kill leaves them.
    }
    assert_eq!(names(&t.backing()), vec!["data", "victim"]);
    let m = t.open(Model::Durable, true);
    let report = m.report.clone().expect("pending changes found");
    assert_eq!(report.len(), 3, "{report:?}");
    assert!(report.iter().all(|u| u.error.is_none()), "{report:?}");
    assert_eq!(names(&t.backing()), vec!["data", "victim"]);
    assert_eq!(fs::read(t.p("data")).unwrap(), b"old");
    drop(m);
    // A third mount finds nothing left to do.
    let m = t.open(Model::Posix, true);
    assert!(m.report.is_none());
}

#[test]
fn recover_keep_commits_what_a_killed_daemon_left() {
    let t = Tmp::new("keep");
    fs::write(t.p("victim"), b"v").unwrap();
    {
        let m = t.open(Model::Posix, true);
        create_file(&m.ns, &t.backing(), "new", b"n");
        unlink(&m.ns, &t.backing(), "victim");
    }
    let m = t.open(Model::Posix, false);
    assert_eq!(m.report.map(|r| r.len()), Some(0));
    assert_eq!(names(&t.backing()), vec!["new"]);
    assert!(names(&t.p(".lossfs/graveyard")).is_empty());
}

#[test]
fn failed_operations_leave_nothing_pending() {
    let t = Tmp::new("fail");
    fs::create_dir(t.p("full")).unwrap();
    fs::write(t.p("full/x"), b"").unwrap();
    fs::write(t.p("file"), b"").unwrap();
    let m = t.open(Model::Posix, true);
    let d = DirFd::new(&t.backing());
    let err = |r: io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        err(m.ns.remove(d.parent(), &c("full"), true)),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        err(m.ns.remove(d.parent(), &c("full"), false)),
        Some(libc::EISDIR)
    );
    assert_eq!(
        err(m.ns.remove(d.parent(), &c("file"), true)),
        Some(libc::ENOTDIR)
    );
    assert_eq!(
        err(m.ns.remove(d.parent(), &c("nope"), false)),
        Some(libc::ENOENT)
    );
    assert_eq!(
        err(m
            .ns
            .rename(d.parent(), &c("file"), d.parent(), &c("full"), 0)),
        Some(libc::EISDIR)
    );
    assert_eq!(
        err(m.ns.rename(d.parent(), &c("file"), d.parent(), &c("x"), 8)),
        Some(libc::EINVAL),
        "RENAME_WHITEOUT is refused"
    );
    {
        let _creating =
            m.ns.before_create(d.parent(), &c("file"), Kind::File)
                .unwrap();
        // Dropped without done(): EEXIST, say.
    }
    assert_eq!(m.ns.uncommitted(), 0);
    assert_eq!(names(&t.backing()), vec!["file", "full"]);
}

#[test]
fn dependencies_follow_names_subjects_and_parents() {
    let k = |ino| FileKey { dev: 1, ino };
    let dir = |ino| DirRef {
        key: k(ino),
        handle: FileHandle {
            handle_type: 1,
            bytes: vec![ino as u8],
        },
    };
    let create = |d, name: &str, made| Change::Create {
        kind: Kind::File,
        dir: dir(d),
        name: name.as_bytes().to_vec(),
        made: Some(k(made)),
    };
    let mut live = BTreeMap::new();
    live.insert(1, create(1, "a", 10)); // mkdir a (as a create of inode 10)
    live.insert(2, create(10, "f", 11)); // a/f
    live.insert(3, create(1, "other", 12));
    live.insert(4, create(1, "a2", 13));
    live.insert(
        5,
        Change::Remove {
            dir: dir(1),
            name: b"other".to_vec(),
            grave: "5".into(),
            victim: k(12),
        },
    );
    assert_eq!(
        dependencies(&live, vec![2]).into_iter().collect::<Vec<_>>(),
        vec![1, 2],
        "the parent's creation"
    );
    assert_eq!(
        dependencies(&live, vec![5]).into_iter().collect::<Vec<_>>(),
        vec![3, 5],
        "the same name and inode"
    );
}

#[test]
fn non_durable_models_need_the_state_dir_on_the_backing_filesystem() {
    let t = Tmp::new("xdev");
    let shm = Path::new("/dev/shm");
    let other = fs::metadata(shm).map(|m| m.dev()).unwrap_or_else(|e| {
        panic!("this test needs /dev/shm (a filesystem other than the temp dir's): {e}")
    });
    assert_ne!(
        other,
        fs::metadata(t.backing()).unwrap().dev(),
        "this test needs /dev/shm on another filesystem than {}",
        t.backing().display()
    );
    let shm_dir = tempfile::Builder::new()
        .prefix("lossfs-ns-xdev-")
        .tempdir_in(shm)
        .unwrap();
    let state = shm_dir.path().join("state");
    let root = fs::File::open(t.backing()).unwrap();
    let (journal, _) =
        Journal::open(&state, root.try_clone().unwrap().into(), &t.backing(), true).unwrap();
    let journal = Arc::new(journal);
    let open = |model| {
        Namespace::open(
            &state,
            root.try_clone().unwrap().into(),
            &t.backing(),
            journal.clone(),
            model,
            true,
        )
    };
    let err = open(Model::Posix).unwrap_err().to_string();
    assert!(err.contains("same filesystem as BACKING"), "{err}");
    assert!(open(Model::Durable).is_ok());
    drop(journal);
}

#[test]
fn exchange_and_rename_over_an_empty_dir_are_undone() {
    require_root(JOURNAL_NEEDS_ROOT);
    let t = Tmp::new("exchange");
    fs::write(t.p("a"), b"A").unwrap();
    fs::write(t.p("b"), b"B").unwrap();
    fs::create_dir(t.p("src")).unwrap();
    fs::write(t.p("src/in"), b"kept").unwrap();
    fs::create_dir(t.p("dst")).unwrap();
    let dst = key_at(&t.p("dst"));
    let m = t.open(Model::Posix, true);
    let d = DirFd::new(&t.backing());
    m.ns.rename(
        d.parent(),
        &c("a"),
        d.parent(),
        &c("b"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(fs::read(t.p("a")).unwrap(), b"B");
    rename(&m.ns, &t.backing(), "src", &t.backing(), "dst");
    assert_eq!(names(&t.backing()), vec!["a", "b", "dst"]);
    assert_eq!(fs::read(t.p("dst/in")).unwrap(), b"kept");
    let (undone, _) = m.ns.undo_all();
    assert!(undone.iter().all(|u| u.error.is_none()), "{undone:?}");
    assert_eq!(fs::read(t.p("a")).unwrap(), b"A");
    assert_eq!(fs::read(t.p("b")).unwrap(), b"B");
    assert_eq!(fs::read(t.p("src/in")).unwrap(), b"kept");
    assert_eq!(key_at(&t.p("dst")), dst, "the replaced directory is back");
    assert!(names(&t.p("dst")).is_empty());
}

/// What `LossFs` reports for the inode at `p`, or at an open `f` whose names may be gone.
fn visible_nlink(ns: &Namespace, f: &fs::File) -> u64 {
    let mut st = crate::sys::fstat(f.as_fd()).unwrap();
    ns.hide_graves(&mut st);
    st.st_nlink
}

#[test]
fn link_counts_ignore_the_graveyard_until_commit_and_after_undo() {
    for model in [Model::Journal, Model::Posix] {
        let t = Tmp::new(&format!("nlink-{}", model.name()));
        fs::write(t.p("a"), b"a").unwrap();
        fs::write(t.p("old"), b"old").unwrap();
        fs::create_dir(t.p("d")).unwrap();
        let m = t.open(model, true);
        let ns = &m.ns;
        let b = t.backing();
        let a = fs::File::open(t.p("a")).unwrap();
        let old = fs::File::open(t.p("old")).unwrap();
        let d = fs::File::open(t.p("d")).unwrap();
        fs::hard_link(t.p("a"), t.p("a2")).unwrap();
        assert_eq!(visible_nlink(ns, &a), 2);
        unlink(ns, &b, "a2");
        assert_eq!(
            visible_nlink(ns, &a),
            1,
            "{model:?}: unlink of one of two names"
        );
        unlink(ns, &b, "a");
        assert_eq!(
            visible_nlink(ns, &a),
            0,
            "{model:?}: open file with no name left"
        );
        create_file(ns, &b, "new", b"new");
        rename(ns, &b, "new", &b, "old");
        assert_eq!(
            visible_nlink(ns, &old),
            0,
            "{model:?}: the file a rename replaced"
        );
        ns.remove(DirFd::new(&b).parent(), &c("d"), true).unwrap();
        assert_eq!(visible_nlink(ns, &d), 0, "{model:?}: removed directory");
        ns.undo_all();
        assert_eq!(
            visible_nlink(ns, &a),
            2,
            "{model:?}: undone unlinks are names again"
        );
        assert_eq!(visible_nlink(ns, &old), 1);
        assert_eq!(visible_nlink(ns, &d), 2);
        unlink(ns, &b, "a");
        ns.commit_all().unwrap();
        assert_eq!(visible_nlink(ns, &a), 1, "{model:?}: committed unlink");
        assert!(ns.buried.lock().is_empty());
    }
}
