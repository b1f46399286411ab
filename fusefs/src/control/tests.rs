//! Tests of the control server and client over real Unix sockets, with a fake handler.

use super::*;
use crate::report::{ByteRange, FileStatus, PowercutReport, StatusReport, SyncReport};
use crate::testdir::TempDir;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// The control socket of a test's directory.
fn sock(dir: &TempDir) -> PathBuf {
    dir.path().join("ctl.sock")
}

#[derive(Default)]
struct Fake {
    busy: AtomicBool,
    reentered: AtomicBool,
    calls: AtomicUsize,
    last_no_kill: AtomicUsize,
    delay: Duration,
    fail_sync: bool,
    panic_on_status: AtomicBool,
}

impl Fake {
    fn enter(&self) {
        if self.busy.swap(true, Ordering::SeqCst) {
            self.reentered.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(self.delay);
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.busy.store(false, Ordering::SeqCst);
    }
}

fn sample_status() -> StatusReport {
    StatusReport {
        mountpoint: "/m".into(),
        backing: "/b".into(),
        files: vec![FileStatus {
            path: Some("log".into()),
            inode: None,
            durable_size: 10,
            size: 30,
            unsynced: vec![ByteRange { start: 10, end: 30 }],
            unsynced_bytes: 20,
            unsynced_data_bytes: 20,
            unsynced_hole_bytes: 0,
        }],
        unsynced_bytes: 20,
        powercuts: 2,
        ..Default::default()
    }
}

impl ControlHandler for Fake {
    fn status(&self) -> FsResult<StatusReport> {
        if self.panic_on_status.swap(false, Ordering::SeqCst) {
            panic!("fake handler panics on purpose");
        }
        self.enter();
        Ok(sample_status())
    }
    fn sync(&self) -> FsResult<SyncReport> {
        self.enter();
        if self.fail_sync {
            return Err(FsError::new(libc::EIO, "fsync of log failed"));
        }
        Ok(SyncReport {
            files_synced: 1,
            bytes_synced: 20,
            ..Default::default()
        })
    }
    fn powercut(&self, no_kill: bool) -> FsResult<PowercutReport> {
        self.enter();
        self.last_no_kill
            .store(if no_kill { 1 } else { 2 }, Ordering::SeqCst);
        Ok(PowercutReport {
            mountpoint: "/m".into(),
            lost_bytes: 20,
            ..Default::default()
        })
    }
}

fn start(dir: &TempDir, fake: &Arc<Fake>) -> ControlServer {
    let handler: Arc<dyn ControlHandler> = fake.clone();
    ControlServer::start(&sock(dir), handler).unwrap()
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

fn read_reply(r: &mut impl BufRead) -> Value {
    let mut line = String::new();
    let n = r.read_line(&mut line).unwrap();
    assert!(n > 0, "connection closed without a reply");
    assert!(line.ends_with('\n'), "{line:?}");
    serde_json::from_str(&line).unwrap()
}

fn assert_error(v: &Value, needle: &str) {
    assert_eq!(v["ok"], Value::Bool(false), "{v}");
    assert_eq!(v["v"], Value::from(1), "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

/// Reads until EOF and returns what came; fails if the server keeps the connection open.
fn read_to_eof(s: &mut UnixStream) -> Vec<u8> {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    rest
}

#[test]
fn round_trips_every_request() {
    let dir = TempDir::new("ctl-rt");
    let fake = Arc::new(Fake::default());
    let server = start(&dir, &fake);
    assert_eq!(server.path(), sock(&dir));
    let st = call(&sock(&dir), &Request::Status, T).unwrap();
    assert_eq!(
        serde_json::from_value::<StatusReport>(st).unwrap(),
        sample_status()
    );
    let sy: SyncReport =
        serde_json::from_value(call(&sock(&dir), &Request::Sync, T).unwrap()).unwrap();
    assert_eq!(sy.bytes_synced, 20);
    let pc: PowercutReport = serde_json::from_value(
        call(
            &sock(&dir),
            &Request::Powercut {
                no_kill: true,
                keep: Default::default(),
            },
            T,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(pc.lost_bytes, 20);
    assert_eq!(fake.last_no_kill.load(Ordering::SeqCst), 1);
    call(
        &sock(&dir),
        &Request::Powercut {
            no_kill: false,
            keep: Default::default(),
        },
        T,
    )
    .unwrap();
    assert_eq!(fake.last_no_kill.load(Ordering::SeqCst), 2);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
}

#[test]
fn socket_is_private_and_parent_is_created() {
    let dir = TempDir::new("ctl-perm");
    let nested = dir.path().join("a/b/ctl.sock");
    let handler: Arc<dyn ControlHandler> = Arc::new(Fake::default());
    let server = ControlServer::start(&nested, handler).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&nested), 0o600);
    assert_eq!(mode(&dir.path().join("a/b")), 0o755);
    server.shutdown();
    assert!(!nested.exists(), "shutdown must remove the socket file");
}

#[test]
fn handler_errors_reach_the_client_as_server_errors() {
    let dir = TempDir::new("ctl-err");
    let fake = Arc::new(Fake {
        fail_sync: true,
        ..Default::default()
    });
    let _server = start(&dir, &fake);
    match call(&sock(&dir), &Request::Sync, T) {
        Err(ClientError::Server(m)) => assert_eq!(
            m,
            format!(
                "fsync of log failed: {}",
                std::io::Error::from_raw_os_error(libc::EIO)
            )
        ),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn handler_panic_is_an_error_reply_and_serving_goes_on() {
    let dir = TempDir::new("ctl-panic");
    let fake = Arc::new(Fake::default());
    fake.panic_on_status.store(true, Ordering::SeqCst);
    let _server = start(&dir, &fake);
    match call(&sock(&dir), &Request::Status, T) {
        Err(ClientError::Server(m)) => assert!(m.contains("panicked"), "{m}"),
        other => panic!("expected a server error, got {other:?}"),
    }
    call(&sock(&dir), &Request::Status, T).unwrap();
}

#[test]
fn several_requests_per_connection_and_text_garbage_keeps_it_open() {
    let dir = TempDir::new("ctl-multi");
    let fake = Arc::new(Fake::default());
    let _server = start(&dir, &fake);
    let mut s = connect(&sock(&dir));
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n\n{\"v\":1,\"cmd\":\"sync\"}\n")
        .unwrap();
    assert_eq!(read_reply(&mut r)["result"]["powercuts"], Value::from(2));
    assert_eq!(read_reply(&mut r)["result"]["files_synced"], Value::from(1));
    s.write_all(b"hello there\n").unwrap();
    assert_error(&read_reply(&mut r), "not valid JSON");
    s.write_all(b"{\"v\":7,\"cmd\":\"status\"}\n").unwrap();
    assert_error(&read_reply(&mut r), "unsupported protocol version 7");
    s.write_all(b"{\"v\":1,\"cmd\":\"format\"}\n").unwrap();
    assert_error(&read_reply(&mut r), "unknown command");
    s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
    assert_eq!(read_reply(&mut r)["ok"], Value::Bool(true));
}

#[test]
fn binary_garbage_gets_an_error_then_close_and_server_serves_on() {
    let dir = TempDir::new("ctl-bin");
    let fake = Arc::new(Fake::default());
    let _server = start(&dir, &fake);
    let mut s = connect(&sock(&dir));
    s.write_all(b"\xff\xfe\x00garbage\n{\"v\":1,\"cmd\":\"status\"}\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_error(&read_reply(&mut r), "not UTF-8");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing may follow on a closed connection");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    call(&sock(&dir), &Request::Status, T).unwrap();
}

#[test]
fn oversized_line_gets_an_error_then_close_and_server_serves_on() {
    let dir = TempDir::new("ctl-big");
    let fake = Arc::new(Fake::default());
    let _server = start(&dir, &fake);
    let mut s = connect(&sock(&dir));
    // The server stops reading after 64 KiB, so our write may fail with EPIPE: that is fine.
    let _ = s.write_all(&vec![b'{'; 1 << 20]);
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_error(&read_reply(&mut r), "exceeds");
    let mut rest = Vec::new();
    // The server closes with our unread bytes still queued to it, which may reach us as a
    // reset instead of an end of file: both are a close.
    match r.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading after the error reply: {e}"),
    }
    assert!(rest.is_empty());
    call(&sock(&dir), &Request::Status, T).unwrap();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn half_closed_connections_end_promptly() {
    let dir = TempDir::new("ctl-half");
    let fake = Arc::new(Fake::default());
    let _server = start(&dir, &fake);
    let started = Instant::now();

    let mut s = connect(&sock(&dir));
    s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let all = String::from_utf8(read_to_eof(&mut s)).unwrap();
    assert_eq!(all.lines().count(), 1, "{all}");
    assert!(all.contains("\"ok\":true"), "{all}");

    // A last request without its newline is still answered.
    let mut s = connect(&sock(&dir));
    s.write_all(b"{\"v\":1,\"cmd\":\"sync\"}").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let all = String::from_utf8(read_to_eof(&mut s)).unwrap();
    assert!(all.contains("\"files_synced\":1"), "{all}");

    let mut s = connect(&sock(&dir));
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut s).is_empty());

    // Well under the 30 s idle timeout: EOF ended them, not the timer.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn idle_connections_are_closed_and_the_cap_refuses_extra_ones() {
    let dir = TempDir::new("ctl-idle");
    let fake: Arc<dyn ControlHandler> = Arc::new(Fake::default());
    let opts = ServerOptions {
        idle_timeout: Duration::from_millis(1500),
        max_connections: 2,
    };
    let _server = ControlServer::start_with(&sock(&dir), fake, opts).unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&sock(&dir));
        s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(read_reply(&mut r)["ok"], Value::Bool(true));
        held.push(s);
    }
    let mut third = connect(&sock(&dir));
    let mut r = BufReader::new(third.try_clone().unwrap());
    assert_error(&read_reply(&mut r), "too many control connections");
    assert!(read_to_eof(&mut third).is_empty());

    let started = Instant::now();
    for mut s in held {
        assert!(read_to_eof(&mut s).is_empty());
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(6),
        "idle close took {waited:?}"
    );
    // Slots are free again once the idle connections were closed.
    let deadline = Instant::now() + T;
    loop {
        match call(&sock(&dir), &Request::Status, T) {
            Ok(_) => break,
            Err(ClientError::Server(m)) if m.contains("too many") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn concurrent_clients_are_served_one_at_a_time() {
    let dir = TempDir::new("ctl-conc");
    let fake = Arc::new(Fake {
        delay: Duration::from_millis(3),
        ..Default::default()
    });
    let _server = start(&dir, &fake);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let sock = sock(&dir);
            std::thread::spawn(move || {
                for j in 0..10 {
                    let req = if (i + j) % 2 == 0 {
                        Request::Powercut {
                            no_kill: true,
                            keep: Default::default(),
                        }
                    } else {
                        Request::Status
                    };
                    call(&sock, &req, T).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        !fake.reentered.load(Ordering::SeqCst),
        "two handler calls overlapped"
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 80);
}

#[test]
fn refuses_a_live_socket_and_replaces_a_stale_one() {
    let dir = TempDir::new("ctl-stale");
    let fake = Arc::new(Fake::default());
    let first = start(&dir, &fake);
    let handler: Arc<dyn ControlHandler> = fake.clone();
    let err = ControlServer::start(&sock(&dir), handler)
        .err()
        .expect("a second server on a live socket must fail");
    assert!(
        err.to_string().contains("another lossfs already serves"),
        "{err}"
    );
    call(&sock(&dir), &Request::Status, T).unwrap();
    first.shutdown();
    assert!(!sock(&dir).exists());

    // A socket file nobody listens on any more, as a SIGKILLed daemon leaves behind.
    drop(UnixListener::bind(sock(&dir)).unwrap());
    assert!(sock(&dir).exists());
    let _second = start(&dir, &fake);
    call(&sock(&dir), &Request::Status, T).unwrap();
}

#[test]
fn never_replaces_a_non_socket() {
    let dir = TempDir::new("ctl-file");
    std::fs::write(sock(&dir), b"precious").unwrap();
    let handler: Arc<dyn ControlHandler> = Arc::new(Fake::default());
    let err = ControlServer::start(&sock(&dir), handler)
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(sock(&dir)).unwrap(), b"precious");
}

#[test]
fn shutdown_ends_open_connections_and_keeps_a_successor_socket() {
    let dir = TempDir::new("ctl-down");
    let fake = Arc::new(Fake::default());
    let server = start(&dir, &fake);
    let mut idle = connect(&sock(&dir));
    idle.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
    let mut r = BufReader::new(idle.try_clone().unwrap());
    read_reply(&mut r);
    let started = Instant::now();
    // Someone replaced our socket file: shutdown must not delete theirs.
    std::fs::remove_file(sock(&dir)).unwrap();
    let theirs = UnixListener::bind(sock(&dir)).unwrap();
    server.shutdown();
    assert!(read_to_eof(&mut idle).is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(sock(&dir).exists());
    drop(theirs);
}

#[test]
fn client_errors_tell_connect_from_protocol_from_timeout() {
    let dir = TempDir::new("ctl-client");
    match call(&sock(&dir), &Request::Status, T) {
        Err(e @ ClientError::Connect { .. }) => {
            assert!(e.to_string().contains(&sock(&dir).display().to_string()))
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    // A peer that answers nonsense, then one that never answers.
    let listener = UnixListener::bind(sock(&dir)).unwrap();
    let peer = std::thread::spawn(move || {
        let (mut a, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(a.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        a.write_all(b"{\"v\":1,\"ok\":\"maybe\"}\n").unwrap();
        let (b, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        drop(b);
    });
    match call(&sock(&dir), &Request::Status, T) {
        Err(ClientError::Protocol { message, .. }) => {
            assert!(
                message.contains("\"maybe\", expected a boolean"),
                "{message}"
            )
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let started = Instant::now();
    match call(&sock(&dir), &Request::Status, Duration::from_millis(200)) {
        Err(ClientError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(700));
    peer.join().unwrap();
}

/// A client running as uid 65534 is refused at the credential check.  The child only makes
/// raw syscalls: after fork in a threaded test binary, nothing else is safe.
#[test]
fn peer_with_another_uid_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client under another uid");
        return;
    }
    let dir = TempDir::new("ctl-uid");
    let fake = Arc::new(Fake::default());
    let _server = start(&dir, &fake);
    // Let the other uid reach the socket so that the credential check is what refuses it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(sock(&dir), std::fs::Permissions::from_mode(0o666)).unwrap();

    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let p = sock(&dir);
    let bytes = p.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let req = b"{\"v\":1,\"cmd\":\"powercut\"}\n";
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: `pipe` has room for the two fds pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child below only calls async-signal-safe libc functions on memory prepared
    // before the fork, then _exit()s; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: raw syscalls on valid pointers and lengths prepared before the fork.
        unsafe {
            libc::close(pipe[0]);
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(10);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(11);
            }
            let tv = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) != 0
            {
                libc::_exit(12);
            }
            libc::write(fd, req.as_ptr().cast(), req.len());
            let mut buf = [0u8; 1024];
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                libc::write(pipe[1], buf.as_ptr().cast(), n as usize);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end, an fd we own, so EOF arrives when the child
    // exits.
    unsafe { libc::close(pipe[1]) };
    // SAFETY: pipe[0] is an open fd owned by nothing else; File takes ownership.
    let mut from_child = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(pipe[0]) };
    let mut got = String::new();
    from_child.read_to_string(&mut got).unwrap();
    let mut status = 0;
    // SAFETY: waiting for the child we forked, with a valid status pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: {status}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "child failed early");
    assert_eq!(got.lines().count(), 1, "{got}");
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_error(&v, "permission denied: uid 65534");
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        0,
        "the refused peer reached the handler"
    );
}
