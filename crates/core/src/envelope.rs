//! The JSON envelope a receiver gets, and the check that a publisher's payload can go in it.
//!
//! The envelope is built by hand rather than through a serde struct because the payload must
//! go out byte for byte as the publisher sent it (re-serialising could reorder keys or change
//! number formatting), and because this runs for every message on the hot path.

use std::io::{self, Write as _};

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::de::IgnoredAny;
use thiserror::Error;

/// Why a payload cannot be published.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PayloadError {
    #[error("payload is {size} bytes; the limit is {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("payload must be a JSON object, such as {{\"conversation\": {{\"id\": \"cnv_1\"}}}}")]
    NotObject,
}

/// Builds the envelope:
/// `{"id":…,"event":…,"version":1,"timestamp":"2024-01-15T10:30:00.000Z","workspace_id":…,"payload":…}`.
///
/// The timestamp has millisecond precision and a `Z`. `payload_json` must already be a valid
/// JSON object (see [`validate_payload`]); it is copied verbatim.
pub fn build_envelope(
    id: &str,
    event: &str,
    version: u32,
    timestamp: DateTime<Utc>,
    workspace_id: &str,
    payload_json: &str,
) -> Vec<u8> {
    let capacity = FIXED_BYTES
        + id.len()
        + event.len()
        + workspace_id.len()
        + payload_json.len()
        + MAX_U32_DIGITS
        + TIMESTAMP_BYTES;
    let mut out = Vec::with_capacity(capacity);
    let written = write_envelope(
        &mut out,
        id,
        event,
        version,
        timestamp,
        workspace_id,
        payload_json,
    );
    // Writing into a Vec cannot fail: its io::Write implementation never returns an error.
    debug_assert!(written.is_ok(), "writing to a Vec failed: {written:?}");
    out
}

/// Checks a publisher's payload: at most `max_bytes`, valid JSON, and an object.
pub fn validate_payload(json: &str, max_bytes: usize) -> Result<(), PayloadError> {
    if json.len() > max_bytes {
        return Err(PayloadError::TooLarge {
            size: json.len(),
            max: max_bytes,
        });
    }
    // IgnoredAny checks the syntax without building a tree of values.
    let parsed = serde_json::from_str::<IgnoredAny>(json);
    if let Err(error) = parsed {
        return Err(PayloadError::NotJson(error.to_string()));
    }
    // serde_json skips ignored values without a depth limit, but receivers (and serde_json
    // itself, when building a Value) refuse deep nesting; say so now rather than at delivery.
    if nests_deeper_than(json.as_bytes(), MAX_PAYLOAD_DEPTH) {
        return Err(PayloadError::NotJson(format!(
            "objects and arrays are nested more than {MAX_PAYLOAD_DEPTH} levels deep"
        )));
    }
    let first = json
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(b'{') {
        Ok(())
    } else {
        Err(PayloadError::NotObject)
    }
}

/// The deepest nesting of objects and arrays a payload may have, in either form
/// (`payload_json`, or a `payload` Struct, which prost's recursion limit of 100 cuts off
/// at 33 levels: each level is a Struct, a map entry and a Value). Far above what real
/// events use, and well inside common parsers' limits (serde_json's is 128) with the
/// envelope's own level added.
pub const MAX_PAYLOAD_DEPTH: usize = 32;

/// Whether syntactically valid JSON nests objects and arrays more than `max` levels deep.
/// Strings are skipped to their closing quote with `memchr` (most of a payload's bytes are
/// usually inside strings), so only the bytes between them are looked at one by one.
fn nests_deeper_than(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = json.get(i) {
        i += 1;
        match b {
            // To the closing quote: the next quote or backslash, past what a backslash
            // escapes, until an unescaped quote (or the end, for an unclosed string).
            b'"' => loop {
                match memchr::memchr2(b'"', b'\\', json.get(i..).unwrap_or_default()) {
                    Some(at) if json[i + at] == b'"' => {
                        i += at + 1;
                        break;
                    }
                    Some(at) => i += at + 2,
                    None => {
                        i = json.len();
                        break;
                    }
                }
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

const PART_ID: &[u8] = br#"{"id":"#;
const PART_EVENT: &[u8] = br#","event":"#;
const PART_VERSION: &[u8] = br#","version":"#;
const PART_TIMESTAMP: &[u8] = br#","timestamp":""#;
const PART_WORKSPACE: &[u8] = br#"","workspace_id":"#;
const PART_PAYLOAD: &[u8] = br#","payload":"#;
const PART_END: &[u8] = b"}";
/// The literal parts plus the quotes around the three strings.
const FIXED_BYTES: usize = PART_ID.len()
    + PART_EVENT.len()
    + PART_VERSION.len()
    + PART_TIMESTAMP.len()
    + PART_WORKSPACE.len()
    + PART_PAYLOAD.len()
    + PART_END.len()
    + 6;
const MAX_U32_DIGITS: usize = 10;
/// Where an envelope built by [`build_envelope`] splits: its head (`{"id":…,"workspace_id":…`,
/// without the payload) and the payload's bytes, as `(head_end, payload_start)`. The payload
/// is last and the strings before it are JSON-escaped (a quote inside one is `\"`), so the
/// first `,"payload":` is the payload's own key. `None` for anything else.
pub fn split_envelope(envelope: &[u8]) -> Option<(usize, usize)> {
    let head_end = memchr::memmem::find(envelope, PART_PAYLOAD)?;
    let payload_start = head_end + PART_PAYLOAD.len();
    (envelope.last() == Some(&b'}') && payload_start < envelope.len())
        .then_some((head_end, payload_start))
}

/// `2024-01-15T10:30:00.000Z`
const TIMESTAMP_BYTES: usize = 24;

fn write_envelope(
    out: &mut Vec<u8>,
    id: &str,
    event: &str,
    version: u32,
    timestamp: DateTime<Utc>,
    workspace_id: &str,
    payload_json: &str,
) -> io::Result<()> {
    out.extend_from_slice(PART_ID);
    serde_json::to_writer(&mut *out, id)?;
    out.extend_from_slice(PART_EVENT);
    serde_json::to_writer(&mut *out, event)?;
    out.extend_from_slice(PART_VERSION);
    write!(out, "{version}")?;
    out.extend_from_slice(PART_TIMESTAMP);
    write_timestamp(out, timestamp)?;
    out.extend_from_slice(PART_WORKSPACE);
    serde_json::to_writer(&mut *out, workspace_id)?;
    out.extend_from_slice(PART_PAYLOAD);
    out.extend_from_slice(payload_json.as_bytes());
    out.extend_from_slice(PART_END);
    Ok(())
}

/// RFC 3339 in UTC with milliseconds and `Z`, the same text as chrono's
/// `to_rfc3339_opts(SecondsFormat::Millis, true)`, written without a temporary String.
fn write_timestamp(out: &mut Vec<u8>, t: DateTime<Utc>) -> io::Result<()> {
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Years outside four digits get chrono's sign-and-padding rules; they never occur for
        // real events, so the slow path is fine.
        return write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
    }
    // chrono represents a leap second as second 59 with nanoseconds past one second.
    let nanos = t.nanosecond();
    let second = t.second() + nanos / 1_000_000_000;
    let millis = (nanos % 1_000_000_000) / 1_000_000;
    let year = year.unsigned_abs();
    push_digits(out, year, 4);
    out.push(b'-');
    push_digits(out, t.month(), 2);
    out.push(b'-');
    push_digits(out, t.day(), 2);
    out.push(b'T');
    push_digits(out, t.hour(), 2);
    out.push(b':');
    push_digits(out, t.minute(), 2);
    out.push(b':');
    push_digits(out, second, 2);
    out.push(b'.');
    push_digits(out, millis, 3);
    out.push(b'Z');
    Ok(())
}

/// Appends the last `width` decimal digits of `value`, zero-padded.
fn push_digits(out: &mut Vec<u8>, value: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = (value / 10u32.pow(place)) % 10;
        // A digit is below 10, so the cast cannot truncate.
        out.push(b'0' + digit as u8);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use chrono::{NaiveDate, SecondsFormat, TimeZone};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, milli: u32) -> DateTime<Utc> {
        let naive = NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_milli_opt(h, mi, s, milli)
            .unwrap();
        Utc.from_utc_datetime(&naive)
    }

    #[test]
    fn splits_head_and_payload() {
        let payload = r#"{"note":",\"payload\":1","n": 1.50}"#;
        let envelope = build_envelope(
            "msg_1",
            "a.b",
            1,
            at(2024, 1, 15, 10, 30, 0, 0),
            "wrk_\",payload\":",
            payload,
        );
        let (head, start) = split_envelope(&envelope).unwrap();
        assert_eq!(&envelope[start..envelope.len() - 1], payload.as_bytes());
        let mut thin = envelope[..head].to_vec();
        thin.push(b'}');
        let thin: serde_json::Value = serde_json::from_slice(&thin).unwrap();
        assert_eq!(thin["workspace_id"], "wrk_\",payload\":");
        assert_eq!(thin.get("payload"), None);
        assert_eq!(split_envelope(b"{}"), None);
        assert_eq!(split_envelope(br#"{"payload":{}}"#), None);
    }

    #[test]
    fn builds_the_documented_envelope() {
        let cases = [
            (
                "msg_2vt",
                "conversation.created",
                1,
                at(2024, 1, 15, 10, 30, 0, 0),
                "wrk_xyz789",
                r#"{"conversation":{"id":"cnv_abc123","contactId":"cnt_def456"}}"#,
                r#"{"id":"msg_2vt","event":"conversation.created","version":1,"timestamp":"2024-01-15T10:30:00.000Z","workspace_id":"wrk_xyz789","payload":{"conversation":{"id":"cnv_abc123","contactId":"cnt_def456"}}}"#,
            ),
            (
                // The payload keeps its own spacing, key order and number text.
                "msg_1",
                "billing.invoice.paid",
                4_294_967_295,
                at(1999, 12, 31, 23, 59, 59, 999),
                "wrk_1",
                "{ \"b\": 1.50, \"a\": [1e3] }",
                r#"{"id":"msg_1","event":"billing.invoice.paid","version":4294967295,"timestamp":"1999-12-31T23:59:59.999Z","workspace_id":"wrk_1","payload":{ "b": 1.50, "a": [1e3] }}"#,
            ),
            (
                // Strings are escaped, even though validated ids never need it.
                "a\"b\\c\n",
                "e\u{1}",
                0,
                at(2024, 2, 29, 0, 0, 0, 7),
                "wrk_ü",
                "{}",
                "{\"id\":\"a\\\"b\\\\c\\n\",\"event\":\"e\\u0001\",\"version\":0,\"timestamp\":\"2024-02-29T00:00:00.007Z\",\"workspace_id\":\"wrk_ü\",\"payload\":{}}",
            ),
        ];
        for (id, event, version, timestamp, workspace, payload, want) in cases {
            let envelope = build_envelope(id, event, version, timestamp, workspace, payload);
            assert_eq!(String::from_utf8(envelope.clone()).unwrap(), want);
            // Whatever goes in, the result is JSON that round-trips the fields.
            let value: serde_json::Value = serde_json::from_slice(&envelope).unwrap();
            assert_eq!(value["id"], id);
            assert_eq!(value["event"], event);
            assert_eq!(value["workspace_id"], workspace);
        }
    }

    #[test]
    fn capacity_is_enough_for_plain_input() {
        let envelope = build_envelope(
            "msg_01hq3k8w0y5x2v7n4m6p9r1t3s",
            "conversation.created",
            u32::MAX,
            at(2024, 1, 15, 10, 30, 0, 0),
            "wrk_01hq3k8w0y5x2v7n4m6p9r1t3s",
            r#"{"a":1}"#,
        );
        // Exactly the computed size: one allocation, no slack.
        assert_eq!(envelope.len(), envelope.capacity());
    }

    #[test]
    fn timestamps_match_chrono() {
        let leap_second = Utc.from_utc_datetime(
            &NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_milli_opt(23, 59, 59, 1_500)
                .unwrap(),
        );
        let sub_milli = Utc.timestamp_opt(1_705_314_600, 123_999_999).unwrap();
        let cases = [
            at(2024, 1, 15, 10, 30, 0, 0),
            at(1970, 1, 1, 0, 0, 0, 0),
            at(1, 2, 3, 4, 5, 6, 7),
            at(9999, 12, 31, 23, 59, 59, 999),
            at(10_000, 1, 1, 0, 0, 0, 0),
            at(-1, 1, 1, 0, 0, 0, 0),
            leap_second,
            sub_milli,
        ];
        for t in cases {
            let mut out = Vec::new();
            write_timestamp(&mut out, t).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                t.to_rfc3339_opts(SecondsFormat::Millis, true),
                "{t:?}"
            );
        }
    }

    #[test]
    fn payload_validation() {
        let cases: &[(&str, usize, Result<(), PayloadError>)] = &[
            ("{}", 2, Ok(())),
            (r#"{"a":[1,2,{"b":null}]}"#, 1024, Ok(())),
            (" \n\t{\"a\":1}\r\n ", 1024, Ok(())),
            ("{}", 1, Err(PayloadError::TooLarge { size: 2, max: 1 })),
            ("[]", 1024, Err(PayloadError::NotObject)),
            ("\"text\"", 1024, Err(PayloadError::NotObject)),
            ("42", 1024, Err(PayloadError::NotObject)),
            ("null", 1024, Err(PayloadError::NotObject)),
            (" true", 1024, Err(PayloadError::NotObject)),
        ];
        for (json, max, want) in cases {
            assert_eq!(&validate_payload(json, *max), want, "input {json:?}");
        }

        let not_json = [
            "",
            "   ",
            "{",
            "{\"a\":}",
            "{\"a\":1,}",
            "{'a':1}",
            "{}{}",
            "{} x",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":NaN}",
        ];
        for json in not_json {
            assert!(
                matches!(validate_payload(json, 1024), Err(PayloadError::NotJson(_))),
                "input {json:?}"
            );
        }
    }

    #[test]
    fn nesting_inside_strings_does_not_count() {
        let cases = [
            (r#"{"a":"[[[[{{"}"#, 1, false),
            (r#"{"a":"\"[[[["}"#, 1, false),
            // An escaped backslash just before the closing quote: the string ends there.
            (r#"{"a":"\\","b":[[1]]}"#, 2, true),
            (r#"{"a":"\\","b":[[1]]}"#, 3, false),
            (r#"{"a":"x\\\"]]","b":[{"c":"\\\\"}]}"#, 3, false),
            (r#"{"a":"x\\\"]]","b":[{"c":"\\\\"}]}"#, 2, true),
            (r#"[["\\"],[["]"]]]"#, 2, true),
            (r#"[["\\"],[["]"]]]"#, 3, false),
        ];
        for (json, max, want) in cases {
            assert!(
                serde_json::from_str::<serde_json::Value>(json).is_ok(),
                "{json}"
            );
            assert_eq!(
                nests_deeper_than(json.as_bytes(), max),
                want,
                "{json} at {max}"
            );
        }
    }

    #[test]
    fn payload_depth_limit() {
        let nested = |depth: usize| {
            format!("{}{}", "{\"a\":[".repeat(depth / 2), "]}".repeat(depth / 2))
                .replace("[]", "[\"[{\\\"\"]")
        };
        let at_limit = nested(MAX_PAYLOAD_DEPTH);
        assert_eq!(validate_payload(&at_limit, usize::MAX), Ok(()));
        // A receiver parsing the whole envelope with serde_json's defaults accepts it.
        let envelope = build_envelope("m", "a.b", 1, Utc::now(), "w", &at_limit);
        assert!(serde_json::from_slice::<serde_json::Value>(&envelope).is_ok());

        let over = nested(MAX_PAYLOAD_DEPTH + 2);
        let error = validate_payload(&over, usize::MAX).unwrap_err();
        assert_eq!(
            error.to_string(),
            "payload is not valid JSON: objects and arrays are nested more than 32 levels deep"
        );
        let very_deep = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert!(matches!(
            validate_payload(&very_deep, usize::MAX),
            Err(PayloadError::NotJson(_))
        ));
    }

    #[test]
    fn payload_error_messages() {
        assert_eq!(
            PayloadError::TooLarge { size: 10, max: 5 }.to_string(),
            "payload is 10 bytes; the limit is 5 bytes"
        );
        assert_eq!(
            PayloadError::NotObject.to_string(),
            r#"payload must be a JSON object, such as {"conversation": {"id": "cnv_1"}}"#
        );
        let error = validate_payload("{", 10).unwrap_err().to_string();
        assert!(error.starts_with("payload is not valid JSON: "), "{error}");
    }
}
