//! Model-based randomized test on a real mount: seeded random sequences of writes,
//! appends, truncates, fallocates, fsyncs, renames, unlinks, creates, `lossctl sync` and
//! `lossctl powercut --no-kill`, checked against an in-memory model of each file's current
//! and durable content.  After every power cut the mount (and the backing directory) must
//! equal the model's durable state byte for byte, with the same set of names.
//!
//! The seed comes from `LOSSFS_SEED` (else the clock) and is printed at the start and in
//! every failure message; `LOSSFS_OPS` overrides the number of operations per seed.

use lossfs_tests::rng::{seed_from_env_or_clock, Rng};
use lossfs_tests::{cpath, last_err, num, report_file, Mount};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const NAMES: [&str; 6] = ["f0", "f1", "f2", "d/f3", "d/f4", "log"];
const MAX_OFF: u64 = 96 * 1024;
const MAX_LEN: u64 = 20 * 1024;
const TIME_LIMIT: Duration = Duration::from_secs(300);

/// The model's shapes of offsets and lengths.
trait ModelRng {
    fn offset(&mut self, max: u64) -> u64;
    fn len(&mut self) -> u64;
}

impl ModelRng for Rng {
    /// An offset that is often page-aligned, sometimes near a page boundary, else random.
    fn offset(&mut self, max: u64) -> u64 {
        match self.below(4) {
            0 => (self.below(max / 4096 + 1) * 4096).min(max),
            1 => (self.below(max / 4096 + 1) * 4096 + 4090 + self.below(12)).min(max),
            _ => self.below(max + 1),
        }
    }
    fn len(&mut self) -> u64 {
        match self.below(5) {
            0 => 1 + self.below(16),
            1 => 4096 * (1 + self.below(4)),
            _ => 1 + self.below(MAX_LEN),
        }
    }
}

#[derive(Clone, Default)]
struct FileModel {
    current: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Falloc {
    Alloc,
    KeepSize,
    PunchHole,
    ZeroRange,
    ZeroRangeKeepSize,
}

impl Falloc {
    fn mode(self) -> i32 {
        match self {
            Falloc::Alloc => 0,
            Falloc::KeepSize => libc::FALLOC_FL_KEEP_SIZE,
            Falloc::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            Falloc::ZeroRange => libc::FALLOC_FL_ZERO_RANGE,
            Falloc::ZeroRangeKeepSize => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        }
    }
    fn apply(self, data: &mut Vec<u8>, off: u64, len: u64) {
        let (off, end) = (off as usize, (off + len) as usize);
        let size = data.len();
        match self {
            Falloc::Alloc => {
                if end > size {
                    data.resize(end, 0);
                }
            }
            Falloc::KeepSize => {}
            Falloc::PunchHole | Falloc::ZeroRangeKeepSize => {
                if off < size {
                    data[off..end.min(size)].fill(0);
                }
            }
            Falloc::ZeroRange => {
                if end > size {
                    data.resize(end, 0);
                }
                data[off..end].fill(0);
            }
        }
    }
}

const ALL_FALLOC: [Falloc; 5] = [
    Falloc::Alloc,
    Falloc::KeepSize,
    Falloc::PunchHole,
    Falloc::ZeroRange,
    Falloc::ZeroRangeKeepSize,
];

fn fallocate(f: &fs::File, mode: i32, off: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_err())
    }
}

/// copy_file_range of `len` bytes, looping over short copies; the bytes copied.
fn copy_range(
    src: &fs::File,
    off_in: u64,
    dst: &fs::File,
    off_out: u64,
    len: u64,
) -> std::io::Result<u64> {
    let (mut i, mut o) = (off_in as i64, off_out as i64);
    let mut done = 0u64;
    while done < len {
        // SAFETY: plain syscall on fds we own, with pointers to local offsets.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut i,
                dst.as_raw_fd(),
                &mut o,
                (len - done) as usize,
                0,
            )
        };
        if n < 0 {
            return Err(last_err());
        }
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done)
}

/// The model of copy_file_range: copies what exists of `src[off_in..off_in+len]`.
fn copy_model(src: &[u8], off_in: u64, dst: &mut Vec<u8>, off_out: u64, len: u64) -> u64 {
    let start = (off_in as usize).min(src.len());
    let end = ((off_in + len) as usize).min(src.len());
    let chunk = src[start..end].to_vec();
    if !chunk.is_empty() {
        let o = off_out as usize;
        if dst.len() < o + chunk.len() {
            dst.resize(o + chunk.len(), 0);
        }
        dst[o..o + chunk.len()].copy_from_slice(&chunk);
    }
    chunk.len() as u64
}

/// fallocate modes the backing file system itself supports (probed next to it).
fn supported_fallocs(dir: &Path) -> Vec<Falloc> {
    let p = dir.join("falloc_probe");
    let f = fs::File::create(&p).unwrap();
    f.write_all_at(&[1u8; 8192], 0).unwrap();
    let v = ALL_FALLOC
        .into_iter()
        .filter(|m| fallocate(&f, m.mode(), 100, 5000).is_ok())
        .collect();
    drop(f);
    let _ = fs::remove_file(&p);
    v
}

struct Run<'a> {
    m: &'a Mount,
    seed: u64,
    rng: Rng,
    model: BTreeMap<String, FileModel>,
    fallocs: Vec<Falloc>,
    history: VecDeque<String>,
    step: usize,
    powercuts: usize,
    status_problem: Option<String>,
}

impl Run<'_> {
    fn fail(&self, msg: &str) -> ! {
        let hist: Vec<&str> = self.history.iter().map(String::as_str).collect();
        let status = match &self.status_problem {
            Some(p) => format!("\nalso, status before this cut was wrong:\n{p}"),
            None => String::new(),
        };
        panic!(
            "LOSSFS_SEED={} failed at op {}: {msg}{status}\nlast ops:\n  {}\ndaemon stderr:\n{}",
            self.seed,
            self.step,
            hist.join("\n  "),
            self.m.daemon_stderr()
        );
    }

    fn note(&mut self, s: String) {
        if self.history.len() == 40 {
            self.history.pop_front();
        }
        self.history.push_back(format!("#{} {s}", self.step));
    }

    fn ok<T>(&self, r: std::io::Result<T>, what: &str) -> T {
        r.unwrap_or_else(|e| self.fail(&format!("{what}: {e}")))
    }

    fn existing(&mut self) -> Option<String> {
        if self.model.is_empty() {
            return None;
        }
        let i = self.rng.below(self.model.len() as u64) as usize;
        self.model.keys().nth(i).cloned()
    }

    fn any_name(&mut self) -> String {
        NAMES[self.rng.below(NAMES.len() as u64) as usize].to_string()
    }

    fn open_w(&self, name: &str, append: bool) -> fs::File {
        let r = OpenOptions::new()
            .read(true)
            .write(true)
            .append(append)
            .open(self.m.path(name));
        self.ok(r, &format!("open {name}"))
    }

    fn step_once(&mut self) {
        let roll = self.rng.below(100);
        match roll {
            0..=21 => {
                let Some(n) = self.existing() else { return };
                let off = self.rng.offset(MAX_OFF);
                let len = self.rng.len();
                let data = self.rng.bytes(len as usize);
                self.note(format!("write {n} off={off} len={len}"));
                let f = self.open_w(&n, false);
                self.ok(f.write_all_at(&data, off), &format!("pwrite {n}"));
                let cur = &mut self.model.get_mut(&n).unwrap().current;
                let end = (off + len) as usize;
                if cur.len() < end {
                    cur.resize(end, 0);
                }
                cur[off as usize..end].copy_from_slice(&data);
            }
            22..=33 => {
                let Some(n) = self.existing() else { return };
                let len = self.rng.len();
                let data = self.rng.bytes(len as usize);
                self.note(format!("append {n} len={len}"));
                let mut f = self.open_w(&n, true);
                self.ok(f.write_all(&data), &format!("append {n}"));
                self.model
                    .get_mut(&n)
                    .unwrap()
                    .current
                    .extend_from_slice(&data);
            }
            34..=41 => {
                let Some(n) = self.existing() else { return };
                let cur_len = self.model[&n].current.len() as u64;
                let size = match self.rng.below(3) {
                    0 => self.rng.below(cur_len + 1),
                    1 => self.rng.offset(MAX_OFF),
                    _ => cur_len.saturating_sub(1 + self.rng.below(5000)),
                };
                let by_path = self.rng.below(2) == 0;
                self.note(format!("truncate {n} size={size} by_path={by_path}"));
                if by_path {
                    let c = cpath(&self.m.path(&n));
                    // SAFETY: c is a valid NUL-terminated path.
                    let rc = unsafe { libc::truncate(c.as_ptr(), size as i64) };
                    if rc != 0 {
                        self.fail(&format!("truncate({n}): {}", last_err()));
                    }
                } else {
                    let f = self.open_w(&n, false);
                    self.ok(f.set_len(size), &format!("ftruncate {n}"));
                }
                self.model
                    .get_mut(&n)
                    .unwrap()
                    .current
                    .resize(size as usize, 0);
            }
            42..=49 => {
                let Some(n) = self.existing() else { return };
                if self.fallocs.is_empty() {
                    return;
                }
                let mode = self.fallocs[self.rng.below(self.fallocs.len() as u64) as usize];
                let off = self.rng.offset(MAX_OFF);
                let len = self.rng.len();
                self.note(format!("fallocate {n} {mode:?} off={off} len={len}"));
                let f = self.open_w(&n, false);
                self.ok(
                    fallocate(&f, mode.mode(), off, len),
                    &format!("fallocate {mode:?} {n} (the backing fs supports it)"),
                );
                mode.apply(&mut self.model.get_mut(&n).unwrap().current, off, len);
            }
            50..=61 => {
                let Some(n) = self.existing() else { return };
                let data_only = self.rng.below(2) == 0;
                self.note(format!("fsync {n} data_only={data_only}"));
                let f = self.open_w(&n, false);
                if data_only {
                    self.ok(f.sync_data(), &format!("fdatasync {n}"));
                } else {
                    self.ok(f.sync_all(), &format!("fsync {n}"));
                }
                let fm = self.model.get_mut(&n).unwrap();
                fm.durable = fm.current.clone();
            }
            62..=67 => {
                let Some(from) = self.existing() else { return };
                let to = self.any_name();
                if from == to {
                    return;
                }
                self.note(format!("rename {from} -> {to}"));
                self.ok(
                    fs::rename(self.m.path(&from), self.m.path(&to)),
                    &format!("rename {from} {to}"),
                );
                let fm = self.model.remove(&from).unwrap();
                self.model.insert(to, fm);
            }
            68..=71 => {
                let Some(n) = self.existing() else { return };
                self.note(format!("unlink {n}"));
                self.ok(fs::remove_file(self.m.path(&n)), &format!("unlink {n}"));
                self.model.remove(&n);
            }
            72..=83 => {
                let n = self.any_name();
                let len = if self.rng.below(2) == 0 {
                    0
                } else {
                    self.rng.len()
                };
                let data = self.rng.bytes(len as usize);
                if self.model.contains_key(&n) {
                    self.note(format!("open O_TRUNC {n} then write len={len}"));
                    let r = OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(self.m.path(&n));
                    let mut f = self.ok(r, &format!("open O_TRUNC {n}"));
                    self.ok(f.write_all(&data), &format!("write {n}"));
                    self.model.get_mut(&n).unwrap().current = data;
                } else {
                    self.note(format!("create {n} then write len={len}"));
                    let r = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(self.m.path(&n));
                    let mut f = self.ok(r, &format!("create {n}"));
                    self.ok(f.write_all(&data), &format!("write {n}"));
                    self.model.insert(
                        n,
                        FileModel {
                            current: data,
                            durable: Vec::new(),
                        },
                    );
                }
            }
            92..=94 => {
                let Some(from) = self.existing() else { return };
                let Some(to) = self.existing() else { return };
                if from == to {
                    return;
                }
                let src_len = self.model[&from].current.len() as u64;
                let off_in = self.rng.below(src_len + 100);
                let off_out = self.rng.offset(MAX_OFF);
                let len = self.rng.len();
                self.note(format!(
                    "copy_file_range {from}@{off_in} -> {to}@{off_out} len={len}"
                ));
                let src = self.ok(fs::File::open(self.m.path(&from)), &format!("open {from}"));
                let dst = self.open_w(&to, false);
                let n = self.ok(
                    copy_range(&src, off_in, &dst, off_out, len),
                    &format!("copy_file_range {from} -> {to}"),
                );
                let src_data = self.model[&from].current.clone();
                let want = copy_model(
                    &src_data,
                    off_in,
                    &mut self.model.get_mut(&to).unwrap().current,
                    off_out,
                    len,
                );
                if n != want {
                    self.fail(&format!("copy_file_range copied {n} bytes, model {want}"));
                }
            }
            84..=86 => {
                self.note("lossctl sync".into());
                self.m.sync();
                for fm in self.model.values_mut() {
                    fm.durable = fm.current.clone();
                }
            }
            87..=90 => {
                self.note("check current state".into());
                self.verify(false);
            }
            91 | 95..=99 => self.powercut(),
            _ => unreachable!("roll {roll} out of 0..100"),
        }
    }

    fn powercut(&mut self) {
        self.note("powercut --no-kill".into());
        // Every changed file must be reported as unsynced under its current name, with the
        // model's sizes.  A wrong status is reported after the cut's data check, so a
        // failure says whether the data was right too.
        let st = self.m.status_json();
        let mut problems = Vec::new();
        for (n, fm) in &self.model {
            if fm.current == fm.durable {
                continue;
            }
            match report_file(&st, n) {
                Some(e) if num(e, "unsynced_bytes") > 0 => {}
                _ => problems.push(format!(
                    "{n} differs from its durable content (durable {} bytes, current {} \
                     bytes) but status does not report it as unsynced",
                    fm.durable.len(),
                    fm.current.len()
                )),
            }
            if let Some(e) = report_file(&st, n) {
                if num(e, "durable_size") != fm.durable.len() as u64
                    || num(e, "size") != fm.current.len() as u64
                {
                    problems.push(format!(
                        "{n}: status sizes wrong (model durable {} current {})",
                        fm.durable.len(),
                        fm.current.len()
                    ));
                }
            }
        }
        if !problems.is_empty() {
            self.status_problem = Some(format!("{}\nstatus: {st}", problems.join("\n")));
        }
        let rep = self.m.powercut_nokill_json();
        self.powercuts += 1;
        for fm in self.model.values_mut() {
            fm.current = fm.durable.clone();
        }
        self.verify(true);
        let st = self.m.status_json();
        if num(&st, "unsynced_bytes") != 0 {
            self.fail(&format!(
                "unsynced bytes left right after a power cut: {st}\n{rep}"
            ));
        }
        if let Some(p) = self.status_problem.take() {
            self.fail(&format!(
                "the data was right after the cut, but status before it was wrong:\n{p}"
            ));
        }
    }

    fn list(&self, root: &Path, skip_state: bool) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(&rel)
            };
            let rd = self.ok(fs::read_dir(&dir), &format!("readdir {}", dir.display()));
            for e in rd {
                let e = self.ok(e, "readdir entry");
                let name = e.file_name().into_string().unwrap();
                if skip_state && rel.is_empty() && name == ".lossfs" {
                    continue;
                }
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let ft = self.ok(e.file_type(), "file type");
                if ft.is_dir() {
                    stack.push(path);
                } else {
                    out.insert(path);
                }
            }
        }
        out
    }

    fn verify(&self, durable: bool) {
        let which = if durable {
            "after power cut"
        } else {
            "current state"
        };
        let want: BTreeSet<String> = self.model.keys().cloned().collect();
        for (root, skip, label) in [
            (&self.m.mnt, false, "mount"),
            (&self.m.backing, true, "backing"),
        ] {
            let got = self.list(root, skip);
            if got != want {
                self.fail(&format!(
                    "{which}: {label} has names {got:?}, model {want:?}"
                ));
            }
            for (n, fm) in &self.model {
                let want = if durable { &fm.durable } else { &fm.current };
                let got = self.ok(fs::read(root.join(n)), &format!("read {label} {n}"));
                if &got != want {
                    let first = got
                        .iter()
                        .zip(want.iter())
                        .position(|(a, b)| a != b)
                        .unwrap_or(got.len().min(want.len()));
                    self.fail(&format!(
                        "{which}: {label} {n} has {} bytes, model {} bytes; first difference \
                         at offset {first}",
                        got.len(),
                        want.len()
                    ));
                }
            }
        }
    }
}

fn base_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(seed_from_env_or_clock)
}

fn ops_per_seed() -> usize {
    std::env::var("LOSSFS_OPS")
        .ok()
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("LOSSFS_OPS={s:?}: {e}"))
        })
        .unwrap_or(1500)
}

fn run_seed(index: u64) {
    let seed = base_seed().wrapping_add(index);
    let ops = ops_per_seed();
    eprintln!(
        "model test: base LOSSFS_SEED={}, this test's seed {seed} (rerun it alone with \
         LOSSFS_SEED={seed} cargo test -p lossfs-tests --test model model_seed_0), {ops} ops",
        base_seed()
    );
    let m = Mount::new(&[]);
    fs::create_dir(m.path("d")).unwrap();
    let mut run = Run {
        m: &m,
        seed,
        rng: Rng::new(seed),
        model: BTreeMap::new(),
        fallocs: supported_fallocs(&m.root),
        history: VecDeque::new(),
        step: 0,
        powercuts: 0,
        status_problem: None,
    };
    let start = Instant::now();
    for step in 0..ops {
        run.step = step;
        if start.elapsed() > TIME_LIMIT {
            run.fail(&format!(
                "time limit {TIME_LIMIT:?} exceeded after {step} ops"
            ));
        }
        run.step_once();
    }
    run.step = ops;
    run.powercut();
    eprintln!(
        "model test: LOSSFS_SEED={seed} passed: {ops} ops, {} power cuts, fallocate modes {:?}, {:?}",
        run.powercuts,
        run.fallocs,
        start.elapsed()
    );
}

#[test]
fn model_seed_0() {
    run_seed(0);
}

#[test]
fn model_seed_1() {
    run_seed(1);
}

#[test]
fn model_seed_2() {
    run_seed(2);
}

#[test]
fn model_seed_3() {
    run_seed(3);
}

/// The model's fallocate semantics agree with the backing file system itself (no mount),
/// so a mismatch in the mounted runs is lossfs's, not the model's.
#[test]
fn fallocate_model_matches_plain_file() {
    let dir = lossfs_tests::unique_tmp_dir("falloc");
    let modes = supported_fallocs(&dir);
    assert!(
        !modes.is_empty(),
        "the file system under /tmp supports no fallocate mode; the model test needs one"
    );
    let seed = base_seed();
    let mut rng = Rng::new(seed);
    let p = dir.join("f");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let mut model = Vec::new();
    for i in 0..500 {
        if rng.below(3) == 0 {
            let off = rng.offset(MAX_OFF);
            let n = rng.len() as usize;
            let data = rng.bytes(n);
            f.write_all_at(&data, off).unwrap();
            let end = off as usize + data.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
        } else {
            let mode = modes[rng.below(modes.len() as u64) as usize];
            let off = rng.offset(MAX_OFF);
            let len = rng.len();
            fallocate(&f, mode.mode(), off, len).unwrap();
            mode.apply(&mut model, off, len);
            let got = fs::read(&p).unwrap();
            assert!(
                got == model,
                "LOSSFS_SEED={seed} step {i}: {mode:?} off={off} len={len}: file {} bytes, \
                 model {} bytes",
                got.len(),
                model.len()
            );
        }
    }
    drop(f);
    let _ = fs::remove_dir_all(&dir);
}

/// The model's copy_file_range agrees with the plain file system (no mount).
#[test]
fn copy_file_range_model_matches_plain_file() {
    let dir = lossfs_tests::unique_tmp_dir("cfr");
    let seed = base_seed();
    let mut rng = Rng::new(seed);
    let open = |n: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(n))
            .unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    let mut models = [Vec::new(), Vec::new()];
    for i in 0..300 {
        let (si, di) = if rng.below(2) == 0 { (0, 1) } else { (1, 0) };
        let files = [&a, &b];
        if rng.below(3) == 0 {
            let off = rng.offset(MAX_OFF);
            let n = rng.len() as usize;
            let data = rng.bytes(n);
            files[di].write_all_at(&data, off).unwrap();
            let m = &mut models[di];
            if m.len() < off as usize + n {
                m.resize(off as usize + n, 0);
            }
            m[off as usize..off as usize + n].copy_from_slice(&data);
            continue;
        }
        let off_in = rng.below(models[si].len() as u64 + 100);
        let off_out = rng.offset(MAX_OFF);
        let len = rng.len();
        let n = copy_range(files[si], off_in, files[di], off_out, len).unwrap();
        let src = models[si].clone();
        let want = copy_model(&src, off_in, &mut models[di], off_out, len);
        assert_eq!(n, want, "LOSSFS_SEED={seed} step {i}: copied bytes");
        for (f, m) in [(&a, &models[0]), (&b, &models[1])] {
            let mut got = vec![0u8; f.metadata().unwrap().len() as usize];
            f.read_exact_at(&mut got, 0).unwrap();
            assert!(
                &got == m,
                "LOSSFS_SEED={seed} step {i}: content differs from the model"
            );
        }
    }
    drop((a, b));
    let _ = fs::remove_dir_all(&dir);
}
