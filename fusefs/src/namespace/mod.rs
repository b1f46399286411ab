//! Namespace durability models (`-o metadata=durable|journal|posix`): which creates,
//! removals and renames a power cut undoes, and the undo log and graveyard that make that
//! possible with write-through name operations.
//!
//! - `durable`: every name change persists at once; this module is not used at all.
//! - `journal`: changes persist in order; an fsync, fdatasync or fsyncdir of anything on the
//!   mount, `lossctl sync`, or the periodic commit (`commit=SECONDS`) commits every earlier
//!   change.
//! - `posix`: a change persists when its parent directory is fsynced (both parents for a
//!   rename), or by `lossctl sync`.  Committing a change also commits every earlier pending
//!   change it depends on: those that made, moved or removed one of its parent directories
//!   (so the creation of the parent chain comes along), those that touched one of the same
//!   names, and those that made, moved or removed the same inode.
//!
//! Mechanism.  Nothing is destroyed before it is committed: an unlink or rmdir moves the
//! entry into `state_dir/graveyard` (same filesystem as BACKING, so `renameat` keeps the same
//! inode: open fds keep working and the data journal, keyed by the inode, still rolls its
//! content back), and a rename over an existing entry first links (a directory: moves) that
//! entry into the graveyard.  Each change is written to the undo log (`state_dir/namespace`,
//! format in the private `log` module) before it is made.  Commit writes `D seq`, then
//! deletes the change's graveyard entries for real.  Undo (power cut, or replay after a
//! killed daemon) walks the pending changes newest first: creations are moved to the
//! graveyard and deleted, removed entries are renamed back, renames are renamed back and the
//! entry they replaced returns.
//! Each undo step checks the inode it expects before acting and is followed by `D seq`, so a
//! replay interrupted half way finishes the job exactly once.
//!
//! A separate log rather than new record kinds in the data journal: the data journal is reset
//! by every `lossctl sync` and power cut and compacted per file, while namespace changes live
//! by their own commit rule and need their own order; the two are never needed in the same
//! step (a power cut rolls data back first, by inode, wherever the inode's names are, then
//! undoes names).

mod log;
mod path;
#[cfg(test)]
mod tests;

pub use self::log::Kind;
use self::log::{Change, DirRef, NsLog, Record};
use crate::error::Context as _;
use crate::filekey::FileKey;
use crate::handle::FileHandle;
use crate::journal::Journal;
use crate::report::NamespaceUndo;
use crate::sys;
use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CStr, CString};
use std::fs::DirBuilder;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Which namespace durability model a mount follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Model {
    #[default]
    Durable,
    Journal,
    Posix,
}

impl Model {
    pub fn parse(s: &str) -> Option<Model> {
        Some(match s {
            "durable" => Model::Durable,
            "journal" => Model::Journal,
            "posix" => Model::Posix,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Model::Durable => "durable",
            Model::Journal => "journal",
            Model::Posix => "posix",
        }
    }
}

/// A parent directory as `LossFs` holds it: identity, persistent handle, an fd to act on.
#[derive(Clone, Copy)]
pub struct Parent<'a> {
    pub key: FileKey,
    pub handle: &'a FileHandle,
    pub fd: BorrowedFd<'a>,
}

impl Parent<'_> {
    fn dir_ref(&self) -> DirRef {
        DirRef {
            key: self.key,
            handle: self.handle.clone(),
        }
    }
}

struct State {
    log: NsLog,
    next_seq: u64,
    /// Posix model: the parent directories each pending change still waits for.
    waiting: HashMap<u64, Vec<FileKey>>,
}

/// The namespace undo state of one mount (`Send + Sync`).  Every tracked change holds the
/// one mutex from its log record to its syscall, so the log order is the order of changes.
pub struct Namespace {
    model: Model,
    root: OwnedFd,
    root_path: PathBuf,
    graveyard: OwnedFd,
    graveyard_path: PathBuf,
    journal: Arc<Journal>,
    state: Mutex<State>,
    /// Graveyard links per inode of the pending changes: programs see link counts as if the
    /// graveyard did not exist.  Its own lock, so attribute requests never wait for a name
    /// operation's syscalls.
    buried: Mutex<HashMap<FileKey, u32>>,
}

fn cname(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn key_of(st: &libc::stat) -> FileKey {
    FileKey {
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

/// True when `name` in `dir` is the inode `key`.
fn holds(dir: BorrowedFd<'_>, name: &CStr, key: FileKey) -> io::Result<bool> {
    Ok(sys::stat_at(dir, name)?.is_some_and(|st| key_of(&st) == key))
}

impl Namespace {
    /// Opens the namespace undo state in `state_dir` (whose lock the data journal already
    /// holds) and settles what a killed daemon left: `rollback = true` undoes every pending
    /// change, `false` commits them.  Returns what was undone (`None` if nothing was pending).
    /// `backing_root` must be a non-`O_PATH` fd of BACKING (for `open_by_handle_at`).  A
    /// model other than `durable` needs the state dir on BACKING's filesystem.
    pub fn open(
        state_dir: &Path,
        backing_root: OwnedFd,
        backing_root_path: &Path,
        journal: Arc<Journal>,
        model: Model,
        rollback: bool,
    ) -> io::Result<(Arc<Namespace>, Option<Vec<NamespaceUndo>>)> {
        let graveyard_path = state_dir.join("graveyard");
        DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&graveyard_path)
            .ctx_path("creating", &graveyard_path)?;
        let graveyard =
            std::fs::File::open(&graveyard_path).ctx_path("opening", &graveyard_path)?;
        if model != Model::Durable {
            let g = graveyard.metadata().ctx_path("stat", &graveyard_path)?;
            let r = sys::fstat(backing_root.as_fd()).ctx_path("stat", backing_root_path)?;
            if g.dev() != r.st_dev {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "metadata={} needs the state dir on the same filesystem as BACKING \
                         {} (unlinked files are kept in {} until committed); choose a \
                         state_dir inside BACKING or on its filesystem",
                        model.name(),
                        backing_root_path.display(),
                        graveyard_path.display()
                    ),
                ));
            }
        }
        let root_path = std::fs::canonicalize(backing_root_path)
            .unwrap_or_else(|_| backing_root_path.to_path_buf());
        let (log, live) = NsLog::open(&state_dir.join("namespace"))?;
        let ns = Namespace {
            model,
            root: backing_root,
            root_path,
            graveyard: graveyard.into(),
            graveyard_path,
            journal,
            state: Mutex::new(State {
                log,
                next_seq: 1,
                waiting: HashMap::new(),
            }),
            buried: Mutex::new(HashMap::new()),
        };
        let report = if live.is_empty() {
            None
        } else {
            tracing::warn!(
                changes = live.len(),
                rollback,
                "namespace: found pending changes left by a killed lossfs"
            );
            let mut st = ns.state.lock();
            st.next_seq = live.keys().next_back().map_or(1, |s| s + 1);
            let mut undone = Vec::new();
            if rollback {
                for (&seq, c) in live.iter().rev() {
                    undone.push(ns.undo_one(seq, c));
                    // Recorded step by step: a daemon killed during this replay leaves the
                    // next mount only the steps not done yet.
                    st.log.append(&Record::Done { seq })?;
                }
            }
            Some(undone)
        };
        // Settled either way: what is left in the graveyard is committed.
        ns.state.lock().log.reset()?;
        ns.clear_graveyard();
        Ok((Arc::new(ns), report))
    }

    pub fn model(&self) -> Model {
        self.model
    }

    /// In the journal model with `every > 0`, commits everything pending every `every`; the
    /// thread ends once the namespace is dropped.
    pub fn start_periodic_commit(self: &Arc<Self>, every: Duration) -> io::Result<()> {
        if self.model != Model::Journal || every.is_zero() {
            return Ok(());
        }
        let weak: Weak<Namespace> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("lossfs-ns-commit".into())
            .spawn(move || {
                let mut last = Instant::now();
                loop {
                    std::thread::sleep(every.min(Duration::from_millis(100)));
                    let Some(ns) = weak.upgrade() else { return };
                    if last.elapsed() >= every {
                        last = Instant::now();
                        if let Err(e) = ns.commit_all() {
                            tracing::warn!(error = %e, "namespace: periodic commit failed");
                        }
                    }
                }
            })
            .map(|_| ())
            .ctx("starting the periodic namespace commit thread")
            .map_err(io::Error::from)
    }

    /// Number of changes not yet committed.
    pub fn uncommitted(&self) -> usize {
        self.state.lock().log.live().len()
    }

    fn begin(&self, change: Change) -> io::Result<(MutexGuard<'_, State>, u64)> {
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.log.append(&Record::Change { seq, change })?;
        Ok((st, seq))
    }

    /// Change `seq` took effect: in the posix model it now waits for its parents' fsync.
    fn made(&self, st: &mut State, seq: u64) {
        let Some(c) = st.log.live().get(&seq) else {
            return;
        };
        let buried = c.buried();
        if !buried.is_empty() {
            let mut b = self.buried.lock();
            for k in buried {
                *b.entry(k).or_default() += 1;
            }
        }
        if self.model == Model::Posix {
            let parents = c.parents();
            st.waiting.insert(seq, parents);
        }
    }

    /// The graveyard entry of `key` is gone (committed).
    fn unbury(&self, key: FileKey) {
        let mut b = self.buried.lock();
        if let Some(n) = b.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                b.remove(&key);
            }
        }
    }

    /// Corrects the backing `st` of an inode (real `st_ino`) to what a program sees: the
    /// graveyard's links do not count, and a directory or file whose only names are in the
    /// graveyard has none (as an unlinked open file has on a real filesystem).
    pub fn hide_graves(&self, st: &mut libc::stat) {
        let b = self.buried.lock();
        if b.is_empty() {
            return;
        }
        if let Some(&n) = b.get(&key_of(st)) {
            st.st_nlink = if sys::is_dir(st) {
                0
            } else {
                st.st_nlink.saturating_sub(n.into())
            };
        }
    }

    /// Change `seq` did not happen after all.
    fn cancel(&self, st: &mut State, seq: u64) {
        if let Err(e) = st.log.append(&Record::Done { seq }) {
            // The record stays pending; its undo finds nothing to do.
            tracing::warn!(seq, error = %e, "namespace: cannot cancel a failed change");
        }
    }

    /// Logs an upcoming creation of `name` in `parent`; the caller makes the entry and tells
    /// the returned [`Creating`] what came of it.  Holds the namespace lock until then.
    pub fn before_create(
        &self,
        parent: Parent<'_>,
        name: &CStr,
        kind: Kind,
    ) -> io::Result<Creating<'_>> {
        let (st, seq) = self.begin(Change::Create {
            kind,
            dir: parent.dir_ref(),
            name: name.to_bytes().to_vec(),
            made: None,
        })?;
        Ok(Creating {
            ns: self,
            st: Some(st),
            seq,
        })
    }

    /// unlink (`rmdir = false`) or rmdir of `name`: moves the entry into the graveyard.
    pub fn remove(&self, parent: Parent<'_>, name: &CStr, rmdir: bool) -> io::Result<()> {
        // Locked before the checks: no creation through the mount can slip into a directory
        // found empty.
        let mut st = self.state.lock();
        let victim = sys::stat_at(parent.fd, name)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        match (rmdir, sys::is_dir(&victim)) {
            (true, false) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            (false, true) => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
            (true, true) if !sys::dir_is_empty(parent.fd, name)? => {
                return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY))
            }
            _ => {}
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let grave = seq.to_string();
        st.log.append(&Record::Change {
            seq,
            change: Change::Remove {
                dir: parent.dir_ref(),
                name: name.to_bytes().to_vec(),
                grave: grave.clone(),
                victim: key_of(&victim),
            },
        })?;
        let g = cname(grave.as_bytes())?;
        match sys::rename_at(parent.fd, name, self.graveyard.as_fd(), &g, 0) {
            Ok(()) => {
                self.made(&mut st, seq);
                Ok(())
            }
            Err(e) => {
                self.cancel(&mut st, seq);
                Err(e)
            }
        }
    }

    /// rename(2) with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE; others are refused with
    /// EINVAL).  An entry it would replace is kept in the graveyard.
    pub fn rename(
        &self,
        from: Parent<'_>,
        name: &CStr,
        to: Parent<'_>,
        new_name: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let (noreplace, exchange) = (libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE);
        if flags & !(noreplace | exchange) != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut st = self.state.lock();
        let src = sys::stat_at(from.fd, name)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let dst = sys::stat_at(to.fd, new_name)?;
        if let Some(d) = &dst {
            if key_of(d) == key_of(&src) {
                // Two names of one inode: rename(2) does nothing, and neither do we.
                return sys::rename_at(from.fd, name, to.fd, new_name, flags);
            }
        }
        let replaced = match &dst {
            Some(d) if flags == 0 => {
                match (sys::is_dir(&src), sys::is_dir(d)) {
                    (false, true) => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
                    (true, false) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
                    (true, true) if !sys::dir_is_empty(to.fd, new_name)? => {
                        return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY))
                    }
                    _ => {}
                }
                Some(*d)
            }
            _ => None,
        };
        let exchanged = match (&dst, flags & exchange != 0) {
            (Some(d), true) => Some(key_of(d)),
            // The kernel answers ENOENT itself.
            _ => None,
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        let grave = seq.to_string();
        st.log.append(&Record::Change {
            seq,
            change: Change::Rename {
                from: from.dir_ref(),
                from_name: name.to_bytes().to_vec(),
                to: to.dir_ref(),
                to_name: new_name.to_bytes().to_vec(),
                moved: key_of(&src),
                replaced: replaced.map(|d| (grave.clone(), key_of(&d))),
                exchange: exchanged,
            },
        })?;
        let g = cname(grave.as_bytes())?;
        let kept = match &replaced {
            // A directory cannot be linked: move it aside (the name is briefly absent).
            Some(d) if sys::is_dir(d) => {
                sys::rename_at(to.fd, new_name, self.graveyard.as_fd(), &g, 0)
            }
            // A second name keeps the file while rename(2) replaces it atomically.
            Some(_) => sys::link_at(to.fd, new_name, self.graveyard.as_fd(), &g),
            None => Ok(()),
        };
        if let Err(e) = kept {
            self.cancel(&mut st, seq);
            return Err(e);
        }
        match sys::rename_at(from.fd, name, to.fd, new_name, flags) {
            Ok(()) => {
                self.made(&mut st, seq);
                Ok(())
            }
            Err(e) => {
                let back = match &replaced {
                    Some(d) if sys::is_dir(d) => {
                        sys::rename_at(self.graveyard.as_fd(), &g, to.fd, new_name, 0)
                    }
                    Some(_) => sys::unlink_at(self.graveyard.as_fd(), &g, false),
                    None => Ok(()),
                };
                if let Err(b) = back {
                    tracing::warn!(
                        error = %b,
                        "namespace: cannot put back the entry a failed rename would replace"
                    );
                }
                self.cancel(&mut st, seq);
                Err(e)
            }
        }
    }

    /// fsync/fdatasync of a file: commits everything in the journal model.
    pub fn file_synced(&self) -> io::Result<()> {
        match self.model {
            Model::Journal => self.commit_all().map(|_| ()),
            _ => Ok(()),
        }
    }

    /// fsyncdir of `dir`: commits everything in the journal model; in the posix model the
    /// changes that waited for `dir` only (and what they depend on).
    pub fn dir_synced(&self, dir: FileKey) -> io::Result<()> {
        match self.model {
            Model::Journal => self.commit_all().map(|_| ()),
            Model::Posix => {
                let mut st = self.state.lock();
                let mut ready = Vec::new();
                for (&seq, w) in st.waiting.iter_mut() {
                    w.retain(|k| *k != dir);
                    if w.is_empty() {
                        ready.push(seq);
                    }
                }
                if ready.is_empty() {
                    return Ok(());
                }
                let set = dependencies(st.log.live(), ready);
                self.commit(&mut st, set).map(|_| ())
            }
            Model::Durable => Ok(()),
        }
    }

    /// Commits every pending change (`lossctl sync`, a clean unmount, the journal model's
    /// commits); returns how many.
    pub fn commit_all(&self) -> io::Result<usize> {
        let mut st = self.state.lock();
        let all: BTreeSet<u64> = st.log.live().keys().copied().collect();
        self.commit(&mut st, all)
    }

    fn commit(&self, st: &mut State, seqs: BTreeSet<u64>) -> io::Result<usize> {
        let mut n = 0;
        for seq in seqs {
            let Some(change) = st.log.live().get(&seq).cloned() else {
                continue;
            };
            // Record first: a daemon killed before the deletion leaves a grave the next
            // mount clears, never a pending change whose grave is gone.
            st.log.append(&Record::Done { seq })?;
            st.waiting.remove(&seq);
            for grave in change.graves() {
                self.delete_grave(grave);
            }
            for k in change.buried() {
                self.unbury(k);
            }
            n += 1;
        }
        Ok(n)
    }

    /// Deletes a graveyard entry for real.  A regular file losing its last name has nothing
    /// left to roll back: its data journal state goes with it.
    fn delete_grave(&self, grave: &str) {
        let Ok(g) = cname(grave.as_bytes()) else {
            return;
        };
        match sys::stat_at(self.graveyard.as_fd(), &g) {
            Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 1 => {
                let fd = sys::open_path_at(self.graveyard.as_fd(), &g);
                if let Ok(handle) = fd.and_then(|fd| FileHandle::of_fd(fd.as_fd())) {
                    if let Err(e) = self.journal.lock(key_of(&st), &handle).mark_durable() {
                        tracing::warn!(error = %e, "namespace: dropping a deleted file's state");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(grave, error = %e, "namespace: stat of a graveyard entry"),
        }
        remove_path(&self.graveyard_path.join(grave));
    }

    fn clear_graveyard(&self) {
        match std::fs::read_dir(&self.graveyard_path) {
            Ok(entries) => {
                for e in entries.flatten() {
                    remove_path(&e.path());
                }
            }
            Err(e) => tracing::warn!(
                dir = %self.graveyard_path.display(),
                error = %e,
                "namespace: cannot list the graveyard"
            ),
        }
    }

    /// Power cut: undoes every pending change, newest first.  The caller has frozen every
    /// operation and rolled file data back already.  Returns the report entries and the
    /// (parent directory, name) pairs whose kernel dentries are now stale.
    pub fn undo_all(&self) -> (Vec<NamespaceUndo>, Vec<(FileKey, Vec<u8>)>) {
        let mut st = self.state.lock();
        let live: Vec<(u64, Change)> = st
            .log
            .live()
            .iter()
            .rev()
            .map(|(s, c)| (*s, c.clone()))
            .collect();
        let mut out = Vec::new();
        let mut touched = Vec::new();
        for (seq, change) in live {
            out.push(self.undo_one(seq, &change));
            touched.extend(change.names().into_iter().map(|(k, n)| (k, n.to_vec())));
            if let Err(e) = st.log.append(&Record::Done { seq }) {
                tracing::warn!(seq, error = %e, "namespace: cannot record an undo");
            }
        }
        st.waiting.clear();
        self.buried.lock().clear();
        if let Err(e) = st.log.reset() {
            tracing::warn!(error = %e, "namespace: cannot reset the log");
        }
        drop(st);
        self.clear_graveyard();
        (out, touched)
    }

    fn open_dir(&self, d: &DirRef) -> io::Result<OwnedFd> {
        d.handle
            .open(self.root.as_fd(), libc::O_PATH | libc::O_DIRECTORY)
            .ctx_ino("opening directory", d.key.ino)
            .map_err(io::Error::from)
    }

    /// Undoes one change; never fails, the report entry says what went wrong.
    fn undo_one(&self, seq: u64, change: &Change) -> NamespaceUndo {
        let mut u = NamespaceUndo::default();
        if let Err(e) = self.try_undo(seq, change, &mut u) {
            tracing::warn!(seq, error = %e, "namespace: change not undone");
            u.error = Some(e.to_string());
        }
        u
    }

    fn path_in(&self, dir: &OwnedFd, name: &[u8]) -> String {
        path::join(
            path::dir_path(dir.as_fd(), &self.root_path).as_deref(),
            name,
        )
    }

    fn try_undo(&self, seq: u64, change: &Change, u: &mut NamespaceUndo) -> io::Result<()> {
        let gy = self.graveyard.as_fd();
        match change {
            Change::Create {
                kind,
                dir,
                name,
                made,
            } => {
                u.op = kind.op().into();
                let d = self.open_dir(dir)?;
                u.path = self.path_in(&d, name);
                let n = cname(name)?;
                let Some(key) = made else {
                    // Killed between the log record and the syscall's end: whatever is at
                    // the name may have been there before, so it stays.
                    return Err(io::Error::other(
                        "the daemon died while creating it: left in place",
                    ));
                };
                if !holds(d.as_fd(), &n, *key)? {
                    return Ok(()); // already gone
                }
                if *kind == Kind::HardLink {
                    return sys::unlink_at(d.as_fd(), &n, false);
                }
                let g = cname(format!("u{seq}").as_bytes())?;
                sys::rename_at(d.as_fd(), &n, gy, &g, 0)?;
                remove_path(&self.graveyard_path.join(format!("u{seq}")));
                Ok(())
            }
            Change::Remove {
                dir,
                name,
                grave,
                victim,
            } => {
                let d = self.open_dir(dir)?;
                u.path = self.path_in(&d, name);
                let n = cname(name)?;
                let g = cname(grave.as_bytes())?;
                u.op = match sys::stat_at(gy, &g)? {
                    Some(st) if sys::is_dir(&st) => "rmdir",
                    Some(_) => "unlink",
                    None => {
                        u.op = "unlink".into();
                        if holds(d.as_fd(), &n, *victim)? {
                            return Ok(()); // already back
                        }
                        return Err(io::Error::other("the removed entry is gone"));
                    }
                }
                .into();
                sys::rename_at(gy, &g, d.as_fd(), &n, libc::RENAME_NOREPLACE)
            }
            Change::Rename {
                from,
                from_name,
                to,
                to_name,
                moved,
                replaced,
                exchange,
            } => {
                u.op = "rename".into();
                let f = self.open_dir(from)?;
                let t = self.open_dir(to)?;
                u.path = self.path_in(&f, from_name);
                u.to = Some(self.path_in(&t, to_name));
                let (fnm, tnm) = (cname(from_name)?, cname(to_name)?);
                if let Some(other) = exchange {
                    if holds(t.as_fd(), &tnm, *moved)? && holds(f.as_fd(), &fnm, *other)? {
                        sys::rename_at(t.as_fd(), &tnm, f.as_fd(), &fnm, libc::RENAME_EXCHANGE)?;
                    }
                    return Ok(());
                }
                if holds(t.as_fd(), &tnm, *moved)? {
                    sys::rename_at(t.as_fd(), &tnm, f.as_fd(), &fnm, libc::RENAME_NOREPLACE)?;
                } else if !holds(f.as_fd(), &fnm, *moved)? {
                    return Err(io::Error::other("the renamed entry is gone"));
                }
                if let Some((grave, rkey)) = replaced {
                    let g = cname(grave.as_bytes())?;
                    if holds(t.as_fd(), &tnm, *rkey)? {
                        // Killed before the rename itself: only the extra name goes.
                        if sys::stat_at(gy, &g)?.is_some() {
                            remove_path(&self.graveyard_path.join(grave));
                        }
                    } else if sys::stat_at(gy, &g)?.is_some() {
                        sys::rename_at(gy, &g, t.as_fd(), &tnm, libc::RENAME_NOREPLACE)?;
                    } else {
                        return Err(io::Error::other("the replaced entry is gone"));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Removes a graveyard entry whatever its type (a directory with what it holds).
fn remove_path(p: &Path) {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        tracing::warn!(
            path = %p.display(),
            error = %e,
            "namespace: cannot delete a graveyard entry"
        );
    }
}

/// `ready` plus every earlier pending change they depend on, transitively (the rule in the
/// module header).  Indexed by inode and by name, so a directory fsync with many pending
/// changes costs what the matches cost, not the square of the pending count.
fn dependencies(live: &BTreeMap<u64, Change>, ready: Vec<u64>) -> BTreeSet<u64> {
    let mut by_inode: HashMap<FileKey, Vec<u64>> = HashMap::new();
    let mut by_name: HashMap<(FileKey, &[u8]), Vec<u64>> = HashMap::new();
    for (&seq, c) in live {
        for k in c.subjects() {
            by_inode.entry(k).or_default().push(seq);
        }
        for n in c.names() {
            by_name.entry(n).or_default().push(seq);
        }
    }
    let mut set: BTreeSet<u64> = BTreeSet::new();
    let mut work = ready;
    while let Some(s) = work.pop() {
        if !set.insert(s) {
            continue;
        }
        let Some(c) = live.get(&s) else { continue };
        let mut earlier = |seqs: Option<&Vec<u64>>| {
            for &e in seqs.into_iter().flatten().take_while(|&&e| e < s) {
                if !set.contains(&e) {
                    work.push(e);
                }
            }
        };
        for k in c.parents().iter().chain(c.subjects().iter()) {
            earlier(by_inode.get(k));
        }
        for n in c.names() {
            earlier(by_name.get(&n));
        }
    }
    set
}

/// A creation in progress: holds the namespace lock from its log record to its outcome.
/// Dropped without [`Creating::done`], the creation counts as not made.
pub struct Creating<'a> {
    ns: &'a Namespace,
    st: Option<MutexGuard<'a, State>>,
    seq: u64,
}

impl Creating<'_> {
    /// The entry exists and is inode `key`.
    pub fn done(mut self, key: FileKey) {
        if let Some(mut st) = self.st.take() {
            if let Err(e) = st.log.append(&Record::Identity { seq: self.seq, key }) {
                tracing::warn!(error = %e, "namespace: cannot record a created entry");
            }
            self.ns.made(&mut st, self.seq);
        }
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        if let Some(mut st) = self.st.take() {
            self.ns.cancel(&mut st, self.seq);
        }
    }
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("model", &self.model)
            .field("graveyard", &self.graveyard_path)
            .finish()
    }
}
