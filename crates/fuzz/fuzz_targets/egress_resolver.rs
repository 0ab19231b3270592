//! The egress guard of the sender (`sluice-delivery`): the pre-flight URL check, the
//! resolver's address filter and the resolver itself, on any allow-list, URL and resolved
//! addresses; they agree about every address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    |input: (bool, bool, Vec<String>, String, Vec<([u8; 16], bool, u16)>)| {
        let (allow_http, allow_private, entries, url, raw) = input;
        let addrs: Vec<SocketAddr> = raw
            .into_iter()
            .take(8)
            .map(|(b, v4, port)| {
                let ip = if v4 {
                    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                } else {
                    IpAddr::V6(Ipv6Addr::from(b))
                };
                SocketAddr::new(ip, port)
            })
            .collect();
        sluice_delivery::fuzzing::egress(allow_http, allow_private, &entries, &url, &addrs);
    }
);
