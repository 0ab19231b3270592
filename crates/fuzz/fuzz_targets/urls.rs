//! Endpoint URLs, the credentials stripped from shown URLs, custom headers and bearer
//! tokens, the egress allow-list and address rules: refused or accepted, never a panic;
//! an accepted URL is https (or http when allowed); a shown URL keeps no password; an
//! IPv4-mapped IPv6 address is judged as its IPv4 address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use sluice_core::egress::{AllowList, Cidr, forbidden_reason};
use sluice_core::validate::{bearer_token, custom_header, endpoint_url, without_credentials};

fuzz_target!(|input: (String, bool, Vec<String>, [u8; 16], String)| {
    let (text, allow_http, entries, ip, value) = input;
    if let Ok(url) = endpoint_url(&text, allow_http) {
        assert!(url.scheme() == "https" || (allow_http && url.scheme() == "http"));
    }
    let shown = without_credentials(&text);
    if let Ok(url) = url::Url::parse(&shown)
        && shown != text
    {
        assert!(
            url.password().is_none() && url.username().is_empty(),
            "{shown}"
        );
    }
    let _ = custom_header(&text, &value);
    let _ = bearer_token(&value);
    let _ = Cidr::parse(&text);
    let v6 = Ipv6Addr::from(ip);
    let v4 = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
    assert_eq!(
        forbidden_reason(IpAddr::V6(v4.to_ipv6_mapped())).is_some(),
        forbidden_reason(IpAddr::V4(v4)).is_some()
    );
    let _ = forbidden_reason(IpAddr::V6(v6));
    if let Ok(list) = AllowList::parse(&entries) {
        let _ = list.allows(IpAddr::V6(v6));
        let _ = list.denied_reason(IpAddr::V4(v4));
    }
});
