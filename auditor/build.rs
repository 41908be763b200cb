//! Rebuilds when `schema/` changes: `sqlx::migrate!` embeds the migration files, and cargo would
//! otherwise not notice a migration that was added.

fn main() {
    println!("cargo:rerun-if-changed=../schema");
}
