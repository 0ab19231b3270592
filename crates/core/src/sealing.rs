//! Secrets at rest: every secret Sluice stores (signing secrets now, any credential a later
//! feature keeps) is sealed with AES-256-GCM under a master key the operator holds, so a
//! copied database file, dump or backup reveals none of them.
//!
//! A [`Keyring`] holds one or more 32-byte master keys; the first is the current one, which
//! seals, and the others only open what they sealed before, so a new key can be put first
//! and `sluice keys rotate` re-seals the rest under it ([`Reseal::NotCurrentKey`]). A sealed
//! value is self-describing text, `sealed:v1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>`,
//! so it fits the text columns that held the clear secret, and says which key opens it. The
//! key id is the first 4 bytes of the key's SHA-256 in hex (`sha256sum` of the raw key
//! shows it too): derived, so nobody types or mistypes it, and it reveals nothing usable of
//! a 256-bit key. The header is the ciphertext's associated data, so the key id or version
//! cannot be altered without the value failing to open. Nonces are 96 random bits per seal.
//!
//! The crate does no I/O: where keys come from (an environment variable, a file) is the
//! binary's business, and which rows hold sealed values is each plane's. Why here: both
//! planes and the binary need the same format, and it is pure logic to test with tables.

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// What every sealed value starts with: the format's name and version.
pub const SEALED_PREFIX: &str = "sealed:v1:";
/// The bytes of a master key (AES-256).
pub const MASTER_KEY_BYTES: usize = 32;
/// The hex characters of a key id.
const KEY_ID_CHARS: usize = 8;
/// The bytes of a nonce (GCM's standard 96 bits).
const NONCE_BYTES: usize = 12;
/// The bytes of GCM's authentication tag.
const TAG_BYTES: usize = 16;

/// The master keys a process holds: the current one seals, every one opens. Cheap to clone.
/// Its `Debug` shows the key ids only.
#[derive(Clone)]
pub struct Keyring {
    /// Never empty; the first is the current key.
    keys: Arc<[MasterKey]>,
}

struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

/// Why text is not a usable set of master keys. Never quotes a key.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("no master key given")]
    Empty,
    #[error("master key {position} is not standard base64")]
    NotBase64 { position: usize },
    #[error(
        "master key {position} decodes to {len} bytes; a master key is {MASTER_KEY_BYTES} random bytes in base64 (`sluice keys generate` makes one)"
    )]
    WrongLength { position: usize, len: usize },
    #[error("master key {position} is given twice (key id {id})")]
    Duplicate { position: usize, id: String },
}

/// Why a stored value does not open. Never quotes the value.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum OpenError {
    #[error("the stored value is not sealed")]
    NotSealed,
    #[error("the stored value is not a well-formed sealed value")]
    Malformed,
    #[error("key id {id} is not among the configured keys ({configured})")]
    UnknownKey { id: String, configured: String },
    #[error(
        "the value sealed under key id {id} does not open: it was altered, or sealed with another key"
    )]
    Refused { id: String },
}

/// Which stored values [`Keyring::reseal`] rewrites. Both open every sealed value they
/// meet, so a pass over the stored values also proves the keyring opens them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reseal {
    /// Only clear text (left by a version that stored secrets in clear): each plane's pass
    /// at start.
    ClearText,
    /// Clear text and values sealed under any key but the current one: `sluice keys rotate`.
    NotCurrentKey,
}

/// What a pass of [`Keyring::reseal`] over stored rows did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Rows whose secrets were read and opened.
    pub checked: u64,
    /// Rows rewritten.
    pub resealed: u64,
}

/// Whether `text` is a sealed value (of any version this module knows).
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED_PREFIX)
}

/// The id of a master key: the first 4 bytes of its SHA-256, in lowercase hex.
pub fn key_id(key: &[u8; MASTER_KEY_BYTES]) -> String {
    hex::encode(&Sha256::digest(key)[..KEY_ID_CHARS / 2])
}

/// A new random master key in the text form [`Keyring::parse`] reads.
pub fn generate_master_key() -> String {
    let mut key = [0u8; MASTER_KEY_BYTES];
    rand::rng().fill_bytes(&mut key);
    STANDARD.encode(key)
}

impl Keyring {
    /// Master keys as the operator gives them: standard base64 of 32 bytes each, separated
    /// by commas, the current key first. Surrounding whitespace (a file's newline) is
    /// ignored.
    pub fn parse(text: &str) -> Result<Keyring, KeyError> {
        if text.trim().is_empty() {
            return Err(KeyError::Empty);
        }
        let mut keys = Vec::new();
        for (index, part) in text.split(',').map(str::trim).enumerate() {
            let position = index + 1;
            let bytes = STANDARD
                .decode(part)
                .map_err(|_| KeyError::NotBase64 { position })?;
            let key: [u8; MASTER_KEY_BYTES] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyError::WrongLength {
                        position,
                        len: bytes.len(),
                    })?;
            keys.push(key);
        }
        Keyring::from_keys(&keys)
    }

    /// Master keys as bytes, the current key first.
    pub fn from_keys(keys: &[[u8; MASTER_KEY_BYTES]]) -> Result<Keyring, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut ring: Vec<MasterKey> = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            let id = key_id(key);
            if ring.iter().any(|k| k.id == id) {
                return Err(KeyError::Duplicate {
                    position: index + 1,
                    id,
                });
            }
            ring.push(MasterKey {
                id,
                cipher: Aes256Gcm::new(key.into()),
            });
        }
        Ok(Keyring { keys: ring.into() })
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// The ids of every key, the current one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// `plaintext` sealed under the current key, with a fresh random nonce.
    pub fn seal(&self, plaintext: &str) -> String {
        let key = &self.keys[0];
        let header = header(&key.id);
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: header.as_bytes(),
        };
        // Encryption fails only past GCM's length limit (64 GiB), far beyond any secret.
        let ciphertext = key
            .cipher
            .encrypt(&Nonce::from(nonce), payload)
            .unwrap_or_default();
        let mut body = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&ciphertext);
        let mut out = header;
        STANDARD.encode_string(&body, &mut out);
        out
    }

    /// The plaintext of a sealed value, opened with the key its id names.
    pub fn open(&self, sealed: &str) -> Result<String, OpenError> {
        self.open_with_id(sealed).map(|(_, plaintext)| plaintext)
    }

    /// A stored value as it should now be stored: `Some(new text)` when `scope` says to
    /// rewrite it (clear text is sealed; with [`Reseal::NotCurrentKey`], a value sealed under
    /// an older key is sealed again under the current one), `None` when it stays. Every
    /// sealed value is opened, so one that no configured key opens is an error either way.
    pub fn reseal(&self, stored: &str, scope: Reseal) -> Result<Option<String>, OpenError> {
        if !is_sealed(stored) {
            return Ok(Some(self.seal(stored)));
        }
        let (id, plaintext) = self.open_with_id(stored)?;
        if scope == Reseal::NotCurrentKey && id != self.current_id() {
            Ok(Some(self.seal(&plaintext)))
        } else {
            Ok(None)
        }
    }

    fn open_with_id<'a>(&self, sealed: &'a str) -> Result<(&'a str, String), OpenError> {
        let rest = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(OpenError::NotSealed)?;
        let (id, encoded) = rest.split_once(':').ok_or(OpenError::Malformed)?;
        if id.len() != KEY_ID_CHARS {
            return Err(OpenError::Malformed);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| OpenError::UnknownKey {
                id: id.to_owned(),
                configured: self.ids().join(", "),
            })?;
        let body = STANDARD.decode(encoded).map_err(|_| OpenError::Malformed)?;
        if body.len() < NONCE_BYTES + TAG_BYTES {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| OpenError::Malformed)?;
        let header = &sealed[..SEALED_PREFIX.len() + KEY_ID_CHARS + 1];
        let refused = || OpenError::Refused { id: id.to_owned() };
        let plaintext = key
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: header.as_bytes(),
                },
            )
            .map_err(|_| refused())?;
        // Authenticated, so it is what `seal` was given: always UTF-8.
        let plaintext = String::from_utf8(plaintext).map_err(|_| refused())?;
        Ok((id, plaintext))
    }
}

/// `sealed:v1:<key id>:`, the associated data of the value that follows it.
fn header(id: &str) -> String {
    format!("{SEALED_PREFIX}{id}:")
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current_id())
            .field("ids", &self.ids())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn ring(keys: &[[u8; 32]]) -> Keyring {
        Keyring::from_keys(keys).unwrap()
    }

    #[test]
    fn key_ids_are_stable_and_derived_from_the_key() {
        // Fixed values: a changed derivation would orphan every stored secret.
        assert_eq!(key_id(&A), "72cd6e84");
        assert_eq!(key_id(&B), "75877bb4");
        assert_eq!(ring(&[A, B]).ids(), ["72cd6e84", "75877bb4"]);
        assert_eq!(ring(&[B, A]).current_id(), "75877bb4");
    }

    #[test]
    fn sealed_values_round_trip_and_never_repeat() {
        let keys = ring(&[A]);
        for plaintext in [SECRET, "", "ü and spaces", &"x".repeat(1000)] {
            let sealed = keys.seal(plaintext);
            assert!(sealed.starts_with("sealed:v1:72cd6e84:"), "{sealed}");
            assert!(!sealed.contains(plaintext) || plaintext.is_empty());
            assert_eq!(keys.open(&sealed).unwrap(), plaintext);
            assert_ne!(keys.seal(plaintext), sealed, "a fresh nonce every time");
        }
    }

    #[test]
    fn only_a_configured_key_opens() {
        let sealed = ring(&[A]).seal(SECRET);
        // An older key after the current one still opens what it sealed.
        assert_eq!(ring(&[B, A]).open(&sealed).unwrap(), SECRET);
        assert_eq!(
            ring(&[B]).open(&sealed),
            Err(OpenError::UnknownKey {
                id: "72cd6e84".into(),
                configured: "75877bb4".into()
            })
        );
        assert_eq!(
            ring(&[B]).open(&sealed).unwrap_err().to_string(),
            "key id 72cd6e84 is not among the configured keys (75877bb4)"
        );
    }

    #[test]
    fn altered_values_are_refused() {
        let keys = ring(&[A]);
        let sealed = keys.seal(SECRET);
        let body_at = SEALED_PREFIX.len() + KEY_ID_CHARS + 1;
        let mut body = STANDARD.decode(&sealed[body_at..]).unwrap();
        let refused = Err(OpenError::Refused {
            id: "72cd6e84".into(),
        });
        // Flip one bit anywhere: nonce, ciphertext or tag.
        for index in [0, NONCE_BYTES, body.len() - 1] {
            body[index] ^= 1;
            let altered = format!("{}{}", &sealed[..body_at], STANDARD.encode(&body));
            assert_eq!(keys.open(&altered), refused, "bit flipped at {index}");
            body[index] ^= 1;
        }
        // The header is bound too: a value moved under another key's id does not open.
        let keys_ab = ring(&[A, B]);
        let moved = sealed.replace("72cd6e84", "75877bb4");
        assert_eq!(
            keys_ab.open(&moved),
            Err(OpenError::Refused {
                id: "75877bb4".into()
            })
        );
        let cases: [(&str, OpenError); 5] = [
            (SECRET, OpenError::NotSealed),
            ("sealed:v1:72cd6e84", OpenError::Malformed),
            ("sealed:v1:72cd:AAAA", OpenError::Malformed),
            ("sealed:v1:72cd6e84:not base64!", OpenError::Malformed),
            ("sealed:v1:72cd6e84:AAAA", OpenError::Malformed),
        ];
        for (text, want) in cases {
            assert_eq!(keys.open(text), Err(want), "{text}");
        }
    }

    #[test]
    fn reseal_rewrites_what_its_scope_names() {
        let old = ring(&[A]);
        let new = ring(&[B, A]);
        let under_old = old.seal(SECRET);
        let under_new = new.seal(SECRET);
        // (stored, scope, rewritten?)
        let cases = [
            (SECRET, Reseal::ClearText, true),
            (SECRET, Reseal::NotCurrentKey, true),
            (&under_old, Reseal::ClearText, false),
            (&under_old, Reseal::NotCurrentKey, true),
            (&under_new, Reseal::ClearText, false),
            (&under_new, Reseal::NotCurrentKey, false),
        ];
        for (stored, scope, rewritten) in cases {
            let result = new.reseal(stored, scope).unwrap();
            assert_eq!(result.is_some(), rewritten, "{scope:?} of {stored}");
            if let Some(text) = result {
                assert!(text.starts_with("sealed:v1:75877bb4:"), "{text}");
                assert_eq!(new.open(&text).unwrap(), SECRET);
            }
        }
        // A value no configured key opens is an error, whatever the scope.
        assert!(ring(&[B]).reseal(&under_old, Reseal::ClearText).is_err());
    }

    #[test]
    fn keys_parse_from_their_text_form() {
        let a = STANDARD.encode(A);
        let b = STANDARD.encode(B);
        let parsed = Keyring::parse(&format!(" {b} , {a}\n")).unwrap();
        assert_eq!(parsed.ids(), ["75877bb4", "72cd6e84"]);
        assert_eq!(
            Keyring::parse(&generate_master_key()).unwrap().ids().len(),
            1
        );
        let cases: [(String, KeyError); 6] = [
            (String::new(), KeyError::Empty),
            (" \n".into(), KeyError::Empty),
            (
                format!("{a},"),
                KeyError::WrongLength {
                    position: 2,
                    len: 0,
                },
            ),
            (
                format!("{a},not base64"),
                KeyError::NotBase64 { position: 2 },
            ),
            (
                STANDARD.encode([0u8; 16]),
                KeyError::WrongLength {
                    position: 1,
                    len: 16,
                },
            ),
            (
                format!("{a},{b},{a}"),
                KeyError::Duplicate {
                    position: 3,
                    id: "72cd6e84".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Keyring::parse(&text).err(), Some(want), "{text:?}");
        }
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let shown = format!("{:?}", ring(&[A, B]));
        assert_eq!(
            shown,
            r#"Keyring { current: "72cd6e84", ids: ["72cd6e84", "75877bb4"] }"#
        );
    }
}
