//! The control wire format: one JSON object per line each way, versioned by a `"v"` field,
//! and where a mount's control socket lives by default.  Pure functions, no I/O.

use crate::faults::spec::{FaultCommand, FAULT_COMMANDS};
use crate::keep::{check_granularity, KeepMode, KeepRequest};
use serde_json::{Map, Value};
use std::path::{Component, Path, PathBuf};

/// Version of the line protocol; requests carrying any other `"v"` are refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the server reads (the newline excluded).  Requests are tiny; the cap
/// bounds what a misbehaving client can make the daemon buffer.
pub const MAX_LINE: usize = 64 * 1024;

/// Directory holding the default control sockets.
pub const SOCKET_DIR: &str = "/run/lossfs";

/// A control request, as on the wire minus the `"v"` field
/// (`{"cmd":"powercut","no_kill":false,"keep":"random","seed":7,"granularity":512}`; the
/// keep fields are optional and left out for a plain cut).
#[derive(Clone, Debug, PartialEq, Eq)]
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

impl Request {
    /// The request as one wire line, newline included.
    pub fn to_line(&self) -> String {
        let mut obj = Map::new();
        obj.insert("v".into(), Value::from(PROTOCOL_VERSION));
        match self {
            Request::Status => {
                obj.insert("cmd".into(), "status".into());
            }
            Request::Sync => {
                obj.insert("cmd".into(), "sync".into());
            }
            Request::Powercut { no_kill, keep } => {
                obj.insert("cmd".into(), "powercut".into());
                obj.insert("no_kill".into(), Value::Bool(*no_kill));
                if keep.mode != KeepMode::None {
                    obj.insert("keep".into(), keep.mode.as_str().into());
                }
                if let Some(seed) = keep.seed {
                    obj.insert("seed".into(), Value::from(seed));
                }
                if let Some(g) = keep.granularity {
                    obj.insert("granularity".into(), Value::from(g));
                }
            }
            Request::Faults(c) => {
                let (cmd, fields) = c.to_fields();
                obj.insert("cmd".into(), cmd.into());
                obj.extend(fields);
            }
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        line
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
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("request is not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("request must be a JSON object".into());
    };
    match obj.get("v") {
        None => {
            return Err(format!(
                "request has no protocol version \"v\" (this server speaks v{PROTOCOL_VERSION})"
            ))
        }
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) => {
            return Err(format!(
                "unsupported protocol version {v} (this server speaks v{PROTOCOL_VERSION})"
            ))
        }
    }
    let cmd = match obj.get("cmd") {
        Some(Value::String(c)) => c.as_str(),
        Some(other) => return Err(format!("\"cmd\" must be a string, got {other}")),
        None => return Err("request has no \"cmd\"".into()),
    };
    if FAULT_COMMANDS.contains(&cmd) {
        let mut fields = obj.clone();
        fields.remove("v");
        fields.remove("cmd");
        return match FaultCommand::parse(cmd, &fields) {
            Some(r) => r.map(Request::Faults),
            None => Err(format!("unknown command {cmd:?}")),
        };
    }
    let allowed: &[&str] = match cmd {
        "status" | "sync" => &["v", "cmd"],
        "powercut" => &["v", "cmd", "no_kill", "keep", "seed", "granularity"],
        _ => {
            return Err(format!(
                "unknown command {:?} (expected status, sync, powercut, {})",
                truncate(cmd, 64),
                FAULT_COMMANDS.join(", ")
            ))
        }
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "unknown field {:?} in {cmd} request",
            truncate(k, 64)
        ));
    }
    match cmd {
        "status" => Ok(Request::Status),
        "sync" => Ok(Request::Sync),
        _ => {
            let no_kill = match obj.get("no_kill") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(format!("\"no_kill\" must be true or false, got {other}"))
                }
            };
            Ok(Request::Powercut {
                no_kill,
                keep: parse_keep(&obj)?,
            })
        }
    }
}

/// The optional `keep`, `seed` and `granularity` fields of a powercut request.
fn parse_keep(obj: &Map<String, Value>) -> Result<KeepRequest, String> {
    let mode = match obj.get("keep") {
        None => KeepMode::None,
        Some(Value::String(m)) => m.parse()?,
        Some(other) => return Err(format!("\"keep\" must be a string, got {other}")),
    };
    let number = |name: &str| -> Result<Option<u64>, String> {
        match obj.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                format!("\"{name}\" must be a whole number from 0 to 2^64-1, got {v}")
            }),
        }
    };
    let seed = number("seed")?;
    let granularity = number("granularity")?.map(check_granularity).transpose()?;
    if granularity.is_some() && mode != KeepMode::Random {
        return Err(format!(
            "\"granularity\" applies to keep random only (this request keeps {mode})"
        ));
    }
    Ok(KeepRequest {
        mode,
        seed,
        granularity,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A success reply line, newline included.
pub fn ok_line(result: Value) -> String {
    let mut obj = Map::new();
    obj.insert("v".into(), Value::from(PROTOCOL_VERSION));
    obj.insert("ok".into(), Value::Bool(true));
    obj.insert("result".into(), result);
    let mut line = Value::Object(obj).to_string();
    line.push('\n');
    line
}

/// An error reply line, newline included.
pub fn error_line(message: &str) -> String {
    let mut obj = Map::new();
    obj.insert("v".into(), Value::from(PROTOCOL_VERSION));
    obj.insert("ok".into(), Value::Bool(false));
    obj.insert("error".into(), Value::from(message));
    let mut line = Value::Object(obj).to_string();
    line.push('\n');
    line
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
            err(br#"{"v":1,"cmd":"powercut","nokill":true}"#).contains("unknown field \"nokill\"")
        );
        assert!(err(br#"{"v":1,"cmd":"status","no_kill":true}"#).contains("unknown field"));
        assert!(err(br#"{"v":1,"cmd":"powercut","no_kill":"yes"}"#).contains("true or false"));
        assert!(err(br#"{"v":1,"cmd":"powercut","keep":"most"}"#)
            .contains("unknown keep mode \"most\" (expected none, all, prefix or random)"));
        assert!(err(br#"{"v":1,"cmd":"powercut","keep":1}"#).contains("must be a string"));
        assert!(
            err(br#"{"v":1,"cmd":"powercut","keep":"random","seed":-1}"#)
                .contains("\"seed\" must be a whole number")
        );
        assert!(
            err(br#"{"v":1,"cmd":"powercut","keep":"random","seed":1.5}"#)
                .contains("\"seed\" must be a whole number")
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
        use crate::faults::spec::{CrashSpec, FaultSpec, Op, When};
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
        assert!(err(br#"{"v":1,"cmd":"fault_clear","id":"x"}"#).contains("non-negative integer"));
        assert!(err(br#"{"v":1,"cmd":"fault_clear","all":true}"#).contains("unknown field"));
        assert!(err(br#"{"v":1,"cmd":"disk_full","limit":-5}"#).contains("non-negative integer"));
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

    /// xorshift64*: a fixed seed makes any failure reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn never_panics_on_random_input() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
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
                    line.push(rng.next() as u8);
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
                        Request::Faults(c) => assert_eq!(cmd, c.to_fields().0),
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
                0 => line[i] = rng.next() as u8,
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
