//! The data plane's configuration copy: a `dp_subscriptions.config` row and a message of
//! the control plane's watch stream, of any bytes (`sluice-data`'s `fuzzing` entry points).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, i64, String)| {
    let (bytes, now_ms, event_type) = input;
    sluice_data::fuzzing::stored_subscription(&bytes, now_ms);
    sluice_data::fuzzing::watch_message(&bytes, now_ms, &event_type);
});
