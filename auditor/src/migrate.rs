//! Creating the database and applying `schema/`, the migrations embedded at build time.
//!
//! A database that has a migration this build does not know was migrated by a newer auditor; this
//! one refuses it rather than write rows the newer schema may not expect. Migrations are applied
//! under sqlx's lock (`GET_LOCK`), so auditors starting together apply each one once.

use platform::config::Urls;
use platform::database::is_connection_error;
use sqlx::migrate::{MigrateDatabase as _, Migrator};
use sqlx::mysql::{MySql, MySqlConnectOptions};
use sqlx::{ConnectOptions as _, Connection as _};

/// The migrations of `schema/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../schema");

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database server could not be reached or refused us; worth trying again.
    #[error("cannot reach the database at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// A newer auditor has migrated this database.
    #[error(
        "the database has schema version {found}, newer than this auditor knows (up to {known}): \
         run an auditor at least as new as the one that migrated it"
    )]
    SchemaNewer { found: i64, known: i64 },
    /// An applied migration this build does not have, older than its newest one.
    #[error(
        "the database has migration {version}, which this auditor does not have (it knows up to \
         {known})"
    )]
    UnknownMigration { version: i64, known: i64 },
    /// `database.url` cannot be used.
    #[error("invalid database URL")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("cannot apply the schema migrations")]
    Apply(#[source] sqlx::migrate::MigrateError),
    /// The schema is older than this build's (or missing), and this auditor may not change it
    /// (`[database] url` is a list: only `auditor migrate` does then).
    #[error(
        "the database schema is at version {applied}, this auditor needs {known}: run `auditor \
         migrate` (with a list of database nodes an auditor never changes the schema itself)"
    )]
    Behind { applied: i64, known: i64 },
}

impl MigrateError {
    /// Whether trying again later may succeed (the server was down), as opposed to a schema or
    /// configuration problem that needs a person.
    pub fn is_transient(&self) -> bool {
        match self {
            // someone runs `auditor migrate`, and this auditor goes on
            MigrateError::Unreachable { .. } | MigrateError::Behind { .. } => true,
            MigrateError::Apply(sqlx::migrate::MigrateError::Execute(error)) => {
                is_connection_error(error)
            }
            _ => false,
        }
    }
}

/// The newest migration version this build has.
pub fn latest_known() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Creates the database if it is missing, then applies every migration of `schema/` it lacks.
/// Applying is a no-op on an up-to-date database. With a list of servers (a Galera cluster's
/// nodes), the first that can be reached is migrated; Galera replicates the schema changes to
/// the others (total order isolation). This is the only place that changes the schema: no
/// other process creates or alters a table.
///
/// # Errors
/// No server is reachable ([`MigrateError::is_transient`]), the database has a migration this
/// build does not know ([`MigrateError::SchemaNewer`]), or a migration fails.
pub async fn migrate(urls: impl Into<Urls>) -> Result<(), MigrateError> {
    let urls = urls.into();
    let mut nodes = urls.as_slice().iter().peekable();
    while let Some(url) = nodes.next() {
        match migrate_one(url).await {
            Err(error @ MigrateError::Unreachable { .. }) if nodes.peek().is_some() => {
                tracing::warn!(
                    error = %error,
                    "cannot reach this database node; trying the next"
                );
            }
            done => return done,
        }
    }
    // `Urls` is never empty
    Err(MigrateError::InvalidUrl(sqlx::Error::Configuration(
        "no database URL".into(),
    )))
}

/// Whether the schema of the first reachable node is this build's, changing nothing: what an
/// auditor does at start when `[database] url` is a list. sqlx's migration lock (`GET_LOCK`) is
/// not replicated by Galera and MariaDB's DDL is not transactional, so two auditors starting on
/// two nodes must not both migrate: only `auditor migrate` changes a cluster's schema.
///
/// # Errors
/// No node is reachable, the schema is behind ([`MigrateError::Behind`]; both transient: try
/// again) or newer than this build.
pub async fn check(urls: impl Into<Urls>) -> Result<(), MigrateError> {
    let urls = urls.into();
    let mut last = None;
    for url in urls.as_slice() {
        match check_one(url).await {
            Err(error @ MigrateError::Unreachable { .. }) => {
                tracing::warn!(%error, "cannot reach this database node; trying the next");
                last = Some(error);
            }
            done => return done,
        }
    }
    Err(
        last.unwrap_or(MigrateError::InvalidUrl(sqlx::Error::Configuration(
            "no database URL".into(),
        ))),
    )
}

async fn check_one(database_url: &str) -> Result<(), MigrateError> {
    let shown = platform::broker::redact(database_url);
    let options: MySqlConnectOptions = database_url.parse().map_err(MigrateError::InvalidUrl)?;
    let known = latest_known();
    if !MySql::database_exists(database_url)
        .await
        .map_err(|source| MigrateError::Unreachable {
            url: shown.clone(),
            source,
        })?
    {
        return Err(MigrateError::Behind { applied: 0, known });
    }
    let mut conn = options
        .connect()
        .await
        .map_err(|source| MigrateError::Unreachable {
            url: shown.clone(),
            source,
        })?;
    refuse_unknown_migrations(&mut conn).await?;
    let applied = applied_versions(&mut conn).await?;
    let _ = conn.close().await;
    if MIGRATOR.iter().any(|m| !applied.contains(&m.version)) {
        return Err(MigrateError::Behind {
            applied: applied.last().copied().unwrap_or(0),
            known,
        });
    }
    tracing::info!(version = known, "database schema is up to date");
    Ok(())
}

async fn migrate_one(database_url: &str) -> Result<(), MigrateError> {
    let shown = platform::broker::redact(database_url);
    let unreachable = |source| MigrateError::Unreachable {
        url: shown.clone(),
        source,
    };
    let options: MySqlConnectOptions = database_url.parse().map_err(MigrateError::InvalidUrl)?;
    if options.get_database().is_none() {
        return Err(MigrateError::InvalidUrl(sqlx::Error::Configuration(
            "the URL names no database".into(),
        )));
    }
    if !MySql::database_exists(database_url)
        .await
        .map_err(unreachable)?
    {
        match MySql::create_database(database_url).await {
            Ok(()) => tracing::info!(database = %shown, "created the database"),
            // another auditor created it at the same moment
            Err(error) if MySql::database_exists(database_url).await.unwrap_or(false) => {
                tracing::debug!(%error, "the database appeared while creating it");
            }
            Err(error) => return Err(unreachable(error)),
        }
    }
    let mut conn = options
        .timezone(Some("+00:00".to_owned()))
        .connect()
        .await
        .map_err(unreachable)?;
    refuse_unknown_migrations(&mut conn).await?;
    let before = applied_versions(&mut conn).await?;
    MIGRATOR.run(&mut conn).await.map_err(|error| match error {
        // a newer auditor migrated between our check and sqlx's
        sqlx::migrate::MigrateError::VersionMissing(version) => unknown(version),
        other => MigrateError::Apply(other),
    })?;
    for migration in MIGRATOR.iter().filter(|m| !before.contains(&m.version)) {
        tracing::info!(
            version = migration.version,
            description = %migration.description,
            "applied migration"
        );
    }
    tracing::info!(version = latest_known(), "database schema is up to date");
    let _ = conn.close().await;
    Ok(())
}

fn unknown(version: i64) -> MigrateError {
    let known = latest_known();
    if version > known {
        MigrateError::SchemaNewer {
            found: version,
            known,
        }
    } else {
        MigrateError::UnknownMigration { version, known }
    }
}

/// The versions in `_sqlx_migrations`, or none when the table does not exist yet.
async fn applied_versions(conn: &mut sqlx::MySqlConnection) -> Result<Vec<i64>, MigrateError> {
    let read = |source| MigrateError::Apply(sqlx::migrate::MigrateError::Execute(source));
    let has_table: bool = sqlx::query_scalar(
        "SELECT EXISTS(SELECT 1 FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '_sqlx_migrations')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(read)?;
    if !has_table {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .map_err(read)
}

/// Fails on the newest applied migration this build does not have.
async fn refuse_unknown_migrations(conn: &mut sqlx::MySqlConnection) -> Result<(), MigrateError> {
    let applied = applied_versions(conn).await?;
    match applied
        .into_iter()
        .rev()
        .find(|v| !MIGRATOR.version_exists(*v))
    {
        Some(version) => Err(unknown(version)),
        None => Ok(()),
    }
}
