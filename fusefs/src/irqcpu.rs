//! The CPU that takes a block device's I/O completion interrupts.
//!
//! On a single-queue disk (e.g. virtio-blk with one request queue, common in VMs), every I/O
//! completion interrupt lands on one CPU, and a thread that waits in fdatasync is woken
//! fastest when it runs on that CPU.  Multi-queue devices (NVMe) complete on the submitting
//! CPU's queue, so there is nothing to gain there and no CPU is named for them.
//!
//! Everything comes from sysfs and procfs; any file that is missing or not as expected
//! means "no answer" rather than an error, since this only tunes where a thread runs.
//! [`Follow`] looks again on demand and says when the answer changed (an interrupt moved).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// How many devices tall a stack (dm over md over a disk...) may be; also stops a cycle.
const MAX_STACK: usize = 4;
/// How far above the disk the PCI device may sit (real virtio-blk: three levels).
const MAX_PARENT_LEVELS: usize = 8;
/// Most directory entries read from one sysfs directory.
const MAX_ENTRIES: usize = 4096;

/// The CPU that handles the completion interrupts of the block device under the filesystem
/// whose `st_dev` is `dev`, if there is exactly one such CPU.
pub fn completion_cpu(dev: u64) -> Option<usize> {
    completion_cpu_in(Path::new("/sys"), Path::new("/proc"), dev)
}

/// The completion CPU of one device, looked up again on demand: `sync_cpu=auto` follows an
/// interrupt that moves.  A look is a walk of a few sysfs files, for a background thread.
pub struct Follow {
    sys: PathBuf,
    procfs: PathBuf,
    dev: u64,
    last: Option<usize>,
}

impl Follow {
    /// Follows the device of `st_dev` `dev` in the real /sys and /proc; looks once now.
    pub fn new(dev: u64) -> Follow {
        Follow::new_in(Path::new("/sys"), Path::new("/proc"), dev)
    }

    /// [`Follow::new`] with sysfs at `sys` and procfs at `procfs`.
    pub fn new_in(sys: &Path, procfs: &Path, dev: u64) -> Follow {
        Follow {
            last: completion_cpu_in(sys, procfs, dev),
            sys: sys.to_path_buf(),
            procfs: procfs.to_path_buf(),
            dev,
        }
    }

    /// The answer of the last look.
    pub fn cpu(&self) -> Option<usize> {
        self.last
    }

    /// Looks again: `Some(answer)` if it differs from the last one, `None` if not.
    pub fn changed(&mut self) -> Option<Option<usize>> {
        let now = completion_cpu_in(&self.sys, &self.procfs, self.dev);
        if now == self.last {
            return None;
        }
        self.last = now;
        Some(now)
    }
}

/// [`completion_cpu`] with sysfs mounted at `sys` and procfs at `procfs`; reads only under
/// those two directories (and where the symlinks in them lead).
pub fn completion_cpu_in(sys: &Path, procfs: &Path, dev: u64) -> Option<usize> {
    // Canonical, so that walking up from a canonical device dir can tell where sysfs ends.
    let sys = fs::canonicalize(sys).ok()?;
    let node = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let disk = physical_disk(&sys, &sys.join("dev/block").join(node))?;
    if hw_queues(&disk)? != 1 {
        return None;
    }
    let pci = pci_device(&sys, &disk)?;
    let irq = busiest_irq(&sys, &pci.join("msi_irqs"))?;
    affinity_cpu(procfs, irq)
}

/// The disk at the bottom of the stack that `link` (a sysfs block device) sits on.
fn physical_disk(sys: &Path, link: &Path) -> Option<PathBuf> {
    let mut disk = whole_disk(link)?;
    for _ in 0..MAX_STACK {
        match only_slave(&disk)? {
            None => return Some(disk),
            Some(name) => disk = whole_disk(&sys.join("class/block").join(name))?,
        }
    }
    None
}

/// The canonical dir of the disk that the block device `link` is, or is a partition of
/// (the queues and the interrupts belong to the disk).
fn whole_disk(link: &Path) -> Option<PathBuf> {
    let dir = fs::canonicalize(link).ok()?;
    if dir.join("partition").is_file() {
        return dir.parent().map(Path::to_path_buf);
    }
    Some(dir)
}

/// The one device `disk` is built on (`Some(None)`: it is built on none); None when it has
/// several, as then there is no one interrupt to follow.
fn only_slave(disk: &Path) -> Option<Option<OsString>> {
    let mut names = match entry_names(&disk.join("slaves"), 2) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(None),
        other => other.ok()?,
    };
    match names.len() {
        0 | 1 => Some(names.pop()),
        _ => None,
    }
}

/// How many hardware queues `disk` has; None for a disk without blk-mq.
fn hw_queues(disk: &Path) -> Option<usize> {
    let names = entry_names(&disk.join("mq"), MAX_ENTRIES).ok()?;
    Some(names.iter().filter(|n| os_decimal(n).is_some()).count())
}

/// The first dir above `disk` that has MSI vectors: the PCI function that interrupts for it.
/// Stays inside `sys`.
fn pci_device<'a>(sys: &Path, disk: &'a Path) -> Option<&'a Path> {
    disk.ancestors()
        .skip(1)
        .take(MAX_PARENT_LEVELS)
        .take_while(|dir| dir.starts_with(sys))
        .find(|dir| dir.join("msi_irqs").is_dir())
}

/// The IRQ in `msi_irqs` that has fired most: the request queue's, as the config vector
/// hardly ever fires.  None if none has fired at all.
fn busiest_irq(sys: &Path, msi_irqs: &Path) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None;
    for name in entry_names(msi_irqs, MAX_ENTRIES).ok()? {
        let Some(irq) = os_decimal(&name) else {
            continue;
        };
        let count = fs::read_to_string(
            sys.join("kernel/irq")
                .join(irq.to_string())
                .join("per_cpu_count"),
        )
        .ok()?;
        let total = total_count(&count)?;
        // Ties go to the higher IRQ only so that the answer does not depend on dir order.
        best = best.max(Some((total, irq)));
    }
    match best? {
        (0, _) => None,
        (_, irq) => Some(irq),
    }
}

/// The sum of a `per_cpu_count` file ("0,58630378": one count per CPU).
fn total_count(text: &str) -> Option<u64> {
    text.trim()
        .split(',')
        .try_fold(0u64, |sum, field| sum.checked_add(decimal(field.trim())?))
}

/// The one CPU that `irq` is delivered to, if its affinity names exactly one.
fn affinity_cpu(procfs: &Path, irq: u64) -> Option<usize> {
    let dir = procfs.join("irq").join(irq.to_string());
    // Older kernels, and some irqchips, have no (or an empty) effective affinity; the
    // requested affinity is the best guess left.
    let list = fs::read_to_string(dir.join("effective_affinity_list"))
        .ok()
        .filter(|list| !list.trim().is_empty())
        .or_else(|| fs::read_to_string(dir.join("smp_affinity_list")).ok())?;
    let cpu = decimal(list.trim())?;
    usize::try_from(cpu).ok()
}

/// The names of at most `limit` entries of `dir`.
fn entry_names(dir: &Path, limit: usize) -> io::Result<Vec<OsString>> {
    fs::read_dir(dir)?
        .take(limit)
        .map(|entry| entry.map(|e| e.file_name()))
        .collect()
}

/// `name` as a plain decimal number (IRQ and queue dirs are named so).
fn os_decimal(name: &OsStr) -> Option<u64> {
    decimal(name.to_str()?)
}

/// `text` as a plain decimal number: digits only, so no sign, range or list.
fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempDir;
    use std::os::unix::fs::{symlink, MetadataExt};

    const DISK: &str = "sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda";
    const PCI: &str = "sys/devices/pci0000:00/0000:00:02.0";
    const DM: &str = "sys/devices/virtual/block/dm-0";

    /// A fake sysfs and procfs under a fresh temp dir, removed on drop (also when a test fails).
    struct Tree {
        root: TempDir,
    }

    impl Tree {
        fn empty(tag: &str) -> Tree {
            Tree {
                root: TempDir::new(&format!("irqcpu-{tag}")),
            }
        }

        /// A VM with one single-queue virtio-blk disk `vda` (254:0) and its partition
        /// `vda1` (254:1), whose request-queue IRQ 36 goes to CPU 1 and config IRQ 35 to none.
        fn virtio_vm(tag: &str) -> Tree {
            let t = Tree::empty(tag);
            t.dir(&format!("{DISK}/mq/0"));
            t.file(&format!("{DISK}/vda1/partition"), "1\n");
            t.link("sys/dev/block/254:0", &format!("../../{}", &DISK[4..]));
            t.link("sys/dev/block/254:1", &format!("../../{}/vda1", &DISK[4..]));
            t.dir(&format!("{PCI}/msi_irqs/35"));
            t.dir(&format!("{PCI}/msi_irqs/36"));
            t.file("sys/kernel/irq/35/per_cpu_count", "0,1\n");
            t.file("sys/kernel/irq/36/per_cpu_count", "0,500\n");
            t.file("proc/irq/36/effective_affinity_list", "1\n");
            t
        }

        /// Adds bio-based dm-0 (253:0, so without blk-mq queues of its own) over `slaves`,
        /// which are partitions of `vda`.
        fn add_dm(&self, slaves: &[&str]) {
            self.dir(&format!("{DM}/holders"));
            self.link("sys/dev/block/253:0", "../../devices/virtual/block/dm-0");
            for slave in slaves {
                self.link(
                    &format!("{DM}/slaves/{slave}"),
                    &format!("../../../../{}/{slave}", &DISK[12..]),
                );
                self.link(
                    &format!("sys/class/block/{slave}"),
                    &format!("../../{}/{slave}", &DISK[4..]),
                );
            }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.root.path().join(rel)
        }

        fn dir(&self, rel: &str) {
            fs::create_dir_all(self.path(rel)).unwrap();
        }

        fn file(&self, rel: &str, text: &str) {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        fn link(&self, rel: &str, target: &str) {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            symlink(target, path).unwrap();
        }

        fn cpu(&self, major: u32, minor: u32) -> Option<usize> {
            completion_cpu_in(
                &self.path("sys"),
                &self.path("proc"),
                libc::makedev(major, minor),
            )
        }
    }

    #[test]
    fn single_queue_disk_and_its_partition_name_the_busy_irqs_cpu() {
        let t = Tree::virtio_vm("single");
        assert_eq!(t.cpu(254, 1), Some(1));
        assert_eq!(t.cpu(254, 0), Some(1));
    }

    #[test]
    fn two_hardware_queues_name_no_cpu() {
        let t = Tree::virtio_vm("twoq");
        t.dir(&format!("{DISK}/mq/1"));
        assert_eq!(t.cpu(254, 1), None);
    }

    #[test]
    fn disk_without_blk_mq_names_no_cpu() {
        let t = Tree::virtio_vm("nomq");
        fs::remove_dir_all(t.path(&format!("{DISK}/mq"))).unwrap();
        assert_eq!(t.cpu(254, 1), None);
    }

    #[test]
    fn affinity_over_several_cpus_names_no_cpu() {
        let t = Tree::virtio_vm("range");
        t.file("proc/irq/36/effective_affinity_list", "0-1\n");
        assert_eq!(t.cpu(254, 1), None);
        t.file("proc/irq/36/effective_affinity_list", "2,5\n");
        assert_eq!(t.cpu(254, 1), None);
    }

    #[test]
    fn affinity_cpu_is_taken_as_written() {
        let t = Tree::virtio_vm("three");
        t.file("proc/irq/36/effective_affinity_list", "3\n");
        assert_eq!(t.cpu(254, 1), Some(3));
    }

    #[test]
    fn requested_affinity_stands_in_for_missing_or_empty_effective_one() {
        let t = Tree::virtio_vm("smp");
        t.file("proc/irq/36/smp_affinity_list", "2\n");
        t.file("proc/irq/36/effective_affinity_list", "\n");
        assert_eq!(t.cpu(254, 1), Some(2));
        fs::remove_file(t.path("proc/irq/36/effective_affinity_list")).unwrap();
        assert_eq!(t.cpu(254, 1), Some(2));
        fs::remove_file(t.path("proc/irq/36/smp_affinity_list")).unwrap();
        assert_eq!(t.cpu(254, 1), None);
    }

    #[test]
    fn the_busiest_irq_decides() {
        let t = Tree::virtio_vm("busiest");
        t.file("sys/kernel/irq/35/per_cpu_count", "700,0\n");
        t.file("proc/irq/35/effective_affinity_list", "0\n");
        assert_eq!(t.cpu(254, 1), Some(0));
    }

    #[test]
    fn irqs_that_never_fired_name_no_cpu() {
        let t = Tree::virtio_vm("zero");
        t.file("sys/kernel/irq/35/per_cpu_count", "0,0\n");
        t.file("sys/kernel/irq/36/per_cpu_count", "0,0\n");
        assert_eq!(t.cpu(254, 1), None);
    }

    #[test]
    fn garbled_or_missing_counts_name_no_cpu() {
        let t = Tree::virtio_vm("garbled");
        t.file("sys/kernel/irq/36/per_cpu_count", "x,y\n");
        assert_eq!(t.cpu(254, 1), None);
        t.file(
            "sys/kernel/irq/36/per_cpu_count",
            "18446744073709551615,1\n",
        );
        assert_eq!(t.cpu(254, 1), None);
        fs::remove_file(t.path("sys/kernel/irq/36/per_cpu_count")).unwrap();
        assert_eq!(t.cpu(254, 1), None);
    }

    #[test]
    fn no_msi_irqs_inside_sysfs_names_no_cpu() {
        let t = Tree::virtio_vm("nomsi");
        fs::remove_dir_all(t.path(&format!("{PCI}/msi_irqs"))).unwrap();
        // Within eight levels of the disk, but outside the sysfs root: must not be used.
        t.dir("msi_irqs/36");
        assert_eq!(t.cpu(254, 1), None);
    }

    #[test]
    fn unknown_device_names_no_cpu() {
        let t = Tree::virtio_vm("unknown");
        assert_eq!(t.cpu(8, 0), None);
    }

    #[test]
    fn dm_over_one_partition_follows_it_to_the_disk() {
        let t = Tree::virtio_vm("dm");
        t.add_dm(&["vda1"]);
        assert_eq!(t.cpu(253, 0), Some(1));
    }

    #[test]
    fn dm_over_two_devices_names_no_cpu() {
        let t = Tree::virtio_vm("dm2");
        // Both lead to the same single-queue disk: still no one device to follow.
        t.file(&format!("{DISK}/vda2/partition"), "2\n");
        t.add_dm(&["vda1", "vda2"]);
        assert_eq!(t.cpu(253, 0), None);
    }

    #[test]
    fn a_stack_that_names_itself_ends() {
        let t = Tree::virtio_vm("cycle");
        t.add_dm(&[]);
        t.link(&format!("{DM}/slaves/dm-0"), "../../dm-0");
        t.link("sys/class/block/dm-0", "../../devices/virtual/block/dm-0");
        t.dir(&format!("{DM}/mq/0"));
        assert_eq!(t.cpu(253, 0), None);
    }

    #[test]
    fn follow_sees_the_interrupt_move_and_come_back() {
        let t = Tree::virtio_vm("follow");
        let dev = libc::makedev(254, 1);
        let mut f = Follow::new_in(&t.path("sys"), &t.path("proc"), dev);
        assert_eq!(f.cpu(), Some(1));
        assert_eq!(f.changed(), None, "nothing moved");
        // irqbalance moves the request queue's interrupt to CPU 0.
        t.file("proc/irq/36/effective_affinity_list", "0\n");
        assert_eq!(f.changed(), Some(Some(0)));
        assert_eq!(f.cpu(), Some(0));
        assert_eq!(f.changed(), None, "reported once");
        // Spread over two CPUs: no single CPU any more.
        t.file("proc/irq/36/effective_affinity_list", "0-1\n");
        assert_eq!(f.changed(), Some(None));
        assert_eq!(f.changed(), None);
        // The config interrupt becomes the busiest, on CPU 3.
        t.file("proc/irq/36/effective_affinity_list", "1\n");
        t.file("sys/kernel/irq/35/per_cpu_count", "0,9000\n");
        t.file("proc/irq/35/effective_affinity_list", "3\n");
        assert_eq!(f.changed(), Some(Some(3)));
        // A mount made while no CPU could be named finds one later.
        fs::remove_file(t.path("proc/irq/35/effective_affinity_list")).unwrap();
        let mut late = Follow::new_in(&t.path("sys"), &t.path("proc"), dev);
        assert_eq!(late.cpu(), None);
        t.file("proc/irq/35/effective_affinity_list", "2\n");
        assert_eq!(late.changed(), Some(Some(2)));
    }

    #[test]
    fn this_machines_root_filesystem_does_not_panic() {
        let dev = fs::metadata("/").unwrap().dev();
        if let Some(cpu) = completion_cpu(dev) {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            // SAFETY: sysconf only reads a system constant.
            let configured = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
            let configured = usize::try_from(configured).unwrap_or(0);
            assert!(
                cpu < cpus.max(configured),
                "CPU {cpu} of {cpus} online, {configured} configured"
            );
        }
    }
}
