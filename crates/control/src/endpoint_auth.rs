//! Validation of the endpoint credentials the data plane handles itself (OAuth2 client
//! credentials, a TLS client certificate) into the JSON stored sealed in `subscriptions.auth`
//! (the formats are `sluice_delivery`'s, which reads them back on the data plane). Every
//! violation names its field; no message quotes a credential.

use sluice_core::validate::{basic_password, endpoint_url};
use sluice_delivery::{MutualTlsSettings, OAuth2Settings};
use sluice_proto::control::v1 as pb;

use crate::error::Violations;

const OAUTH2: &str = "subscription.auth.oauth2_client_credentials";
const MUTUAL_TLS: &str = "subscription.auth.mutual_tls";

/// OAuth2 client credentials: the token URL under the endpoint URL rules (egress, https),
/// a client id and secret, optional scope and audience.
pub(crate) fn oauth2(
    v: &mut Violations,
    input: &pb::OAuth2ClientCredentials,
    allow_http: bool,
) -> Option<String> {
    let token_url = if input.token_url.is_empty() {
        v.add(
            format!("{OAUTH2}.token_url"),
            "required: the token endpoint's https URL",
        );
        None
    } else {
        v.check(
            format!("{OAUTH2}.token_url"),
            endpoint_url(&input.token_url, allow_http),
        )
    };
    let id = v.check(
        format!("{OAUTH2}.client_id"),
        basic_password(&input.client_id),
    );
    let secret = v.check(
        format!("{OAUTH2}.client_secret"),
        basic_password(&input.client_secret),
    );
    let mut optional_ok = true;
    let client_secret_post =
        match pb::OAuth2ClientAuthentication::try_from(input.client_authentication) {
            Ok(pb::OAuth2ClientAuthentication::Post) => true,
            Ok(_) => false,
            Err(_) => {
                v.add(
                    format!("{OAUTH2}.client_authentication"),
                    format!(
                        "unknown value {}; use O_AUTH2_CLIENT_AUTHENTICATION_BASIC or _POST",
                        input.client_authentication
                    ),
                );
                optional_ok = false;
                false
            }
        };
    for (name, value) in [("scope", &input.scope), ("audience", &input.audience)] {
        if !value.is_empty()
            && v.check(format!("{OAUTH2}.{name}"), basic_password(value))
                .is_none()
        {
            optional_ok = false;
        }
    }
    let token_url = token_url?;
    id?;
    secret?;
    optional_ok.then(|| {
        OAuth2Settings {
            token_url: token_url.to_string(),
            client_id: input.client_id.clone(),
            client_secret: input.client_secret.clone(),
            scope: input.scope.clone(),
            audience: input.audience.clone(),
            client_secret_post,
        }
        .to_json()
    })
}

/// A TLS client certificate and key that parse and belong together, and an optional CA
/// bundle.
pub(crate) fn mutual_tls(v: &mut Violations, input: &pb::MutualTls) -> Option<String> {
    let settings = MutualTlsSettings {
        certificate_pem: input.certificate_pem.clone(),
        private_key_pem: input.private_key_pem.clone(),
        ca_certificates_pem: input.ca_certificates_pem.clone(),
    };
    match settings.validate() {
        Ok(()) => Some(settings.to_json()),
        Err(err) => {
            v.add(format!("{MUTUAL_TLS}.{}", err.field()), err.reason());
            None
        }
    }
}
