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
//!
//! Every read takes the reader's [`Scope`] (from the authenticated principal's role) and
//! enforces it in its SQL: [`Scope`]'s `push_*` methods are the one place a scope becomes a
//! `WHERE` fragment, with the domains as bind parameters. Nothing is filtered after the fact.

pub mod bounces;
pub mod delivery;
pub mod message;
pub mod quotas;
pub mod search;
pub mod stats;

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use sqlx::{MySql, QueryBuilder};

use super::values::{datetime, ip_bin, network_bounds, split_address};

/// What a reader may see (from the role of the user or token, `crate::web::auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// `None`: every message, bounce and quota. `Some`: only those of these lower-case
    /// domains: a message with a recipient in one, or whose sender is in one and logged in with
    /// SASL (a sender domain alone is forgeable); a bounce reporting a recipient in one or
    /// linked to such a message; a quota row whose value is in one.
    pub domains: Option<Vec<String>>,
    /// Whether message headers, bodies and raw bounce reports may be read.
    pub contents: bool,
}

impl Scope {
    /// Everything (`admin`).
    pub fn all() -> Self {
        Self {
            domains: None,
            contents: true,
        }
    }

    /// `domain-admin` of `domains` (lower-cased here).
    pub fn domains<I: IntoIterator<Item = S>, S: AsRef<str>>(domains: I) -> Self {
        Self {
            domains: Some(
                domains
                    .into_iter()
                    .map(|d| d.as_ref().trim().to_lowercase())
                    .collect(),
            ),
            contents: true,
        }
    }

    /// Everything but contents (`auditor`).
    pub fn without_contents() -> Self {
        Self {
            domains: None,
            contents: false,
        }
    }

    /// Whether the message with this sender domain and SASL login is in scope by its sender
    /// (then all its recipients may be shown, not only those in the scope's domains).
    pub fn covers_sender(&self, sender_domain: &str, sasl_username: &str) -> bool {
        match &self.domains {
            None => true,
            Some(domains) => {
                !sasl_username.is_empty()
                    && domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(sender_domain))
            }
        }
    }

    /// ` IN (?, ?, …)` with the domains bound, or ` IN (NULL)` (matches nothing) without any.
    fn push_in(domains: &[String], q: &mut QueryBuilder<MySql>) {
        if domains.is_empty() {
            q.push(" IN (NULL)");
            return;
        }
        q.push(" IN (");
        let mut list = q.separated(", ");
        for domain in domains {
            list.push_bind(domain.clone());
        }
        q.push(")");
    }

    /// ` AND (…)` keeping only messages in scope; `m` is the `message` row's alias. Nothing
    /// when every message is.
    pub fn push_message(&self, q: &mut QueryBuilder<MySql>) {
        if let Some(domains) = &self.domains {
            q.push(" AND ");
            Self::push_message_condition(domains, q, "m");
        }
    }

    fn push_message_condition(domains: &[String], q: &mut QueryBuilder<MySql>, m: &'static str) {
        q.push("(EXISTS (SELECT 1 FROM message_recipient scope_mr WHERE scope_mr.message = ");
        q.push(m);
        q.push(".id AND scope_mr.domain");
        Self::push_in(domains, q);
        q.push(") OR (");
        q.push(m);
        q.push(".sender_domain");
        Self::push_in(domains, q);
        q.push(" AND EXISTS (SELECT 1 FROM session scope_s WHERE scope_s.id = ");
        q.push(m);
        q.push(".session AND scope_s.sasl_username <> '')))");
    }

    /// ` AND (…)` keeping only a message's recipients in the scope's domains (`r` the
    /// `recipient` row); nothing when every recipient may be shown.
    pub fn push_recipient(&self, q: &mut QueryBuilder<MySql>) {
        if let Some(domains) = &self.domains {
            q.push(" AND r.domain");
            Self::push_in(domains, q);
        }
    }

    /// ` JOIN (…) scope_ids ON scope_ids.id = m.id`: the ids of the messages in scope dated
    /// in [`from`, `to`), read from the `(domain, date)` key of `message_recipient` and the
    /// `(sender_domain, date)` key of `message`, so a search within a scope reads only the
    /// scope's messages. Nothing when every message is in scope. The same rule as
    /// [`Scope::push_message`].
    pub fn push_message_ids(
        &self,
        q: &mut QueryBuilder<MySql>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) {
        if let Some(domains) = &self.domains {
            q.push(
                " JOIN (SELECT scope_mr.message AS id FROM message_recipient scope_mr \
                 WHERE scope_mr.domain",
            );
            Self::push_in(domains, q);
            q.push(" AND scope_mr.date >= ");
            q.push_bind(datetime(from));
            q.push(" AND scope_mr.date < ");
            q.push_bind(datetime(to));
            q.push(
                " UNION SELECT scope_m.id FROM message scope_m \
                 JOIN session scope_s ON scope_s.id = scope_m.session \
                 WHERE scope_m.sender_domain",
            );
            Self::push_in(domains, q);
            q.push(" AND scope_m.date >= ");
            q.push_bind(datetime(from));
            q.push(" AND scope_m.date < ");
            q.push_bind(datetime(to));
            q.push(" AND scope_s.sasl_username <> '') scope_ids ON scope_ids.id = m.id");
        }
    }

    /// ` AND (…)` inside a `message_recipient mr` subquery of a search by recipient: a scope
    /// limited to domains searches by its domains' recipients, or by any recipient of a
    /// message it has by the sender, so a search cannot tell it who else received a message
    /// it sees by a recipient.
    pub fn push_searchable_recipient(&self, q: &mut QueryBuilder<MySql>) {
        if let Some(domains) = &self.domains {
            q.push(" AND (mr.domain");
            Self::push_in(domains, q);
            q.push(
                " OR EXISTS (SELECT 1 FROM message scope_m \
                 JOIN session scope_s ON scope_s.id = scope_m.session \
                 WHERE scope_m.id = mr.message AND scope_m.sender_domain",
            );
            Self::push_in(domains, q);
            q.push(" AND scope_s.sasl_username <> ''))");
        }
    }

    /// ` AND (…)` keeping only bounces in scope; `b` is the `bounce` row's alias.
    pub fn push_bounce(&self, q: &mut QueryBuilder<MySql>) {
        if let Some(domains) = &self.domains {
            q.push(
                " AND (EXISTS (SELECT 1 FROM bounce_report scope_br WHERE scope_br.bounce = b.id \
                 AND scope_br.recipient_domain",
            );
            Self::push_in(domains, q);
            q.push(") OR EXISTS (SELECT 1 FROM message scope_m WHERE scope_m.id = b.message AND ");
            Self::push_message_condition(domains, q, "scope_m");
            q.push("))");
        }
    }

    /// ` AND (…)` keeping only quota rows in scope; `q` is the `quota` row's alias. A
    /// `domain-admin` sees the rows of an address (sender, recipient, SASL login) or a domain
    /// in its domains; no client address or regex rows.
    pub fn push_quota(&self, q: &mut QueryBuilder<MySql>) {
        if let Some(domains) = &self.domains {
            q.push(" AND q.is_regex = 0 AND ((q.selector IN ('sender_domain', 'recipient_domain') AND q.value");
            Self::push_in(domains, q);
            q.push(") OR (q.selector IN ('sender', 'recipient', 'sasl_username') AND (FALSE");
            for domain in domains {
                q.push(" OR q.value LIKE ");
                q.push_bind(format!("%@{}", like_escape(domain)));
            }
            q.push(")))");
        }
    }
}

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

    /// The scope's fragments bind every domain: no value is ever part of the SQL text.
    #[test]
    fn a_scope_binds_its_domains_and_everything_adds_nothing() {
        let hostile = "x') OR 1=1 -- ";
        let scope = Scope::domains(["One.Example", hostile]);
        let ids = |scope: &Scope, q: &mut QueryBuilder<MySql>| {
            scope.push_message_ids(q, DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
        };
        for push in [
            &ids as &dyn Fn(&Scope, &mut QueryBuilder<MySql>),
            &Scope::push_message,
            &Scope::push_bounce,
            &Scope::push_quota,
            &Scope::push_recipient,
            &Scope::push_searchable_recipient,
        ] {
            let mut q = QueryBuilder::<MySql>::new("SELECT 1 WHERE TRUE");
            push(&scope, &mut q);
            let sql = q.into_string();
            assert!(sql.len() > 30, "{sql}");
            assert!(
                !sql.contains("one.example") && !sql.contains("OR 1=1"),
                "{sql}"
            );
            let mut q = QueryBuilder::<MySql>::new("SELECT 1 WHERE TRUE");
            push(&Scope::all(), &mut q);
            assert_eq!(q.into_string(), "SELECT 1 WHERE TRUE");
            let mut q = QueryBuilder::<MySql>::new("SELECT 1 WHERE TRUE");
            push(&Scope::without_contents(), &mut q);
            assert_eq!(q.into_string(), "SELECT 1 WHERE TRUE");
        }
        assert!(scope.covers_sender("one.example", "alice"));
        assert!(
            !scope.covers_sender("one.example", ""),
            "a forgeable sender"
        );
        assert!(!scope.covers_sender("two.example", "alice"));
        assert!(Scope::all().covers_sender("x", ""));
    }

    #[test]
    fn like_metacharacters_are_literal() {
        assert_eq!(like_escape(r"50%_off\"), r"50\%\_off\\");
    }
}
