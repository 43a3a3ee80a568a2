//! A named moment in a saga where an end-to-end test can stop the process: the test sets
//! `TANDEM_TEST_PAUSE_AT` to the moment's name and `TANDEM_TEST_PAUSE_FILE` to a path; a driver
//! that reaches the moment creates the file and waits there for good, so the test knows the
//! process stands exactly there when it kills it (after a step applied, before its record
//! landed). Unset, as in every deployment, a moment costs one comparison with nothing.

use std::{path::PathBuf, sync::OnceLock};

use crate::saga::conversion::ConversionStep;

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

/// The moments of a conversion a test can stop at: after a step applied, before its outcome is
/// recorded. `conversion-debited`: the source debit applied, CREDIT_TARGET not yet recorded.
/// `conversion-posted`: the ledger transaction posted, COMPLETED not yet recorded.
pub(crate) fn conversion_moment(
    applied: ConversionStep,
    next: ConversionStep,
) -> Option<&'static str> {
    match (applied, next) {
        (ConversionStep::DebitSource, ConversionStep::CreditTarget) => Some("conversion-debited"),
        (ConversionStep::PostLedger, ConversionStep::Done) => Some("conversion-posted"),
        _ => None,
    }
}

/// Waits here for good if a test asked to pause at `moment`.
pub(crate) async fn pause_at(moment: &str) {
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
