//! A receiver's `Retry-After`: seconds or an HTTP date, or nothing; never a panic, at any
//! clock.
#![no_main]

use chrono::TimeZone as _;
use libfuzzer_sys::fuzz_target;
use sluice_core::retry::parse_retry_after;

fuzz_target!(|input: (String, i64)| {
    let (value, now) = input;
    let Some(now) = chrono::Utc.timestamp_opt(now % 400_000_000_000, 0).single() else {
        return;
    };
    let _ = parse_retry_after(&value, now);
});
