//! A power cut kills the processes using the mount and reports them; handles that
//! survive it (with `--no-kill`) fail with EIO, new handles work.

use lossfs_tests::{
    first_stdout_line, num, read_all, spawn_python, wait_bounded, writeback_cache, ChildGuard,
    Mount,
};
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

/// Waits (bounded) for the child to print a line "ready" on stdout.
fn wait_ready(g: &mut ChildGuard, what: &str) {
    match first_stdout_line(g, Duration::from_secs(15)) {
        Some(l) if l.trim() == "ready" => {}
        Some(l) => {
            let mut err = String::new();
            if let Some(mut e) = g.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("{what} did not get ready: stdout {l:?}, stderr {err:?}")
        }
        None => panic!("{what} did not print ready within 15 s"),
    }
}

fn killed_entry(rep: &serde_json::Value, pid: u32) -> Option<&serde_json::Value> {
    rep["killed"]
        .as_array()?
        .iter()
        .find(|k| k["pid"].as_u64() == Some(pid as u64))
}

fn reasons(k: &serde_json::Value) -> Vec<String> {
    k["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn powercut_kills_processes_with_cwd_or_fd_in_mount() {
    let m = Mount::new(&[]);
    fs::create_dir(m.path("work")).unwrap();
    let mut sleeper = ChildGuard(
        Command::new("sh")
            .args(["-c", "echo ready; exec sleep 1000"])
            .current_dir(m.path("work"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sleep"),
    );
    wait_ready(&mut sleeper, "sleep with cwd in mount");
    let held = m.path("held.txt");
    let script = format!(
        "import sys,time\nf=open({:?},'w')\nf.write('unsynced')\nf.flush()\n\
         print('ready',flush=True)\ntime.sleep(1000)\n",
        held.to_str().unwrap()
    );
    let mut writer = spawn_python(&script, &[]);
    wait_ready(&mut writer, "python3 holding a file open");
    assert_eq!(read_all(&held), b"unsynced");

    let rep = m.powercut_json();
    let ks = killed_entry(&rep, sleeper.0.id())
        .unwrap_or_else(|| panic!("sleep pid {} not in killed list: {rep}", sleeper.0.id()));
    assert!(
        reasons(ks).iter().any(|r| r == "cwd"),
        "sleep should be killed for its cwd: {rep}"
    );
    let kw = killed_entry(&rep, writer.0.id())
        .unwrap_or_else(|| panic!("python pid {} not in killed list: {rep}", writer.0.id()));
    assert!(
        reasons(kw).iter().any(|r| r == "fd"),
        "python should be killed for its fd: {rep}"
    );
    assert!(kw["comm"].as_str().is_some_and(|c| !c.is_empty()), "{rep}");
    for g in [&mut sleeper, &mut writer] {
        let st = wait_bounded(&mut g.0, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("pid {} still alive 10 s after the cut", g.0.id()));
        assert_eq!(st.signal(), Some(libc::SIGKILL), "exit status {st:?}");
    }
    assert!(num(&rep, "lost_bytes") >= 8, "{rep}");
    assert_eq!(read_all(&held), b"", "unsynced content must be gone");
}

#[test]
fn no_kill_spares_processes() {
    let m = Mount::new(&[]);
    let mut sleeper = ChildGuard(
        Command::new("sh")
            .args(["-c", "echo ready; exec sleep 1000"])
            .current_dir(&m.mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sleep"),
    );
    wait_ready(&mut sleeper, "sleep with cwd in mount");
    let rep = m.powercut_nokill_json();
    assert!(
        rep["killed"].as_array().is_some_and(|a| a.is_empty()),
        "--no-kill killed something: {rep}"
    );
    thread::sleep(Duration::from_millis(200));
    assert!(
        matches!(sleeper.0.try_wait(), Ok(None)),
        "sleep died despite --no-kill"
    );
}

fn assert_eio(r: std::io::Result<usize>, what: &str) {
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}"),
        Ok(n) => panic!("{what} after the cut succeeded ({n} bytes); expected EIO"),
    }
}

#[test]
fn handles_from_before_the_cut_get_eio() {
    let m = Mount::new(&[]);
    let p = m.path("h");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(b"durable!").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" and volatile").unwrap();
    let ro = fs::File::open(&p).unwrap();
    let rep = m.powercut_nokill_json();
    // With the writeback cache the page is written back from offset 0: the 8 durable
    // bytes are rewritten (unchanged) and count as lost too.
    let lost = if writeback_cache() { 21 } else { 13 };
    assert_eq!(num(&rep, "lost_bytes"), lost, "{rep}");

    let mut buf = [0u8; 16];
    assert_eio(f.read_at(&mut buf, 0), "read on old rw handle");
    assert_eio(f.write_at(b"zz", 0), "write on old rw handle");
    assert_eio(ro.read_at(&mut buf, 0), "read on old ro handle");
    drop(f);
    drop(ro);

    // A handle opened after the cut sees the durable content and works.
    let mut g = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let mut s = Vec::new();
    g.read_to_end(&mut s).unwrap();
    assert_eq!(s, b"durable!");
    g.write_all(b"+new").unwrap();
    g.sync_all().unwrap();
    drop(g);
    assert_eq!(read_all(&p), b"durable!+new");
}

#[test]
fn powercut_kills_processes_by_mapping_and_executable() {
    let m = Mount::new(&[]);
    let mapped = m.path("mapped");
    fs::write(&mapped, vec![0u8; 8192]).unwrap();
    let script = format!(
        "import mmap,os,time\nfd=os.open({:?},os.O_RDWR)\nm=mmap.mmap(fd,8192)\n\
         os.close(fd)\nm[0:5]=b'dirty'\nprint('ready',flush=True)\ntime.sleep(1000)\n",
        mapped.to_str().unwrap()
    );
    let mut mapper = spawn_python(&script, &[]);
    wait_ready(&mut mapper, "python3 holding only a mapping");
    let exe = m.path("mysleep");
    fs::copy("/bin/sleep", &exe).unwrap();
    let mut own_exe = ChildGuard(
        Command::new(&exe)
            .arg("1000")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sleep copied into the mount"),
    );
    // Give the exec a moment to complete, bounded: wait until /proc shows the new exe.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fs::read_link(format!("/proc/{}/exe", own_exe.0.id()))
        .ok()
        .as_deref()
        != Some(exe.as_path())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "copied sleep did not start within 10 s"
        );
        thread::sleep(Duration::from_millis(20));
    }

    let rep = m.powercut_json();
    let km = killed_entry(&rep, mapper.0.id())
        .unwrap_or_else(|| panic!("mapper pid {} not killed: {rep}", mapper.0.id()));
    assert!(
        reasons(km).iter().any(|r| r == "mmap"),
        "mapper should be killed for its mapping: {rep}"
    );
    let ke = killed_entry(&rep, own_exe.0.id())
        .unwrap_or_else(|| panic!("exe pid {} not killed: {rep}", own_exe.0.id()));
    assert!(
        reasons(ke).iter().any(|r| r == "exe"),
        "sleep run from the mount should be killed for its exe: {rep}"
    );
    for g in [&mut mapper, &mut own_exe] {
        let st = wait_bounded(&mut g.0, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("pid {} still alive 10 s after the cut", g.0.id()));
        assert_eq!(st.signal(), Some(libc::SIGKILL), "exit status {st:?}");
    }
    // The mapped file was never fsynced: it is back to its (empty) durable state.
    assert_eq!(
        read_all(&mapped),
        b"",
        "dirty mapped pages must not survive"
    );
}
