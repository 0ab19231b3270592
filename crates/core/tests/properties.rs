//! Property tests of the parsers that read input from the network or the database: event
//! names and filters, endpoint URLs and the egress allow-list, Retry-After, signature
//! headers (`v1` and `v1a`) and keys, ids, payloads and the envelope, sealed values, custom
//! headers and endpoint credentials. Each must never panic on any input, and keep its round
//! trips. The case count is proptest's (256), or `PROPTEST_CASES` (CI bounds it). A failure
//! found here becomes a regular test next to the parser. The same parsers have `cargo fuzz`
//! targets in `crates/fuzz` (docs/fuzzing.md).

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use chrono::{TimeZone as _, Utc};
use proptest::prelude::*;
use sluice_core::egress::{AllowList, Cidr, forbidden_reason};
use sluice_core::envelope::{MAX_PAYLOAD_DEPTH, build_envelope, validate_payload};
use sluice_core::event::{EventFilter, normalize_event_name};
use sluice_core::ids::{IdKind, check_id, is_valid_id, new_id};
use sluice_core::retry::parse_retry_after;
use sluice_core::sealing::{Keyring, Reseal, is_sealed};
use sluice_core::signing::{SigningSecret, signature_header, verify};
use sluice_core::signing_ed25519::{AsymmetricKey, PublicKey, sign_v1a, verify_v1a};
use sluice_core::validate::{
    bearer_token, custom_header, endpoint_url, multiline_text, without_credentials,
};

/// A body for the header checks.
const EMPTY_OBJECT: &[u8] = b"{}";

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

    #[test]
    fn v1a_headers_never_panic(
        msg_id in "[a-zA-Z0-9_]{1,40}",
        timestamp in any::<i64>(),
        now in any::<i64>(),
        header in any::<String>(),
        entry in "v1a,[A-Za-z0-9+/=]{0,100}",
        timestamp_header in any::<String>(),
    ) {
        let (_, public) = v1a_key();
        let ts = timestamp.to_string();
        // Any clock, any timestamp: an answer, never an overflow.
        let _ = verify_v1a(public, &msg_id, &ts, &header, EMPTY_OBJECT, now, 300);
        let _ = verify_v1a(public, &msg_id, &timestamp_header, &header, EMPTY_OBJECT, now, 300);
        for bad in [&header, &entry] {
            prop_assert!(verify_v1a(public, &msg_id, &ts, bad, EMPTY_OBJECT, timestamp, 300).is_err());
        }
    }
    #[test]
    fn asymmetric_keys_never_panic_and_round_trip(
        text in any::<String>(),
        seed in proptest::collection::vec(any::<u8>(), 0..80),
        prefix in "(whsk_|whpk_)",
    ) {
        let _ = AsymmetricKey::parse(&text);
        let _ = PublicKey::parse(&text);
        use base64::Engine as _;
        let encoded = format!("{prefix}{}", base64::engine::general_purpose::STANDARD.encode(&seed));
        let _ = AsymmetricKey::parse(&encoded);
        let _ = PublicKey::parse(&encoded);
        let (key, _) = v1a_key();
        let again = AsymmetricKey::parse(&key.to_whsk()).unwrap();
        prop_assert_eq!(again.public_key().to_whpk(), key.public_key().to_whpk());
        let public = PublicKey::parse(&key.public_key().to_whpk()).unwrap();
        prop_assert_eq!(public.to_whpk(), key.public_key().to_whpk());
    }

    #[test]
    fn sealed_values_never_panic_and_round_trip(
        stored in any::<String>(),
        id in "[0-9a-f]{8}",
        body in "[A-Za-z0-9+/=]{0,120}",
        plaintext in any::<String>(),
        master in any::<[u8; 32]>(),
        other in any::<[u8; 32]>(),
    ) {
        prop_assume!(master != other);
        let keyring = Keyring::from_keys(&[master]).unwrap();
        let _ = keyring.open(&stored);
        let _ = keyring.reseal(&stored, Reseal::NotCurrentKey);
        let forged = format!("sealed:v1:{id}:{body}");
        // Not made by `seal`: refused (even under the right key id, GCM's tag fails).
        prop_assert!(keyring.open(&forged).is_err());
        let forged = format!("sealed:v1:{}:{body}", keyring.current_id());
        prop_assert!(keyring.open(&forged).is_err());
        let _ = keyring.reseal(&forged, Reseal::ClearText);
        let sealed = keyring.seal(&plaintext);
        prop_assert!(is_sealed(&sealed));
        prop_assert_eq!(keyring.open(&sealed).unwrap(), plaintext.clone());
        // Under another key it does not open; rotated, the old key still opens it and
        // resealing moves it to the new key.
        prop_assert!(Keyring::from_keys(&[other]).unwrap().open(&sealed).is_err());
        let rotated = Keyring::from_keys(&[other, master]).unwrap();
        let moved = rotated.reseal(&sealed, Reseal::NotCurrentKey).unwrap().unwrap();
        prop_assert_eq!(rotated.open(&moved).unwrap(), plaintext.clone());
        prop_assert_eq!(rotated.reseal(&moved, Reseal::NotCurrentKey).unwrap(), None);
        // One character changed in the sealed text: refused, never a wrong plaintext.
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert!(keyring.open(&tampered).is_err());
        let _ = Keyring::parse(&stored);
    }

    #[test]
    fn egress_rules_judge_embedded_ipv4_like_ipv4(
        v4 in any::<std::net::Ipv4Addr>(),
        ip in any::<IpAddr>(),
        entries in proptest::collection::vec(any::<String>(), 0..3),
    ) {
        let _ = forbidden_reason(ip);
        // IPv4-mapped IPv6 reaches the same host as the IPv4 address: judged alike.
        prop_assert_eq!(
            forbidden_reason(IpAddr::V6(v4.to_ipv6_mapped())).is_some(),
            forbidden_reason(IpAddr::V4(v4)).is_some()
        );
        if let Ok(list) = AllowList::parse(&entries) {
            let _ = list.allows(ip);
            let _ = list.denied_reason(ip);
        }
        let own = AllowList::parse(&[format!("{v4}/32")]).unwrap();
        prop_assert!(own.allows(IpAddr::V4(v4)));
    }

    #[test]
    fn credentials_never_survive_without_credentials(
        user in "[a-z]{1,8}",
        password in "[A-Za-z0-9]{6,12}",
        host in "[a-z]{1,10}\\.example",
        path in "(/[a-z0-9]{0,8}){0,3}",
        any_url in any::<String>(),
    ) {
        let _ = without_credentials(&any_url);
        let shown = without_credentials(&format!("https://{user}:{password}@{host}{path}"));
        prop_assert!(!shown.contains(&password), "{}", shown);
        prop_assert!(!shown.contains('@'), "{}", shown);
    }

    #[test]
    fn header_and_text_checks_never_panic(
        name in any::<String>(),
        value in any::<String>(),
        max in 0usize..300,
    ) {
        let _ = custom_header(&name, &value);
        let _ = bearer_token(&value);
        let _ = multiline_text(&value, max);
        if custom_header(&name, &value).is_ok() {
            // What the validator accepts is a valid HTTP header.
            prop_assert!(http_header_ok(&name, &value), "{:?}: {:?}", name, value);
        }
    }
}

/// Whether `name: value` is a header field HTTP allows (RFC 9110: a token, and visible
/// characters, spaces and tabs).
fn http_header_ok(name: &str, value: &str) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.bytes().all(token)
        && value
            .bytes()
            .all(|b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
}

proptest! {
    // ed25519 in an unoptimised test build is slow (up to a second an operation on a busy
    // machine): the round trip runs a sixteenth of the cases (the unit tests hold vectors).
    #![proptest_config(ProptestConfig {
        cases: (ProptestConfig::default().cases / 16).max(1),
        ..ProptestConfig::default()
    })]

    #[test]
    fn v1a_signatures_verify_and_tampering_fails(
        msg_id in "[a-zA-Z0-9_]{1,40}",
        body in proptest::collection::vec(any::<u8>(), 0..512),
        timestamp in any::<i64>(),
    ) {
        let (key, public) = v1a_key();
        let ts = timestamp.to_string();
        let signed = sign_v1a(key, &msg_id, timestamp, &body);
        prop_assert!(verify_v1a(public, &msg_id, &ts, &signed, &body, timestamp, 300).is_ok());
        let mut tampered = body.clone();
        tampered.push(b'x');
        prop_assert!(
            verify_v1a(public, &msg_id, &ts, &signed, &tampered, timestamp, 300).is_err()
        );
    }
}

/// One ed25519 key for every case (generating one per case costs more than the checks).
fn v1a_key() -> (&'static AsymmetricKey, &'static PublicKey) {
    static KEY: std::sync::OnceLock<(AsymmetricKey, PublicKey)> = std::sync::OnceLock::new();
    let (key, public) = KEY.get_or_init(|| {
        let key = AsymmetricKey::generate();
        let public = key.public_key();
        (key, public)
    });
    (key, public)
}
