//! Standard Webhooks signing and verification (<https://www.standardwebhooks.com/>, the scheme
//! svix uses), so any receiver's existing `standardwebhooks` or `svix` library accepts what
//! Sluice sends.
//!
//! A signature is `v1,` + base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")), keyed by the
//! bytes that the `whsec_...` secret's base64 decodes to. During a secret rotation the
//! `webhook-signature` header carries one signature per secret, separated by spaces.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore as _;
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// The fewest key bytes a secret may hold; svix's own secrets are 24 bytes.
pub const MIN_SECRET_BYTES: usize = 24;
/// The most key bytes a secret may hold: SHA-256's block size, beyond which HMAC would hash
/// the key first, which no Standard Webhooks secret needs.
pub const MAX_SECRET_BYTES: usize = 64;
/// How many key bytes [`SigningSecret::generate`] makes.
pub const GENERATED_SECRET_BYTES: usize = 32;
/// The signature version this module makes and checks.
const VERSION_PREFIX: &str = "v1,";

/// An HMAC key for signing webhooks. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    /// The decoded key bytes, always `MIN_SECRET_BYTES..=MAX_SECRET_BYTES` long.
    key: Vec<u8>,
}

/// Why a string is not a usable signing secret.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SecretError {
    #[error("signing secret must start with `whsec_`")]
    MissingPrefix,
    #[error("signing secret after `whsec_` must be standard base64 (A-Z, a-z, 0-9, `+`, `/`)")]
    NotBase64,
    #[error(
        "signing secret decodes to {len} bytes; it must decode to between {min} and {max} bytes"
    )]
    WrongLength { len: usize, min: usize, max: usize },
}

impl SigningSecret {
    /// A new random secret of [`GENERATED_SECRET_BYTES`] bytes from the OS-seeded thread RNG.
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_SECRET_BYTES];
        rand::rng().fill_bytes(&mut key);
        SigningSecret { key }
    }

    /// Parses `whsec_` + standard base64 (padded or not) of 24 to 64 bytes.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let encoded = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD_PAD_INDIFFERENT
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        SigningSecret::from_bytes(key)
    }

    /// A secret from raw key bytes, which must be 24 to 64 bytes long.
    pub fn from_bytes(key: impl Into<Vec<u8>>) -> Result<Self, SecretError> {
        let key = key.into();
        if (MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            Ok(SigningSecret { key })
        } else {
            Err(SecretError::WrongLength {
                len: key.len(),
                min: MIN_SECRET_BYTES,
                max: MAX_SECRET_BYTES,
            })
        }
    }

    /// The text form: `whsec_` + standard base64 with padding.
    pub fn to_whsec(&self) -> String {
        let mut out = String::with_capacity(SECRET_PREFIX.len() + self.key.len().div_ceil(3) * 4);
        out.push_str(SECRET_PREFIX);
        STANDARD.encode_string(&self.key, &mut out);
        out
    }

    /// An HMAC keyed by this secret.
    fn mac(&self) -> HmacSha256 {
        // HMAC zero-pads a key shorter than the hash's block size (RFC 2104, section 2), so
        // padding our at-most-64-byte key to the 64-byte block gives the same MAC while using
        // the fixed-size constructor, which cannot fail.
        let mut block = [0u8; MAX_SECRET_BYTES];
        let len = self.key.len().min(MAX_SECRET_BYTES);
        block[..len].copy_from_slice(&self.key[..len]);
        HmacSha256::new(&block.into())
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// Why a webhook failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a whole number of unix seconds")]
    MalformedTimestamp,
    #[error(
        "webhook-timestamp is {age_secs} seconds in the past, beyond the {tolerance_secs} second tolerance"
    )]
    TimestampTooOld { age_secs: i64, tolerance_secs: i64 },
    #[error(
        "webhook-timestamp is {ahead_secs} seconds in the future, beyond the {tolerance_secs} second tolerance"
    )]
    TimestampTooNew {
        ahead_secs: i64,
        tolerance_secs: i64,
    },
    #[error("no v1 signature in webhook-signature matches this secret and body")]
    NoMatchingSignature,
}

/// One signature, `v1,<base64>`, over `{msg_id}.{timestamp}.{body}`.
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(VERSION_PREFIX.len() + 44);
    push_signature(&mut out, secret, msg_id, timestamp, body);
    out
}

/// Appends one signature to `out`.
fn push_signature(
    out: &mut String,
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) {
    let tag = tag(secret, msg_id, timestamp, body).finalize().into_bytes();
    out.push_str(VERSION_PREFIX);
    STANDARD.encode_string(tag, out);
}

/// The `webhook-signature` header value: one signature per secret, separated by spaces, so
/// a receiver holding either the old or the new secret verifies during a rotation.
pub fn signature_header(
    secrets: &[&SigningSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut out = String::with_capacity(secrets.len() * (VERSION_PREFIX.len() + 45));
    for (i, secret) in secrets.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        push_signature(&mut out, secret, msg_id, timestamp, body);
    }
    out
}

/// Verifies a webhook as a receiver would: the timestamp must be within `tolerance_secs` of
/// `now_unix` either way, and some `v1` signature in the header must match exactly.
///
/// Signatures of other versions are skipped, as the spec asks. Comparison is constant-time.
pub fn verify(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let timestamp = parse_timestamp(timestamp_header)?;
    let age = now_unix.saturating_sub(timestamp);
    if age > tolerance_secs {
        return Err(VerifyError::TimestampTooOld {
            age_secs: age,
            tolerance_secs,
        });
    }
    let ahead = timestamp.saturating_sub(now_unix);
    if ahead > tolerance_secs {
        return Err(VerifyError::TimestampTooNew {
            ahead_secs: ahead,
            tolerance_secs,
        });
    }
    let expected = tag(secret, msg_id, timestamp, body);
    let mut decoded = Vec::with_capacity(32);
    for candidate in signature_header.split(' ') {
        let Some(encoded) = candidate.strip_prefix(VERSION_PREFIX) else {
            continue;
        };
        decoded.clear();
        if STANDARD_PAD_INDIFFERENT
            .decode_vec(encoded, &mut decoded)
            .is_err()
        {
            continue;
        }
        // `verify_slice` insists on the full 32-byte length, so a truncated signature fails
        // instead of being checked as a prefix.
        if expected.clone().verify_slice(&decoded).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatchingSignature)
}

/// Unix seconds as the spec writes them: ASCII digits, optionally a leading `-`, nothing else.
fn parse_timestamp(header: &str) -> Result<i64, VerifyError> {
    let digits = header.strip_prefix('-').unwrap_or(header);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::MalformedTimestamp);
    }
    header
        .parse::<i64>()
        .map_err(|_| VerifyError::MalformedTimestamp)
}

/// The HMAC over `{msg_id}.{timestamp}.{body}`, fed in pieces to avoid copying the body.
fn tag(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = secret.mac();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    // Formatted on the stack: this runs for every attempt.
    let mut digits = [0u8; 20];
    mac.update(decimal(timestamp, &mut digits));
    mac.update(b".");
    mac.update(body);
    mac
}

/// `n` in decimal, written into `buf` (20 bytes hold any i64).
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let negative = n < 0;
    let mut rest = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if negative {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    // The test vector published with the Standard Webhooks reference libraries (and svix's).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    // A well-formed signature from the reference libraries' tests that matches nothing.
    const UNRELATED_SIGNATURE: &str = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
    const TOLERANCE: i64 = 5 * 60;

    fn spec_secret() -> SigningSecret {
        SigningSecret::parse(SPEC_SECRET).unwrap()
    }

    #[test]
    fn timestamps_are_written_in_decimal() {
        for n in [0, 7, 10, 1_705_314_600, -1, -45, i64::MAX, i64::MIN] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes(), "{n}");
        }
    }

    #[test]
    fn reproduces_the_specification_vector() {
        let secret = spec_secret();
        assert_eq!(secret.key.len(), 24);
        assert_eq!(
            sign(&secret, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        assert_eq!(
            verify(
                &secret,
                SPEC_MSG_ID,
                "1614265330",
                SPEC_SIGNATURE,
                SPEC_BODY,
                SPEC_TIMESTAMP,
                TOLERANCE,
            ),
            Ok(())
        );
    }

    #[test]
    fn padded_key_matches_plain_hmac() {
        // The fixed-block constructor must agree with HMAC over the unpadded key for every
        // allowed key length, including the 64-byte maximum.
        for len in [24, 32, 33, 63, 64] {
            let key: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let secret = SigningSecret::from_bytes(key.clone()).unwrap();
            let mut plain = HmacSha256::new_from_slice(&key).unwrap();
            plain.update(b"id.5.body");
            let want = STANDARD.encode(plain.finalize().into_bytes());
            assert_eq!(
                sign(&secret, "id", 5, b"body"),
                format!("v1,{want}"),
                "key length {len}"
            );
        }
    }

    #[test]
    fn verify_cases() {
        let secret = spec_secret();
        let wrong_secret = SigningSecret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let unpadded = SPEC_SIGNATURE.trim_end_matches('=');
        let raw = STANDARD
            .decode(SPEC_SIGNATURE.strip_prefix("v1,").unwrap())
            .unwrap();
        let truncated16 = format!("v1,{}", STANDARD.encode(&raw[..16]));
        let truncated31 = format!("v1,{}", STANDARD.encode(&raw[..31]));
        let extended = format!("v1,{}", STANDARD.encode([&raw[..], &[0u8]].concat()));
        let multi = format!("{UNRELATED_SIGNATURE} v2,abc {SPEC_SIGNATURE} {UNRELATED_SIGNATURE}");
        let v2_only = SPEC_SIGNATURE.replacen("v1,", "v2,", 1);
        let now = SPEC_TIMESTAMP;

        #[derive(Clone, Copy)]
        struct Case<'a> {
            name: &'a str,
            secret: &'a SigningSecret,
            msg_id: &'a str,
            timestamp: &'a str,
            signatures: &'a str,
            body: &'a [u8],
            now: i64,
            want: Result<(), VerifyError>,
        }
        let base = Case {
            name: "valid",
            secret: &secret,
            msg_id: SPEC_MSG_ID,
            timestamp: "1614265330",
            signatures: SPEC_SIGNATURE,
            body: SPEC_BODY,
            now,
            want: Ok(()),
        };
        let no_match = Err(VerifyError::NoMatchingSignature);
        let cases = vec![
            Case { ..base },
            Case {
                name: "unpadded signature",
                signatures: unpadded,
                ..base
            },
            Case {
                name: "several signatures, one valid",
                signatures: &multi,
                ..base
            },
            Case {
                name: "at the edge of the tolerance, old",
                now: now + TOLERANCE,
                ..base
            },
            Case {
                name: "at the edge of the tolerance, new",
                now: now - TOLERANCE,
                ..base
            },
            Case {
                name: "stale timestamp",
                now: now + TOLERANCE + 1,
                want: Err(VerifyError::TimestampTooOld {
                    age_secs: TOLERANCE + 1,
                    tolerance_secs: TOLERANCE,
                }),
                ..base
            },
            Case {
                name: "timestamp from the future",
                now: now - TOLERANCE - 1,
                want: Err(VerifyError::TimestampTooNew {
                    ahead_secs: TOLERANCE + 1,
                    tolerance_secs: TOLERANCE,
                }),
                ..base
            },
            Case {
                name: "wrong secret",
                secret: &wrong_secret,
                want: no_match,
                ..base
            },
            Case {
                name: "other message id",
                msg_id: "msg_other",
                want: no_match,
                ..base
            },
            Case {
                name: "other body",
                body: br#"{"test": 2432232315}"#,
                want: no_match,
                ..base
            },
            Case {
                name: "unrelated signature",
                signatures: UNRELATED_SIGNATURE,
                want: no_match,
                ..base
            },
            Case {
                name: "partial header, as the reference tests cut it",
                signatures: &SPEC_SIGNATURE[..8],
                want: no_match,
                ..base
            },
            Case {
                name: "empty v1",
                signatures: "v1,",
                want: no_match,
                ..base
            },
            Case {
                name: "truncated to 16 bytes",
                signatures: &truncated16,
                want: no_match,
                ..base
            },
            Case {
                name: "truncated to 31 bytes",
                signatures: &truncated31,
                want: no_match,
                ..base
            },
            Case {
                name: "one extra byte",
                signatures: &extended,
                want: no_match,
                ..base
            },
            Case {
                name: "not base64",
                signatures: "v1,dawfeoifkpqwoekfpqoekf",
                want: no_match,
                ..base
            },
            Case {
                name: "right bytes, other version",
                signatures: &v2_only,
                want: no_match,
                ..base
            },
            Case {
                name: "empty header",
                signatures: "",
                want: no_match,
                ..base
            },
            Case {
                name: "timestamp not a number",
                timestamp: "hello",
                want: Err(VerifyError::MalformedTimestamp),
                ..base
            },
            Case {
                name: "timestamp with a plus sign",
                timestamp: "+1614265330",
                want: Err(VerifyError::MalformedTimestamp),
                ..base
            },
            Case {
                name: "timestamp with a space",
                timestamp: " 1614265330",
                want: Err(VerifyError::MalformedTimestamp),
                ..base
            },
            Case {
                name: "timestamp in milliseconds",
                timestamp: "1614265330000",
                want: Err(VerifyError::TimestampTooNew {
                    ahead_secs: 1_614_265_330_000 - SPEC_TIMESTAMP,
                    tolerance_secs: TOLERANCE,
                }),
                ..base
            },
            Case {
                name: "empty timestamp",
                timestamp: "",
                want: Err(VerifyError::MalformedTimestamp),
                ..base
            },
            Case {
                name: "timestamp overflows",
                timestamp: "99999999999999999999999",
                want: Err(VerifyError::MalformedTimestamp),
                ..base
            },
            Case {
                name: "extreme timestamp does not overflow the age",
                timestamp: "-9223372036854775808",
                now: i64::MAX,
                want: Err(VerifyError::TimestampTooOld {
                    age_secs: i64::MAX,
                    tolerance_secs: TOLERANCE,
                }),
                ..base
            },
        ];
        for case in cases {
            assert_eq!(
                verify(
                    case.secret,
                    case.msg_id,
                    case.timestamp,
                    case.signatures,
                    case.body,
                    case.now,
                    TOLERANCE,
                ),
                case.want,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn rotation_header_carries_one_signature_per_secret() {
        let old = spec_secret();
        let new = SigningSecret::generate();
        let header = signature_header(&[&old, &new], SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], SPEC_SIGNATURE);
        for secret in [&old, &new] {
            let result = verify(
                secret,
                SPEC_MSG_ID,
                "1614265330",
                &header,
                SPEC_BODY,
                SPEC_TIMESTAMP,
                TOLERANCE,
            );
            assert_eq!(result, Ok(()));
        }
        assert_eq!(signature_header(&[], SPEC_MSG_ID, 1, b""), "");
    }

    #[test]
    fn parse_secrets() {
        let b64 = |n: usize| STANDARD.encode(vec![7u8; n]);
        let cases: Vec<(String, Result<usize, SecretError>)> = vec![
            (SPEC_SECRET.into(), Ok(24)),
            (format!("whsec_{}", b64(32)), Ok(32)),
            // 32 bytes encode with one `=`; without it the secret is still accepted.
            (format!("whsec_{}", b64(32).trim_end_matches('=')), Ok(32)),
            (format!("whsec_{}", b64(64)), Ok(64)),
            (format!("whsec_{}", b64(23)), Err(wrong_length(23))),
            (format!("whsec_{}", b64(65)), Err(wrong_length(65))),
            ("whsec_".into(), Err(wrong_length(0))),
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                Err(SecretError::MissingPrefix),
            ),
            (
                "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                Err(SecretError::MissingPrefix),
            ),
            ("".into(), Err(SecretError::MissingPrefix)),
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa-_".into(),
                Err(SecretError::NotBase64),
            ),
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw ".into(),
                Err(SecretError::NotBase64),
            ),
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS".into(),
                Err(SecretError::NotBase64),
            ),
        ];
        for (input, want) in cases {
            let got = SigningSecret::parse(&input).map(|s| s.key.len());
            assert_eq!(got, want, "input {input:?}");
        }
    }

    fn wrong_length(len: usize) -> SecretError {
        SecretError::WrongLength {
            len,
            min: MIN_SECRET_BYTES,
            max: MAX_SECRET_BYTES,
        }
    }

    #[test]
    fn text_form_round_trips() {
        assert_eq!(spec_secret().to_whsec(), SPEC_SECRET);
        for _ in 0..20 {
            let secret = SigningSecret::generate();
            assert_eq!(secret.key.len(), GENERATED_SECRET_BYTES);
            let text = secret.to_whsec();
            assert!(text.starts_with("whsec_"));
            assert_eq!(SigningSecret::parse(&text).unwrap(), secret);
        }
        assert_ne!(SigningSecret::generate(), SigningSecret::generate());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let secret = spec_secret();
        assert_eq!(format!("{secret:?}"), "SigningSecret(<redacted>)");
        assert_eq!(format!("{secret:#?}"), "SigningSecret(<redacted>)");
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            SecretError::MissingPrefix.to_string(),
            "signing secret must start with `whsec_`"
        );
        assert_eq!(
            wrong_length(10).to_string(),
            "signing secret decodes to 10 bytes; it must decode to between 24 and 64 bytes"
        );
        assert_eq!(
            VerifyError::NoMatchingSignature.to_string(),
            "no v1 signature in webhook-signature matches this secret and body"
        );
    }
}
