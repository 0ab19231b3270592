//! Sealed values as the databases hold them (`sealed:v1:<key id>:...`) and master keys as
//! the operator gives them: any text is opened, resealed or refused, never a panic, and
//! never opens to a plaintext unless `seal` made it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice_core::sealing::{Keyring, Reseal};

fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| Keyring::from_keys(&[[5; 32], [6; 32]]).expect("two keys"))
}

fuzz_target!(|input: (String, String)| {
    let (stored, plaintext) = input;
    let keyring = keyring();
    assert!(keyring.open(&stored).is_err());
    let _ = keyring.reseal(&stored, Reseal::NotCurrentKey);
    let _ = Keyring::parse(&stored);
    let sealed = keyring.seal(&plaintext);
    assert_eq!(keyring.open(&sealed).as_deref(), Ok(plaintext.as_str()));
});
