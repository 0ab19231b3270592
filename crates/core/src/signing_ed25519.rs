//! Standard Webhooks asymmetric signatures (`v1a`): ed25519 over the same
//! `{msg_id}.{timestamp}.{body}` as the symmetric `v1` scheme, so a receiver verifies with
//! the public key alone and cannot forge a signature.
//!
//! Keys are shown as the spec asks: the secret key as `whsk_` + base64 of its 32-byte seed
//! (RFC 8032's private key), the public key as `whpk_` + base64 of its 32 bytes. A `whsk_`
//! of 64 bytes (seed then public key, as some libraries write it) is accepted too when the
//! two halves agree.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use ed25519_dalek::{Signer as _, Verifier as _};
use rand::RngCore as _;
use thiserror::Error;

use crate::signing::VerifyError;

/// The prefix of a secret key's text form.
pub const SECRET_KEY_PREFIX: &str = "whsk_";
/// The prefix of a public key's text form.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";
/// The signature identifier of asymmetric signatures.
const VERSION_PREFIX: &str = "v1a,";
/// Length of `v1a,` + base64 of a 64-byte signature.
const SIGNATURE_TEXT_LEN: usize = VERSION_PREFIX.len() + 88;

/// An ed25519 signing key. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct AsymmetricKey {
    key: ed25519_dalek::SigningKey,
}

/// An ed25519 public key, as receivers hold it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
}

/// Why a string is not a usable `whsk_` or `whpk_` key.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("must start with `{0}`")]
    MissingPrefix(&'static str),
    #[error("after its prefix must be standard base64 (A-Z, a-z, 0-9, `+`, `/`)")]
    NotBase64,
    #[error(
        "decodes to {0} bytes; an ed25519 key is 32 bytes (or 64 for a secret key with its public half)"
    )]
    WrongLength(usize),
    #[error("is not a valid ed25519 key")]
    Invalid,
}

impl AsymmetricKey {
    /// A new key from 32 bytes of the OS-seeded thread RNG.
    pub fn generate() -> AsymmetricKey {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        AsymmetricKey {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// Parses `whsk_` + base64 of the 32-byte seed (or of seed and public key, 64 bytes).
    pub fn parse(text: &str) -> Result<AsymmetricKey, KeyError> {
        let bytes = decode(text, SECRET_KEY_PREFIX)?;
        match bytes.len() {
            32 => {
                let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Invalid)?;
                Ok(AsymmetricKey {
                    key: ed25519_dalek::SigningKey::from_bytes(&seed),
                })
            }
            64 => {
                let pair: [u8; 64] = bytes.try_into().map_err(|_| KeyError::Invalid)?;
                ed25519_dalek::SigningKey::from_keypair_bytes(&pair)
                    .map(|key| AsymmetricKey { key })
                    .map_err(|_| KeyError::Invalid)
            }
            other => Err(KeyError::WrongLength(other)),
        }
    }

    /// The text form: `whsk_` + standard base64 of the 32-byte seed.
    pub fn to_whsk(&self) -> String {
        encode(SECRET_KEY_PREFIX, self.key.as_bytes())
    }

    /// The public half, which receivers verify with.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }
}

impl fmt::Debug for AsymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AsymmetricKey(<redacted>)")
    }
}

impl PublicKey {
    /// Parses `whpk_` + base64 of the 32-byte public key.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let bytes = decode(text, PUBLIC_KEY_PREFIX)?;
        let bytes: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(|key| PublicKey { key })
            .map_err(|_| KeyError::Invalid)
    }

    /// The text form: `whpk_` + standard base64 of the 32 bytes.
    pub fn to_whpk(&self) -> String {
        encode(PUBLIC_KEY_PREFIX, self.key.as_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_whpk())
    }
}

/// One signature, `v1a,<base64>`, over `{msg_id}.{timestamp}.{body}`.
pub fn sign_v1a(key: &AsymmetricKey, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(SIGNATURE_TEXT_LEN);
    push_signature_v1a(&mut out, key, msg_id, timestamp, body);
    out
}

/// Appends one `v1a` signature to `out` (the sender's header builder uses it to put every
/// signature in one buffer).
pub fn push_signature_v1a(
    out: &mut String,
    key: &AsymmetricKey,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) {
    let signature = key.key.sign(&signed_content(msg_id, timestamp, body));
    out.push_str(VERSION_PREFIX);
    STANDARD.encode_string(signature.to_bytes(), out);
}

/// Verifies a webhook as a receiver holding `public_key` would: the timestamp within
/// `tolerance_secs` of `now_unix` either way, and some `v1a` entry of the header a valid
/// signature. Entries of other versions are skipped, as the spec asks.
pub fn verify_v1a(
    public_key: &PublicKey,
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::MalformedTimestamp)?;
    // Saturating: the header is the sender's text, and `-9223372036854775808` must be
    // refused as too old, not overflow (found by the property tests).
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
    let content = signed_content(msg_id, timestamp, body);
    let matched = signature_header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix(VERSION_PREFIX))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .filter_map(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
        .any(|signature| public_key.key.verify(&content, &signature).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

/// `{msg_id}.{timestamp}.{body}`, what both schemes sign.
fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let timestamp = timestamp.to_string();
    let mut content = Vec::with_capacity(msg_id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

fn decode(text: &str, prefix: &'static str) -> Result<Vec<u8>, KeyError> {
    let encoded = text
        .strip_prefix(prefix)
        .ok_or(KeyError::MissingPrefix(prefix))?;
    STANDARD_PAD_INDIFFERENT
        .decode(encoded)
        .map_err(|_| KeyError::NotBase64)
}

fn encode(prefix: &str, bytes: &[u8]) -> String {
    let mut out = String::with_capacity(prefix.len() + bytes.len().div_ceil(3) * 4);
    out.push_str(prefix);
    STANDARD.encode_string(bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    /// RFC 8032 section 7.1, test 1: the seed and the public key it gives.
    const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    /// RFC 8032 test 1 signs the empty message with this signature.
    const RFC8032_EMPTY_SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn rfc_key() -> AsymmetricKey {
        AsymmetricKey::parse(&encode(SECRET_KEY_PREFIX, &hex(RFC8032_SEED))).unwrap()
    }

    #[test]
    fn keys_follow_rfc8032_and_round_trip_through_their_text_forms() {
        let key = rfc_key();
        assert_eq!(
            key.public_key().to_whpk(),
            encode(PUBLIC_KEY_PREFIX, &hex(RFC8032_PUBLIC))
        );
        let signature = key.key.sign(b"");
        assert_eq!(signature.to_bytes().to_vec(), hex(RFC8032_EMPTY_SIGNATURE));
        let again = AsymmetricKey::parse(&key.to_whsk()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = PublicKey::parse(&key.public_key().to_whpk()).unwrap();
        assert_eq!(public, key.public_key());
        // Seed and public key together, 64 bytes.
        let pair = [hex(RFC8032_SEED), hex(RFC8032_PUBLIC)].concat();
        let from_pair = AsymmetricKey::parse(&encode(SECRET_KEY_PREFIX, &pair)).unwrap();
        assert_eq!(from_pair.public_key(), key.public_key());
        assert!(!format!("{key:?}").contains(&key.to_whsk()[5..]));
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        let wrong_pair = [hex(RFC8032_SEED), vec![7u8; 32]].concat();
        let cases = [
            ("whsec_AAAA", KeyError::MissingPrefix(SECRET_KEY_PREFIX)),
            ("whsk_***", KeyError::NotBase64),
            ("whsk_AAAA", KeyError::WrongLength(3)),
            (&*encode(SECRET_KEY_PREFIX, &wrong_pair), KeyError::Invalid),
        ];
        for (text, want) in cases {
            assert_eq!(AsymmetricKey::parse(text).unwrap_err(), want, "{text}");
        }
        assert_eq!(
            PublicKey::parse("whsk_AAAA").unwrap_err(),
            KeyError::MissingPrefix(PUBLIC_KEY_PREFIX)
        );
        assert_eq!(
            PublicKey::parse(&encode(PUBLIC_KEY_PREFIX, &[1u8; 31])).unwrap_err(),
            KeyError::WrongLength(31)
        );
    }

    #[test]
    fn signatures_verify_with_the_public_key_only() {
        let key = AsymmetricKey::generate();
        let public = key.public_key();
        let signature = sign_v1a(&key, MSG_ID, TIMESTAMP, BODY);
        assert!(signature.starts_with("v1a,"));
        assert_eq!(signature.len(), SIGNATURE_TEXT_LEN);
        let ts = TIMESTAMP.to_string();
        let ok = |header: &str, body: &[u8], now: i64| {
            verify_v1a(&public, MSG_ID, &ts, header, body, now, 300)
        };
        assert_eq!(ok(&signature, BODY, TIMESTAMP), Ok(()));
        // Among other entries, v1 ones included.
        let mixed = format!("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= {signature}");
        assert_eq!(ok(&mixed, BODY, TIMESTAMP + 300), Ok(()));
        assert_eq!(
            ok(&signature, b"{\"test\": 1}", TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
        assert!(matches!(
            ok(&signature, BODY, TIMESTAMP + 301),
            Err(VerifyError::TimestampTooOld { .. })
        ));
        // Another key's signature, and a v1 entry carrying this signature, do not verify.
        let other = sign_v1a(&AsymmetricKey::generate(), MSG_ID, TIMESTAMP, BODY);
        assert_eq!(
            ok(&other, BODY, TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
        let relabelled = signature.replacen("v1a,", "v1,", 1);
        assert_eq!(
            ok(&relabelled, BODY, TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify_v1a(&public, MSG_ID, "soon", &signature, BODY, TIMESTAMP, 300),
            Err(VerifyError::MalformedTimestamp)
        );
    }

    /// Found by the property tests: a timestamp header at either end of i64 overflowed the
    /// age arithmetic (a panic in debug builds) instead of being refused.
    #[test]
    fn extreme_timestamps_are_refused_not_overflowed() {
        let key = rfc_key();
        let public = key.public_key();
        let signature = sign_v1a(&key, MSG_ID, TIMESTAMP, BODY);
        let verify = |timestamp: &str, now: i64| {
            verify_v1a(&public, MSG_ID, timestamp, &signature, BODY, now, 300)
        };
        assert!(matches!(
            verify(&i64::MIN.to_string(), TIMESTAMP),
            Err(VerifyError::TimestampTooOld { .. })
        ));
        assert!(matches!(
            verify(&i64::MAX.to_string(), -TIMESTAMP),
            Err(VerifyError::TimestampTooNew { .. })
        ));
        assert!(matches!(
            verify("0", i64::MIN),
            Err(VerifyError::TimestampTooNew { .. })
        ));
    }
}
