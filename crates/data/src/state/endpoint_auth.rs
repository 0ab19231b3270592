//! The endpoint credentials among a subscription's secrets that the sender handles itself:
//! OAuth2 client credentials (`oauth2:` + JSON) and a TLS client certificate (`mtls:` +
//! JSON), read into the sender's form once per version of the subscription, so its token
//! cache and its client live as long as the credentials do.

use sluice_core::validate::{MUTUAL_TLS_SECRET_PREFIX, OAUTH2_SECRET_PREFIX, basic_authorization};
use sluice_delivery::{
    EndpointCredentials, MutualTlsClient, MutualTlsSettings, OAuth2Client, OAuth2Settings,
};
use url::Url;

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

/// The user info of a URL stored before the control plane refused it, taken out of `url`
/// and turned into the HTTP Basic `Authorization` value it always meant (RFC 3986 user
/// info is percent-encoded; Basic takes it decoded). `None` when the URL has none.
pub(crate) fn take_legacy_user_info(url: &mut Url) -> Option<String> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(url.username());
    let password = decode(url.password().unwrap_or_default());
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Some(basic_authorization(&user, &password))
}

#[cfg(test)]
mod tests {
    use super::take_legacy_user_info;

    #[test]
    fn legacy_user_info_becomes_basic_auth_and_leaves_the_url() {
        let mut url = url::Url::parse("https://bob:hunt%40er2@example.com/hook").expect("url");
        // base64("bob:hunt@er2")
        assert_eq!(
            take_legacy_user_info(&mut url).as_deref(),
            Some("Basic Ym9iOmh1bnRAZXIy")
        );
        assert_eq!(url.as_str(), "https://example.com/hook");
        let mut plain = url::Url::parse("https://example.com/hook").expect("url");
        assert_eq!(take_legacy_user_info(&mut plain), None);
    }
}
