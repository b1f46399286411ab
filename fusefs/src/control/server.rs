//! The control socket server: owns the listening socket file, one thread per client
//! connection, the peer credential check, and the lock that serves requests one at a time.

use super::protocol::{error_line, ok_line, parse_request, Request, MAX_LINE};
use super::ControlHandler;
use crate::error::{event_at, Context as _, FsError, FsResult};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Tunables of a [`ControlServer`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// A connection that sends nothing for this long is closed, so a stuck client cannot pin
    /// a thread forever.  Also bounds how long writing a reply may block.
    pub idle_timeout: Duration,
    /// Connections served at once; more are refused with an error reply.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            idle_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// How long shutdown waits for replies already being written.
const REPLY_GRACE: Duration = Duration::from_secs(5);

struct Shared {
    handler: Arc<dyn ControlHandler>,
    /// Held around every handler call so that concurrent clients see requests applied one
    /// after the other (a status never observes half a power cut).
    serial: Mutex<()>,
    /// Clones of the live connections, so shutdown can end them without waiting for clients.
    conns: Mutex<HashMap<u64, UnixStream>>,
    next_conn: AtomicU64,
    /// Requests handled whose reply is not written yet: shutdown lets them finish (bounded),
    /// so a power cut that ends `lossfs run` still reaches the lossctl that asked for it.
    replying: AtomicU64,
    opts: ServerOptions,
    euid: u32,
    path: PathBuf,
}

/// A running control server.  Shutting it down (or dropping it) stops accepting, ends the
/// open connections and removes the socket file if it is still ours.
pub struct ControlServer {
    path: PathBuf,
    /// (dev, ino) of the socket file we bound, so we never remove a successor's socket.
    identity: (u64, u64),
    /// Dropping the write end of the pipe wakes the accept thread's poll.
    stop: Option<OwnedFd>,
    acceptor: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// Whether something listens on the socket file at `path`.  The connect is non-blocking so a
/// listener with a full backlog counts as alive instead of hanging us.
fn socket_is_live(path: &Path) -> io::Result<bool> {
    use nix::errno::Errno;
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ctx("creating a probe socket")?;
    let addr = UnixAddr::new(path).ctx_path("socket address", path)?;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Ok(true),
        Err(Errno::ECONNREFUSED) => Ok(false),
        Err(e) => Err(e)
            .ctx_path("probing existing socket", path)
            .map_err(Into::into),
    }
}

impl ControlServer {
    /// Starts serving `handler` on a Unix socket at `path` with default options.
    pub fn start(path: &Path, handler: Arc<dyn ControlHandler>) -> io::Result<ControlServer> {
        Self::start_with(path, handler, ServerOptions::default())
    }

    /// Creates the parent directory (0755) if missing.  An existing socket file that something
    /// answers on is an error (`another lossfs already serves <path>`); a stale one is removed;
    /// anything else at `path` is left alone and is an error.  Binds and chmods 0600.
    pub fn start_with(
        path: &Path,
        handler: Arc<dyn ControlHandler>,
        opts: ServerOptions,
    ) -> io::Result<ControlServer> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .ctx_path("creating control socket directory", parent)?;
            }
        }
        match fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_socket() => {
                if socket_is_live(path)? {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("another lossfs already serves {}", path.display()),
                    ));
                }
                fs::remove_file(path).ctx_path("removing stale control socket", path)?;
                tracing::info!(path = %path.display(), "removed stale control socket");
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; refusing to replace it",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => Err(e).ctx_path("inspecting", path)?,
        }
        let listener = UnixListener::bind(path).ctx_path("binding control socket", path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .ctx_path("chmod 0600", path)?;
        let md = fs::symlink_metadata(path).ctx_path("inspecting", path)?;
        listener
            .set_nonblocking(true)
            .ctx_path("making non-blocking", path)?;
        let (wake_rx, wake_tx) = nix::unistd::pipe().ctx("creating the control shutdown pipe")?;
        let shared = Arc::new(Shared {
            handler,
            serial: Mutex::new(()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            replying: AtomicU64::new(0),
            opts,
            euid: nix::unistd::geteuid().as_raw(),
            path: path.to_path_buf(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("lossfs-control".into())
                .spawn(move || accept_loop(listener, wake_rx, shared))
                .ctx("spawning the control accept thread")?
        };
        tracing::debug!(path = %path.display(), "control socket listening");
        Ok(ControlServer {
            path: path.to_path_buf(),
            identity: (md.dev(), md.ino()),
            stop: Some(wake_tx),
            acceptor: Some(acceptor),
            shared,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, ends open connections (a request being handled still completes, its
    /// reply is lost) and removes the socket file.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(wake) = self.stop.take() else {
            return;
        };
        drop(wake);
        if let Some(acceptor) = self.acceptor.take() {
            if acceptor.join().is_err() {
                tracing::error!(path = %self.path.display(), "control accept thread panicked");
            }
        }
        // Replies already computed go out first (the write timeout bounds each one).
        let deadline = Instant::now() + REPLY_GRACE;
        while self.shared.replying.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for (_, conn) in self.shared.conns.lock().drain() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        match fs::symlink_metadata(&self.path) {
            Ok(md) if (md.dev(), md.ino()) == self.identity => {
                if let Err(e) = fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), "removing control socket: {e}");
                }
            }
            _ => {}
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn accept_loop(listener: UnixListener, wake: OwnedFd, shared: Arc<Shared>) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two initialized pollfd structs whose length is
        // passed alongside it; both fds stay open for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(path = %shared.path.display(), "control poll failed: {e}");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => admit(&shared, stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of fds: back off instead of spinning on a socket poll keeps reporting.
                    tracing::warn!(path = %shared.path.display(), "control accept: {e}");
                    thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
    }
}

fn refuse(mut stream: UnixStream, message: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(error_line(message).as_bytes());
}

fn admit(shared: &Arc<Shared>, stream: UnixStream) {
    if let Err(e) = stream.set_nonblocking(false) {
        tracing::warn!("control connection: making it blocking: {e}");
        return;
    }
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    {
        let mut conns = shared.conns.lock();
        if conns.len() >= shared.opts.max_connections {
            drop(conns);
            refuse(
                stream,
                &format!(
                    "too many control connections (limit {}); retry later",
                    shared.opts.max_connections
                ),
            );
            return;
        }
        match stream.try_clone() {
            Ok(clone) => {
                conns.insert(id, clone);
            }
            Err(e) => {
                drop(conns);
                refuse(
                    stream,
                    &format!("server error: cloning the connection: {e}"),
                );
                return;
            }
        }
    }
    let worker = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("lossfs-ctl-{id}"))
        .spawn(move || {
            serve(&worker, stream);
            worker.conns.lock().remove(&id);
        });
    if let Err(e) = spawned {
        tracing::warn!("control connection: spawning its thread: {e}");
        if let Some(conn) = shared.conns.lock().remove(&id) {
            refuse(conn, &format!("server error: cannot spawn a thread: {e}"));
        }
    }
}

enum Line {
    Eof,
    /// The line's bytes, and whether a newline ended it (else the peer half-closed).
    Data(Vec<u8>, bool),
    TooLong,
}

fn read_line(reader: &mut impl BufRead, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::Data(line, false)
            });
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(pos) => (pos, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Line::Data(line, true));
        }
    }
}

thread_local! {
    /// The pid of the client whose requests this connection thread serves.
    static REQUESTER: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

/// The pid of the client whose request the calling thread is handling (from the socket's
/// peer credentials); None outside a control connection's thread.
pub fn requester_pid() -> Option<i32> {
    REQUESTER.get()
}

fn serve(shared: &Shared, stream: UnixStream) {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let peer = match getsockopt(&stream, PeerCredentials) {
        Ok(c) => c,
        Err(e) => {
            refuse(
                stream,
                &format!("permission denied: cannot read peer credentials: {e}"),
            );
            return;
        }
    };
    let (uid, pid) = (peer.uid(), peer.pid());
    REQUESTER.set(Some(pid));
    if uid != 0 && uid != shared.euid {
        tracing::warn!(
            uid,
            pid,
            "control connection refused: not root nor the daemon's user"
        );
        refuse(
            stream,
            &format!(
                "permission denied: uid {uid} may not control this lossfs (only root and uid {})",
                shared.euid
            ),
        );
        return;
    }
    let idle = Some(shared.opts.idle_timeout);
    if let Err(e) = stream
        .set_read_timeout(idle)
        .and_then(|()| stream.set_write_timeout(idle))
    {
        tracing::warn!(pid, "control connection: setting timeouts: {e}");
        return;
    }
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            refuse(
                stream,
                &format!("server error: cloning the connection: {e}"),
            );
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    loop {
        let (line, terminated) = match read_line(&mut reader, MAX_LINE) {
            Ok(Line::Eof) => return,
            Ok(Line::Data(line, terminated)) => (line, terminated),
            Ok(Line::TooLong) => {
                let _ = writer.write_all(
                    error_line(&format!(
                        "request line exceeds the {MAX_LINE}-byte limit; closing the connection"
                    ))
                    .as_bytes(),
                );
                return;
            }
            Err(e) => {
                // Idle timeout or a reset: nothing useful can be said to this peer any more.
                tracing::debug!(pid, "control connection ends: {e}");
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            if terminated {
                continue;
            }
            return;
        }
        let binary = std::str::from_utf8(&line).is_err();
        let reply = match parse_request(&line) {
            Ok(req) => {
                tracing::info!(uid, pid, ?req, "control request");
                shared.replying.fetch_add(1, Ordering::AcqRel);
                dispatch(shared, req)
            }
            Err(e) => {
                tracing::debug!(pid, "bad control request: {e}");
                shared.replying.fetch_add(1, Ordering::AcqRel);
                error_line(&e)
            }
        };
        let written = writer.write_all(reply.as_bytes());
        shared.replying.fetch_sub(1, Ordering::AcqRel);
        if let Err(e) = written {
            tracing::debug!(pid, "control connection: writing reply: {e}");
            return;
        }
        if binary || !terminated {
            return;
        }
    }
}

fn encode<T: Serialize>(cmd: &'static str, result: FsResult<T>) -> FsResult<serde_json::Value> {
    let report = result.inspect_err(|e| log_failure(cmd, e))?;
    serde_json::to_value(report)
        .map_err(|e| FsError::msg(libc::EIO, format!("encoding the {cmd} report: {e}")))
}

/// Logs a failed control request at the error's level, with its errno.
fn log_failure(cmd: &str, e: &FsError) {
    event_at!(
        e.level(),
        cmd,
        errno = e.errno,
        "control request failed: {e}"
    );
}

fn dispatch(shared: &Shared, req: Request) -> String {
    let handler = &shared.handler;
    let _one_at_a_time = shared.serial.lock();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| match &req {
        Request::Status => encode("status", handler.status()),
        Request::Sync => encode("sync", handler.sync()),
        Request::Powercut { no_kill, keep } => {
            encode("powercut", handler.powercut_keep(*no_kill, *keep))
        }
        Request::Faults(c) => encode("fault", handler.faults(c.clone())),
    }));
    match outcome {
        Ok(Ok(v)) => ok_line(v),
        Ok(Err(e)) => error_line(&e.to_string()),
        Err(_) => {
            tracing::error!(?req, "control handler panicked");
            error_line("internal error: the lossfs control handler panicked (see the daemon log)")
        }
    }
}
