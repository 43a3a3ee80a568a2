//! `tandem demo`, the README's first command, runs the whole story on a fresh machine: it must
//! end with wallets and ledger agreeing, through the partner SDK, on SQLite and on PostgreSQL.

mod helpers;

use std::time::Duration;

use helpers::{TANDEM, storage_args};
use tandem_storage::testing::TestDatabase;
use tokio::process::Command;

/// A cold debug build on a busy 2-core machine is slow to start four processes.
const DEMO_DEADLINE: Duration = Duration::from_secs(180);

async fn run_demo(storage: Vec<String>) {
    let output = tokio::time::timeout(
        DEMO_DEADLINE,
        Command::new(TANDEM)
            .args(storage)
            .arg("demo")
            .env("TANDEM_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo finished before the deadline")
    .expect("run tandem demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tandem demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("H-1001 40070 SKYLINE_PTS, R-77 2500 ZOOM_MILES"),
        "{stdout}"
    );
    assert!(stdout.contains("Wallets and ledger agree"), "{stdout}");
    assert!(
        stdout.contains("Skyline Hotels nets -20.87 USD")
            && stdout.contains("Zoom Rides nets 20.54 USD"),
        "{stdout}"
    );
    assert!(
        stdout.contains("alice may not approve her own run; bob does"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "reconciles its own 2 records of the period: 2 match Tandem's, 0 discrepancies"
        ),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_demo_tells_the_whole_story_on_its_own_sqlite() {
    run_demo(Vec::new()).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
async fn the_demo_tells_the_whole_story_on_postgres() {
    let database = TestDatabase::postgres_required().await;
    run_demo(storage_args(&database)).await;
}
