//! The egress guard: which destinations the sender may dial.
//!
//! Checking the URL's host name is not enough: a name can resolve to `127.0.0.1` or to the
//! cloud metadata address (and can change between a check and the connect). So the guard
//! sits in the DNS resolver that reqwest uses to dial ([`GuardedResolver`]): the addresses it
//! returns are the only ones the connector may try. URLs whose host is an IP literal never
//! reach a resolver, so [`EgressPolicy::check_url`] checks them (and the scheme) before the
//! request is built.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sluice_core::egress::{AllowList, forbidden_reason};
use url::{Host, Url};

/// Why the egress policy refused a destination. The sender reports it as
/// `AttemptErrorKind::EgressDenied` with this error's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EgressDenied {
    /// The URL is `http://` and the sender was not configured with `allow_http`.
    #[error("plain http:// destinations are refused by the egress policy: use https://")]
    PlainHttp,
    /// The URL's scheme is neither `https` nor `http`.
    #[error("the {0:?} scheme cannot be delivered to: use https://")]
    UnsupportedScheme(String),
    /// The URL has no host to dial.
    #[error("the destination URL has no host")]
    MissingHost,
    /// Every address the destination resolves to (or its IP literal) is in a refused range.
    /// The first refused address is named, so an operator can see which allow-list entry
    /// would let it through.
    #[error(
        "destination resolves to {} {reason} address ({ip}), refused by the egress policy",
        article(reason)
    )]
    ForbiddenAddress {
        /// The refused address.
        ip: IpAddr,
        /// The range it falls in, from `sluice_core::egress::forbidden_reason`.
        reason: &'static str,
    },
}

/// "a" or "an" before a reason from `forbidden_reason` ("an IETF", "an unspecified", but
/// "a unique-local"), so refusals read as sentences.
fn article(word: &str) -> &'static str {
    let lower = word.to_ascii_lowercase();
    if lower.starts_with("uni") {
        "a"
    } else if lower.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// The destination rules of one sender, shared by the pre-flight URL check and the resolver.
#[derive(Clone, Debug)]
pub(crate) struct EgressPolicy {
    pub(crate) allow_http: bool,
    pub(crate) allow_private: bool,
    pub(crate) allow_list: AllowList,
}

impl EgressPolicy {
    /// Why `ip` may not be dialled, or `None` when it may.
    pub(crate) fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow_private || self.allow_list.allows(ip) {
            return None;
        }
        forbidden_reason(ip)
    }

    /// The checks that do not need DNS: the scheme, and the address when the host is an IP
    /// literal (the connector dials those directly, bypassing the resolver).
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), EgressDenied> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(EgressDenied::PlainHttp),
            other => return Err(EgressDenied::UnsupportedScheme(other.to_owned())),
        }
        let ip = match url.host() {
            None => return Err(EgressDenied::MissingHost),
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        };
        match self.refusal(ip) {
            Some(reason) => Err(EgressDenied::ForbiddenAddress { ip, reason }),
            None => Ok(()),
        }
    }

    /// Keeps the addresses the policy allows; fails with the first refusal when none is left.
    pub(crate) fn filter(
        &self,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, EgressDenied> {
        let mut allowed = Vec::new();
        let mut first_refusal = None;
        for addr in addrs {
            match self.refusal(addr.ip()) {
                None => allowed.push(addr),
                Some(reason) => {
                    first_refusal.get_or_insert(EgressDenied::ForbiddenAddress {
                        ip: addr.ip(),
                        reason,
                    });
                }
            }
        }
        match first_refusal {
            Some(refusal) if allowed.is_empty() => Err(refusal),
            _ => Ok(allowed),
        }
    }
}

/// A name resolved to no address at all. Rare (the system resolver normally errors
/// instead), but it must not look like an egress refusal.
#[derive(Debug, thiserror::Error)]
#[error("the name resolved to no address")]
struct NoAddresses;

/// reqwest's resolver, replaced: system resolution through tokio, then the egress policy.
/// Because reqwest dials only what this returns, the check applies to the connected address.
#[derive(Clone, Debug)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: EgressPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest replaces it with the URL's port (or the scheme's default).
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if resolved.is_empty() {
                return Err(Box::new(NoAddresses) as Box<dyn StdError + Send + Sync>);
            }
            let allowed = policy.filter(resolved)?;
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_http: bool, allow_private: bool, allow: &[&str]) -> EgressPolicy {
        let entries: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
        EgressPolicy {
            allow_http,
            allow_private,
            allow_list: AllowList::parse(&entries).expect("valid allow list"),
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("valid url")
    }

    #[test]
    fn scheme_rules() {
        let strict = policy(false, false, &[]);
        assert_eq!(strict.check_url(&url("https://example.com/")), Ok(()));
        assert_eq!(
            strict.check_url(&url("http://example.com/")),
            Err(EgressDenied::PlainHttp)
        );
        assert_eq!(
            strict.check_url(&url("ftp://example.com/")),
            Err(EgressDenied::UnsupportedScheme("ftp".into()))
        );
        let lax = policy(true, false, &[]);
        assert_eq!(lax.check_url(&url("http://example.com/")), Ok(()));
    }

    #[test]
    fn ip_literals_are_checked_before_dialling() {
        let strict = policy(true, false, &[]);
        for literal in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data/",
            // The url crate normalises these spellings to 127.0.0.1, so they are caught too.
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            let result = strict.check_url(&url(literal));
            assert!(
                matches!(result, Err(EgressDenied::ForbiddenAddress { .. })),
                "{literal}: {result:?}"
            );
        }
        assert_eq!(strict.check_url(&url("https://93.184.215.14/")), Ok(()));
        assert_eq!(strict.check_url(&url("https://localhost/")), Ok(()));
        assert_eq!(
            policy(true, true, &[]).check_url(&url("http://127.0.0.1/")),
            Ok(())
        );
        assert_eq!(
            policy(true, false, &["127.0.0.1/32"]).check_url(&url("http://127.0.0.1/")),
            Ok(())
        );
    }

    #[test]
    fn refusal_message_names_the_address() {
        let denied = policy(true, false, &[])
            .check_url(&url("http://127.0.0.1:8080/"))
            .expect_err("loopback is refused");
        let message = denied.to_string();
        assert!(message.contains("127.0.0.1"), "{message}");
        assert!(message.contains("loopback"), "{message}");
        assert!(message.contains("egress policy"), "{message}");
        assert_eq!(
            message,
            "destination resolves to a loopback address (127.0.0.1), refused by the egress policy"
        );
        let denied = EgressDenied::ForbiddenAddress {
            ip: "0.0.0.0".parse().expect("ip"),
            reason: "unspecified",
        };
        assert!(denied.to_string().contains("an unspecified address"));
    }

    #[test]
    fn filter_keeps_allowed_addresses_only() {
        let loopback4: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let loopback6: SocketAddr = "[::1]:0".parse().expect("addr");
        let public: SocketAddr = "93.184.215.14:0".parse().expect("addr");

        let strict = policy(false, false, &[]);
        assert_eq!(strict.filter([loopback4, public]), Ok(vec![public]));
        assert!(matches!(
            strict.filter([loopback4, loopback6]),
            Err(EgressDenied::ForbiddenAddress { ip, .. }) if ip == loopback4.ip()
        ));

        let listed = policy(false, false, &["127.0.0.1/32"]);
        assert_eq!(listed.filter([loopback6, loopback4]), Ok(vec![loopback4]));
    }

    #[tokio::test]
    async fn resolver_refuses_localhost() {
        let resolver = GuardedResolver {
            policy: policy(true, false, &[]),
        };
        let name: Name = "localhost".parse().expect("valid name");
        let err = match resolver.resolve(name).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        assert!(err.downcast_ref::<EgressDenied>().is_some(), "{err}");
    }
}

/// Property tests: the resolver's address check, the pre-flight URL check and the policy's
/// filter judge every address alike, on any input. The same checks have a `cargo fuzz`
/// target (`crates/fuzz`, docs/fuzzing.md).
#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;

    fn policy() -> impl Strategy<Value = EgressPolicy> {
        (
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec((any::<IpAddr>(), 0u8..=128), 0..3),
        )
            .prop_map(|(allow_http, allow_private, entries)| {
                // Entries with host bits set are refused by the parser: keep those it takes.
                let entries: Vec<String> = entries
                    .into_iter()
                    .map(|(ip, len)| {
                        format!("{ip}/{}", len.min(if ip.is_ipv4() { 32 } else { 128 }))
                    })
                    .filter(|e| AllowList::parse(std::slice::from_ref(e)).is_ok())
                    .collect();
                EgressPolicy {
                    allow_http,
                    allow_private,
                    allow_list: AllowList::parse(&entries).expect("entries checked one by one"),
                }
            })
    }

    fn literal(ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        }
    }

    proptest! {
        /// The filter keeps exactly the addresses the policy allows, in order, and fails
        /// only when it refused every one.
        #[test]
        fn filter_keeps_what_the_policy_allows(
            policy in policy(),
            addrs in proptest::collection::vec(any::<SocketAddr>(), 0..6),
        ) {
            let allowed: Vec<SocketAddr> =
                addrs.iter().copied().filter(|a| policy.refusal(a.ip()).is_none()).collect();
            match policy.filter(addrs.clone()) {
                Ok(kept) => {
                    prop_assert_eq!(&kept, &allowed);
                    prop_assert!(!kept.is_empty() || addrs.is_empty());
                }
                Err(EgressDenied::ForbiddenAddress { ip, reason }) => {
                    prop_assert!(allowed.is_empty());
                    let first = addrs.iter().find(|a| policy.refusal(a.ip()).is_some());
                    prop_assert_eq!(first.map(|a| a.ip()), Some(ip));
                    prop_assert_eq!(policy.refusal(ip), Some(reason));
                }
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        /// An IP-literal URL (checked before dialling) gets the verdict the resolver gives
        /// the same address; in the integer spelling the url crate normalises, too.
        #[test]
        fn url_check_agrees_with_the_resolver(
            policy in policy(),
            ip in any::<IpAddr>(),
            port in any::<u16>(),
            https in any::<bool>(),
        ) {
            let scheme = if https { "https" } else { "http" };
            let url = Url::parse(&format!("{scheme}://{}:{port}/hook", literal(ip))).unwrap();
            let checked = policy.check_url(&url);
            let resolved = policy.filter([SocketAddr::new(ip, port)]);
            if https || policy.allow_http {
                prop_assert_eq!(checked.is_ok(), resolved.is_ok());
            } else {
                prop_assert_eq!(checked, Err(EgressDenied::PlainHttp));
            }
            if let IpAddr::V4(v4) = ip {
                let integer = Url::parse(&format!("https://{}/", u32::from(v4))).unwrap();
                prop_assert_eq!(policy.check_url(&integer).is_ok(), resolved.is_ok());
            }
        }

        /// Any URL text that parses: a verdict, never a panic.
        #[test]
        fn any_url_gets_a_verdict(policy in policy(), text in any::<String>(), host in "[a-z0-9.:\\[\\]%-]{0,40}") {
            for candidate in [text, format!("https://{host}/"), format!("http://{host}:80/")] {
                if let Ok(url) = Url::parse(&candidate) {
                    let _ = policy.check_url(&url);
                }
            }
        }

        /// The resolver itself (the path every name takes): an address literal resolves
        /// without DNS, and is refused exactly when the policy refuses it.
        #[test]
        fn resolver_refuses_what_the_policy_refuses(policy in policy(), ip in any::<IpAddr>()) {
            let Ok(name) = ip.to_string().parse::<Name>() else {
                return Ok(());
            };
            let refused = policy.refusal(ip).is_some();
            let resolver = GuardedResolver { policy };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            match runtime.block_on(resolver.resolve(name)) {
                Ok(addrs) => {
                    prop_assert!(!refused);
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    prop_assert_eq!(addrs.iter().map(|a| a.ip()).collect::<Vec<_>>(), vec![ip]);
                }
                Err(err) => {
                    prop_assert!(refused, "{}", err);
                    prop_assert!(err.downcast_ref::<EgressDenied>().is_some(), "{}", err);
                }
            }
        }
    }
}
