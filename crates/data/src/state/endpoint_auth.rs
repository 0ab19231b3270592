//! The endpoint credentials among a subscription's secrets that the sender handles itself:
//! OAuth2 client credentials (`oauth2:` + JSON) and a TLS client certificate (`mtls:` +
//! JSON), read into the sender's form once per version of the subscription, so its token
//! cache and its client live as long as the credentials do.

use sluice_core::validate::{MUTUAL_TLS_SECRET_PREFIX, OAUTH2_SECRET_PREFIX};
use sluice_delivery::{
    EndpointCredentials, MutualTlsClient, MutualTlsSettings, OAuth2Client, OAuth2Settings,
};

/// The credentials `secret` holds, if it is one of them; the error never quotes it.
pub(crate) fn credentials(secret: &str) -> Option<Result<EndpointCredentials, String>> {
    if let Some(json) = secret.strip_prefix(OAUTH2_SECRET_PREFIX) {
        return Some(
            OAuth2Settings::from_json(json)
                .and_then(|settings| OAuth2Client::new(&settings))
                .map(EndpointCredentials::OAuth2),
        );
    }
    if let Some(json) = secret.strip_prefix(MUTUAL_TLS_SECRET_PREFIX) {
        return Some(
            MutualTlsSettings::from_json(json)
                .and_then(|settings| MutualTlsClient::new(&settings))
                .map(EndpointCredentials::MutualTls),
        );
    }
    None
}
