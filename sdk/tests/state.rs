//! The in-memory shared state and log capture follow the ABI's semantics.
#![cfg(feature = "testing")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmgate_sdk::log::{self, Level};
use wasmgate_sdk::state::{self, Counter};
use wasmgate_sdk::testing;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[test]
fn counters_use_fixed_windows_aligned_on_the_epoch() {
    testing::reset_state();
    testing::freeze_clock(at(1_000_250));
    let minute = Duration::from_secs(60);
    // 1_000_250 ms is 40_250 ms into the window starting at 960_000.
    assert_eq!(
        state::counter_add("ip", 1, minute),
        Counter {
            value: 1,
            reset: Duration::from_millis(19_750)
        }
    );
    assert_eq!(state::counter_add("ip", 2, minute).value, 3);
    assert_eq!(state::counter_get("ip", minute).value, 3);
    assert_eq!(state::counter_add("ip", -1, minute).value, 2);
    assert_eq!(state::counter_get("other", minute).value, 0);

    testing::advance_clock(Duration::from_millis(19_749));
    let last_ms = state::counter_get("ip", minute);
    assert_eq!(
        last_ms,
        Counter {
            value: 2,
            reset: Duration::from_millis(1)
        }
    );

    // The next window starts from zero, with a full window left.
    testing::advance_clock(Duration::from_millis(1));
    assert_eq!(
        state::counter_get("ip", minute),
        Counter {
            value: 0,
            reset: minute
        }
    );
    assert_eq!(state::counter_add("ip", 1, minute).value, 1);
}

#[test]
fn a_zero_window_never_resets() {
    testing::reset_state();
    testing::freeze_clock(at(5));
    assert_eq!(
        state::counter_add("total", 7, Duration::ZERO),
        Counter {
            value: 7,
            reset: Duration::ZERO
        }
    );
    testing::advance_clock(Duration::from_secs(86_400 * 365));
    assert_eq!(state::counter_add("total", 1, Duration::ZERO).value, 8);
}

#[test]
fn kv_with_ttl() {
    testing::reset_state();
    testing::freeze_clock(at(1_000));
    assert_eq!(state::kv_get("k"), None);
    state::kv_set("k", "v", Some(Duration::from_secs(10)));
    state::kv_set("forever", "f", None);
    assert_eq!(state::kv_get("k").as_deref(), Some("v"));
    testing::advance_clock(Duration::from_millis(9_999));
    assert_eq!(state::kv_get("k").as_deref(), Some("v"));
    testing::advance_clock(Duration::from_millis(1));
    assert_eq!(state::kv_get("k"), None);
    assert_eq!(state::kv_get("forever").as_deref(), Some("f"));
    state::kv_delete("forever");
    state::kv_delete("absent");
    assert_eq!(state::kv_get("forever"), None);
}

#[test]
fn kv_compare_and_swap() {
    testing::reset_state();
    testing::freeze_clock(at(0));
    // None: only if absent.
    assert!(state::kv_compare_and_swap("lock", None, "a", None));
    assert!(!state::kv_compare_and_swap("lock", None, "b", None));
    assert!(!state::kv_compare_and_swap("lock", Some("b"), "c", None));
    assert!(state::kv_compare_and_swap(
        "lock",
        Some("a"),
        "c",
        Some(Duration::from_secs(1))
    ));
    assert_eq!(state::kv_get("lock").as_deref(), Some("c"));
    // An expired value counts as absent.
    testing::advance_clock(Duration::from_secs(1));
    assert!(!state::kv_compare_and_swap("lock", Some("c"), "d", None));
    assert!(state::kv_compare_and_swap("lock", None, "d", None));
}

#[test]
fn reset_state_starts_over() {
    state::kv_set("x", "1", None);
    state::counter_add("c", 1, Duration::from_secs(1));
    log::info("before");
    testing::reset_state();
    assert_eq!(state::kv_get("x"), None);
    assert_eq!(state::counter_get("c", Duration::from_secs(1)).value, 0);
    assert!(testing::logs().is_empty());
}

#[test]
fn logs_are_captured_per_thread() {
    testing::clear_logs();
    log::trace("t");
    log::debug("d");
    log::info("i");
    log::warn("w");
    log::error("e");
    log::log(Level::Info, "direct");
    assert_eq!(
        testing::logs(),
        [
            (Level::Trace, "t".to_owned()),
            (Level::Debug, "d".to_owned()),
            (Level::Info, "i".to_owned()),
            (Level::Warn, "w".to_owned()),
            (Level::Error, "e".to_owned()),
            (Level::Info, "direct".to_owned()),
        ]
    );
    std::thread::spawn(|| assert!(testing::logs().is_empty()))
        .join()
        .unwrap();
    testing::clear_logs();
    assert!(testing::logs().is_empty());
}
