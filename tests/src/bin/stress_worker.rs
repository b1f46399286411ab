//! One worker of the power-cut stress test: `stress_worker DIR REPORT SEED` does seeded
//! mixed I/O on the files of DIR (on a lossfs mount) until it is killed, and reports every
//! operation to REPORT (outside the mount) as described in `lossfs_tests::stress`.  Any
//! error ends it with exit status 3 and a message on stderr: a worker is only ever expected
//! to die by the power cut's SIGKILL.

use lossfs_tests::rng::Rng;
use lossfs_tests::stress::{data, Op, DATA_NAMES, FILE_MAX, MMAP_SIZE};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

struct Worker {
    dir: PathBuf,
    report: File,
    seq: u64,
    names: BTreeSet<String>,
    map: *mut u8,
    rng: Rng,
}

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("stress_worker: {what}");
    std::process::exit(3);
}

impl Worker {
    fn line(&mut self, text: &str) {
        // One write(2) per line: a SIGKILL leaves whole lines or a torn last one.
        if let Err(e) = self.report.write_all(text.as_bytes()) {
            fail(format!("writing the report: {e}"));
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn open(&self, name: &str, extra: i32) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(extra)
            .open(self.path(name))
    }

    fn run(&mut self, op: Op) {
        let seq = self.seq;
        self.seq += 1;
        self.line(&format!("B {seq} {}\n", op.to_text()));
        if let Err(e) = self.apply(&op) {
            fail(format!("operation {seq} {:?}: {e}", op.to_text()));
        }
        self.line(&format!("D {seq}\n"));
    }

    fn apply(&mut self, op: &Op) -> io::Result<()> {
        match op {
            Op::Create { name, size } => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(self.path(name))?;
                f.set_len(*size)?;
                self.names.insert(name.clone());
            }
            Op::Write {
                name,
                off,
                len,
                seed,
            } => self.open(name, 0)?.write_all_at(&data(*seed, *len), *off)?,
            Op::Append { name, len, seed } => {
                self.open(name, libc::O_APPEND)?
                    .write_all(&data(*seed, *len))?;
            }
            Op::Truncate { name, size } => self.open(name, 0)?.set_len(*size)?,
            Op::Sync { name, data: false } => self.open(name, 0)?.sync_all()?,
            Op::Sync { name, data: true } => self.open(name, 0)?.sync_data()?,
            Op::MapWrite { off, len, seed } => {
                let bytes = data(*seed, *len);
                assert!(off + len <= MMAP_SIZE);
                // SAFETY: the mapping is MMAP_SIZE bytes long and the range is inside it;
                // nothing else in this process aliases it.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        self.map.add(*off as usize),
                        bytes.len(),
                    )
                };
            }
            Op::MapSync => {
                // SAFETY: msync of our own live mapping.
                if unsafe { libc::msync(self.map.cast(), MMAP_SIZE as usize, libc::MS_SYNC) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Op::PutTmp { len, seed } => {
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(self.path("t"))?
                    .write_all(&data(*seed, *len))?;
                self.names.insert("t".into());
            }
            Op::Rename => {
                fs::rename(self.path("t"), self.path("r"))?;
                self.names.remove("t");
                self.names.insert("r".into());
            }
        }
        Ok(())
    }

    fn size(&self, name: &str) -> u64 {
        fs::metadata(self.path(name))
            .map(|m| m.len())
            .unwrap_or_else(|e| fail(format!("stat {name}: {e}")))
    }

    /// A data file to write to: f0..f2, or r once it exists.
    fn data_name(&mut self) -> String {
        let mut v: Vec<&str> = DATA_NAMES.to_vec();
        if self.names.contains("r") {
            v.push("r");
        }
        v[self.rng.below(v.len() as u64) as usize].to_string()
    }

    fn len(&mut self, max: u64) -> u64 {
        match self.rng.below(3) {
            0 => 4096 * (1 + self.rng.below(max / 4096)),
            _ => 1 + self.rng.below(max),
        }
    }

    fn next_op(&mut self) -> Op {
        let seed = self.rng.next_u64();
        match self.rng.below(100) {
            0..=24 => {
                let name = self.data_name();
                let len = self.len(16 * 1024);
                let off = self.rng.below(FILE_MAX - len);
                Op::Write {
                    name,
                    off,
                    len,
                    seed,
                }
            }
            25..=39 => {
                let name = self.data_name();
                if self.size(&name) > FILE_MAX {
                    let size = self.rng.below(FILE_MAX / 2);
                    return Op::Truncate { name, size };
                }
                let len = self.len(8 * 1024);
                Op::Append { name, len, seed }
            }
            40..=46 => {
                let name = self.data_name();
                let size = self.rng.below(FILE_MAX);
                Op::Truncate { name, size }
            }
            47..=62 => {
                let mut v: Vec<String> = self.names.iter().cloned().collect();
                v.retain(|n| n != "m");
                let name = v[self.rng.below(v.len() as u64) as usize].clone();
                let data = self.rng.below(3) == 0;
                Op::Sync { name, data }
            }
            63..=76 => {
                let len = self.len(8 * 1024);
                let off = self.rng.below(MMAP_SIZE - len + 1);
                Op::MapWrite { off, len, seed }
            }
            77..=83 => Op::MapSync,
            84..=92 => {
                let len = self.len(16 * 1024);
                Op::PutTmp { len, seed }
            }
            _ if self.names.contains("t") => {
                if self.rng.below(2) == 0 {
                    Op::Sync {
                        name: "t".into(),
                        data: false,
                    }
                } else {
                    Op::Rename
                }
            }
            _ => Op::MapSync,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        fail("usage: stress_worker DIR REPORT SEED");
    }
    let dir = PathBuf::from(&args[1]);
    let seed: u64 = args[3]
        .parse()
        .unwrap_or_else(|e| fail(format!("SEED {:?}: {e}", args[3])));
    let report = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&args[2])
        .unwrap_or_else(|e| fail(format!("opening report {}: {e}", args[2])));
    let names = fs::read_dir(&dir)
        .unwrap_or_else(|e| fail(format!("listing {}: {e}", dir.display())))
        .map(|e| {
            e.map(|e| e.file_name().to_string_lossy().into_owned())
                .unwrap_or_else(|e| fail(format!("listing {}: {e}", dir.display())))
        })
        .collect();
    let mut w = Worker {
        dir,
        report,
        seq: 0,
        names,
        map: std::ptr::null_mut(),
        rng: Rng::new(seed),
    };
    for name in DATA_NAMES {
        if !w.names.contains(name) {
            w.run(Op::Create {
                name: name.into(),
                size: 0,
            });
        }
    }
    // A cut may have rolled m back to a shorter durable size: grow it before mapping, or
    // stores past its end would SIGBUS.
    if !w.names.contains("m") || w.size("m") != MMAP_SIZE {
        w.run(Op::Create {
            name: "m".into(),
            size: MMAP_SIZE,
        });
    }
    let m = w
        .open("m", 0)
        .unwrap_or_else(|e| fail(format!("opening m: {e}")));
    w.map = map_shared(&m, &w.dir.join("m"));
    loop {
        let op = w.next_op();
        w.run(op);
    }
}

fn map_shared(f: &File, path: &Path) -> *mut u8 {
    // SAFETY: a fresh shared mapping of a file we hold open; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MMAP_SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        fail(format!(
            "mmap {}: {}",
            path.display(),
            io::Error::last_os_error()
        ));
    }
    p.cast()
}
