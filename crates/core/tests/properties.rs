//! Property tests of the parsers that read input from the network or the database: event
//! names and filters, endpoint URLs and the egress allow-list, Retry-After, signature
//! headers, ids, payloads and the envelope. Each must never panic on any input, and keep
//! its round trips. The case count is proptest's (256), or `PROPTEST_CASES` (CI bounds it).
//! A failure found here becomes a regular test next to the parser.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use chrono::{TimeZone as _, Utc};
use proptest::prelude::*;
use sluice_core::egress::Cidr;
use sluice_core::envelope::{MAX_PAYLOAD_DEPTH, build_envelope, validate_payload};
use sluice_core::event::{EventFilter, normalize_event_name};
use sluice_core::ids::{IdKind, check_id, is_valid_id, new_id};
use sluice_core::retry::parse_retry_after;
use sluice_core::signing::{SigningSecret, signature_header, verify};
use sluice_core::validate::endpoint_url;

/// A plausible event name: 2 or 3 lowercase segments.
fn event_name() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-z][a-z0-9_]{0,8}", 2..=3).prop_map(|s| s.join("."))
}

proptest! {
    #[test]
    fn event_names_never_panic_and_normalise_once(s in any::<String>()) {
        if let Ok(n) = normalize_event_name(&s) {
            prop_assert_eq!(normalize_event_name(&n), Ok(n.clone()));
            prop_assert!(!n.bytes().any(|b| b.is_ascii_uppercase()));
        }
    }

    #[test]
    fn names_in_any_case_normalise_alike(name in event_name()) {
        let n = normalize_event_name(&name);
        prop_assume!(n.is_ok());
        let n = n.unwrap();
        prop_assert_eq!(normalize_event_name(&name.to_ascii_uppercase()), Ok(n));
    }

    #[test]
    fn filters_never_panic(
        patterns in proptest::collection::vec(any::<String>(), 0..4),
        name in any::<String>(),
    ) {
        if let Ok(filter) = EventFilter::parse(&patterns) {
            let _ = filter.matches(&name);
        }
    }

    #[test]
    fn filters_match_their_names_and_families(name in event_name(), other in event_name()) {
        let Ok(name) = normalize_event_name(&name) else { return Ok(()) };
        let Ok(other) = normalize_event_name(&other) else { return Ok(()) };
        let exact = EventFilter::parse([name.as_str()]).unwrap();
        prop_assert!(exact.matches(&name));
        prop_assert_eq!(exact.matches(&other), other == name);
        let family = name.split('.').next().unwrap();
        let wildcard = EventFilter::parse([format!("{family}.*")]).unwrap();
        prop_assert!(wildcard.matches(&name));
        prop_assert_eq!(
            wildcard.matches(&other),
            other.starts_with(&format!("{family}."))
        );
        prop_assert!(EventFilter::parse(["*"]).unwrap().matches(&other));
    }

    #[test]
    fn retry_after_never_panics(s in any::<String>(), now in 0i64..4_000_000_000) {
        let now = Utc.timestamp_opt(now, 0).unwrap();
        let _ = parse_retry_after(&s, now);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates(secs in any::<u64>(), ahead in 0i64..1_000_000) {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        prop_assert_eq!(
            parse_retry_after(&format!(" {secs} "), now),
            Some(Duration::from_secs(secs))
        );
        let when = now + chrono::Duration::seconds(ahead);
        let date = when.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        prop_assert_eq!(
            parse_retry_after(&date, now),
            Some(Duration::from_secs(ahead.unsigned_abs()))
        );
    }

    #[test]
    fn signatures_verify_and_bad_headers_never_panic(
        msg_id in "[a-zA-Z0-9_]{1,40}",
        body in proptest::collection::vec(any::<u8>(), 0..512),
        timestamp in 0i64..4_000_000_000,
        header in any::<String>(),
        timestamp_header in any::<String>(),
    ) {
        let secret = SigningSecret::generate();
        let other = SigningSecret::generate();
        let signed = signature_header(&[&other, &secret], &msg_id, timestamp, &body);
        let ts = timestamp.to_string();
        prop_assert!(verify(&secret, &msg_id, &ts, &signed, &body, timestamp, 300).is_ok());
        let mut tampered = body.clone();
        tampered.push(b'x');
        prop_assert!(verify(&secret, &msg_id, &ts, &signed, &tampered, timestamp, 300).is_err());
        prop_assert!(verify(&secret, &msg_id, &ts, &header, &body, timestamp, 300).is_err());
        let _ = verify(&secret, &msg_id, &timestamp_header, &header, &body, timestamp, 300);
        let _ = SigningSecret::parse(&header);
    }

    #[test]
    fn endpoint_urls_never_panic(s in any::<String>(), allow_http in any::<bool>()) {
        if let Ok(url) = endpoint_url(&s, allow_http) {
            prop_assert!(url.scheme() == "https" || (allow_http && url.scheme() == "http"));
        }
    }

    #[test]
    fn url_like_input_never_panics(
        scheme in "(https?|ftp|HTTPS)",
        host in "[a-z0-9.\\-\\[\\]:%@]{0,30}",
        rest in "[ -~]{0,30}",
    ) {
        let _ = endpoint_url(&format!("{scheme}://{host}{rest}"), true);
    }

    #[test]
    fn cidrs_never_panic_and_contain_their_address(
        s in any::<String>(),
        ip in any::<IpAddr>(),
        len in 0u8..=128,
    ) {
        let _ = Cidr::parse(&s);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let cidr = Cidr::parse(&format!("{ip}/{max}")).unwrap();
        prop_assert!(cidr.contains(ip));
        // Refused when host bits are set; when accepted, it contains the address.
        if let Ok(cidr) = Cidr::parse(&format!("{ip}/{}", len.min(max))) {
            prop_assert!(cidr.contains(ip));
        }
    }

    #[test]
    fn ids_never_panic(s in any::<String>()) {
        for kind in IdKind::ALL {
            let _ = check_id(kind, &s);
            let _ = is_valid_id(kind, &s);
            let made = new_id(kind);
            prop_assert!(is_valid_id(kind, &made));
            prop_assert_eq!(IdKind::of(&made), Some(kind));
        }
    }

    #[test]
    fn payloads_never_panic(s in any::<String>()) {
        let _ = validate_payload(&s, 1 << 20);
    }

    #[test]
    fn payload_depth_limit_is_exact(depth in 1usize..=80) {
        let json = format!("{}{{}}{}", r#"{"a":"#.repeat(depth - 1), "}".repeat(depth - 1));
        prop_assert_eq!(validate_payload(&json, 1 << 20).is_ok(), depth <= MAX_PAYLOAD_DEPTH);
        let arrays = format!(r#"{{"a":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        prop_assert_eq!(
            validate_payload(&arrays, 1 << 20).is_ok(),
            depth < MAX_PAYLOAD_DEPTH
        );
    }

    #[test]
    fn envelopes_are_json_with_the_payload(
        event in event_name(),
        n in any::<i64>(),
        text in any::<String>(),
    ) {
        let payload = serde_json::json!({ "n": n, "text": text }).to_string();
        let envelope = build_envelope("msg_1", &event, 1, Utc::now(), "wrk_1", &payload);
        let parsed: serde_json::Value = serde_json::from_slice(&envelope).unwrap();
        prop_assert_eq!(parsed["payload"]["n"].as_i64(), Some(n));
        prop_assert_eq!(parsed["payload"]["text"].as_str(), Some(text.as_str()));
    }
}
