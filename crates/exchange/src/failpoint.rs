//! The moments of a conversion where an end-to-end test can stop the process
//! (`tandem_storage::test_pause`).

use crate::saga::conversion::ConversionStep;

pub(crate) use tandem_storage::test_pause::pause_at;

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
