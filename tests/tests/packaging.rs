//! Packaging: `scripts/install.sh` into a DESTDIR, `systemd-analyze verify` of the installed
//! `lossfs@.service` (an instance with its configuration) and the Kafka drop-in, and the
//! unit's ExecStart line run the way systemd runs it: READY=1 on `$NOTIFY_SOCKET` once the
//! mount is ready, and SIGTERM unmounts cleanly after STOPPING=1; and what `.dockerignore`
//! keeps out of the Docker build context.

use lossfs_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn install(dest: &Path, extra: &[&str]) -> std::process::Output {
    let bin_dir = lossfs_bin()
        .parent()
        .expect("lossfs binary has a directory")
        .to_path_buf();
    let out = run_bounded(
        Command::new("sh")
            .arg(repo().join("scripts/install.sh"))
            .arg("--destdir")
            .arg(dest)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(extra)
            .env_remove("DESTDIR"),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "install.sh: {}", output_text(&out));
    out
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{} not installed: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_sh_stages_binaries_unit_and_config() {
    let dir = unique_tmp_dir("pkg-install");
    let dest = dir.join("dest");
    install(&dest, &[]);
    for b in ["lossfs", "lossctl"] {
        let p = dest.join("usr/bin").join(b);
        assert_eq!(mode(&p), 0o755, "{}", p.display());
        assert_eq!(read_all(&p), read_all(&lossfs_bin().with_file_name(b)));
    }
    let unit = dest.join("lib/systemd/system/lossfs@.service");
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(
        read_all(&unit),
        read_all(&repo().join("systemd/lossfs@.service")),
        "with the default prefix the unit is installed as is"
    );
    let conf = dest.join("etc/lossfs/example.conf");
    let text = String::from_utf8(read_all(&conf)).expect("utf-8 conf");
    assert!(
        text.contains("\nBACKING=") && text.contains("\nOPTIONS="),
        "{text}"
    );
    let dropin = dest.join("usr/share/doc/lossfs/kafka.service.d/lossfs.conf");
    assert_eq!(
        read_all(&dropin),
        read_all(&repo().join("systemd/kafka.service.d/lossfs.conf"))
    );

    // Again, with another prefix: an edited configuration is kept, ExecStart follows.
    fs::write(&conf, "BACKING=/edited\n").expect("edit conf");
    install(&dest, &["--prefix", "/opt/lossfs"]);
    assert_eq!(
        read_all(&conf),
        b"BACKING=/edited\n",
        "install.sh overwrote a config"
    );
    assert!(dest.join("opt/lossfs/bin/lossfs").is_file());
    let unit_text = String::from_utf8(read_all(&unit)).expect("utf-8 unit");
    assert!(
        unit_text.contains("\nExecStart=/opt/lossfs/bin/lossfs -f ${BACKING} %f -o ${OPTIONS}\n"),
        "{unit_text}"
    );
    assert!(
        !dest.join("etc/systemd").exists(),
        "the unit goes to /lib/systemd/system, nothing to /etc/systemd"
    );

    // A unit an earlier version left in /etc would hide the new one: the install says so.
    let stale = dest.join("etc/systemd/system/lossfs@.service");
    fs::create_dir_all(stale.parent().expect("parent")).expect("mkdir");
    fs::write(&stale, "[Service]\n").expect("stale unit");
    let out = install(&dest, &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("overrides the new unit: remove it"),
        "{}",
        output_text(&out)
    );

    // Bad arguments fail with a message.
    let out = run_bounded(
        Command::new("sh")
            .arg(repo().join("scripts/install.sh"))
            .args(["--prefix", "relative"]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect(
            "systemd-analyze is not installed (apt-get install -y systemd); \
             this test verifies lossfs@.service with it",
        );
    let dir = unique_tmp_dir("pkg-verify");
    let root = dir.join("root");
    install(&root, &[]);
    // The root needs systemd's own units (sysinit.target...) for the dependencies.
    fs::create_dir_all(root.join("usr/lib/systemd")).expect("mkdir");
    let out = run_bounded(
        Command::new("cp")
            .arg("-a")
            .arg("/usr/lib/systemd/system")
            .arg(root.join("usr/lib/systemd/")),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "cp: {}", output_text(&out));
    fs::write(
        root.join("etc/lossfs/var-lib-kafka.conf"),
        "BACKING=/var/lib/kafka.backing\nOPTIONS=allow_other\n",
    )
    .expect("conf");
    let sys = root.join("etc/systemd/system");
    fs::create_dir_all(&sys).expect("mkdir /etc/systemd/system");
    fs::write(
        sys.join("kafka.service"),
        "[Service]\nExecStart=/usr/bin/lossfs --version\n",
    )
    .expect("kafka.service");
    fs::create_dir_all(sys.join("kafka.service.d")).expect("mkdir drop-in dir");
    fs::copy(
        repo().join("systemd/kafka.service.d/lossfs.conf"),
        sys.join("kafka.service.d/lossfs.conf"),
    )
    .expect("drop-in");
    let out = run_bounded(
        Command::new(analyze)
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg("lossfs@var-lib-kafka.service")
            .arg("kafka.service"),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on some mistakes (an unknown Type= is only "ignoring"): read its
    // complaints too.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lossfs") || l.contains("kafka"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}",
        output_text(&out)
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Expands the unit's ExecStart for instance `mnt` the way systemd does.
fn exec_start(backing: &Path, mnt: &Path, options: &str) -> Vec<String> {
    let unit = String::from_utf8(read_all(&repo().join("systemd/lossfs@.service"))).expect("utf-8");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart= in lossfs@.service");
    line.split_whitespace()
        .map(|w| match w {
            "${BACKING}" => backing.display().to_string(),
            "%f" => mnt.display().to_string(),
            "${OPTIONS}" => options.to_string(),
            "/usr/bin/lossfs" => lossfs_bin().display().to_string(),
            w => w.to_string(),
        })
        .collect()
}

#[test]
fn exec_start_notifies_ready_and_sigterm_unmounts() {
    notify_then_sigterm("defaults");
}

/// The namespace journal model runs a commit thread from the start of the daemon: SIGTERM
/// must still reach the signal thread (a clean unmount), not kill the process.
#[test]
fn sigterm_unmounts_cleanly_with_the_namespace_commit_thread() {
    notify_then_sigterm("metadata=journal,commit=1");
}

fn notify_then_sigterm(options: &str) {
    check_preconditions();
    let dir = unique_tmp_dir("pkg-notify");
    let (backing, mnt) = (dir.join("backing"), dir.join("mnt"));
    fs::create_dir(&backing).expect("mkdir");
    fs::create_dir(&mnt).expect("mkdir");
    let sock_path = dir.join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(MOUNT_TIMEOUT)).expect("timeout");
    // OPTIONS defaults to "defaults" in the unit (Environment=OPTIONS=defaults).
    let argv = exec_start(&backing, &mnt, options);
    let log = dir.join("lossfs.log");
    let mut g = ChildGuard(
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create the daemon's log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}")),
    );
    let mut buf = [0u8; 256];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no sd_notify message from {argv:?}: {e}"));
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        is_lossfs_mounted(&mnt),
        "READY=1 before the mount was there"
    );
    fs::write(mnt.join("f"), b"data").expect("write through the mount");
    // SAFETY: kill(2) of our own unreaped child.
    unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) };
    let st = wait_bounded(&mut g.0, Duration::from_secs(20)).expect("lossfs exits on SIGTERM");
    assert!(
        st.success(),
        "lossfs exit after SIGTERM: {st:?}; its log:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
    assert_eq!(read_all(&backing.join("f")), b"data");
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no second sd_notify message from {argv:?}: {e}"));
    assert_eq!(&buf[..n], b"STOPPING=1", "systemd is told the daemon stops");
    let _ = fs::remove_dir_all(&dir);
}

/// SIGTERM while a program still holds a file on the mount (systemd stopping lossfs before
/// the broker): the daemon detaches the busy mount after its retries instead of giving up,
/// and exits once the last file is closed.
#[test]
fn sigterm_on_a_busy_mount_detaches_it_and_exits_when_it_is_released() {
    check_preconditions();
    let dir = unique_tmp_dir("pkg-busy");
    let (backing, mnt) = (dir.join("backing"), dir.join("mnt"));
    fs::create_dir(&backing).expect("mkdir");
    fs::create_dir(&mnt).expect("mkdir");
    let log = dir.join("lossfs.log");
    let mut g = ChildGuard(
        Command::new(lossfs_bin())
            .arg("-f")
            .arg(&backing)
            .arg(&mnt)
            .args(cache_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create the daemon's log"))
            .spawn()
            .expect("spawn lossfs"),
    );
    let deadline = std::time::Instant::now() + MOUNT_TIMEOUT;
    while !is_lossfs_mounted(&mnt) {
        assert!(std::time::Instant::now() < deadline, "lossfs did not mount");
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = fs::File::create(mnt.join("held")).expect("create through the mount");
    // SAFETY: kill(2) of our own unreaped child.
    unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while is_mounted(&mnt) {
        assert!(
            std::time::Instant::now() < deadline,
            "a busy mount was neither unmounted nor detached within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    let st = wait_bounded(&mut g.0, Duration::from_secs(20))
        .expect("lossfs exits once the detached mount is released");
    assert!(
        st.success(),
        "lossfs exit after SIGTERM: {st:?}; its log:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = fs::remove_dir_all(&dir);
}

/// `.dockerignore` keeps the build output and the history out of the Docker build context,
/// and nothing a Dockerfile copies or the workspace build needs.
#[test]
fn dockerignore_leaves_out_target_and_keeps_the_sources() {
    let text = String::from_utf8(read_all(&repo().join(".dockerignore"))).expect("utf-8");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for p in &patterns {
        assert!(
            !p.contains(['*', '?', '[', '!', '/']),
            "keep .dockerignore to plain top-level names: {p}"
        );
    }
    for left_out in ["target", ".git"] {
        assert!(patterns.contains(&left_out), "{left_out} is sent to Docker");
    }
    // What the builds read: the workspace and what the Dockerfiles COPY from the context.
    let mut needed: Vec<String> = ["Cargo.toml", "Cargo.lock", "fusefs", "ctl", "tests"]
        .map(String::from)
        .to_vec();
    for entry in fs::read_dir(repo().join("docker")).expect("docker/") {
        let path = entry.expect("docker/ entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !name.starts_with("Dockerfile") {
            continue;
        }
        let dockerfile = String::from_utf8(read_all(&path)).expect("utf-8 Dockerfile");
        for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
            let words: Vec<&str> = line.split_whitespace().skip(1).collect();
            if words.iter().any(|w| w.starts_with("--from")) {
                continue;
            }
            // Every word but the destination is a source in the context.
            needed.extend(words[..words.len() - 1].iter().map(|w| w.to_string()));
        }
    }
    for path in &needed {
        let top = path
            .trim_start_matches("./")
            .split('/')
            .next()
            .unwrap_or_default();
        assert!(
            !patterns.contains(&top),
            ".dockerignore leaves out {path}, which the build needs"
        );
    }
}
