//! Payloads as publishers send them (`payload_json`) and the envelope built around one: a
//! payload is refused or accepted, and an accepted one makes an envelope that is JSON
//! carrying it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::envelope::{build_envelope, validate_payload};

fuzz_target!(|input: (String, String)| {
    let (payload, event_type) = input;
    if validate_payload(&payload, 1 << 20).is_ok() {
        let envelope = build_envelope(
            "msg_1",
            &event_type,
            1,
            chrono::DateTime::UNIX_EPOCH,
            "wrk_1",
            &payload,
        );
        assert!(std::str::from_utf8(&envelope).is_ok());
    }
});
