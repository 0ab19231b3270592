//! Input validation shared by the gRPC layers: endpoint URLs, custom headers, bounded text.
//!
//! The rules live here, not in each service, so the control plane (which accepts a
//! subscription) and the data plane (which sends to it) agree on what is valid. Error
//! messages are written to be shown to an API caller as the description of a field
//! violation, so they say what to change.

use thiserror::Error;
use url::Url;

/// The longest accepted endpoint URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// The most custom headers one subscription may set.
pub const MAX_CUSTOM_HEADERS: usize = 20;
/// The longest custom header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 64;
/// The longest custom header value, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 1024;

/// Why an endpoint URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum UrlError {
    #[error("is empty; give the https URL that should receive webhooks")]
    Empty,
    #[error("is {len} bytes long; the limit is {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("is not a valid URL ({0}); give a full URL such as https://example.com/webhooks")]
    Invalid(String),
    #[error("must use https (plain http is disabled; set --allow-http to permit it)")]
    HttpNotAllowed,
    #[error("uses the scheme `{scheme}`; webhooks are sent over https only")]
    UnsupportedScheme { scheme: String },
    #[error("must name a host, such as https://example.com/webhooks")]
    MissingHost,
    #[error("must not contain a fragment (`#...`); it is never sent to the receiver")]
    Fragment,
    /// `user:password@` in the URL: it would be stored and shown in clear, and no
    /// receiver would get it as an `Authorization` header.
    #[error(
        "must not contain credentials (`user:password@host`); credentials in URLs are not accepted: remove them from the URL and set them in the subscription's `auth` field (basic or bearer)"
    )]
    Credentials,
}

/// Checks and parses an endpoint URL: at most 2048 bytes, https (or http when `allow_http`),
/// with a host, without a fragment or user info.
pub fn endpoint_url(s: &str, allow_http: bool) -> Result<Url, UrlError> {
    if s.trim().is_empty() {
        return Err(UrlError::Empty);
    }
    if s.len() > MAX_URL_BYTES {
        return Err(UrlError::TooLong {
            len: s.len(),
            max: MAX_URL_BYTES,
        });
    }
    let url = Url::parse(s).map_err(|e| UrlError::Invalid(e.to_string()))?;
    // First: of everything wrong with such a URL, the credentials matter most.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err(UrlError::HttpNotAllowed),
        other => {
            return Err(UrlError::UnsupportedScheme {
                scheme: other.to_owned(),
            });
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::MissingHost);
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }
    Ok(url)
}

/// The prefix that marks, among the secrets the control plane sends the data plane, the
/// endpoint's `Authorization` header value (beside `whsec_` and `whsk_` signing keys).
pub const AUTHORIZATION_SECRET_PREFIX: &str = "authorization:";
/// The prefix of the endpoint's OAuth2 client credentials (JSON) among those secrets.
pub const OAUTH2_SECRET_PREFIX: &str = "oauth2:";
/// The prefix of the endpoint's TLS client certificate and key (JSON) among those secrets.
pub const MUTUAL_TLS_SECRET_PREFIX: &str = "mtls:";

/// The longest user name, password or bearer token of endpoint authentication, in bytes.
pub const MAX_AUTH_BYTES: usize = 4096;

/// Why endpoint credentials were refused. Messages never quote the credential.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long; the limit is {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("must not contain `:` (HTTP Basic separates the user name from the password with it)")]
    ColonInUsername,
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must be an RFC 6750 token: letters, digits and -._~+/ then optional `=` padding")]
    NotAToken,
}

fn auth_part(value: &str) -> Result<(), AuthError> {
    if value.is_empty() {
        return Err(AuthError::Empty);
    }
    if value.len() > MAX_AUTH_BYTES {
        return Err(AuthError::TooLong {
            len: value.len(),
            max: MAX_AUTH_BYTES,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(AuthError::ControlCharacter);
    }
    Ok(())
}

/// Checks a user name for HTTP Basic authentication.
pub fn basic_username(username: &str) -> Result<(), AuthError> {
    auth_part(username)?;
    if username.contains(':') {
        return Err(AuthError::ColonInUsername);
    }
    Ok(())
}

/// Checks a password for HTTP Basic authentication.
pub fn basic_password(password: &str) -> Result<(), AuthError> {
    auth_part(password)
}

/// The `Authorization` value of HTTP Basic (RFC 7617) for checked parts.
pub fn basic_authorization(username: &str, password: &str) -> String {
    use base64::Engine as _;
    let mut out = String::from("Basic ");
    base64::engine::general_purpose::STANDARD
        .encode_string(format!("{username}:{password}"), &mut out);
    out
}

/// Checks a bearer token: RFC 6750's `b64token`.
pub fn bearer_token(token: &str) -> Result<(), AuthError> {
    auth_part(token)?;
    let body = token.trim_end_matches('=');
    let valid = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(AuthError::NotAToken)
    }
}

/// `url` without user info, for showing a URL stored before such URLs were refused (in Get
/// and List answers and attempt records); other URLs come back unchanged.
pub fn without_credentials(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Why a custom header was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("header name is empty")]
    EmptyName,
    #[error("header name is {len} bytes long; the limit is {max} bytes")]
    NameTooLong { len: usize, max: usize },
    #[error(
        "header name contains {ch:?}; use letters, digits and !#$%&'*+-.^_`|~ only (an RFC 9110 token)"
    )]
    InvalidNameCharacter { ch: char },
    #[error("header `{name}` is set by Sluice and cannot be overridden")]
    Reserved { name: String },
    #[error("value of header `{name}` is {len} bytes long; the limit is {max} bytes")]
    ValueTooLong {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("value of header `{name}` contains a line break, which is not allowed")]
    ValueLineBreak { name: String },
    #[error(
        "value of header `{name}` contains {ch:?}; use visible ASCII characters, spaces and tabs only"
    )]
    InvalidValueCharacter { name: String, ch: char },
    #[error("too many custom headers ({count}); the limit is {max}")]
    TooMany { count: usize, max: usize },
    #[error("header `{name}` is given more than once (header names are case-insensitive)")]
    Duplicate { name: String },
}

/// Headers Sluice sets itself (the Standard Webhooks trio, tracing, user-agent) or that
/// belong to the connection rather than the request, so a customer may not set them.
/// `authorization` and `cookie` are allowed: receivers use them to authenticate Sluice.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "traceparent",
    "tracestate",
];

/// Checks one custom header: the name an RFC 9110 token of at most 64 bytes and not
/// reserved (case-insensitively, including every `proxy-*`); the value visible ASCII, spaces
/// and tabs, at most 1024 bytes.
pub fn custom_header(name: &str, value: &str) -> Result<(), HeaderError> {
    if name.is_empty() {
        return Err(HeaderError::EmptyName);
    }
    if name.len() > MAX_HEADER_NAME_BYTES {
        return Err(HeaderError::NameTooLong {
            len: name.len(),
            max: MAX_HEADER_NAME_BYTES,
        });
    }
    if let Some(ch) = name.chars().find(|&c| !is_token_char(c)) {
        return Err(HeaderError::InvalidNameCharacter { ch });
    }
    if is_reserved_header(name) {
        return Err(HeaderError::Reserved {
            name: name.to_owned(),
        });
    }
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(HeaderError::ValueTooLong {
            name: name.to_owned(),
            len: value.len(),
            max: MAX_HEADER_VALUE_BYTES,
        });
    }
    if value.contains(['\r', '\n']) {
        // Named on its own: a line break is how header injection works.
        return Err(HeaderError::ValueLineBreak {
            name: name.to_owned(),
        });
    }
    if let Some(ch) = value
        .chars()
        .find(|&c| !(c == ' ' || c == '\t' || c.is_ascii_graphic()))
    {
        return Err(HeaderError::InvalidValueCharacter {
            name: name.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// A header set that failed [`custom_headers`], with the position of the bad header when one
/// header is to blame.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{error}")]
pub struct HeaderSetError {
    pub index: Option<usize>,
    pub error: HeaderError,
}

/// Checks a subscription's whole set of custom headers: each with [`custom_header`], at most
/// [`MAX_CUSTOM_HEADERS`], and no name twice (ignoring case).
pub fn custom_headers<'a, I>(headers: I) -> Result<(), HeaderSetError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut seen: Vec<&str> = Vec::new();
    for (index, (name, value)) in headers.into_iter().enumerate() {
        if index >= MAX_CUSTOM_HEADERS {
            return Err(HeaderSetError {
                index: None,
                error: HeaderError::TooMany {
                    count: index + 1,
                    max: MAX_CUSTOM_HEADERS,
                },
            });
        }
        custom_header(name, value).map_err(|error| HeaderSetError {
            index: Some(index),
            error,
        })?;
        if seen.iter().any(|other| other.eq_ignore_ascii_case(name)) {
            return Err(HeaderSetError {
                index: Some(index),
                error: HeaderError::Duplicate {
                    name: name.to_owned(),
                },
            });
        }
        seen.push(name);
    }
    Ok(())
}

/// Why a piece of free text (a description, a reason) was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TextError {
    #[error("is {len} bytes long; the limit is {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("contains the control character {ch:?}; use printable text on one line")]
    ControlCharacter { ch: char },
}

/// Checks free text: at most `max_bytes` bytes and no control characters at all (not even
/// newlines or tabs), so it shows safely on one line in logs, tables and terminals.
pub fn bounded_text(s: &str, max_bytes: usize) -> Result<(), TextError> {
    if s.len() > max_bytes {
        return Err(TextError::TooLong {
            len: s.len(),
            max: max_bytes,
        });
    }
    if let Some(ch) = s.chars().find(|c| c.is_control()) {
        return Err(TextError::ControlCharacter { ch });
    }
    Ok(())
}

/// Like [`bounded_text`], for free text people write in several lines (descriptions):
/// newlines and tabs are allowed, other control characters are not.
pub fn multiline_text(s: &str, max_bytes: usize) -> Result<(), TextError> {
    if s.len() > max_bytes {
        return Err(TextError::TooLong {
            len: s.len(),
            max: max_bytes,
        });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| c.is_control() && *c != '\n' && *c != '\t')
    {
        return Err(TextError::ControlCharacter { ch });
    }
    Ok(())
}

#[cfg(test)]
mod multiline_tests {
    use super::{bounded_text, multiline_text};

    #[test]
    fn descriptions_may_span_lines_but_not_carry_other_controls() {
        assert!(multiline_text("line one\nline two\twith a tab", 100).is_ok());
        assert!(bounded_text("line one\nline two", 100).is_err());
        assert!(multiline_text("bell\u{7}", 100).is_err());
        assert!(multiline_text("carriage\r", 100).is_err());
        assert!(multiline_text(&"x".repeat(101), 100).is_err());
    }
}

/// RFC 9110 `tchar`.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '!' | '#'
                | '$'
                | '%'
                | '&'
                | '\''
                | '*'
                | '+'
                | '-'
                | '.'
                | '^'
                | '_'
                | '`'
                | '|'
                | '~'
        )
}

fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
        || name
            .get(..6)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("proxy-"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn stored_credentials_are_not_shown() {
        assert_eq!(
            without_credentials("https://alice:s3cr3t@example.com/hook?x=1"),
            "https://example.com/hook?x=1"
        );
        assert_eq!(
            without_credentials("https://example.com/hook?x=1"),
            "https://example.com/hook?x=1"
        );
    }

    #[test]
    fn endpoint_credentials() {
        assert_eq!(basic_username("alice"), Ok(()));
        assert_eq!(basic_username(""), Err(AuthError::Empty));
        assert_eq!(basic_username("a:b"), Err(AuthError::ColonInUsername));
        assert_eq!(basic_password("p:w d"), Ok(()));
        assert_eq!(basic_password("p\nw"), Err(AuthError::ControlCharacter));
        // RFC 7617's example.
        assert_eq!(
            basic_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(bearer_token("mF_9.B5f-4.1JqM"), Ok(()));
        assert_eq!(bearer_token("abc=="), Ok(()));
        assert_eq!(bearer_token("a b"), Err(AuthError::NotAToken));
        assert_eq!(bearer_token("=="), Err(AuthError::NotAToken));
        assert_eq!(
            bearer_token(&"a".repeat(MAX_AUTH_BYTES + 1)),
            Err(AuthError::TooLong {
                len: MAX_AUTH_BYTES + 1,
                max: MAX_AUTH_BYTES
            })
        );
    }

    #[test]
    fn accepts_urls() {
        let cases = [
            (
                "https://example.com/webhooks",
                false,
                "https://example.com/webhooks",
            ),
            ("https://example.com", false, "https://example.com/"),
            (
                "HTTPS://Example.COM/Path?q=1",
                false,
                "https://example.com/Path?q=1",
            ),
            (
                "https://example.com:8443/x",
                false,
                "https://example.com:8443/x",
            ),
            ("https://10.0.0.1/x", false, "https://10.0.0.1/x"),
            ("https://[::1]:8080/x", false, "https://[::1]:8080/x"),
            (
                "https://hooks.slack.com/services/T0/B0/XX",
                false,
                "https://hooks.slack.com/services/T0/B0/XX",
            ),
            (
                "http://127.0.0.1:9000/hook",
                true,
                "http://127.0.0.1:9000/hook",
            ),
            ("https://example.com/x", true, "https://example.com/x"),
        ];
        for (input, allow_http, want) in cases {
            let url = endpoint_url(input, allow_http).unwrap();
            assert_eq!(url.as_str(), want, "input {input:?}");
        }
        let at_limit = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES - 20));
        assert_eq!(at_limit.len(), MAX_URL_BYTES);
        assert!(endpoint_url(&at_limit, false).is_ok());
    }

    #[test]
    fn rejects_urls() {
        let too_long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        let cases: Vec<(&str, bool, UrlError)> = vec![
            ("", false, UrlError::Empty),
            ("  ", false, UrlError::Empty),
            (
                &too_long,
                false,
                UrlError::TooLong {
                    len: MAX_URL_BYTES + 20,
                    max: MAX_URL_BYTES,
                },
            ),
            ("http://example.com/", false, UrlError::HttpNotAllowed),
            (
                "ftp://example.com/",
                true,
                UrlError::UnsupportedScheme {
                    scheme: "ftp".into(),
                },
            ),
            (
                "file:///etc/passwd",
                true,
                UrlError::UnsupportedScheme {
                    scheme: "file".into(),
                },
            ),
            (
                "mailto:a@example.com",
                true,
                UrlError::UnsupportedScheme {
                    scheme: "mailto".into(),
                },
            ),
            ("https://example.com/#frag", false, UrlError::Fragment),
            (
                "http://alice:s3cr3t@example.com/hook",
                true,
                UrlError::Credentials,
            ),
            (
                "https://alice@example.com/hook",
                false,
                UrlError::Credentials,
            ),
            ("https://:pw@example.com/hook", false, UrlError::Credentials),
            ("https://example.com/#", false, UrlError::Fragment),
        ];
        for (input, allow_http, want) in cases {
            assert_eq!(
                endpoint_url(input, allow_http),
                Err(want),
                "input {input:?}"
            );
        }
        let unparseable = [
            "example.com/webhooks",
            "/webhooks",
            "https://",
            "https:// example.com",
            "https://exa mple.com/",
            "https://example.com:99999/",
            "https://[::1/",
        ];
        for input in unparseable {
            assert!(
                matches!(endpoint_url(input, false), Err(UrlError::Invalid(_))),
                "input {input:?}: {:?}",
                endpoint_url(input, false)
            );
        }
    }

    #[test]
    fn url_error_messages() {
        assert_eq!(
            endpoint_url("http://example.com", false)
                .unwrap_err()
                .to_string(),
            "must use https (plain http is disabled; set --allow-http to permit it)"
        );
        assert_eq!(
            endpoint_url("example.com", false).unwrap_err().to_string(),
            "is not a valid URL (relative URL without a base); give a full URL such as https://example.com/webhooks"
        );
    }

    #[test]
    fn accepts_headers() {
        let long_name = "x".repeat(MAX_HEADER_NAME_BYTES);
        let long_value = "v".repeat(MAX_HEADER_VALUE_BYTES);
        let cases = [
            ("X-Api-Key", "abc123"),
            ("authorization", "Bearer abc.def"),
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("Cookie", "session=1; theme=dark"),
            ("x-tenant", ""),
            ("x-spaces", "a b\tc"),
            ("x-symbols", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
            ("!#$%&'*+-.^_`|~", "ok"),
            ("proxy", "not a proxy-* header"),
            ("x-proxy-id", "fine"),
            (long_name.as_str(), long_value.as_str()),
        ];
        for (name, value) in cases {
            assert_eq!(custom_header(name, value), Ok(()), "header {name:?}");
        }
    }

    #[test]
    fn rejects_headers() {
        let long_name = "x".repeat(MAX_HEADER_NAME_BYTES + 1);
        let long_value = "v".repeat(MAX_HEADER_VALUE_BYTES + 1);
        let reserved = |name: &str| HeaderError::Reserved {
            name: name.to_owned(),
        };
        let bad_value = |name: &str, ch: char| HeaderError::InvalidValueCharacter {
            name: name.to_owned(),
            ch,
        };
        let line_break = |name: &str| HeaderError::ValueLineBreak {
            name: name.to_owned(),
        };
        let cases: Vec<(&str, &str, HeaderError)> = vec![
            ("", "v", HeaderError::EmptyName),
            (
                &long_name,
                "v",
                HeaderError::NameTooLong {
                    len: MAX_HEADER_NAME_BYTES + 1,
                    max: MAX_HEADER_NAME_BYTES,
                },
            ),
            (
                "x header",
                "v",
                HeaderError::InvalidNameCharacter { ch: ' ' },
            ),
            ("x:y", "v", HeaderError::InvalidNameCharacter { ch: ':' }),
            ("x(y)", "v", HeaderError::InvalidNameCharacter { ch: '(' }),
            ("x\"y", "v", HeaderError::InvalidNameCharacter { ch: '"' }),
            ("x-é", "v", HeaderError::InvalidNameCharacter { ch: 'é' }),
            (
                "x\r\ny",
                "v",
                HeaderError::InvalidNameCharacter { ch: '\r' },
            ),
            ("Host", "evil.example", reserved("Host")),
            ("content-length", "1", reserved("content-length")),
            ("Content-Type", "text/plain", reserved("Content-Type")),
            ("content-encoding", "gzip", reserved("content-encoding")),
            (
                "Transfer-Encoding",
                "chunked",
                reserved("Transfer-Encoding"),
            ),
            ("connection", "close", reserved("connection")),
            ("keep-alive", "1", reserved("keep-alive")),
            ("TE", "trailers", reserved("TE")),
            ("trailer", "x", reserved("trailer")),
            ("upgrade", "h2c", reserved("upgrade")),
            ("Proxy-Authorization", "x", reserved("Proxy-Authorization")),
            ("proxy-connection", "x", reserved("proxy-connection")),
            ("PROXY-X", "x", reserved("PROXY-X")),
            ("User-Agent", "x", reserved("User-Agent")),
            ("webhook-id", "x", reserved("webhook-id")),
            ("Webhook-Timestamp", "1", reserved("Webhook-Timestamp")),
            ("WEBHOOK-SIGNATURE", "v1,x", reserved("WEBHOOK-SIGNATURE")),
            ("traceparent", "x", reserved("traceparent")),
            ("tracestate", "x", reserved("tracestate")),
            (
                "x-long",
                &long_value,
                HeaderError::ValueTooLong {
                    name: "x-long".into(),
                    len: MAX_HEADER_VALUE_BYTES + 1,
                    max: MAX_HEADER_VALUE_BYTES,
                },
            ),
            ("x-inject", "a\r\nHost: evil", line_break("x-inject")),
            ("x-inject", "a\nb", line_break("x-inject")),
            ("x-inject", "a\rb", line_break("x-inject")),
            ("x-nul", "a\0b", bad_value("x-nul", '\0')),
            ("x-del", "a\u{7f}", bad_value("x-del", '\u{7f}')),
            ("x-utf8", "café", bad_value("x-utf8", 'é')),
            ("x-vt", "a\u{b}b", bad_value("x-vt", '\u{b}')),
        ];
        for (name, value, want) in cases {
            assert_eq!(
                custom_header(name, value),
                Err(want),
                "header {name:?}: {value:?}"
            );
        }
    }

    #[test]
    fn header_error_messages() {
        assert_eq!(
            custom_header("Host", "x").unwrap_err().to_string(),
            "header `Host` is set by Sluice and cannot be overridden"
        );
        assert_eq!(
            custom_header("x-a", "a\nb").unwrap_err().to_string(),
            "value of header `x-a` contains a line break, which is not allowed"
        );
    }

    #[test]
    fn header_sets() {
        let names: Vec<String> = (0..=MAX_CUSTOM_HEADERS)
            .map(|i| format!("x-h{i}"))
            .collect();
        let full: Vec<(&str, &str)> = names[..MAX_CUSTOM_HEADERS]
            .iter()
            .map(|n| (n.as_str(), "v"))
            .collect();
        assert_eq!(custom_headers(full), Ok(()));
        assert_eq!(custom_headers([]), Ok(()));

        let over: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let cases = vec![
            (
                over,
                HeaderSetError {
                    index: None,
                    error: HeaderError::TooMany {
                        count: MAX_CUSTOM_HEADERS + 1,
                        max: MAX_CUSTOM_HEADERS,
                    },
                },
            ),
            (
                vec![("x-a", "1"), ("host", "h")],
                HeaderSetError {
                    index: Some(1),
                    error: HeaderError::Reserved {
                        name: "host".into(),
                    },
                },
            ),
            (
                vec![("X-A", "1"), ("x-b", "2"), ("x-a", "3")],
                HeaderSetError {
                    index: Some(2),
                    error: HeaderError::Duplicate { name: "x-a".into() },
                },
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(custom_headers(headers.clone()), Err(want), "{headers:?}");
        }
    }

    #[test]
    fn text() {
        let cases = [
            ("", 0, Ok(())),
            ("hello", 5, Ok(())),
            ("héllo wörld — ok", 100, Ok(())),
            ("hello", 4, Err(TextError::TooLong { len: 5, max: 4 })),
            // Bytes, not characters.
            ("é", 1, Err(TextError::TooLong { len: 2, max: 1 })),
            ("a\nb", 10, Err(TextError::ControlCharacter { ch: '\n' })),
            ("a\tb", 10, Err(TextError::ControlCharacter { ch: '\t' })),
            ("a\rb", 10, Err(TextError::ControlCharacter { ch: '\r' })),
            ("a\0b", 10, Err(TextError::ControlCharacter { ch: '\0' })),
            (
                "a\u{1b}[31m",
                10,
                Err(TextError::ControlCharacter { ch: '\u{1b}' }),
            ),
            (
                "a\u{7f}",
                10,
                Err(TextError::ControlCharacter { ch: '\u{7f}' }),
            ),
            (
                "a\u{85}",
                10,
                Err(TextError::ControlCharacter { ch: '\u{85}' }),
            ),
        ];
        for (input, max, want) in cases {
            assert_eq!(bounded_text(input, max), want, "input {input:?}");
        }
        assert_eq!(
            bounded_text("a\nb", 10).unwrap_err().to_string(),
            "contains the control character '\\n'; use printable text on one line"
        );
    }
}
