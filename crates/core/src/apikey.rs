//! API keys: how they are made, hashed for storage, and shown without revealing them.
//!
//! A key is shown to its owner once; the database keeps only its SHA-256, so a leaked
//! database does not leak working keys. The key has 256 random bits, so a fast unsalted hash
//! is enough: there is nothing to brute-force the way there is with a password.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

/// The prefix of every API key, so secret scanners and people can recognise one.
pub const API_KEY_PREFIX: &str = "sk_";
/// How many characters of a key are kept and shown to identify it (`sk_AbCdEfG`).
pub const DISPLAY_PREFIX_CHARS: usize = 10;
/// Random bytes in a key.
const KEY_RANDOM_BYTES: usize = 32;

/// A new API key: `sk_` + unpadded base64url of 32 random bytes (46 characters in all).
pub fn generate_api_key() -> String {
    let mut random = [0u8; KEY_RANDOM_BYTES];
    rand::rng().fill_bytes(&mut random);
    let mut key = String::with_capacity(API_KEY_PREFIX.len() + 43);
    key.push_str(API_KEY_PREFIX);
    URL_SAFE_NO_PAD.encode_string(random, &mut key);
    key
}

/// The stored form of a key: lowercase hex SHA-256 of its text.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The first 10 characters of a key, stored in the clear so a person can tell keys apart in
/// a listing. With `sk_` that leaves 7 random characters (42 bits), too few to help guess the
/// rest.
pub fn key_display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_PREFIX_CHARS).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let key = generate_api_key();
            assert_eq!(key.len(), 46, "{key}");
            let body = key.strip_prefix("sk_").unwrap();
            assert!(
                body.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{key}"
            );
            assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
            assert!(seen.insert(key));
        }
    }

    #[test]
    fn hashes() {
        let cases = [
            (
                "",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                "abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                "sk_test",
                // Independently computed: printf %s sk_test | sha256sum
                "12b2820cf1639904311da5771de1e5bb65c77073fdc7c555df395942df42896b",
            ),
        ];
        for (key, want) in cases {
            assert_eq!(hash_api_key(key), want, "key {key:?}");
        }
        let key = generate_api_key();
        assert_eq!(hash_api_key(&key), hash_api_key(&key));
        assert_ne!(hash_api_key(&key), hash_api_key(&generate_api_key()));
    }

    #[test]
    fn display_prefixes() {
        let cases = [
            ("sk_AbCdEfGhIjKlMn", "sk_AbCdEfG"),
            ("sk_AbCdEfG", "sk_AbCdEfG"),
            ("sk_", "sk_"),
            ("", ""),
            // Counted in characters, so a non-ASCII input cannot split a character.
            ("ééééééééééééé", "éééééééééé"),
        ];
        for (key, want) in cases {
            assert_eq!(key_display_prefix(key), want, "key {key:?}");
        }
    }
}
