//! The archive read back, for the web interface and the JSON API: one file per kind of read,
//! each taking a typed query and returning typed rows (`sqlx::FromRow`). Nothing here formats
//! for display or knows HTTP; the pages (`crate::web`) render what these return.
//!
//! Every value reaches MariaDB as a bind parameter; SQL text is built from static fragments
//! only. Each filter matches an index (schema/0001, 0005), and a date range bounds every scan
//! of the large tables.
//!
//! - [`search`]: the message search (one page of summaries).
//! - [`message`]: one message with its session, recipients, headers, results, bounces, body.
//! - [`bounces`]: delivery reports, as a filtered list and one by one.
//! - [`delivery`]: delivery status from Postfix's log: a message's lines, counts per status.
//! - [`quotas`]: quota rows, profiles, classes, regex rows and tally rows.
//! - [`stats`]: counts per verdict and period, top rejected senders, module latencies.

pub mod bounces;
pub mod delivery;
pub mod message;
pub mod quotas;
pub mod search;
pub mod stats;

use std::net::IpAddr;

use ipnet::IpNet;

use super::values::{ip_bin, network_bounds, split_address};

/// An address filter: an exact address, or every address of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressFilter {
    Address { local: String, domain: String },
    Domain(String),
}

impl AddressFilter {
    /// `a@b` an address, `@b` or `b` a domain, `<>` the null sender.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if text == "<>" {
            return Some(Self::Address {
                local: String::new(),
                domain: String::new(),
            });
        }
        if let Some(domain) = text.strip_prefix('@') {
            return Some(Self::Domain(domain.to_lowercase()));
        }
        if text.contains('@') {
            let (local, domain) = split_address(text);
            return Some(Self::Address { local, domain });
        }
        Some(Self::Domain(text.to_lowercase()))
    }
}

/// A client address or network as `ip_bin` bounds (schema/0001's binary form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRange {
    pub first: Vec<u8>,
    pub last: Vec<u8>,
}

impl IpRange {
    /// One address.
    pub fn address(addr: IpAddr) -> Self {
        let bin = ip_bin(addr);
        Self {
            first: bin.clone(),
            last: bin,
        }
    }

    /// A network. An IPv4-mapped IPv6 network means the IPv4 one (the archive stores those as
    /// IPv4).
    pub fn network(net: IpNet) -> Self {
        let net = match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(IpNet::V4)
                    .unwrap_or(net),
                None => net,
            },
            other => other,
        };
        let (first, last) = network_bounds(&net);
        Self { first, last }
    }
}

/// `%`, `_` and `\` taken literally in a `LIKE` pattern (backslash is MariaDB's escape).
pub fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_domains_and_the_null_sender() {
        assert_eq!(
            AddressFilter::parse(" Bob@Example.NET "),
            Some(AddressFilter::Address {
                local: "bob".into(),
                domain: "example.net".into()
            })
        );
        assert_eq!(
            AddressFilter::parse("@Example.net"),
            Some(AddressFilter::Domain("example.net".into()))
        );
        assert_eq!(
            AddressFilter::parse("example.net"),
            Some(AddressFilter::Domain("example.net".into()))
        );
        assert_eq!(
            AddressFilter::parse("<>"),
            Some(AddressFilter::Address {
                local: String::new(),
                domain: String::new()
            })
        );
        assert_eq!(AddressFilter::parse("  "), None);
    }

    #[test]
    fn like_metacharacters_are_literal() {
        assert_eq!(like_escape(r"50%_off\"), r"50\%\_off\\");
    }
}
