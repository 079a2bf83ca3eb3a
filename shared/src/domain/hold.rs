//! Holds: the units a client keeps from other buyers with orders it has not paid.
//! Each product caps them per source address and per buyer email (`PendingLimits`),
//! so that nobody can hold a flash sale's stock for free (docs/security.md).

use std::net::IpAddr;

/// What a client's unpaid units are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Address,
    Email,
}

impl Holder {
    pub fn as_str(self) -> &'static str {
        match self {
            Holder::Address => "address",
            Holder::Email => "email",
        }
    }
}

/// The part of a source address that counts as one client: an IPv4 address whole (also
/// when written IPv4-mapped), an IPv6 address by its /64, the block one subscriber is
/// usually given (counting whole IPv6 addresses would let one client use 2^64 of them).
pub fn address_bucket(source_ip: &str) -> String {
    match source_ip.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
        // API Gateway always gives an address; anything else counts as written.
        Err(_) => source_ip.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_counted_by_its_slash_64() {
        assert_eq!(
            address_bucket("2001:db8:1:2:aaaa::1"),
            address_bucket("2001:db8:1:2:ffff:ffff:ffff:fffe")
        );
        assert_ne!(
            address_bucket("2001:db8:1:2::1"),
            address_bucket("2001:db8:1:3::1")
        );
        assert_eq!(address_bucket("2001:DB8:1:2::1"), "2001:db8:1:2::/64");
    }

    #[test]
    fn an_ipv4_client_is_counted_by_its_address_however_written() {
        assert_eq!(address_bucket("203.0.113.7"), "203.0.113.7");
        assert_eq!(address_bucket("::ffff:203.0.113.7"), "203.0.113.7");
        assert_ne!(address_bucket("203.0.113.7"), address_bucket("203.0.113.8"));
    }
}
