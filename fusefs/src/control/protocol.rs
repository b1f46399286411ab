//! The control wire format: one JSON object per line each way, versioned by a `"v"` field,
//! and where a mount's control socket lives by default.  Requests and replies are serde types
//! (the request an enum tagged by `"cmd"`, unknown fields refused); pure functions, no I/O.

use crate::faultspec::{CrashSpec, FaultCommand, FaultSpec};
use crate::keep::{check_granularity, KeepMode, KeepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Component, Path, PathBuf};

/// Version of the line protocol; requests carrying any other `"v"` are refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the server reads (the newline excluded).  Requests are tiny; the cap
/// bounds what a misbehaving client can make the daemon buffer.
pub const MAX_LINE: usize = 64 * 1024;

/// Directory holding the default control sockets.
pub const SOCKET_DIR: &str = "/run/lossfs";

/// The protocol's command names, as in `"cmd"`.
pub const COMMANDS: [&str; 9] = [
    "status",
    "sync",
    "powercut",
    "arm",
    "disarm",
    "fault_add",
    "fault_list",
    "fault_clear",
    "disk_full",
];

/// A control request, as on the wire minus the `"v"` field
/// (`{"cmd":"powercut","no_kill":false,"keep":"random","seed":7,"granularity":512}`; the
/// keep fields are optional and left out for a plain cut).  Decoding checks the values too,
/// so a request that decodes is one the daemon can carry out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub enum Request {
    Status,
    Sync,
    Powercut {
        no_kill: bool,
        keep: KeepRequest,
    },
    /// Crash points, fault rules and disk-full mode ([`FaultCommand`]).
    Faults(FaultCommand),
}

/// The request exactly as on the wire (minus `"v"`): one variant per command.  Commands
/// without fields are empty struct variants so that a stray field is refused there too.
#[derive(Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum Wire {
    Status {},
    Sync {},
    Powercut {
        /// Cut without killing the mount's users.
        #[serde(default)]
        no_kill: bool,
        #[serde(default, skip_serializing_if = "is_plain_cut")]
        keep: KeepMode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
        /// Block size of `keep: random`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        granularity: Option<u64>,
    },
    Arm(CrashSpec),
    Disarm {},
    FaultAdd(FaultSpec),
    FaultList {},
    FaultClear {
        /// One rule; all when left out (or null).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    DiskFull {
        /// The limit in bytes; null (or left out) ends disk-full mode.
        #[serde(default)]
        limit: Option<u64>,
    },
}

fn is_plain_cut(mode: &KeepMode) -> bool {
    *mode == KeepMode::None
}

impl TryFrom<Wire> for Request {
    type Error = String;

    fn try_from(w: Wire) -> Result<Request, String> {
        Ok(match w {
            Wire::Status {} => Request::Status,
            Wire::Sync {} => Request::Sync,
            Wire::Powercut {
                no_kill,
                keep,
                seed,
                granularity,
            } => {
                let granularity = granularity.map(check_granularity).transpose()?;
                if granularity.is_some() && keep != KeepMode::Random {
                    return Err(format!(
                        "\"granularity\" applies to keep random only (this request keeps {keep})"
                    ));
                }
                Request::Powercut {
                    no_kill,
                    keep: KeepRequest {
                        mode: keep,
                        seed,
                        granularity,
                    },
                }
            }
            Wire::Arm(spec) => {
                spec.check()?;
                Request::Faults(FaultCommand::Arm(spec))
            }
            Wire::Disarm {} => Request::Faults(FaultCommand::Disarm),
            Wire::FaultAdd(spec) => {
                spec.check()?;
                Request::Faults(FaultCommand::Add(spec))
            }
            Wire::FaultList {} => Request::Faults(FaultCommand::List),
            Wire::FaultClear { id } => Request::Faults(FaultCommand::Clear(id)),
            Wire::DiskFull { limit } => Request::Faults(FaultCommand::DiskFull(limit)),
        })
    }
}

impl From<Request> for Wire {
    fn from(r: Request) -> Wire {
        match r {
            Request::Status => Wire::Status {},
            Request::Sync => Wire::Sync {},
            Request::Powercut { no_kill, keep } => Wire::Powercut {
                no_kill,
                keep: keep.mode,
                seed: keep.seed,
                granularity: keep.granularity,
            },
            Request::Faults(c) => match c {
                FaultCommand::Arm(spec) => Wire::Arm(spec),
                FaultCommand::Disarm => Wire::Disarm {},
                FaultCommand::Add(spec) => Wire::FaultAdd(spec),
                FaultCommand::List => Wire::FaultList {},
                FaultCommand::Clear(id) => Wire::FaultClear { id },
                FaultCommand::DiskFull(limit) => Wire::DiskFull { limit },
            },
        }
    }
}

/// A request line: the version, then the request's own fields.
#[derive(Serialize)]
struct Versioned<'a, T> {
    v: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// One JSON line, newline included.  Our types hold no maps with non-string keys and no
/// non-finite floats reach here (specs are checked), so encoding cannot fail; if it ever
/// did, the line says so instead of panicking.
fn json_line<T: Serialize>(value: &T) -> String {
    let mut line = serde_json::to_string(value).unwrap_or_else(|e| {
        let message = Value::from(format!("encoding the reply failed: {e}"));
        format!(r#"{{"v":{PROTOCOL_VERSION},"ok":false,"error":{message}}}"#)
    });
    line.push('\n');
    line
}

impl Request {
    /// The request as one wire line, newline included.
    pub fn to_line(&self) -> String {
        json_line(&Versioned {
            v: PROTOCOL_VERSION,
            body: self,
        })
    }

    /// The request's `"cmd"` name.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Sync => "sync",
            Request::Powercut { .. } => "powercut",
            Request::Faults(c) => match c {
                FaultCommand::Arm(_) => "arm",
                FaultCommand::Disarm => "disarm",
                FaultCommand::Add(_) => "fault_add",
                FaultCommand::List => "fault_list",
                FaultCommand::Clear(_) => "fault_clear",
                FaultCommand::DiskFull(_) => "disk_full",
            },
        }
    }
}

/// Parses one request line (a trailing `\n` or `\r\n` is allowed).  Unknown fields are refused
/// rather than ignored: a misspelt `"no_kill"` must not turn into a power cut that kills.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_LINE + 2 {
        return Err(format!(
            "request line of {} bytes exceeds the {MAX_LINE}-byte limit",
            line.len()
        ));
    }
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "request is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )
    })?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    // The object is read whole first: the version decides how the rest is read, and the
    // command name gives the errors their context.
    let mut obj: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return Err("request must be a JSON object".into()),
        Err(e) => return Err(format!("request is not valid JSON: {e}")),
    };
    match obj.remove("v") {
        None => {
            return Err(format!(
                "request has no protocol version \"v\" (this server speaks v{PROTOCOL_VERSION})"
            ))
        }
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) => {
            return Err(format!(
                "unsupported protocol version {} (this server speaks v{PROTOCOL_VERSION})",
                truncate(&v.to_string(), 64)
            ))
        }
    }
    let cmd = match obj.get("cmd") {
        Some(Value::String(c)) if COMMANDS.contains(&c.as_str()) => c.clone(),
        Some(Value::String(c)) => {
            return Err(format!(
                "unknown command {:?} (expected {})",
                truncate(c, 64),
                COMMANDS.join(", ")
            ))
        }
        Some(other) => {
            return Err(format!(
                "\"cmd\" must be a string, got {}",
                truncate(&other.to_string(), 64)
            ))
        }
        None => return Err("request has no \"cmd\"".into()),
    };
    serde_json::from_value(Value::Object(obj)).map_err(|e| format!("bad {cmd} request: {e}"))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A reply line: `{"v":1,"ok":true,"result":{...}}` or `{"v":1,"ok":false,"error":"..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub v: Value,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// What a reply line says: `Ok(Ok(result))`, `Ok(Err(the daemon's error message))`, or
    /// `Err(why the line is no valid reply)`.
    pub fn decode(line: &[u8]) -> Result<Result<Value, String>, String> {
        let reply: Reply =
            serde_json::from_slice(line).map_err(|e| format!("reply is not a valid reply: {e}"))?;
        if reply.v.as_u64() != Some(u64::from(PROTOCOL_VERSION)) {
            return Err(format!(
                "reply has protocol version {}, lossctl speaks v{PROTOCOL_VERSION}",
                truncate(&reply.v.to_string(), 64)
            ));
        }
        match (reply.ok, reply.result, reply.error) {
            (true, Some(result), _) => Ok(Ok(result)),
            (true, None, _) => Err("successful reply has no \"result\"".into()),
            (false, _, error) => {
                Ok(Err(error.unwrap_or_else(|| {
                    "the daemon reported an error without a message".into()
                })))
            }
        }
    }
}

/// A success reply line, newline included.
pub fn ok_line(result: Value) -> String {
    json_line(&Reply {
        v: Value::from(PROTOCOL_VERSION),
        ok: true,
        result: Some(result),
        error: None,
    })
}

/// An error reply line, newline included.
pub fn error_line(message: &str) -> String {
    json_line(&Reply {
        v: Value::from(PROTOCOL_VERSION),
        ok: false,
        result: None,
        error: Some(message.to_string()),
    })
}

/// Longest socket path `bind` takes: `sun_path` is 108 bytes including the NUL.
const SUN_PATH_MAX: usize = 107;

/// Escapes a path the way `systemd-escape --path` does: the components joined by `-`, bytes
/// outside `[A-Za-z0-9:_.]` (and a leading `.`) written `\xNN`; the root is `-`.
pub fn systemd_escape_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let parts: Vec<&[u8]> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.as_bytes()),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, &b) in part.iter().enumerate() {
            let plain = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.';
            if plain && !(b == b'.' && i == 0 && j == 0) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// Where the control socket of the mount at `mountpoint` (canonical) lives:
/// `/run/lossfs/<systemd-escaped mount point>.sock`.  Names too long for a Unix socket address
/// are cut and suffixed with a CRC of the full name, so daemon and lossctl still agree.
pub fn default_socket_path(mountpoint: &Path) -> PathBuf {
    let escaped = systemd_escape_path(mountpoint);
    let fixed = SOCKET_DIR.len() + "/".len() + ".sock".len();
    let name = if fixed + escaped.len() <= SUN_PATH_MAX {
        escaped
    } else {
        let crc = crc32fast::hash(escaped.as_bytes());
        let suffix = format!("~{crc:08x}");
        let keep = SUN_PATH_MAX - fixed - suffix.len();
        // The escaped name is ASCII, so any byte index is a char boundary.
        format!("{}{suffix}", &escaped[..keep])
    };
    Path::new(SOCKET_DIR).join(format!("{name}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        let e = |p: &str| systemd_escape_path(Path::new(p));
        assert_eq!(e("/"), "-");
        assert_eq!(e("/var/lib/kafka"), "var-lib-kafka");
        assert_eq!(e("/var//lib/kafka/"), "var-lib-kafka");
        assert_eq!(e("/srv/my-data"), "srv-my\\x2ddata");
        assert_eq!(e("/a b/.hidden/x.y"), "a\\x20b-.hidden-x.y");
        assert_eq!(e("/.dot"), "\\x2edot");
        assert_eq!(e("/é"), "\\xc3\\xa9");
        assert_eq!(
            default_socket_path(Path::new("/var/lib/kafka")),
            Path::new("/run/lossfs/var-lib-kafka.sock")
        );
        assert_eq!(
            default_socket_path(Path::new("/")),
            Path::new("/run/lossfs/-.sock")
        );
    }

    #[test]
    fn long_socket_names_fit_and_stay_distinct() {
        let a = format!("/data/{}", "x".repeat(300));
        let b = format!("/data/{}y", "x".repeat(299));
        let pa = default_socket_path(Path::new(&a));
        let pb = default_socket_path(Path::new(&b));
        assert!(pa.as_os_str().len() <= SUN_PATH_MAX, "{pa:?}");
        assert!(pb.as_os_str().len() <= SUN_PATH_MAX, "{pb:?}");
        assert_ne!(pa, pb);
        assert!(pa.starts_with(SOCKET_DIR));
        assert_eq!(pa, default_socket_path(Path::new(&a)));
    }

    #[test]
    fn parses_good_requests() {
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"status"}"#),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(b"{\"v\":1,\"cmd\":\"sync\"}\r\n"),
            Ok(Request::Sync)
        );
        let plain = KeepRequest::default();
        assert_eq!(
            parse_request(br#"{"cmd":"powercut","v":1,"no_kill":true}"#),
            Ok(Request::Powercut {
                no_kill: true,
                keep: plain
            })
        );
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"powercut"}"#),
            Ok(Request::Powercut {
                no_kill: false,
                keep: plain
            })
        );
        let random = KeepRequest {
            mode: KeepMode::Random,
            seed: Some(u64::MAX),
            granularity: Some(512),
        };
        assert_eq!(
            parse_request(
                br#"{"v":1,"cmd":"powercut","keep":"random","seed":18446744073709551615,"granularity":512}"#
            ),
            Ok(Request::Powercut {
                no_kill: false,
                keep: random
            })
        );
        let prefix = KeepRequest {
            mode: KeepMode::Prefix,
            seed: None,
            granularity: None,
        };
        for r in [
            Request::Status,
            Request::Sync,
            Request::Powercut {
                no_kill: true,
                keep: plain,
            },
            Request::Powercut {
                no_kill: false,
                keep: plain,
            },
            Request::Powercut {
                no_kill: false,
                keep: random,
            },
            Request::Powercut {
                no_kill: true,
                keep: prefix,
            },
        ] {
            assert_eq!(parse_request(r.to_line().as_bytes()), Ok(r));
        }
    }

    fn err(line: &[u8]) -> String {
        parse_request(line).expect_err("request must be refused")
    }

    #[test]
    fn refuses_bad_requests_with_reasons() {
        assert!(err(br#"{"v":1,"cmd":"reboot"}"#).contains("unknown command \"reboot\""));
        assert!(err(br#"{"v":2,"cmd":"status"}"#).contains("unsupported protocol version 2"));
        assert!(err(br#"{"v":"1","cmd":"status"}"#).contains("unsupported protocol version"));
        assert!(err(br#"{"cmd":"status"}"#).contains("no protocol version"));
        assert!(err(br#"{"v":1}"#).contains("no \"cmd\""));
        assert!(err(br#"{"v":1,"cmd":7}"#).contains("must be a string"));
        assert!(
            err(br#"{"v":1,"cmd":"powercut","nokill":true}"#).contains("unknown field `nokill`")
        );
        assert!(err(br#"{"v":1,"cmd":"status","no_kill":true}"#).contains("unknown field"));
        assert!(err(br#"{"v":1,"cmd":"powercut","no_kill":"yes"}"#).contains("expected a boolean"));
        assert!(err(br#"{"v":1,"cmd":"powercut","keep":"most"}"#)
            .contains("unknown variant `most`, expected one of `none`, `all`, `prefix`, `random`"));
        assert!(err(br#"{"v":1,"cmd":"powercut","keep":1}"#).contains("invalid type"));
        assert!(
            err(br#"{"v":1,"cmd":"powercut","keep":"random","seed":-1}"#)
                .contains("bad powercut request: invalid value: integer `-1`, expected u64")
        );
        assert!(
            err(br#"{"v":1,"cmd":"powercut","keep":"random","seed":1.5}"#)
                .contains("invalid type: floating point `1.5`, expected u64")
        );
        assert!(
            err(br#"{"v":1,"cmd":"powercut","keep":"random","granularity":1000}"#)
                .contains("granularity 1000 is not a power of two")
        );
        assert!(
            err(br#"{"v":1,"cmd":"powercut","keep":"prefix","granularity":512}"#)
                .contains("applies to keep random only")
        );
        assert!(err(b"[1,2]").contains("JSON object"));
        assert!(err(b"hello").contains("not valid JSON"));
        assert!(err(b"").contains("not valid JSON"));
        assert!(err(b"{\"v\":1,\xff}").contains("not UTF-8"));
        let huge = format!(
            r#"{{"v":1,"cmd":"status","pad":"{}"}}"#,
            "a".repeat(MAX_LINE)
        );
        assert!(err(huge.as_bytes()).contains("exceeds"));
    }

    #[test]
    fn parses_fault_requests() {
        use crate::faultspec::{CrashSpec, FaultSpec, Op, When};
        assert_eq!(
            parse_request(
                br#"{"v":1,"cmd":"arm","op":"fsync","path":"wal","nth":3,"when":"after"}"#
            ),
            Ok(Request::Faults(FaultCommand::Arm(CrashSpec {
                op: Op::Fsync,
                path: Some("wal".into()),
                nth: 3,
                when: When::After,
            })))
        );
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"arm","op":"rename"}"#),
            Ok(Request::Faults(FaultCommand::Arm(CrashSpec {
                op: Op::Rename,
                path: None,
                nth: 1,
                when: When::Before,
            })))
        );
        let add = FaultSpec {
            op: Some(Op::Write),
            path: Some("data/*.log".into()),
            errno: Some("ENOSPC".into()),
            probability: Some(0.5),
            seed: Some(7),
            count: Some(2),
            ..Default::default()
        };
        assert_eq!(
            parse_request(
                br#"{"v":1,"cmd":"fault_add","op":"write","path":"data/*.log","errno":"ENOSPC","probability":0.5,"seed":7,"count":2}"#
            ),
            Ok(Request::Faults(FaultCommand::Add(add.clone())))
        );
        for r in [
            Request::Faults(FaultCommand::Add(add)),
            Request::Faults(FaultCommand::Add(FaultSpec {
                op: Some(Op::Fdatasync),
                lie: true,
                ..Default::default()
            })),
            Request::Faults(FaultCommand::Add(FaultSpec {
                op: Some(Op::Read),
                delay_ms: Some(250),
                nth: Some(2),
                ..Default::default()
            })),
            Request::Faults(FaultCommand::Disarm),
            Request::Faults(FaultCommand::List),
            Request::Faults(FaultCommand::Clear(None)),
            Request::Faults(FaultCommand::Clear(Some(4))),
            Request::Faults(FaultCommand::DiskFull(Some(1 << 20))),
            Request::Faults(FaultCommand::DiskFull(None)),
        ] {
            assert_eq!(parse_request(r.to_line().as_bytes()), Ok(r));
        }
    }

    #[test]
    fn refuses_bad_fault_requests_with_reasons() {
        assert!(err(br#"{"v":1,"cmd":"arm","op":"fsync","nht":3}"#).contains("unknown field `nht`"));
        assert!(err(br#"{"v":1,"cmd":"arm","op":"fsink"}"#).contains("unknown variant `fsink`"));
        assert!(err(br#"{"v":1,"cmd":"arm"}"#).contains("missing field `op`"));
        assert!(err(br#"{"v":1,"cmd":"arm","op":"write","nth":0}"#).contains("at least 1"));
        assert!(err(br#"{"v":1,"cmd":"arm","op":"write","nth":-1}"#).contains("invalid value"));
        assert!(
            err(br#"{"v":1,"cmd":"arm","op":"write","when":"during"}"#).contains("unknown variant")
        );
        assert!(err(br#"{"v":1,"cmd":"arm","op":"write","path":"a[b"}"#).contains("unclosed"));
        assert!(err(br#"{"v":1,"cmd":"fault_add","op":"write"}"#).contains("exactly one"));
        assert!(
            err(br#"{"v":1,"cmd":"fault_add","op":"write","errno":"EWHAT"}"#)
                .contains("unknown or unsupported errno")
        );
        assert!(
            err(br#"{"v":1,"cmd":"fault_add","op":"write","errno":5}"#).contains("invalid type")
        );
        assert!(err(br#"{"v":1,"cmd":"fault_add","op":"write","lie":true}"#).contains("fsync"));
        assert!(
            err(br#"{"v":1,"cmd":"fault_add","op":"write","errno":"EIO","probability":0.5}"#)
                .contains("seed")
        );
        assert!(
            err(br#"{"v":1,"cmd":"fault_add","op":"write","errno":"EIO","bogus":1}"#)
                .contains("unknown field")
        );
        assert!(err(br#"{"v":1,"cmd":"fault_clear","id":"x"}"#).contains("expected u64"));
        assert!(err(br#"{"v":1,"cmd":"fault_clear","all":true}"#).contains("unknown field"));
        assert!(err(br#"{"v":1,"cmd":"disk_full","limit":-5}"#).contains("expected u64"));
        assert!(err(br#"{"v":1,"cmd":"disarm","op":"write"}"#).contains("unknown field"));
    }

    #[test]
    fn reply_lines_are_single_json_lines() {
        let ok = ok_line(serde_json::json!({"a": "x\ny"}));
        assert!(ok.ends_with('\n') && ok.matches('\n').count() == 1);
        let v: Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(v["ok"], Value::Bool(true));
        assert_eq!(v["v"], Value::from(1));
        let e = error_line("bad\nthing");
        assert_eq!(e.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["error"], Value::from("bad\nthing"));
        assert_eq!(v["ok"], Value::Bool(false));
    }

    #[test]
    fn never_panics_on_random_input() {
        let mut rng = crate::prng::SplitMix64::new(0x9e37_79b9_7f4a_7c15);
        let fragments: [&[u8]; 22] = [
            b"{",
            b"}",
            b"\"v\"",
            b":",
            b"1",
            b",",
            b"\"cmd\"",
            b"\"status\"",
            b"\"powercut\"",
            b"\"no_kill\"",
            b"true",
            b"[",
            b"]",
            b"\\u0000",
            b"\xff",
            b"\n",
            b"\"arm\"",
            b"\"fault_add\"",
            b"\"op\"",
            b"\"fsync\"",
            b"\"errno\"",
            b"\"EIO\"",
        ];
        let mut accepted = 0;
        for case in 0..20_000 {
            let mut line = Vec::new();
            let len = rng.below(40);
            for _ in 0..len {
                if case % 2 == 0 {
                    line.push(rng.next_u64() as u8);
                } else {
                    line.extend_from_slice(fragments[rng.below(22) as usize]);
                }
            }
            match parse_request(&line) {
                // Whatever is accepted must be exactly what the request says.
                Ok(r) => {
                    accepted += 1;
                    let v: Value = serde_json::from_slice(&line).unwrap();
                    assert_eq!(v["v"], Value::from(1));
                    let cmd = v["cmd"].as_str().unwrap();
                    match r {
                        Request::Status => assert_eq!(cmd, "status"),
                        Request::Sync => assert_eq!(cmd, "sync"),
                        Request::Powercut { no_kill, .. } => {
                            assert_eq!(cmd, "powercut");
                            assert_eq!(
                                v.get("no_kill").and_then(Value::as_bool).unwrap_or(false),
                                no_kill
                            );
                        }
                        r @ Request::Faults(_) => assert_eq!(cmd, r.command()),
                    }
                }
                Err(e) => assert!(!e.is_empty()),
            }
        }
        // Mutations of a valid line: flip, drop or duplicate one byte, or insert a space.
        let base = br#"{"v":1,"cmd":"powercut","no_kill":true}"#;
        for _ in 0..5_000 {
            let mut line = base.to_vec();
            let i = rng.below(line.len() as u64) as usize;
            match rng.below(4) {
                0 => line[i] = rng.next_u64() as u8,
                1 => {
                    line.remove(i);
                }
                2 => line.insert(i, line[i]),
                _ => line.insert(i, b' '),
            }
            if let Ok(Request::Powercut { no_kill, .. }) = parse_request(&line) {
                accepted += 1;
                let v: Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(
                    v.get("no_kill").and_then(Value::as_bool).unwrap_or(false),
                    no_kill
                );
            }
        }
        assert!(accepted > 0, "the mutations should keep some lines valid");
    }
}
