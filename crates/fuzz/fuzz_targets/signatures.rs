//! Signature headers as a receiver verifies them (`v1` HMAC and `v1a` ed25519), and the
//! secrets and keys in their text forms: never a panic, at any clock; a header the input
//! made up never verifies.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice_core::signing::{SigningSecret, verify};
use sluice_core::signing_ed25519::{AsymmetricKey, PublicKey, verify_v1a};

fn keys() -> &'static (SigningSecret, PublicKey) {
    static KEYS: OnceLock<(SigningSecret, PublicKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            SigningSecret::generate(),
            AsymmetricKey::generate().public_key(),
        )
    })
}

fuzz_target!(|input: (String, String, String, Vec<u8>, i64)| {
    let (msg_id, timestamp, header, body, now) = input;
    let (secret, public) = keys();
    assert!(verify(secret, &msg_id, &timestamp, &header, &body, now, 300).is_err());
    assert!(verify_v1a(public, &msg_id, &timestamp, &header, &body, now, 300).is_err());
    let _ = SigningSecret::parse(&header);
    let _ = AsymmetricKey::parse(&header);
    let _ = PublicKey::parse(&header);
});
