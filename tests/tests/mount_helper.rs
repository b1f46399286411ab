//! `mount -t fuse.lossfs` and /etc/fstab go through mount.fuse3, which runs `lossfs` from
//! the system path with no PATH in its environment and without -f: the daemon must find
//! fusermount3 on its own, daemonize, and return once the mount is ready.

use lossfs_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Puts `lossfs` where mount.fuse3 looks (it runs helpers with PATH=/sbin:/usr/sbin:...),
/// and takes it away again.
struct HelperLink(&'static Path);

impl HelperLink {
    fn install() -> HelperLink {
        let link = Path::new("/usr/sbin/lossfs");
        if let Ok(target) = std::fs::read_link(link) {
            assert_eq!(
                target,
                lossfs_bin(),
                "/usr/sbin/lossfs already points elsewhere ({}); refusing to replace an installed lossfs",
                target.display()
            );
        } else {
            assert!(
                !link.exists(),
                "/usr/sbin/lossfs exists and is not our link; refusing to replace it"
            );
            std::os::unix::fs::symlink(lossfs_bin(), link).expect("link /usr/sbin/lossfs");
        }
        HelperLink(link)
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

#[test]
fn mount_t_fuse_lossfs_and_fstab_work() {
    check_preconditions();
    assert!(
        Path::new("/sbin/mount.fuse3").exists() || Path::new("/usr/sbin/mount.fuse3").exists(),
        "mount.fuse3 missing: apt-get install fuse3"
    );
    let _link = HelperLink::install();
    let dir = unique_tmp_dir("mount-helper");
    let (b, m) = (dir.join("backing"), dir.join("mnt"));
    std::fs::create_dir_all(&b).unwrap();
    std::fs::create_dir_all(&m).unwrap();

    // mount -t, with options mount(8) adds (rw, dev, suid) and fstab-only ones (nofail).
    let out = run_bounded(
        Command::new("mount")
            .args(["-t", "fuse.lossfs", "-o"])
            .arg(format!("allow_other,nofail,cache={}", test_cache_mode()))
            .arg(&b)
            .arg(&m)
            .env_remove("PATH"),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "mount -t fuse.lossfs failed: {}",
        output_text(&out)
    );
    assert!(
        is_lossfs_mounted(&m),
        "not a fuse.lossfs mount after mount -t"
    );
    std::fs::write(m.join("f"), b"unsynced").unwrap();
    let cut = lossctl(&["powercut", "--no-kill", "--json", m.to_str().unwrap()]);
    assert!(cut.status.success(), "powercut: {}", output_text(&cut));
    assert_eq!(
        std::fs::read(m.join("f")).unwrap(),
        b"",
        "unsynced bytes survived"
    );
    let out = run_bounded(Command::new("umount").arg(&m), Duration::from_secs(30));
    assert!(out.status.success(), "umount: {}", output_text(&out));
    assert!(!is_mounted(&m), "still mounted after umount");

    // The same through an fstab line.
    let fstab = dir.join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "{} {} fuse.lossfs allow_other,nofail,cache={} 0 0\n",
            b.display(),
            m.display(),
            test_cache_mode()
        ),
    )
    .unwrap();
    let out = run_bounded(
        Command::new("mount").arg("-T").arg(&fstab).arg(&m),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "mount from fstab failed: {}",
        output_text(&out)
    );
    assert!(
        is_lossfs_mounted(&m),
        "not a fuse.lossfs mount after mount -T fstab"
    );
    let out = run_bounded(Command::new("umount").arg(&m), Duration::from_secs(30));
    assert!(out.status.success(), "umount: {}", output_text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
