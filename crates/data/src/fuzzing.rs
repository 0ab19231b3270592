//! Entry points for `cargo fuzz` (`crates/fuzz`, docs/fuzzing.md): what the data plane reads
//! from the control plane's watch stream and back from its own database, on any bytes.
//! Compiled only with the `fuzzing` feature, which only the fuzz crate turns on; the binary
//! never has it.

use std::sync::OnceLock;

use prost::Message as _;
use sluice_core::sealing::Keyring;
use sluice_proto::control::v1::{ConfigSubscription, WatchConfigResponse};

use crate::state::config_copy::{ConfigSnapshot, Subscription};
use crate::state::sealed::{SealedConfig, open_config};

fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| Keyring::from_keys(&[[7; 32]]).expect("one key"))
}

/// A `dp_subscriptions.config` row of any bytes: decoded, its secrets opened, parsed and
/// applied as `load` does; and, when it decodes, sealed, stored and read back unchanged.
pub fn stored_subscription(bytes: &[u8], now_ms: i64) {
    let Ok(config) = ConfigSubscription::decode(bytes) else {
        return;
    };
    if let Ok(opened) = open_config(keyring(), config.clone())
        && let Ok(subscription) = Subscription::parse(opened)
    {
        let _ = subscription.endpoint.signing_secrets(now_ms);
        let _ = subscription.endpoint.signing_keys(now_ms);
    }
    let stored = SealedConfig::seal(keyring(), &config).encode();
    let read = ConfigSubscription::decode(stored.as_slice()).expect("what was encoded decodes");
    let opened = open_config(keyring(), read).expect("what was sealed opens");
    assert_eq!(opened, config);
    let _ = Subscription::parse(config);
}

/// A message of the watch stream of any bytes: applied to an empty copy, then every
/// subscription it kept asked for its secrets and matched against an event type.
pub fn watch_message(bytes: &[u8], now_ms: i64, event_type: &str) {
    let Ok(piece) = WatchConfigResponse::decode(bytes) else {
        return;
    };
    let snapshot = ConfigSnapshot::default().apply(std::slice::from_ref(&piece));
    for config in &piece.upserted_subscriptions {
        if let Some(subscription) = snapshot.subscription(&config.id) {
            let _ = subscription.endpoint.signing_secrets(now_ms);
        }
        let _ = snapshot.matching(&config.workspace_id, event_type).count();
    }
}
