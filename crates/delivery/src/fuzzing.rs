//! Entry points for `cargo fuzz` (`crates/fuzz`, docs/fuzzing.md): the egress guard's checks
//! on any input. Compiled only with the `fuzzing` feature, which only the fuzz crate turns
//! on; the binary never has it.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use reqwest::dns::{Name, Resolve as _};
use sluice_core::egress::AllowList;
use url::Url;

use crate::egress::{EgressDenied, EgressPolicy, GuardedResolver};

/// The egress guard on one input: `allow_list` entries (any text; a list the parser refuses
/// ends the case), a URL text, and resolved addresses. Panics (a finding) when the
/// pre-flight URL check, the filter and the resolver disagree about an address.
pub fn egress(
    allow_http: bool,
    allow_private: bool,
    allow_list: &[String],
    url: &str,
    addrs: &[SocketAddr],
) {
    let Ok(allow_list) = AllowList::parse(allow_list) else {
        return;
    };
    let policy = EgressPolicy {
        allow_http,
        allow_private,
        allow_list,
    };
    if let Ok(url) = Url::parse(url) {
        let _ = policy.check_url(&url);
    }
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| policy.refusal(a.ip()).is_none())
        .collect();
    match policy.filter(addrs.iter().copied()) {
        Ok(kept) => assert_eq!(kept, allowed),
        Err(EgressDenied::ForbiddenAddress { ip, .. }) => {
            assert!(allowed.is_empty());
            assert!(policy.refusal(ip).is_some());
        }
        Err(other) => panic!("the filter answered {other:?}"),
    }
    for addr in addrs {
        let ip = addr.ip();
        let refused = policy.refusal(ip).is_some();
        // The URL check of the address literal agrees with the resolver's check.
        let literal = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        if let Ok(url) = Url::parse(&format!("https://{literal}/")) {
            assert_eq!(policy.check_url(&url).is_err(), refused, "{url}");
        }
        // The resolver itself: an address literal resolves without DNS.
        if let Ok(name) = ip.to_string().parse::<Name>() {
            let resolver = GuardedResolver {
                policy: policy.clone(),
            };
            match runtime().block_on(resolver.resolve(name)) {
                Ok(addrs) => {
                    assert!(!refused);
                    assert_eq!(addrs.map(|a| a.ip()).collect::<Vec<_>>(), vec![ip]);
                }
                Err(err) => {
                    assert!(refused, "{err}");
                    assert!(err.downcast_ref::<EgressDenied>().is_some(), "{err}");
                }
            }
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}
