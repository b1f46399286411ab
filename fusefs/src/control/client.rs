//! The control client: sends one request to a lossfs control socket and returns the result,
//! telling apart "nobody there", "garbled or late answer" and "the daemon said no".

use super::protocol::{Reply, Request};
use serde_json::Value;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest reply accepted.  Power cut reports list every file, so this is generous; it only
/// stops a broken peer from making the client eat all memory.
const MAX_REPLY: usize = 256 << 20;

/// Why a control call failed.
#[derive(Debug)]
pub enum ClientError {
    /// No daemon reachable at the socket (missing file, refused, permission...).
    Connect { path: PathBuf, source: io::Error },
    /// The daemon did not answer within the timeout.
    Timeout { path: PathBuf, after: Duration },
    /// The answer was not a valid protocol reply, or the connection broke mid-way.
    Protocol { path: PathBuf, message: String },
    /// The daemon answered with an error.
    Server(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { path, source } => write!(
                f,
                "cannot connect to control socket {}: {source}",
                path.display()
            ),
            ClientError::Timeout { path, after } => write!(
                f,
                "no answer from {} within {:.1} s",
                path.display(),
                after.as_secs_f64()
            ),
            ClientError::Protocol { path, message } => {
                write!(f, "protocol error on {}: {message}", path.display())
            }
            ClientError::Server(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sends `req` to the control socket at `socket` and waits at most `timeout` (overall, from
/// connecting to the last byte of the reply) for the answer; returns its `result`.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Value, ClientError> {
    let started = Instant::now();
    let protocol = |message: String| ClientError::Protocol {
        path: socket.to_path_buf(),
        message,
    };
    let timed_out = || ClientError::Timeout {
        path: socket.to_path_buf(),
        after: timeout,
    };
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    // A zero timeout means "block forever" to the socket layer: never pass one.
    let remaining = || {
        timeout
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
    };
    let set_timeouts = |s: &UnixStream, d: Duration| {
        s.set_read_timeout(Some(d))
            .and_then(|()| s.set_write_timeout(Some(d)))
    };
    set_timeouts(&stream, remaining().ok_or_else(timed_out)?)
        .map_err(|e| protocol(format!("setting socket timeouts: {e}")))?;
    // A daemon that refuses a client (another uid, too many connections) answers and closes at
    // once, maybe before the request is written: a failed send still reads that answer.
    let sent = (&stream).write_all(req.to_line().as_bytes());
    if let Err(e) = &sent {
        if is_timeout(e) {
            return Err(timed_out());
        }
    }
    let reply = read_reply(&stream, remaining, &timed_out, &protocol);
    let reply = match (reply, sent) {
        (Ok(r), _) => r,
        (Err(_), Err(e)) => return Err(protocol(format!("sending the request: {e}"))),
        (Err(e), Ok(())) => return Err(e),
    };
    match Reply::decode(&reply) {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(message)) => Err(ClientError::Server(message)),
        Err(bad) => Err(protocol(bad)),
    }
}

/// Reads one reply line (without its newline) within what `remaining` allows.
fn read_reply(
    stream: &UnixStream,
    remaining: impl Fn() -> Option<Duration>,
    timed_out: &dyn Fn() -> ClientError,
    protocol: &dyn Fn(String) -> ClientError,
) -> Result<Vec<u8>, ClientError> {
    let set_timeouts = |s: &UnixStream, d: Duration| {
        s.set_read_timeout(Some(d))
            .and_then(|()| s.set_write_timeout(Some(d)))
    };
    let mut reader = BufReader::new(stream);
    let mut reply = Vec::new();
    loop {
        let left = remaining().ok_or_else(timed_out)?;
        set_timeouts(stream, left)
            .map_err(|e| protocol(format!("setting socket timeouts: {e}")))?;
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(timed_out()),
            Err(e) => return Err(protocol(format!("reading the reply: {e}"))),
        };
        if buf.is_empty() {
            return Err(protocol(if reply.is_empty() {
                "the daemon closed the connection without answering".into()
            } else {
                "the reply was cut short".into()
            }));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(pos) => (pos, true),
            None => (buf.len(), false),
        };
        if reply.len() + take > MAX_REPLY {
            return Err(protocol(format!("reply exceeds {MAX_REPLY} bytes")));
        }
        reply.extend_from_slice(&buf[..take]);
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(reply);
        }
    }
}
