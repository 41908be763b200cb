//! `[broker]` and `[database]`: where a process finds RabbitMQ and MariaDB.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One URL or a list (`url = "amqp://…"` or `url = ["amqp://a…", "amqp://b…"]`): a process uses
/// the first that answers and, when it loses it, the next (rotating). Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Urls(Vec<String>);

impl Urls {
    /// A first URL and more: never empty.
    pub fn new(first: impl Into<String>, rest: impl IntoIterator<Item = String>) -> Self {
        let mut urls = vec![first.into()];
        urls.extend(rest);
        Self(urls)
    }

    /// The URLs in the order they are tried.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The first URL (the one a single-server installation has).
    pub fn first(&self) -> &str {
        // `Urls` is never empty: built from one URL, or from a list validated non-empty
        self.0.first().map_or("", String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Urls {
    fn from(url: String) -> Self {
        Self(vec![url])
    }
}

impl From<&str> for Urls {
    fn from(url: &str) -> Self {
        Self(vec![url.to_owned()])
    }
}

impl From<&String> for Urls {
    fn from(url: &String) -> Self {
        Self(vec![url.clone()])
    }
}

impl From<Vec<String>> for Urls {
    fn from(urls: Vec<String>) -> Self {
        Self(urls)
    }
}

impl PartialEq<&str> for Urls {
    fn eq(&self, other: &&str) -> bool {
        self.0.len() == 1 && self.0[0] == *other
    }
}

/// The URLs with their passwords hidden, for logs and error messages.
impl fmt::Display for Urls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, url) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&redact(url))?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Urls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let urls = match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(url) => vec![url],
            OneOrMany::Many(urls) => urls,
        };
        if urls.is_empty() || urls.iter().any(|u| u.trim().is_empty()) {
            return Err(serde::de::Error::custom(
                "expected a URL or a non-empty list of URLs",
            ));
        }
        Ok(Self(urls))
    }
}

impl Serialize for Urls {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

/// A URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// AMQP URL, or a list of the cluster's nodes; the vhost is the path (`%2f` is `/`).
    pub url: Urls,
    /// Longest pause between two reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            reconnect_max_backoff: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// MySQL/MariaDB URL, or a list of a Galera cluster's nodes (writes go to the first that
    /// answers; on loss, the next).
    pub url: Urls,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "mysql://root@127.0.0.1:3306/cluegetter".into(),
            max_connections: 8,
        }
    }
}
