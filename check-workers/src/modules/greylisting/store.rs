//! Greylisting state in MariaDB (`schema/0003_greylisting.sql`), shared by every worker of the
//! instance. All SQL of the module is here.
//!
//! Every time is the database's `UTC_TIMESTAMP(6)`: workers on several hosts share one clock,
//! and a worker's own clock never decides how old a triplet is.
//!
//! Atomicity: a whitelist hit is one `UPDATE` that both tests and refreshes. A message's
//! triplets are upserted in one statement (`INSERT … ON DUPLICATE KEY UPDATE` on the triplet's
//! unique key), which row-locks them, then read back and, if all passed, marked passed and the
//! client whitelisted, in the same transaction: two workers with the same triplet serialise on
//! its row lock, and both see the first-seen time the first of them wrote. Deadlocks (InnoDB may
//! pick one when concurrent upserts touch the same keys) are retried.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;
use platform::config::Urls;
use platform::database::{ConflictRetries, Database, PoolSettings};
use sqlx::{MySql, MySqlConnection, QueryBuilder, Row as _};

/// Addresses are cut to this many characters, the width of the columns.
const ADDRESS_CHARS: usize = 255;

/// How often a transaction that deadlocked is tried in all.
const ATTEMPTS: u32 = 4;

/// One triplet of the message, as stored after this attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct TripletState {
    pub recipient: String,
    /// Time since the triplet was first seen (for a triplet that passed, since it first was).
    pub age: Duration,
    /// Passed greylisting before this attempt.
    pub passed: bool,
}

/// What recording one attempt found and did.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub triplets: Vec<TripletState>,
    /// Every triplet passed (now or before): the message is let through.
    pub passed: bool,
    /// The client network was whitelisted by `auto-whitelist-after` with this attempt.
    pub network_whitelisted: bool,
}

/// The triplet's key values, normalised.
#[derive(Clone, Debug)]
pub struct Triplets {
    pub network: IpNet,
    /// Lower-cased; `""` is the null sender.
    pub sender: String,
    /// Lower-cased, de-duplicated, sorted (one lock order for every worker).
    pub recipients: Vec<String>,
}

impl Triplets {
    pub fn new(network: IpNet, sender: &str, recipients: &[String]) -> Self {
        let mut recipients: Vec<String> = recipients.iter().map(|r| normalise(r)).collect();
        recipients.sort();
        recipients.dedup();
        Self {
            network,
            sender: normalise(sender),
            recipients,
        }
    }
}

/// Lower-cased and cut to the column width (a longer address shares its triplet with the
/// others that begin alike, which costs nothing but a little greylisting accuracy).
fn normalise(address: &str) -> String {
    address
        .trim()
        .to_lowercase()
        .chars()
        .take(ADDRESS_CHARS)
        .collect()
}

/// The tables, through a pool made on first use.
pub struct Store {
    pool: Database,
    /// `instance.name` → `instance.id`; never held across an await.
    instances: Mutex<Vec<(String, u64)>>,
}

impl Store {
    /// A store for `urls` (one server or a Galera cluster's nodes); a check waits at most `acquire_timeout` for a connection.
    ///
    /// # Errors
    /// The URL cannot be parsed.
    pub fn new(
        urls: impl Into<Urls>,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let settings = PoolSettings::new(max_connections).acquire_timeout(acquire_timeout);
        Ok(Self {
            pool: Database::new(&urls.into(), settings)?,
            instances: Mutex::new(Vec::new()),
        })
    }

    /// The pool ([`platform::database`]: UTC, strict mode, READ COMMITTED: no gap locks; each
    /// statement sees what committed before it, and our own writes).
    fn pool(&self) -> &Database {
        &self.pool
    }

    /// The id of the instance called `name`, adding the row as the auditor does when the name
    /// is new (a greylisted first message may come before the auditor stored any event).
    ///
    /// # Errors
    /// The database failed.
    pub async fn instance_id(&self, name: &str) -> Result<u64, sqlx::Error> {
        if let Some(id) = self.cached_instance(name) {
            return Ok(id);
        }
        let pool = self.pool();
        let found: Option<u64> = sqlx::query_scalar("SELECT id FROM instance WHERE name = ?")
            .bind(name)
            .fetch_optional(pool)
            .await?;
        let id = match found {
            Some(id) => id,
            // LAST_INSERT_ID(id) makes a concurrent insert of the same name return its id.
            None => sqlx::query(
                "INSERT INTO instance (name) VALUES (?) \
                 ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
            )
            .bind(name)
            .execute(pool)
            .await?
            .last_insert_id(),
        };
        if let Ok(mut cache) = self.instances.lock() {
            cache.push((name.to_owned(), id));
        }
        Ok(id)
    }

    fn cached_instance(&self, name: &str) -> Option<u64> {
        let cache = self.instances.lock().ok()?;
        cache.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    /// Whether one of `keys` (the client address, and its network) is whitelisted, seen within
    /// `period`; a hit is refreshed in the same statement.
    ///
    /// # Errors
    /// The database failed.
    pub async fn whitelist_hit(
        &self,
        instance: u64,
        keys: &[String],
        period: Duration,
    ) -> Result<bool, sqlx::Error> {
        let mut query: QueryBuilder<MySql> = QueryBuilder::new(
            "UPDATE greylist_whitelist SET last_seen = UTC_TIMESTAMP(6) WHERE cluegetter_instance = ",
        );
        query.push_bind(instance);
        query.push(" AND ip IN (");
        let mut list = query.separated(", ");
        for key in keys {
            list.push_bind(key.as_str());
        }
        query.push(") AND last_seen >= UTC_TIMESTAMP(6) - INTERVAL ");
        query.push_bind(micros(period));
        query.push(" MICROSECOND");
        let done = query.build().execute(self.pool()).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whitelists `key` (an address or a network) from now on.
    ///
    /// # Errors
    /// The database failed.
    pub async fn whitelist(&self, instance: u64, key: &str) -> Result<(), sqlx::Error> {
        let mut conn = self.pool().acquire().await?;
        whitelist(&mut conn, instance, key).await
    }

    /// Records an attempt of the message: upserts its triplets (a triplet unpassed for longer
    /// than `retry_window` starts over), reads them, and when every one is passed or older
    /// than `initial_period` marks them passed and whitelists `client` (and, with
    /// `auto_whitelist_after` > 0, the network once that many of its triplets passed).
    ///
    /// # Errors
    /// The database failed (deadlocks are retried first); nothing was recorded.
    pub async fn record_attempt(
        &self,
        instance: u64,
        triplets: &Triplets,
        client: &str,
        timing: Timing,
    ) -> Result<Attempt, sqlx::Error> {
        let outcome = self
            .run_record_attempt(instance, triplets, client, timing)
            .await;
        self.pool().report(outcome)
    }

    /// [`Self::record_attempt`], whose failure the caller reports to the database (a node that is gone
    /// makes it look for another).
    async fn run_record_attempt(
        &self,
        instance: u64,
        triplets: &Triplets,
        client: &str,
        timing: Timing,
    ) -> Result<Attempt, sqlx::Error> {
        let mut retries = ConflictRetries::new("greylisting transaction", ATTEMPTS);
        loop {
            let outcome = self
                .try_record_attempt(instance, triplets, client, timing)
                .await;
            if let Err(error) = &outcome
                && retries.again(error).await
            {
                continue;
            }
            return outcome;
        }
    }

    async fn try_record_attempt(
        &self,
        instance: u64,
        triplets: &Triplets,
        client: &str,
        timing: Timing,
    ) -> Result<Attempt, sqlx::Error> {
        let network = triplets.network.to_string();
        let mut tx = self.pool().begin().await?;

        let mut upsert: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO greylist_triplet \
             (cluegetter_instance, network, sender, recipient, first_seen, last_seen) ",
        );
        upsert.push_values(&triplets.recipients, |mut row, recipient| {
            row.push_bind(instance)
                .push_bind(network.as_str())
                .push_bind(triplets.sender.as_str())
                .push_bind(recipient.as_str())
                .push("UTC_TIMESTAMP(6)")
                .push("UTC_TIMESTAMP(6)");
        });
        // `first_seen` is assigned before `last_seen`, so it still compares the old value.
        upsert.push(
            " ON DUPLICATE KEY UPDATE first_seen = IF(passed_at IS NULL \
             AND first_seen < VALUES(last_seen) - INTERVAL ",
        );
        upsert.push_bind(micros(timing.retry_window));
        upsert.push(" MICROSECOND, VALUES(first_seen), first_seen), last_seen = VALUES(last_seen)");
        upsert.build().execute(&mut *tx).await?;

        let mut select: QueryBuilder<MySql> = QueryBuilder::new(
            "SELECT recipient, TIMESTAMPDIFF(MICROSECOND, first_seen, UTC_TIMESTAMP(6)) AS age, \
             passed_at IS NOT NULL AS passed FROM greylist_triplet WHERE cluegetter_instance = ",
        );
        select.push_bind(instance);
        push_key(&mut select, &network, triplets);
        let rows = select.build().fetch_all(&mut *tx).await?;
        let mut states = Vec::with_capacity(rows.len());
        for row in rows {
            let age: i64 = row.try_get("age")?;
            states.push(TripletState {
                recipient: row.try_get("recipient")?,
                age: Duration::from_micros(u64::try_from(age).unwrap_or(0)),
                passed: row.try_get::<i64, _>("passed")? != 0,
            });
        }
        let passed = !states.is_empty()
            && states
                .iter()
                .all(|t| t.passed || t.age >= timing.initial_period);

        let mut network_whitelisted = false;
        if passed {
            let mut mark: QueryBuilder<MySql> = QueryBuilder::new(
                "UPDATE greylist_triplet SET passed_at = COALESCE(passed_at, UTC_TIMESTAMP(6)) \
                 WHERE cluegetter_instance = ",
            );
            mark.push_bind(instance);
            push_key(&mut mark, &network, triplets);
            mark.build().execute(&mut *tx).await?;
            whitelist(&mut tx, instance, client).await?;
            if timing.auto_whitelist_after > 0 {
                let passed_here: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM greylist_triplet \
                     WHERE cluegetter_instance = ? AND network = ? AND passed_at IS NOT NULL",
                )
                .bind(instance)
                .bind(network.as_str())
                .fetch_one(&mut *tx)
                .await?;
                if passed_here >= i64::from(timing.auto_whitelist_after) {
                    whitelist(&mut tx, instance, &network).await?;
                    network_whitelisted = true;
                }
            }
        }
        tx.commit().await?;
        Ok(Attempt {
            triplets: states,
            passed,
            network_whitelisted,
        })
    }

    /// Deletes what can no longer matter: whitelist entries and passed triplets not seen for
    /// `whitelist_period`, and unpassed triplets first seen longer than `retry_window` ago (the
    /// next attempt would start them over anyway). At most `limit` rows per table and run.
    ///
    /// # Errors
    /// The database failed.
    pub async fn prune(
        &self,
        instance: u64,
        timing: Timing,
        whitelist_period: Duration,
        limit: u32,
    ) -> Result<u64, sqlx::Error> {
        let pool = self.pool();
        let triplets = sqlx::query(
            "DELETE FROM greylist_triplet WHERE cluegetter_instance = ? AND \
             (last_seen < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
              OR (passed_at IS NULL AND first_seen < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND)) \
             LIMIT ?",
        )
        .bind(instance)
        .bind(micros(whitelist_period))
        .bind(micros(timing.retry_window))
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected();
        let whitelist = sqlx::query(
            "DELETE FROM greylist_whitelist WHERE cluegetter_instance = ? AND \
             last_seen < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND LIMIT ?",
        )
        .bind(instance)
        .bind(micros(whitelist_period))
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected();
        Ok(triplets + whitelist)
    }
}

/// The durations a triplet is judged by.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub initial_period: Duration,
    pub retry_window: Duration,
    pub auto_whitelist_after: u32,
}

/// ` AND network = ? AND sender = ? AND recipient IN (…)`
fn push_key(query: &mut QueryBuilder<MySql>, network: &str, triplets: &Triplets) {
    query.push(" AND network = ");
    query.push_bind(network);
    query.push(" AND sender = ");
    query.push_bind(triplets.sender.as_str());
    query.push(" AND recipient IN (");
    let mut list = query.separated(", ");
    for recipient in &triplets.recipients {
        list.push_bind(recipient.as_str());
    }
    query.push(")");
}

async fn whitelist(
    conn: &mut MySqlConnection,
    instance: u64,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO greylist_whitelist (cluegetter_instance, ip, last_seen) \
         VALUES (?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE last_seen = VALUES(last_seen)",
    )
    .bind(instance)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whole microseconds, for `INTERVAL ? MICROSECOND` (saturating; no configured duration comes
/// near the limit).
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// The text an address is whitelisted under: IPv4-mapped IPv6 as IPv4 (as the archive stores
/// it).
pub fn address_key(ip: IpAddr) -> String {
    canonical(ip).to_string()
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The client's network: its address with the host bits cleared.
pub fn network(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> IpNet {
    let ip = canonical(ip);
    let prefix = match ip {
        IpAddr::V4(_) => ipv4_prefix.min(32),
        IpAddr::V6(_) => ipv6_prefix.min(128),
    };
    // The prefix is in range, so `new` cannot fail; the fallback is the address alone.
    IpNet::new(ip, prefix).map_or_else(|_| IpNet::from(ip), |net| net.trunc())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn networks_clear_the_host_bits_and_unmap_ipv4() {
        let net = |ip: &str| network(ip.parse().unwrap(), 24, 64).to_string();
        assert_eq!(net("198.51.100.7"), "198.51.100.0/24");
        assert_eq!(net("::ffff:198.51.100.7"), "198.51.100.0/24");
        assert_eq!(net("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(
            network("198.51.100.7".parse().unwrap(), 32, 128).to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            address_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
        // the longest text fits the 45-character columns
        let widest = network(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            24,
            128,
        );
        assert!(widest.to_string().len() <= 45, "{widest}");
    }

    #[test]
    fn triplets_are_lower_cased_unique_and_sorted() {
        let triplets = Triplets::new(
            "192.0.2.0/24".parse().unwrap(),
            "Alice@Example.ORG",
            &[
                "c@example.net".into(),
                "B@example.net".into(),
                "C@Example.net".into(),
            ],
        );
        assert_eq!(triplets.sender, "alice@example.org");
        assert_eq!(triplets.recipients, ["b@example.net", "c@example.net"]);
        let long = "x".repeat(400);
        assert_eq!(normalise(&long).chars().count(), ADDRESS_CHARS);
    }
}
