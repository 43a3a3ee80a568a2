// `sqlx::migrate!` embeds the migrations when this crate compiles, but Cargo does not know a new
// file in `migrations/` changes the crate: without this, a build after adding a migration would
// keep the old list and never apply it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
