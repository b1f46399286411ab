//! Property tests of the control-protocol parser: whatever bytes a client sends,
//! `parse_request` returns (never panics) with a request or a non-empty error message, and
//! agrees with a small reference model of the protocol (the commands without fault specs:
//! the specs' own checks are unit-tested in faults/); every request survives a round trip
//! through `to_line`.  They run under `cargo test` with proptest's default 256 cases each.

use super::protocol::{parse_request, Request, MAX_LINE, PROTOCOL_VERSION};
use crate::faultspec::glob::Glob;
use crate::faultspec::{CrashSpec, FaultCommand, Op, When};
use crate::keep::{check_granularity, KeepMode, KeepRequest};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Status),
        Just(Request::Sync),
        (any::<bool>(), keep_request())
            .prop_map(|(no_kill, keep)| Request::Powercut { no_kill, keep }),
        fault_command().prop_map(Request::Faults),
    ]
}

fn fault_command() -> impl Strategy<Value = FaultCommand> {
    let crash = (
        prop::sample::select(Op::ALL.to_vec()),
        prop::option::of("[a-z*?]{1,8}"),
        1u64..=u64::MAX,
        any::<bool>(),
    )
        .prop_map(|(op, path, nth, after)| CrashSpec {
            op,
            path,
            nth,
            when: if after { When::After } else { When::Before },
        });
    prop_oneof![
        crash.prop_map(FaultCommand::Arm),
        Just(FaultCommand::Disarm),
        Just(FaultCommand::List),
        prop::option::of(any::<u64>()).prop_map(FaultCommand::Clear),
        prop::option::of(any::<u64>()).prop_map(FaultCommand::DiskFull),
    ]
}

fn keep_mode() -> impl Strategy<Value = KeepMode> {
    prop_oneof![
        Just(KeepMode::None),
        Just(KeepMode::All),
        Just(KeepMode::Prefix),
        Just(KeepMode::Random)
    ]
}

/// Valid keep fields: a granularity only with `random`, and then a valid one.
fn keep_request() -> impl Strategy<Value = KeepRequest> {
    (
        keep_mode(),
        prop::option::of(any::<u64>()),
        prop::option::of(9u32..=20),
    )
        .prop_map(|(mode, seed, shift)| KeepRequest {
            mode,
            seed,
            granularity: shift
                .filter(|_| mode == KeepMode::Random)
                .map(|s| 1u64 << s),
        })
}

/// JSON values of every type, small enough to stay fast.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![Just(0u64), Just(1), Just(2), Just(u64::MAX)].prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("status"),
            Just("sync"),
            Just("powercut"),
            Just("STATUS"),
            Just("prefix"),
            Just("random"),
            Just("disarm"),
            Just("fault_list"),
            Just("fault_clear"),
            Just("disk_full"),
            Just("arm"),
            Just("fsync"),
            Just("after"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects whose keys are mostly the protocol's own, with values of any type.
fn request_like_object() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        4 => prop_oneof![
            Just("v"),
            Just("cmd"),
            Just("no_kill"),
            Just("keep"),
            Just("seed"),
            Just("granularity"),
            Just("id"),
            Just("limit"),
            Just("op"),
            Just("nth"),
            Just("when"),
            Just("path"),
        ]
        .prop_map(String::from),
        1 => "[a-z_]{0,8}",
    ];
    prop::collection::btree_map(key, json_value(), 0..5).prop_map(|m| m.into_iter().collect())
}

/// Valid requests' objects, then maybe one key set to any value or removed: mostly near-misses.
fn mutated_request_object() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        Just("v"),
        Just("cmd"),
        Just("no_kill"),
        Just("keep"),
        Just("seed"),
        Just("granularity"),
        Just("id"),
        Just("limit"),
        Just("op"),
        Just("nth"),
        Just("when"),
        Just("path"),
        Just("x")
    ];
    (
        request(),
        key,
        prop::option::of(json_value()),
        any::<bool>(),
    )
        .prop_map(|(req, key, value, mutate)| {
            let line = req.to_line();
            let mut obj: Map<String, Value> = match serde_json::from_str(&line) {
                Ok(Value::Object(o)) => o,
                other => panic!("to_line gave {line:?}: {other:?}"),
            };
            if mutate {
                match value {
                    Some(v) => obj.insert(key.to_string(), v),
                    None => obj.remove(key),
                };
            }
            obj
        })
}

/// What the protocol says an object means: the reference the parser is checked against.
/// Optional numbers may be null, which means left out; `None` where a request is refused.
fn model(obj: &Map<String, Value>) -> Option<Request> {
    if obj.get("v")?.as_u64()? != u64::from(PROTOCOL_VERSION) {
        return None;
    }
    let number = |k: &str| match obj.get(k) {
        None | Some(Value::Null) => Some(None),
        Some(v) => v.as_u64().map(Some),
    };
    let (req, allowed): (Request, &[&str]) = match obj.get("cmd")?.as_str()? {
        "status" => (Request::Status, &["v", "cmd"]),
        "sync" => (Request::Sync, &["v", "cmd"]),
        "disarm" => (Request::Faults(FaultCommand::Disarm), &["v", "cmd"]),
        "fault_list" => (Request::Faults(FaultCommand::List), &["v", "cmd"]),
        "fault_clear" => (
            Request::Faults(FaultCommand::Clear(number("id")?)),
            &["v", "cmd", "id"],
        ),
        "disk_full" => (
            Request::Faults(FaultCommand::DiskFull(number("limit")?)),
            &["v", "cmd", "limit"],
        ),
        "arm" => {
            let path = match obj.get("path") {
                None | Some(Value::Null) => None,
                Some(p) => {
                    let p = p.as_str()?;
                    Glob::new(p).ok()?;
                    Some(p.to_string())
                }
            };
            let spec = CrashSpec {
                op: Op::parse(obj.get("op")?.as_str()?).ok()?,
                path,
                nth: match obj.get("nth") {
                    None => 1,
                    Some(n) => n.as_u64().filter(|&n| n >= 1)?,
                },
                when: match obj.get("when").map(Value::as_str) {
                    None => When::Before,
                    Some(Some("before")) => When::Before,
                    Some(Some("after")) => When::After,
                    Some(_) => return None,
                },
            };
            (
                Request::Faults(FaultCommand::Arm(spec)),
                &["v", "cmd", "op", "path", "nth", "when"],
            )
        }
        "powercut" => {
            let no_kill = match obj.get("no_kill") {
                None => false,
                Some(v) => v.as_bool()?,
            };
            let mode = match obj.get("keep") {
                None => KeepMode::None,
                Some(v) => v.as_str()?.parse().ok()?,
            };
            let seed = number("seed")?;
            let granularity = match number("granularity")? {
                None => None,
                Some(g) if mode == KeepMode::Random => Some(check_granularity(g).ok()?),
                Some(_) => return None,
            };
            let keep = KeepRequest {
                mode,
                seed,
                granularity,
            };
            (
                Request::Powercut { no_kill, keep },
                &["v", "cmd", "no_kill", "keep", "seed", "granularity"],
            )
        }
        _ => return None,
    };
    obj.keys()
        .all(|k| allowed.contains(&k.as_str()))
        .then_some(req)
}

fn check_outcome(r: &Result<Request, String>) {
    if let Err(msg) = r {
        assert!(!msg.trim().is_empty(), "empty error message");
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_outcome(&parse_request(&bytes));
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check_outcome(&parse_request(text.as_bytes()));
    }

    #[test]
    fn request_like_objects_parse_as_the_model_says(
        obj in prop_oneof![request_like_object(), mutated_request_object()],
    ) {
        let line = Value::Object(obj.clone()).to_string();
        let got = parse_request(line.as_bytes());
        check_outcome(&got);
        prop_assert_eq!(got.ok(), model(&obj), "line {}", line);
    }

    #[test]
    fn valid_requests_round_trip(req in request(), crlf in any::<bool>()) {
        let mut line = req.to_line();
        prop_assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        if crlf {
            line.insert(line.len() - 1, '\r');
        }
        prop_assert_eq!(parse_request(line.as_bytes()), Ok(req));
    }

    #[test]
    fn a_valid_line_cut_short_or_extended_is_an_error(
        req in request(),
        cut in 0usize..40,
        junk in "[^\\s]{1,8}",
    ) {
        let line = req.to_line();
        let body = line.trim_end();
        let short = &body[..cut.min(body.len() - 1)];
        prop_assert!(parse_request(short.as_bytes()).is_err(), "accepted {:?}", short);
        let long = format!("{body}{junk}\n");
        prop_assert!(parse_request(long.as_bytes()).is_err(), "accepted {:?}", long);
    }

    #[test]
    fn overlong_lines_are_refused_with_their_length(extra in 3usize..64) {
        let line = vec![b' '; MAX_LINE + extra];
        let err = parse_request(&line).expect_err("an overlong line was accepted");
        prop_assert!(err.contains(&(MAX_LINE + extra).to_string()), "{}", err);
    }
}
