//! Stress under power cuts: several worker processes (the `stress_worker` binary) do mixed
//! I/O on a mount while `lossctl powercut` fires at random moments; after every cut each
//! worker's files must equal the durable state predicted by replaying what it reported.
//!
//! Each worker owns the directory `w<i>` of the mount and writes, OUTSIDE the mount, a
//! report with one line per operation: `B <seq> <op>` before it starts and `D <seq>` once it
//! returned successfully (each line one write(2) to an O_APPEND file, so a SIGKILL leaves
//! whole lines; a torn last line is ignored).  The checker replays the completed operations
//! on a model of each file's current and durable content ([`Model`]).  A worker runs one
//! operation at a time, so at most its last operation was in flight at the cut: the checker
//! accepts the state without it and the state with it, and nothing else.  Partial effects of
//! the in-flight operation never matter to the durable state: writes, appends, truncates and
//! mmap stores are not durable anyway, an fsync is all or nothing, and a rename, a create
//! (namespace changes are durable at once) are atomic.
//!
//! Optionally every k-th cut is a SIGKILL of the daemon itself followed by a remount: the
//! replay of the journal must leave the same durable state a power cut would.
//!
//! Every epoch (the time between two cuts) starts from the files as they are on the mount,
//! already checked, so a divergence is reported once and the run can go on (the soak counts
//! them).  The seed fixes every worker's operation stream and every delay before a cut;
//! the interleaving with the cut is real time and cannot be replayed exactly.

use crate::rng::Rng;
use crate::{lossctl, output_text, stress_worker_bin, wait_bounded, ChildGuard, Mount};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Size of each worker's shared-mmap file `m`.
pub const MMAP_SIZE: u64 = 64 * 1024;
/// Files are kept below about this size so that checks stay cheap.
pub const FILE_MAX: u64 = 192 * 1024;
/// The names a worker's plain data operations use.
pub const DATA_NAMES: [&str; 3] = ["f0", "f1", "f2"];
/// How long workers may take to die after a power cut (the cut itself waits 10 s).
const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// One operation of a worker, as written in its report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the file if missing, then ftruncate it to `size`.
    Create { name: String, size: u64 },
    /// pwrite of `data(seed, len)` at `off`.
    Write {
        name: String,
        off: u64,
        len: u64,
        seed: u64,
    },
    /// O_APPEND write of `data(seed, len)`.
    Append { name: String, len: u64, seed: u64 },
    /// ftruncate to `size`.
    Truncate { name: String, size: u64 },
    /// fsync (`data = false`) or fdatasync.
    Sync { name: String, data: bool },
    /// A store of `data(seed, len)` at `off` into the shared mapping of `m`.
    MapWrite { off: u64, len: u64, seed: u64 },
    /// msync(MS_SYNC) of the whole mapping of `m`.
    MapSync,
    /// `t` opened with O_CREAT|O_TRUNC and `data(seed, len)` written to it.
    PutTmp { len: u64, seed: u64 },
    /// rename(`t`, `r`).
    Rename,
}

/// The bytes an operation with `seed` and `len` writes.
pub fn data(seed: u64, len: u64) -> Vec<u8> {
    Rng::new(seed).bytes(len as usize)
}

impl Op {
    pub fn to_text(&self) -> String {
        match self {
            Op::Create { name, size } => format!("X {name} {size}"),
            Op::Write {
                name,
                off,
                len,
                seed,
            } => format!("W {name} {off} {len} {seed}"),
            Op::Append { name, len, seed } => format!("A {name} {len} {seed}"),
            Op::Truncate { name, size } => format!("T {name} {size}"),
            Op::Sync { name, data: false } => format!("S {name}"),
            Op::Sync { name, data: true } => format!("Y {name}"),
            Op::MapWrite { off, len, seed } => format!("M {off} {len} {seed}"),
            Op::MapSync => "MS".to_string(),
            Op::PutTmp { len, seed } => format!("P {len} {seed}"),
            Op::Rename => "R".to_string(),
        }
    }

    pub fn parse(text: &str) -> Result<Op, String> {
        let f: Vec<&str> = text.split(' ').collect();
        let num = |i: usize| -> Result<u64, String> {
            f.get(i)
                .ok_or_else(|| format!("op {text:?}: field {i} missing"))?
                .parse()
                .map_err(|e| format!("op {text:?}: field {i}: {e}"))
        };
        let name = || -> Result<String, String> {
            f.get(1)
                .map(|s| s.to_string())
                .ok_or_else(|| format!("op {text:?}: name missing"))
        };
        let (op, want) = match f[0] {
            "X" => (
                Op::Create {
                    name: name()?,
                    size: num(2)?,
                },
                3,
            ),
            "W" => (
                Op::Write {
                    name: name()?,
                    off: num(2)?,
                    len: num(3)?,
                    seed: num(4)?,
                },
                5,
            ),
            "A" => (
                Op::Append {
                    name: name()?,
                    len: num(2)?,
                    seed: num(3)?,
                },
                4,
            ),
            "T" => (
                Op::Truncate {
                    name: name()?,
                    size: num(2)?,
                },
                3,
            ),
            "S" | "Y" => (
                Op::Sync {
                    name: name()?,
                    data: f[0] == "Y",
                },
                2,
            ),
            "M" => (
                Op::MapWrite {
                    off: num(1)?,
                    len: num(2)?,
                    seed: num(3)?,
                },
                4,
            ),
            "MS" => (Op::MapSync, 1),
            "P" => (
                Op::PutTmp {
                    len: num(1)?,
                    seed: num(2)?,
                },
                3,
            ),
            "R" => (Op::Rename, 1),
            other => return Err(format!("op {text:?}: unknown kind {other:?}")),
        };
        if f.len() != want {
            return Err(format!("op {text:?}: expected {want} fields"));
        }
        Ok(op)
    }
}

/// One file (inode) of the model.
#[derive(Clone, Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
}

/// What a worker's directory holds: names to inodes, each with its current and durable
/// content.  Namespace changes are durable at once (lossfs's `metadata=durable`).
#[derive(Clone, Debug, Default)]
pub struct Model {
    inodes: Vec<Inode>,
    names: BTreeMap<String, usize>,
}

fn write_at(v: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let (off, end) = (off as usize, off as usize + bytes.len());
    if v.len() < end {
        v.resize(end, 0);
    }
    v[off..end].copy_from_slice(bytes);
}

impl Model {
    /// The model of a directory as it is now: every file durable with its content.
    pub fn from_dir(dir: &Path) -> io::Result<Model> {
        let mut m = Model::default();
        for (name, content) in read_dir_files(dir)? {
            m.names.insert(name, m.inodes.len());
            m.inodes.push(Inode {
                current: content.clone(),
                durable: content,
            });
        }
        Ok(m)
    }

    fn inode(&mut self, name: &str) -> Result<&mut Inode, String> {
        match self.names.get(name) {
            Some(&i) => Ok(&mut self.inodes[i]),
            None => Err(format!("the model has no file {name:?}")),
        }
    }

    fn create(&mut self, name: &str) -> &mut Inode {
        let i = match self.names.get(name) {
            Some(&i) => i,
            None => {
                self.inodes.push(Inode::default());
                self.names.insert(name.to_string(), self.inodes.len() - 1);
                self.inodes.len() - 1
            }
        };
        &mut self.inodes[i]
    }

    /// Applies a completed operation; an error means the report does not fit the model.
    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Create { name, size } => self.create(name).current.resize(*size as usize, 0),
            Op::Write {
                name,
                off,
                len,
                seed,
            } => write_at(&mut self.inode(name)?.current, *off, &data(*seed, *len)),
            Op::Append { name, len, seed } => self
                .inode(name)?
                .current
                .extend_from_slice(&data(*seed, *len)),
            Op::Truncate { name, size } => self.inode(name)?.current.resize(*size as usize, 0),
            Op::Sync { name, .. } => {
                let ino = self.inode(name)?;
                ino.durable = ino.current.clone();
            }
            Op::MapWrite { off, len, seed } => {
                let ino = self.inode("m")?;
                if off + len > ino.current.len() as u64 {
                    return Err(format!(
                        "mmap store {off}+{len} past m's size {}",
                        ino.current.len()
                    ));
                }
                write_at(&mut ino.current, *off, &data(*seed, *len));
            }
            Op::MapSync => {
                let ino = self.inode("m")?;
                ino.durable = ino.current.clone();
            }
            Op::PutTmp { len, seed } => self.create("t").current = data(*seed, *len),
            Op::Rename => {
                let i = self
                    .names
                    .remove("t")
                    .ok_or("rename of t, which the model does not have")?;
                self.names.insert("r".to_string(), i);
            }
        }
        Ok(())
    }

    /// What a power cut must leave: every name with its inode's durable content.
    pub fn durable_view(&self) -> BTreeMap<String, Vec<u8>> {
        self.names
            .iter()
            .map(|(n, &i)| (n.clone(), self.inodes[i].durable.clone()))
            .collect()
    }
}

/// Every regular file of `dir` (not recursive) with its content.
pub fn read_dir_files(dir: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let content = fs::read(e.path())
            .map_err(|err| io::Error::new(err.kind(), format!("reading {name}: {err}")))?;
        out.insert(name, content);
    }
    Ok(out)
}

/// A worker's report, parsed.
#[derive(Debug, Default)]
pub struct Report {
    /// Operations that returned successfully, in order.
    pub done: Vec<Op>,
    /// The operation begun and not reported done (in flight at the cut), if any.
    pub in_flight: Option<Op>,
}

/// Parses a report; a torn last line (no newline) is ignored.
pub fn parse_report(text: &str) -> Result<Report, String> {
    let mut r = Report::default();
    let mut pending: Option<(u64, Op)> = None;
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for (n, line) in complete.lines().enumerate() {
        let bad = |why: &str| format!("report line {}: {why}: {line:?}", n + 1);
        let (kind, rest) = line.split_once(' ').ok_or_else(|| bad("no fields"))?;
        let (seq, op) = match rest.split_once(' ') {
            Some((s, op)) => (s, Some(op)),
            None => (rest, None),
        };
        let seq: u64 = seq.parse().map_err(|_| bad("bad sequence number"))?;
        match (kind, op) {
            ("B", Some(op)) => {
                if pending.is_some() {
                    return Err(bad("begin while another operation is in flight"));
                }
                pending = Some((seq, Op::parse(op)?));
            }
            ("D", None) => match pending.take() {
                Some((s, op)) if s == seq => r.done.push(op),
                _ => return Err(bad("done without its begin")),
            },
            _ => return Err(bad("unknown line")),
        }
    }
    r.in_flight = pending.map(|(_, op)| op);
    Ok(r)
}

/// Describes how `actual` differs from `want`.
fn describe_diff(want: &BTreeMap<String, Vec<u8>>, actual: &BTreeMap<String, Vec<u8>>) -> String {
    let mut s = String::new();
    for name in want
        .keys()
        .chain(actual.keys().filter(|k| !want.contains_key(*k)))
    {
        match (want.get(name), actual.get(name)) {
            (Some(w), Some(a)) if w == a => {}
            (Some(w), Some(a)) => {
                let first = w.iter().zip(a.iter()).position(|(x, y)| x != y);
                let _ = write!(
                    s,
                    " {name}: expected {} bytes, found {} (first differing byte: {});",
                    w.len(),
                    a.len(),
                    first.map_or("none below the shorter length".into(), |i| i.to_string())
                );
            }
            (Some(w), None) => {
                let _ = write!(s, " {name}: expected {} bytes, missing;", w.len());
            }
            (None, Some(a)) => {
                let _ = write!(s, " {name}: unexpected file of {} bytes;", a.len());
            }
            (None, None) => {}
        }
    }
    s
}

/// How the operation in flight at the cut was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFlight {
    /// Nothing was in flight, or both outcomes give the same durable state.
    Moot,
    /// The files show the operation's durable effect (an fsync that completed).
    Applied,
    /// The files show the state without it.
    NotApplied,
}

/// Checks a worker's directory after a cut against the model started at `start` plus its
/// report.  `Ok((operations completed, how the in-flight one was resolved))`, or
/// `Err(description of the divergence)`.
pub fn check_worker(dir: &Path, start: &Model, report: &str) -> Result<(usize, InFlight), String> {
    let r = parse_report(report)?;
    let mut without = start.clone();
    for op in &r.done {
        without.apply(op)?;
    }
    let actual = read_dir_files(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let want = without.durable_view();
    let want_with = match &r.in_flight {
        Some(op) => {
            let mut with = without.clone();
            with.apply(op)?;
            Some(with.durable_view())
        }
        None => None,
    };
    let moot = match &want_with {
        Some(w) => *w == want,
        None => true,
    };
    if actual == want {
        let how = if moot {
            InFlight::Moot
        } else {
            InFlight::NotApplied
        };
        return Ok((r.done.len(), how));
    }
    let mut msg = format!(
        "{} differs from the durable state without the in-flight operation:{}",
        dir.display(),
        describe_diff(&want, &actual)
    );
    if let (Some(op), Some(want_with)) = (&r.in_flight, want_with) {
        if actual == want_with {
            return Ok((r.done.len(), InFlight::Applied));
        }
        let _ = write!(
            msg,
            " | and from the state with the in-flight operation {:?}:{}",
            op.to_text(),
            describe_diff(&want_with, &actual)
        );
    }
    let tail: Vec<String> = r.done.iter().rev().take(5).map(Op::to_text).collect();
    let _ = write!(msg, " | last completed operations (newest first): {tail:?}");
    Err(msg)
}

/// A stress run's parameters.
#[derive(Clone, Debug)]
pub struct Config {
    pub workers: usize,
    /// Stop after this many cuts...
    pub cuts: Option<u64>,
    /// ...or once this much time has passed (whichever comes first).
    pub duration: Option<Duration>,
    pub seed: u64,
    /// Delay before each cut, drawn uniformly from this range (milliseconds).
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Every this many cuts, SIGKILL the daemon instead of a power cut, then remount
    /// (the recovery must give the same durable state).
    pub kill_daemon_every: Option<u64>,
    /// Print a progress line this often (None: quiet).
    pub progress: Option<Duration>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Operations the workers completed (reported done).
    pub ops: u64,
    pub cuts: u64,
    /// How many of the cuts were a SIGKILL of the daemon and a remount.
    pub daemon_kills: u64,
    /// Cuts that caught a worker in an operation whose two outcomes differ (an fsync or
    /// msync with something to make durable, a create or rename), by the outcome found.
    pub in_flight_applied: u64,
    pub in_flight_not_applied: u64,
    /// Epochs where a worker's files did not match the model, with the description.
    pub divergences: Vec<String>,
}

impl Summary {
    /// The counts in words: operations, cuts, daemon kills, divergences.
    pub fn counts(&self) -> String {
        format!(
            "{} operations, {} cuts ({} of them daemon kills), {} divergences",
            self.ops,
            self.cuts,
            self.daemon_kills,
            self.divergences.len()
        )
    }

    /// The in-flight operations the cuts caught, by what became of them.
    pub fn in_flight(&self) -> String {
        format!(
            "in-flight operations found applied {}, not applied {}",
            self.in_flight_applied, self.in_flight_not_applied
        )
    }
}

/// One epoch's worker processes, killed and reaped on drop.
struct Workers {
    children: Vec<ChildGuard>,
    /// Report file of each worker (outside the mount).
    reports: Vec<PathBuf>,
    /// Stderr file of each worker.
    stderrs: Vec<PathBuf>,
}

impl Workers {
    /// Starts worker `i` on `dirs[i]` with seed `seed + i`, reporting into `report_dir`.
    fn spawn(dirs: &[PathBuf], report_dir: &Path, seed: u64) -> Result<Workers, String> {
        let bin = stress_worker_bin();
        let mut w = Workers {
            children: Vec::new(),
            reports: Vec::new(),
            stderrs: Vec::new(),
        };
        for (i, d) in dirs.iter().enumerate() {
            let report = report_dir.join(format!("w{i}.log"));
            let stderr_path = report_dir.join(format!("w{i}.stderr"));
            let _ = fs::remove_file(&report);
            let stderr = fs::File::create(&stderr_path)
                .map_err(|e| format!("creating {}: {e}", stderr_path.display()))?;
            let child = Command::new(&bin)
                .arg(d)
                .arg(&report)
                .arg(seed.wrapping_add(i as u64).to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
            w.children.push(ChildGuard(child));
            w.reports.push(report);
            w.stderrs.push(stderr_path);
        }
        Ok(w)
    }

    fn stderr(&self, i: usize) -> String {
        fs::read_to_string(&self.stderrs[i]).unwrap_or_default()
    }

    /// Every worker must still be working before the cut.
    fn check_running(&mut self) -> Result<(), String> {
        for i in 0..self.children.len() {
            if let Ok(Some(st)) = self.children[i].0.try_wait() {
                return Err(format!(
                    "worker {i} exited on its own before the cut ({st:?}): {}",
                    self.stderr(i)
                ));
            }
        }
        Ok(())
    }

    /// Waits (bounded) for every worker to die: of the power cut's SIGKILL, or of anything
    /// when the daemon was killed (failed operations, SIGBUS on the mapping).
    fn reap(&mut self, daemon_killed: bool) -> Result<(), String> {
        for i in 0..self.children.len() {
            match wait_bounded(&mut self.children[i].0, WORKER_EXIT_TIMEOUT) {
                Some(st) if st.signal() == Some(libc::SIGKILL) || daemon_killed => {}
                Some(st) => {
                    return Err(format!(
                        "worker {i} ended with {st:?}, not killed by the cut: {}",
                        self.stderr(i)
                    ))
                }
                None => {
                    return Err(format!(
                        "waiting for worker {i} to die after the {}: still running after \
                         {WORKER_EXIT_TIMEOUT:?}",
                        if daemon_killed {
                            "daemon was killed"
                        } else {
                            "power cut"
                        }
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Runs workers and cuts on `m` until the configured count or time is reached.  Divergences
/// are collected; anything else that goes wrong (a wait not met, the daemon gone, a worker
/// that failed on its own) ends the run with an error naming it.
pub fn run(m: &mut Mount, cfg: &Config) -> Result<Summary, String> {
    let reports = m.root.join("reports");
    fs::create_dir_all(&reports).map_err(|e| format!("mkdir {}: {e}", reports.display()))?;
    let dirs: Vec<PathBuf> = (0..cfg.workers).map(|i| m.path(&format!("w{i}"))).collect();
    for d in &dirs {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    let mut rng = Rng::new(cfg.seed);
    let mut sum = Summary::default();
    let t0 = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        if cfg.cuts.is_some_and(|n| sum.cuts >= n)
            || cfg.duration.is_some_and(|d| t0.elapsed() >= d)
        {
            return Ok(sum);
        }
        let epoch = sum.cuts;
        let mut starts = Vec::new();
        for d in &dirs {
            starts.push(Model::from_dir(d).map_err(|e| format!("reading {}: {e}", d.display()))?);
        }
        let wseed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch * 64);
        let mut workers =
            Workers::spawn(&dirs, &reports, wseed).map_err(|e| format!("epoch {epoch}: {e}"))?;
        let delay = cfg.min_delay_ms + rng.below(cfg.max_delay_ms - cfg.min_delay_ms + 1);
        std::thread::sleep(Duration::from_millis(delay));
        workers
            .check_running()
            .map_err(|e| format!("epoch {epoch}: {e}"))?;
        let kill_daemon = cfg.kill_daemon_every.is_some_and(|k| (epoch + 1) % k == 0);
        if kill_daemon {
            // The daemon itself dies under load: the workers' operations fail (or fault on
            // their mapping) and they exit; the next mount replays the journal.
            m.kill_daemon();
            sum.daemon_kills += 1;
        } else {
            let mnt = m.mnt.to_string_lossy().into_owned();
            let out = lossctl(&["powercut", &mnt, "--json"]);
            if !out.status.success() {
                return Err(format!(
                    "epoch {epoch}: lossctl powercut failed:\n{}\ndaemon stderr:\n{}",
                    output_text(&out),
                    m.daemon_stderr()
                ));
            }
        }
        sum.cuts += 1;
        workers
            .reap(kill_daemon)
            .map_err(|e| format!("epoch {epoch}: {e}"))?;
        if kill_daemon {
            m.lazy_unmount();
            m.remount();
            if !m.daemon_stderr().contains("unclean journal") {
                return Err(format!(
                    "epoch {epoch}: the remount after killing the daemon under load did not \
                     replay an unclean journal; stderr:\n{}",
                    m.daemon_stderr()
                ));
            }
        }
        if !m.daemon_alive() {
            return Err(format!(
                "epoch {epoch}: the lossfs daemon died; stderr:\n{}",
                m.daemon_stderr()
            ));
        }
        for (i, d) in dirs.iter().enumerate() {
            let path = &workers.reports[i];
            let report =
                fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            match check_worker(d, &starts[i], &report) {
                Ok((n, how)) => {
                    sum.ops += n as u64;
                    match how {
                        InFlight::Applied => sum.in_flight_applied += 1,
                        InFlight::NotApplied => sum.in_flight_not_applied += 1,
                        InFlight::Moot => {}
                    }
                }
                Err(e) => sum
                    .divergences
                    .push(format!("seed {} epoch {epoch} worker {i}: {e}", cfg.seed)),
            }
        }
        if let Some(every) = cfg.progress {
            if last_progress.elapsed() >= every {
                last_progress = Instant::now();
                println!("{:>6}s: {}", t0.elapsed().as_secs(), sum.counts());
                println!("         {}", sum.in_flight());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_through_text() {
        let ops = [
            Op::Create {
                name: "m".into(),
                size: 65536,
            },
            Op::Write {
                name: "f0".into(),
                off: 3,
                len: 9,
                seed: 7,
            },
            Op::Append {
                name: "r".into(),
                len: 2,
                seed: 1,
            },
            Op::Truncate {
                name: "f1".into(),
                size: 0,
            },
            Op::Sync {
                name: "t".into(),
                data: true,
            },
            Op::Sync {
                name: "t".into(),
                data: false,
            },
            Op::MapWrite {
                off: 1,
                len: 2,
                seed: 3,
            },
            Op::MapSync,
            Op::PutTmp { len: 5, seed: 6 },
            Op::Rename,
        ];
        for op in ops {
            assert_eq!(Op::parse(&op.to_text()), Ok(op.clone()));
        }
        assert!(Op::parse("W f0 1 2").is_err());
        assert!(Op::parse("Q").is_err());
    }

    #[test]
    fn report_with_an_in_flight_fsync_accepts_both_outcomes_only() {
        let dir = crate::unique_tmp_dir("stressmodel");
        let report =
            "B 0 X f0 0\nD 0\nB 1 W f0 0 10 5\nD 1\nB 2 S f0\nD 2\nB 3 A f0 4 9\nD 3\nB 4 S f0\nD";
        let r = parse_report(report).unwrap();
        assert_eq!(r.done.len(), 4);
        assert_eq!(
            r.in_flight,
            Some(Op::Sync {
                name: "f0".into(),
                data: false
            })
        );
        let start = Model::default();
        let first = data(5, 10);
        let mut second = first.clone();
        second.extend_from_slice(&data(9, 4));
        fs::write(dir.join("f0"), &first).unwrap();
        assert_eq!(
            check_worker(&dir, &start, report),
            Ok((4, InFlight::NotApplied)),
            "fsync not done"
        );
        fs::write(dir.join("f0"), &second).unwrap();
        assert_eq!(
            check_worker(&dir, &start, report),
            Ok((4, InFlight::Applied)),
            "fsync done"
        );
        fs::write(dir.join("f0"), &second[..12]).unwrap();
        assert!(check_worker(&dir, &start, report).is_err(), "torn fsync");
        fs::write(dir.join("f0"), &first).unwrap();
        fs::write(dir.join("t"), b"").unwrap();
        assert!(check_worker(&dir, &start, report).is_err(), "extra file");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn rename_moves_the_inode_with_its_durable_content() {
        let mut m = Model::default();
        for op in [
            Op::PutTmp { len: 8, seed: 1 },
            Op::Sync {
                name: "t".into(),
                data: false,
            },
            Op::PutTmp { len: 3, seed: 2 },
            Op::Rename,
        ] {
            m.apply(&op).unwrap();
        }
        let v = m.durable_view();
        assert_eq!(v.len(), 1);
        assert_eq!(v["r"], data(1, 8));
        assert!(m.apply(&Op::Rename).is_err(), "no t left to rename");
    }
}
