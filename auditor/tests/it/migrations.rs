//! `auditor::migrate`: creates, applies once, refuses a newer schema.

use std::time::{SystemTime, UNIX_EPOCH};

use auditor::MigrateError;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool};
use test_support::TestDb;

async fn tables(pool: &MySqlPool) -> Vec<String> {
    let mut names: Vec<String> = sqlx::query_scalar(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    names.sort();
    names
}

#[tokio::test]
async fn migrate_creates_the_database_and_a_second_run_is_a_no_op() {
    test_support::init_test_logging();
    // named like test-support's databases, so a failed run is swept later
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let random = uuid::Uuid::now_v7().simple().to_string();
    let name = format!("cgt_{secs}_{}", &random[20..]);
    let url = format!("mysql://root@127.0.0.1:3306/{name}");

    auditor::migrate(&url).await.unwrap();
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let after_first = tables(&pool).await;
    // other processes' migrations (quotas, ...) add their tables beside the archive's
    for archive_table in [
        "_sqlx_migrations",
        "cluegetter_client",
        "instance",
        "message",
        "message_body",
        "message_header",
        "message_recipient",
        "message_result",
        "recipient",
        "session",
    ] {
        assert!(
            after_first.iter().any(|t| t == archive_table),
            "{archive_table}: {after_first:?}"
        );
    }
    let seed: (u64, String, String) = sqlx::query_as("SELECT id, name, description FROM instance")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seed, (1, "default".into(), "The Default Instance".into()));
    let applied_first: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let known: Vec<(i64, bool)> = auditor::migrate::MIGRATOR
        .iter()
        .map(|m| (m.version, true))
        .collect();
    assert_eq!(
        applied_first, known,
        "every migration of schema/ applied once"
    );
    assert_eq!(applied_first[0].0, 1, "0001_archive comes first");

    auditor::migrate(&url).await.unwrap();
    assert_eq!(tables(&pool).await, after_first);
    let applied_second: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(applied_second, applied_first);
    let instances: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instance")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(instances, 1, "the seed row is not inserted twice");

    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE `{name}`")))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_with_a_migration_newer_than_this_build_is_refused() {
    test_support::init_test_logging();
    let db = TestDb::empty().await.unwrap();
    auditor::migrate(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let error = auditor::migrate(&db.url).await.unwrap_err();
    let latest = auditor::migrate::latest_known();
    assert!(
        matches!(error, MigrateError::SchemaNewer { found: 9999, known } if known == latest),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert!(
        error.to_string().contains("newer than this auditor knows"),
        "{error}"
    );
}

#[tokio::test]
async fn a_database_migrated_by_test_support_is_up_to_date_for_the_auditor() {
    let db = TestDb::migrated().await.unwrap();
    auditor::migrate(&db.url).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error() {
    let error = auditor::migrate("mysql://root@127.0.0.1:1/cluegetter")
        .await
        .unwrap_err();
    assert!(
        matches!(error, MigrateError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
}

/// With a list of database nodes an auditor only checks the schema (sqlx's migration lock is
/// not replicated by Galera): a missing or older schema is `Behind` (transient: it waits for
/// `auditor migrate`) and nothing is created; the first node that answers is the one asked.
#[tokio::test]
async fn a_list_of_nodes_is_checked_and_never_migrated_by_the_check() {
    let db = TestDb::empty().await.unwrap();
    let dead = "mysql://root@127.0.0.1:1/cluegetter".to_owned();
    let urls = platform::config::Urls::new(dead.clone(), [db.url.clone()]);
    let error = auditor::migrate::check(urls.clone()).await.unwrap_err();
    assert!(
        matches!(error, MigrateError::Behind { applied: 0, .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert!(
        error.to_string().contains("run `auditor migrate`"),
        "{error}"
    );
    assert_eq!(
        tables(&db.pool).await,
        Vec::<String>::new(),
        "nothing created"
    );

    auditor::migrate(urls.clone()).await.unwrap();
    auditor::migrate::check(urls).await.unwrap();
    // every node down: unreachable, transient
    let error = auditor::migrate::check(platform::config::Urls::new(dead, []))
        .await
        .unwrap_err();
    assert!(
        matches!(error, MigrateError::Unreachable { .. }),
        "{error:?}"
    );
}

/// Galera replicates row changes by primary key: a table without one replicates badly (full
/// scans on every node) or not at all. Every table the schema creates has one, sqlx's own
/// bookkeeping table included.
#[tokio::test]
async fn every_table_has_a_primary_key() {
    let db = TestDb::migrated().await.unwrap();
    let without: Vec<String> = sqlx::query_scalar(
        "SELECT t.TABLE_NAME FROM information_schema.TABLES t \
         WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE = 'BASE TABLE' \
         AND NOT EXISTS (SELECT 1 FROM information_schema.TABLE_CONSTRAINTS c \
                         WHERE c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME \
                         AND c.CONSTRAINT_TYPE = 'PRIMARY KEY') \
         ORDER BY t.TABLE_NAME",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        without.is_empty(),
        "tables without a primary key: {without:?}"
    );
    let engines: Vec<(String, String)> = sqlx::query_as(
        "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' AND ENGINE <> 'InnoDB'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        engines.is_empty(),
        "Galera replicates InnoDB only: {engines:?}"
    );
}
