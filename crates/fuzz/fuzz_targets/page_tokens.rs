//! The control plane's page tokens and the stored values `convert.rs` reads (times, scheme
//! and destination names, JSON columns): a page or INVALID_ARGUMENT, a value or a
//! default, never a panic; a token made for a key reads back as that key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_control::convert;
use sluice_control::page::PageRequest;

fuzz_target!(|input: (i32, String, i64, i64, i32)| {
    let (size, token, ms, seconds, nanos) = input;
    let _ = PageRequest::parse("subscriptions", size, &token);
    if !token.is_empty()
        && let Ok(page) = PageRequest::parse("subscriptions", 1, "")
    {
        let (_, next) = page.finish(vec![token.clone(), token.clone()], Clone::clone);
        let again = PageRequest::parse("subscriptions", 1, &next).expect("our own token");
        assert_eq!(again.after.as_deref(), Some(token.as_str()));
    }
    let _ = convert::ms(&convert::ts(ms));
    let _ = convert::ms(&prost_types::Timestamp { seconds, nanos });
    let _ = convert::signature_scheme(&token);
    let _ = convert::destination_type(&token);
    let _ = convert::duration_ms(ms);
});
