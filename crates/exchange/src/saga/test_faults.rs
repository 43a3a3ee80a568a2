//! How a model gateway misbehaves in the sagas' property tests, shared by both.

use proptest::prelude::*;

use super::StepOutcome;

/// How one call misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    /// An honest refusal: a key the gateway has not stored is refused.
    RefuseNew,
    /// A gateway that forgot: refuses whatever it stored.
    Forgetful,
    /// No answer, nothing applied.
    Lost,
    /// Applied, then no answer.
    AppliedThenLost,
}

/// Mostly well-behaved calls, with every fault in the mix.
pub(crate) fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => Just(Fault::None),
        1 => Just(Fault::RefuseNew),
        1 => Just(Fault::Forgetful),
        1 => Just(Fault::Lost),
        1 => Just(Fault::AppliedThenLost),
    ]
}

/// What a gateway answers under `fault` when it has (`applied`) or has not applied the key.
pub(crate) fn gateway_answer(applied: bool, fault: Fault) -> StepOutcome {
    match fault {
        Fault::Forgetful => StepOutcome::Refused("forgot".to_owned()),
        Fault::Lost | Fault::AppliedThenLost => StepOutcome::Unknown("lost".to_owned()),
        _ if applied => StepOutcome::Applied {
            transaction_id: None,
        },
        _ => StepOutcome::Refused("refused".to_owned()),
    }
}
