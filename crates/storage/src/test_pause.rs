//! A named moment where an end-to-end test can stop a process: the test sets
//! `TANDEM_TEST_PAUSE_AT` to the moment's name and `TANDEM_TEST_PAUSE_FILE` to a path; code that
//! reaches the moment creates the file and waits there for good, so the test knows the process
//! stands exactly there when it kills it (after a step applied, before its record landed). Unset,
//! as in every deployment, a moment costs one comparison with nothing. It lives here because
//! every service that writes twice (the exchange's sagas, settlement's posts) has such moments.

use std::{path::PathBuf, sync::OnceLock};

struct Pause {
    at: String,
    file: PathBuf,
}

fn configured() -> Option<&'static Pause> {
    static PAUSE: OnceLock<Option<Pause>> = OnceLock::new();
    PAUSE
        .get_or_init(|| {
            let at = std::env::var("TANDEM_TEST_PAUSE_AT").ok()?;
            let file = std::env::var_os("TANDEM_TEST_PAUSE_FILE")?;
            Some(Pause {
                at,
                file: file.into(),
            })
        })
        .as_ref()
}

/// Waits here for good if a test asked to pause at `moment`.
pub async fn pause_at(moment: &str) {
    let Some(pause) = configured() else {
        return;
    };
    if pause.at != moment {
        return;
    }
    tracing::warn!(moment, "paused for a test");
    if let Err(error) = std::fs::write(&pause.file, moment) {
        tracing::error!(%error, "could not tell the test where the process paused");
    }
    std::future::pending::<()>().await;
}
