//! Engine-level tests of [`Faults`] without a mount: the fast-path flag, status, delays.

use super::*;
use crate::faultspec::{CrashSpec, FaultSpec, Op, When};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn delay(ms: u64) -> FaultSpec {
    FaultSpec {
        op: Some(Op::Write),
        delay_ms: Some(ms),
        ..Default::default()
    }
}

#[test]
fn active_only_while_something_is_armed() {
    let f = Faults::new();
    assert!(!f.active());
    f.arm(CrashSpec {
        op: Op::Fsync,
        path: None,
        nth: 1,
        when: When::After,
    })
    .unwrap();
    assert!(f.active());
    let st = f.status();
    assert!(!st.crash_point.as_ref().unwrap().fired);
    assert!(
        st.to_text()
            .contains("power cut after the 1st fsync (armed"),
        "{}",
        st.to_text()
    );
    // Firing disarms the fast path (no cutter here: nothing is killed).
    assert_eq!(f.decide(Op::Fsync, &[], None).crash, Some(When::After));
    assert!(!f.active());
    assert!(f.status().crash_point.unwrap().fired);
    f.disarm();
    assert!(f.status().crash_point.is_none());

    let st = f.add(delay(5)).unwrap();
    assert_eq!(st.faults[0].id, 1);
    assert!(f.active());
    assert!(f.clear(Some(9)).unwrap_err().contains("no fault with id 9"));
    f.clear(Some(1)).unwrap();
    assert!(!f.active());

    f.set_disk_full(Some((100, 40)));
    assert!(f.active());
    assert!(f.room_for(60));
    assert!(!f.room_for(61));
    f.account(50);
    assert_eq!(f.status().disk_full.unwrap().used, 90);
    f.account(-200);
    assert_eq!(f.status().disk_full.unwrap().used, 0);
    f.set_disk_full(None);
    assert!(!f.active());
    assert!(f.room_for(u64::MAX));
}

#[test]
fn watches_an_op_while_a_rule_or_an_unfired_crash_point_names_it() {
    let f = Faults::new();
    assert!(!f.watches(Op::Read));
    f.add(delay(1)).unwrap();
    assert!(f.watches(Op::Write));
    assert!(!f.watches(Op::Read), "a write rule does not watch reads");
    f.add(FaultSpec {
        op: Some(Op::Read),
        path: Some("only/this".into()),
        errno: Some("EIO".into()),
        ..Default::default()
    })
    .unwrap();
    assert!(f.watches(Op::Read), "whatever path the rule names");
    f.clear(None).unwrap();
    assert!(!f.watches(Op::Read));
    f.arm(CrashSpec {
        op: Op::Read,
        path: None,
        nth: 1,
        when: When::Before,
    })
    .unwrap();
    assert!(f.watches(Op::Read));
    assert_eq!(f.decide(Op::Read, &[], None).crash, Some(When::Before));
    assert!(
        !f.watches(Op::Read),
        "a crash point that fired watches nothing"
    );
}

#[test]
fn ids_keep_growing_and_list_in_order() {
    let f = Faults::new();
    f.add(delay(1)).unwrap();
    f.add(delay(2)).unwrap();
    f.clear(None).unwrap();
    let st = f.add(delay(3)).unwrap();
    assert_eq!(st.faults.len(), 1);
    assert_eq!(st.faults[0].id, 3, "ids are never reused");
}

#[test]
fn delays_end_on_time_on_clear_and_on_abort() {
    let f = Arc::new(Faults::new());
    let t0 = Instant::now();
    assert_eq!(f.sleep(Duration::from_millis(30)), Slept::Elapsed);
    assert!(t0.elapsed() >= Duration::from_millis(30));

    let sleeper = |f: &Arc<Faults>| {
        let f = Arc::clone(f);
        std::thread::spawn(move || f.sleep(Duration::from_secs(60)))
    };
    let h = sleeper(&f);
    std::thread::sleep(Duration::from_millis(50));
    f.clear(None).unwrap();
    assert_eq!(h.join().unwrap(), Slept::Cleared);

    let h = sleeper(&f);
    std::thread::sleep(Duration::from_millis(50));
    f.abort_delays();
    assert_eq!(h.join().unwrap(), Slept::Aborted);

    let h = sleeper(&f);
    std::thread::sleep(Duration::from_millis(50));
    f.shutdown();
    assert_eq!(
        h.join().unwrap(),
        Slept::Cleared,
        "an unmount lets the request go on"
    );
    assert_eq!(f.sleep(Duration::from_secs(60)), Slept::Cleared);
}

#[test]
fn callers_survive_when_no_cut_runs() {
    let f = Faults::new();
    assert!(f.caller_survives_cut(std::process::id()));
    assert!(f.caller_survives_cut(0));
}
