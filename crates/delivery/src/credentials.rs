//! Endpoint credentials the sender obtains or presents itself, beyond a static
//! `Authorization` header: OAuth2 client credentials (a token fetched from the token
//! endpoint, cached until it expires, fetched again once when the endpoint answers 401) and
//! a TLS client certificate (mTLS: its own client, built once per endpoint's credentials).
//!
//! Both are stored by the control plane as JSON (see [`OAuth2Settings::to_json`] and
//! [`MutualTlsSettings::to_json`]), sealed, and handed to the data plane as secrets; this
//! module reads them back. Nothing here ever formats a secret: `Debug` shows which kind of
//! credential it is, and error messages name fields and what to change, never values.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::time::Instant;
use url::Url;

use crate::excerpt::read_capped;

/// What fetching a token needs of the sender: its shared client, its egress check of a
/// URL and its description of a send failure. (The sender uses this module; this module
/// does not import the sender.)
pub(crate) struct TokenFetch<'a> {
    /// The shared client (its resolver enforces the egress policy on the address dialled).
    pub(crate) client: &'a reqwest::Client,
    /// The egress checks that need no DNS, as a message.
    pub(crate) check_url: &'a (dyn Fn(&Url) -> Result<(), String> + Sync),
    /// A send failure said so a person can act on it, never naming the URL.
    pub(crate) describe: &'a (dyn Fn(reqwest::Error) -> String + Sync),
}

/// The most bytes of a token endpoint's answer that are read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// The most a cached token's life is shortened by, so it is not sent just as it expires.
const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The most bytes of PEM a client certificate, its key or a CA bundle may have.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// The credentials of one endpoint that the sender handles itself.
pub enum EndpointCredentials {
    /// OAuth2 client credentials, with the endpoint's token cache.
    OAuth2(OAuth2Client),
    /// A TLS client certificate, with the endpoint's own HTTP client.
    MutualTls(MutualTlsClient),
}

impl fmt::Debug for EndpointCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointCredentials::OAuth2(_) => f.write_str("EndpointCredentials::OAuth2(..)"),
            EndpointCredentials::MutualTls(_) => f.write_str("EndpointCredentials::MutualTls(..)"),
        }
    }
}

/// OAuth2 client credentials as stored (JSON) and validated.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OAuth2Settings {
    /// The token endpoint.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// Space-separated scopes; empty sends none.
    pub scope: String,
    /// The audience; empty sends none.
    pub audience: String,
    /// `client_secret_post` (id and secret in the form) instead of `client_secret_basic`.
    pub client_secret_post: bool,
}

impl fmt::Debug for OAuth2Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OAuth2Settings(..)")
    }
}

impl OAuth2Settings {
    /// The stored form.
    pub fn to_json(&self) -> String {
        json!({
            "token_url": self.token_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "scope": self.scope,
            "audience": self.audience,
            "client_authentication": if self.client_secret_post { "post" } else { "basic" },
        })
        .to_string()
    }

    /// Reads the stored form; the error names the field, never a value.
    pub fn from_json(text: &str) -> Result<OAuth2Settings, String> {
        let field = stored_fields(text, "oauth2")?;
        let settings = OAuth2Settings {
            token_url: field("token_url"),
            client_id: field("client_id"),
            client_secret: field("client_secret"),
            scope: field("scope"),
            audience: field("audience"),
            client_secret_post: field("client_authentication") == "post",
        };
        if settings.token_url.is_empty() || settings.client_id.is_empty() {
            return Err("oauth2 credentials: token_url and client_id are required".to_owned());
        }
        Ok(settings)
    }
}

/// The text fields of a stored credential (a JSON object; a missing or non-text field reads
/// as empty). The error names the kind of credential, never a value.
fn stored_fields(text: &str, kind: &str) -> Result<impl Fn(&str) -> String, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|_| format!("{kind} credentials: not a JSON object"))?;
    Ok(move |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    })
}

/// A TLS client certificate, its key and the CAs trusted for one endpoint, as stored (JSON).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MutualTlsSettings {
    /// The client certificate (then its intermediates) in PEM.
    pub certificate_pem: String,
    /// Its private key in PEM.
    pub private_key_pem: String,
    /// CAs trusted for this endpoint only, in PEM; empty for none.
    pub ca_certificates_pem: String,
}

impl fmt::Debug for MutualTlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MutualTlsSettings(..)")
    }
}

/// Which part of mTLS credentials is wrong, and why (never quoting it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MutualTlsError {
    /// The certificate PEM is missing, too long or holds no certificate.
    #[error("certificate_pem: {0}")]
    Certificate(String),
    /// The key PEM is missing, too long, not a key, or not the certificate's key.
    #[error("private_key_pem: {0}")]
    PrivateKey(String),
    /// The CA bundle is too long or holds no certificate.
    #[error("ca_certificates_pem: {0}")]
    CaCertificates(String),
}

impl MutualTlsError {
    /// The field at fault: `certificate_pem`, `private_key_pem` or `ca_certificates_pem`.
    pub fn field(&self) -> &'static str {
        match self {
            MutualTlsError::Certificate(_) => "certificate_pem",
            MutualTlsError::PrivateKey(_) => "private_key_pem",
            MutualTlsError::CaCertificates(_) => "ca_certificates_pem",
        }
    }

    /// The reason, without the field's name.
    pub fn reason(&self) -> &str {
        match self {
            MutualTlsError::Certificate(why)
            | MutualTlsError::PrivateKey(why)
            | MutualTlsError::CaCertificates(why) => why,
        }
    }
}

impl MutualTlsSettings {
    /// The stored form.
    pub fn to_json(&self) -> String {
        json!({
            "certificate_pem": self.certificate_pem,
            "private_key_pem": self.private_key_pem,
            "ca_certificates_pem": self.ca_certificates_pem,
        })
        .to_string()
    }

    /// Reads the stored form.
    pub fn from_json(text: &str) -> Result<MutualTlsSettings, String> {
        let field = stored_fields(text, "mtls")?;
        Ok(MutualTlsSettings {
            certificate_pem: field("certificate_pem"),
            private_key_pem: field("private_key_pem"),
            ca_certificates_pem: field("ca_certificates_pem"),
        })
    }

    /// Checks that the certificate and key parse and belong together, and that the CA
    /// bundle (when given) holds certificates.
    pub fn validate(&self) -> Result<(), MutualTlsError> {
        let too_long = |len: usize| format!("is {len} bytes long; the limit is {MAX_PEM_BYTES}");
        if self.certificate_pem.trim().is_empty() {
            return Err(MutualTlsError::Certificate("required".to_owned()));
        }
        if self.certificate_pem.len() > MAX_PEM_BYTES {
            return Err(MutualTlsError::Certificate(too_long(
                self.certificate_pem.len(),
            )));
        }
        if self.private_key_pem.trim().is_empty() {
            return Err(MutualTlsError::PrivateKey("required".to_owned()));
        }
        if self.private_key_pem.len() > MAX_PEM_BYTES {
            return Err(MutualTlsError::PrivateKey(too_long(
                self.private_key_pem.len(),
            )));
        }
        if self.ca_certificates_pem.len() > MAX_PEM_BYTES {
            return Err(MutualTlsError::CaCertificates(too_long(
                self.ca_certificates_pem.len(),
            )));
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.certificate_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    MutualTlsError::Certificate("is not PEM (`-----BEGIN CERTIFICATE-----`)".into())
                })?;
        if chain.is_empty() {
            return Err(MutualTlsError::Certificate(
                "holds no `CERTIFICATE` block".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(self.private_key_pem.as_bytes()).map_err(|_| {
            MutualTlsError::PrivateKey(
                "holds no private key in PEM (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`)"
                    .to_owned(),
            )
        })?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider);
        match certified {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(MutualTlsError::PrivateKey(
                    "is not the key of the certificate in certificate_pem".to_owned(),
                ));
            }
            Err(rustls::Error::InvalidCertificate(_))
            | Err(rustls::Error::NoCertificatesPresented) => {
                return Err(MutualTlsError::Certificate(
                    "is not a certificate that can be used (its public key does not parse)"
                        .to_owned(),
                ));
            }
            Err(_) => {
                return Err(MutualTlsError::PrivateKey(
                    "is not a usable private key (unsupported type or corrupt)".to_owned(),
                ));
            }
        }
        if !self.ca_certificates_pem.trim().is_empty() {
            let cas = reqwest::Certificate::from_pem_bundle(self.ca_certificates_pem.as_bytes())
                .map_err(|_| MutualTlsError::CaCertificates("is not a PEM bundle".to_owned()))?;
            if cas.is_empty() {
                return Err(MutualTlsError::CaCertificates(
                    "holds no `CERTIFICATE` block".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// One endpoint's OAuth2 client credentials and its cached token.
pub struct OAuth2Client {
    token_url: Url,
    /// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 2.3.1); `None` for
    /// `client_secret_post`.
    client_authorization: Option<HeaderValue>,
    /// The form sent: `grant_type=client_credentials[&scope=..][&audience=..]`, then
    /// `client_id` and `client_secret` for `client_secret_post`.
    form: Bytes,
    /// The cached token; the lock is held while a token is fetched, so concurrent attempts
    /// wait for one fetch instead of each making their own.
    cache: tokio::sync::Mutex<Option<CachedToken>>,
}

struct CachedToken {
    /// `Bearer <token>`, marked sensitive.
    authorization: HeaderValue,
    /// When it must no longer be sent; `None` when the token endpoint said nothing (then
    /// it is used until the endpoint answers 401).
    expires: Option<Instant>,
}

impl OAuth2Client {
    /// Prepares the client of `settings`; the error names the field.
    pub fn new(settings: &OAuth2Settings) -> Result<OAuth2Client, String> {
        let token_url = Url::parse(&settings.token_url)
            .map_err(|_| "oauth2 credentials: token_url is not a URL".to_owned())?;
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!(
            "{}:{}",
            encode(&settings.client_id),
            encode(&settings.client_secret)
        );
        let client_authorization = if settings.client_secret_post {
            None
        } else {
            let mut value = HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
            .map_err(|_| "oauth2 credentials: not a valid header value".to_owned())?;
            value.set_sensitive(true);
            Some(value)
        };
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !settings.scope.is_empty() {
            form.append_pair("scope", &settings.scope);
        }
        if !settings.audience.is_empty() {
            form.append_pair("audience", &settings.audience);
        }
        if settings.client_secret_post {
            form.append_pair("client_id", &settings.client_id);
            form.append_pair("client_secret", &settings.client_secret);
        }
        Ok(OAuth2Client {
            token_url,
            client_authorization,
            form: Bytes::from(form.finish()),
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// The `Authorization` value to send: the cached token while it is valid, else a new
    /// one. `rejected` is a token the endpoint just refused with 401: it is not reused.
    /// Returns the value and whether it was fetched now.
    pub(crate) async fn authorization(
        &self,
        fetch: &TokenFetch<'_>,
        rejected: Option<&HeaderValue>,
    ) -> Result<(HeaderValue, bool), String> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref() {
            let live = cached.expires.is_none_or(|at| Instant::now() < at);
            if live && rejected != Some(&cached.authorization) {
                return Ok((cached.authorization.clone(), false));
            }
        }
        *cache = None;
        let token = self.fetch(fetch).await?;
        let authorization = token.authorization.clone();
        *cache = Some(token);
        Ok((authorization, true))
    }

    async fn fetch(&self, with: &TokenFetch<'_>) -> Result<CachedToken, String> {
        let fail = |why: String| format!("fetching the endpoint's OAuth2 token failed: {why}");
        if let Err(denied) = (with.check_url)(&self.token_url) {
            return Err(fail(format!("the token URL is refused: {denied}")));
        }
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.client_authorization {
            headers.insert(header::AUTHORIZATION, authorization.clone());
        }
        let mut request = reqwest::Request::new(reqwest::Method::POST, self.token_url.clone());
        *request.headers_mut() = headers;
        *request.body_mut() = Some(self.form.clone().into());
        let started = Instant::now();
        let mut response = match with.client.execute(request).await {
            Ok(response) => response,
            Err(err) => {
                let message = (with.describe)(err);
                return Err(fail(format!("the token endpoint: {message}")));
            }
        };
        let status = response.status();
        let (body, error) = read_capped(&mut response, MAX_TOKEN_RESPONSE).await;
        if error.is_some() {
            return Err(fail(format!(
                "the token endpoint's answer (HTTP {status}) could not be read"
            )));
        }
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            // RFC 6749 5.2: `error` and `error_description`, which carry no secret.
            let code = parsed
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
                .map(|code| short(code, 64));
            let description = parsed
                .as_ref()
                .and_then(|v| v.get("error_description"))
                .and_then(Value::as_str)
                .map(|d| short(d, 200));
            let detail = match (code, description) {
                (Some(code), Some(description)) => format!(" ({code}: {description})"),
                (Some(code), None) => format!(" ({code})"),
                _ => String::new(),
            };
            let hint = if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::BAD_REQUEST
            {
                "; check the subscription's client id, client secret and scope"
            } else {
                ""
            };
            return Err(fail(format!(
                "the token endpoint answered HTTP {status}{detail}{hint}"
            )));
        }
        let Some(parsed) = parsed else {
            return Err(fail(
                "the token endpoint's answer is not JSON (RFC 6749 5.1)".to_owned(),
            ));
        };
        let Some(token) = parsed.get("access_token").and_then(Value::as_str) else {
            return Err(fail(
                "the token endpoint's answer has no `access_token`".to_owned(),
            ));
        };
        if let Some(kind) = parsed.get("token_type").and_then(Value::as_str)
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(fail(format!(
                "the token endpoint issued a `{}` token; only bearer tokens are supported",
                short(kind, 32)
            )));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| fail("the issued access token is not a valid header value".to_owned()))?;
        authorization.set_sensitive(true);
        let expires = parsed
            .get("expires_in")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .map(|seconds| {
                let life = Duration::from_secs(seconds);
                // A tenth of its life, at most a minute, so it is not sent as it expires.
                started + life.saturating_sub((life / 10).min(MAX_EXPIRY_MARGIN))
            });
        tracing::debug!(
            expires_in_ms =
                expires.map(|at| at.saturating_duration_since(Instant::now()).as_millis() as u64),
            "fetched an OAuth2 token for an endpoint"
        );
        Ok(CachedToken {
            authorization,
            expires,
        })
    }
}

/// At most `max` characters of a text from the network, for a message.
fn short(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// One endpoint's TLS client certificate, and the HTTP client that presents it (built on
/// first use, with the shared client's settings).
pub struct MutualTlsClient {
    identity: reqwest::Identity,
    cas: Vec<reqwest::Certificate>,
    client: OnceLock<Result<reqwest::Client, String>>,
}

impl MutualTlsClient {
    /// Parses `settings` (validated first: the error names the field).
    pub fn new(settings: &MutualTlsSettings) -> Result<MutualTlsClient, String> {
        settings
            .validate()
            .map_err(|e| format!("mtls credentials: {e}"))?;
        let mut pem = settings.certificate_pem.clone();
        pem.push('\n');
        pem.push_str(&settings.private_key_pem);
        let identity = reqwest::Identity::from_pem(pem.as_bytes())
            .map_err(|_| "mtls credentials: the certificate and key do not load".to_owned())?;
        let cas = if settings.ca_certificates_pem.trim().is_empty() {
            Vec::new()
        } else {
            reqwest::Certificate::from_pem_bundle(settings.ca_certificates_pem.as_bytes()).map_err(
                |_| "mtls credentials: ca_certificates_pem is not a PEM bundle".to_owned(),
            )?
        };
        Ok(MutualTlsClient {
            identity,
            cas,
            client: OnceLock::new(),
        })
    }

    /// The client presenting this certificate, built on first use from `builder` (the
    /// shared client's settings).
    pub(crate) fn client(
        &self,
        builder: impl FnOnce() -> Result<reqwest::ClientBuilder, ()>,
    ) -> Result<&reqwest::Client, String> {
        self.client
            .get_or_init(|| {
                builder()
                    .and_then(|builder| {
                        let builder = builder.identity(self.identity.clone());
                        let builder = if self.cas.is_empty() {
                            builder
                        } else {
                            builder.tls_certs_merge(self.cas.clone())
                        };
                        builder.build().map_err(|_| ())
                    })
                    .map_err(|()| {
                        "building the HTTP client with the endpoint's client certificate failed"
                            .to_owned()
                    })
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}
