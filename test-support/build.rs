//! `sqlx::migrate!("../schema")` embeds the migration files; rebuild when one is added.
fn main() {
    println!("cargo:rerun-if-changed=../schema");
}
