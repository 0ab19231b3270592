//! Event names and subscription filters: normalised once and for all, or refused; a filter
//! that parses matches an event type or not, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::event::{EventFilter, normalize_event_name};

fuzz_target!(|input: (String, Vec<String>)| {
    let (name, patterns) = input;
    if let Ok(normal) = normalize_event_name(&name) {
        assert_eq!(normalize_event_name(&normal).as_ref(), Ok(&normal));
    }
    if let Ok(filter) = EventFilter::parse(&patterns) {
        let _ = filter.matches(&name);
        if let Ok(normal) = normalize_event_name(&name) {
            let _ = filter.matches(&normal);
        }
    }
});
