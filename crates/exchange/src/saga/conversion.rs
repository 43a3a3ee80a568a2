//! A conversion's saga as a state machine: its states, its steps, and one pure function that
//! takes where the saga stands and what its step's call answered, and says where it stands next
//! and what the driver does about it. The driver (`crate::conversions`) only performs steps and
//! writes states; every decision is made here, where each one is unit-tested and a property test
//! crashes and resumes the saga at random points.
//!
//! The rules the function keeps:
//! - Every forward step's outcome is recorded, in the same write as the next step's intent,
//!   before the next step starts; a resumed saga continues from the last recorded step.
//! - A gateway's refusal never alone decides that points did not move: the call before it may
//!   have applied with no answer (or before a crash). So compensation always reverses by key
//!   every gateway step that was or may have been applied; a gateway voids a key it never saw.
//! - Once the ledger has the conversion's transaction the saga only goes forward.
//! - A reversal is all or nothing the same way: a refused or unanswered reversal step undoes,
//!   by key, the reversal steps before it, and the conversion stands COMPLETED.

pub(crate) use super::StepOutcome;
pub(crate) use super::UnknownValue;
use super::{MAX_UNKNOWN_ATTEMPTS, stored_names};

/// A conversion's status, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConversionStatus {
    Pending,
    Completed,
    Failed,
    Reversing,
    Reversed,
}

/// The next thing a conversion's saga does, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConversionStep {
    /// Debit the member at the source gateway.
    DebitSource,
    /// Credit the member at the target gateway.
    CreditTarget,
    /// Post the ledger transaction.
    PostLedger,
    /// Compensate: reverse the target credit by its key.
    UndoCredit,
    /// Compensate: reverse the source debit by its key.
    UndoDebit,
    /// Reversal: debit the member back at the target gateway.
    ReverseDebitTarget,
    /// Reversal: credit the member back at the source gateway.
    ReverseCreditSource,
    /// Reversal: reverse the ledger transaction.
    ReverseLedger,
    /// A reversal that cannot finish: undo its source credit by key.
    UndoReverseCredit,
    /// A reversal that cannot finish: undo its target debit by key.
    UndoReverseDebit,
    /// Nothing left to do.
    Done,
}

stored_names!(ConversionStatus, "status", {
    Pending => "PENDING",
    Completed => "COMPLETED",
    Failed => "FAILED",
    Reversing => "REVERSING",
    Reversed => "REVERSED",
});

stored_names!(ConversionStep, "step", {
    DebitSource => "DEBIT_SOURCE",
    CreditTarget => "CREDIT_TARGET",
    PostLedger => "POST_LEDGER",
    UndoCredit => "UNDO_CREDIT",
    UndoDebit => "UNDO_DEBIT",
    ReverseDebitTarget => "REVERSE_DEBIT_TARGET",
    ReverseCreditSource => "REVERSE_CREDIT_SOURCE",
    ReverseLedger => "REVERSE_LEDGER",
    UndoReverseCredit => "UNDO_REVERSE_CREDIT",
    UndoReverseDebit => "UNDO_REVERSE_DEBIT",
    Done => "DONE",
});

/// Which partner's gateway a step calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Source,
    Target,
}

/// The one call a step makes. Gateway keys are suffixes of `tandem:conversion:<id>:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// Credit (or debit) the member at `side` under `key`; `reversal` when it undoes the
    /// conversion at the member's request rather than carrying it out.
    Move {
        side: Side,
        credit: bool,
        key: &'static str,
        reversal: bool,
    },
    /// Reverse, under `key`, the movement made (or never made) under `original`.
    Reverse {
        side: Side,
        key: &'static str,
        original: &'static str,
    },
    /// Post the conversion's ledger transaction.
    PostLedger,
    /// Reverse the conversion's ledger transaction.
    ReverseLedger,
    /// Nothing: the saga is over.
    Nothing,
}

impl ConversionStep {
    /// The call this step makes.
    pub(crate) fn call(self) -> Call {
        use ConversionStep as Step;
        let moved = |side, credit, key, reversal| Call::Move {
            side,
            credit,
            key,
            reversal,
        };
        let reverse = |side, key, original| Call::Reverse {
            side,
            key,
            original,
        };
        match self {
            Step::DebitSource => moved(Side::Source, false, "debit", false),
            Step::CreditTarget => moved(Side::Target, true, "credit", false),
            Step::PostLedger => Call::PostLedger,
            Step::UndoCredit => reverse(Side::Target, "credit:undo", "credit"),
            Step::UndoDebit => reverse(Side::Source, "debit:undo", "debit"),
            Step::ReverseDebitTarget => moved(Side::Target, false, "reverse:debit", true),
            Step::ReverseCreditSource => moved(Side::Source, true, "reverse:credit", true),
            Step::ReverseLedger => Call::ReverseLedger,
            Step::UndoReverseCredit => {
                reverse(Side::Source, "reverse:credit:undo", "reverse:credit")
            }
            Step::UndoReverseDebit => reverse(Side::Target, "reverse:debit:undo", "reverse:debit"),
            Step::Done => Call::Nothing,
        }
    }
}

/// Where a conversion's saga stands: everything its row says about the saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConversionSaga {
    pub status: ConversionStatus,
    pub step: ConversionStep,
    /// Unanswered (or refused, for steps that may not give up) calls of the current step.
    pub attempts: i64,
    pub last_error: String,
    /// Why the conversion failed, or why its reversal was refused; empty otherwise.
    pub failure_reason: String,
    pub ledger_transaction_id: String,
    pub reversal_transaction_id: String,
}

impl ConversionSaga {
    /// A conversion just executed: nothing done yet.
    pub(crate) fn start() -> Self {
        Self {
            status: ConversionStatus::Pending,
            step: ConversionStep::DebitSource,
            attempts: 0,
            last_error: String::new(),
            failure_reason: String::new(),
            ledger_transaction_id: String::new(),
            reversal_transaction_id: String::new(),
        }
    }

    /// A completed conversion about to be reversed.
    pub(crate) fn start_reversal(mut self) -> Self {
        self.status = ConversionStatus::Reversing;
        self.step = ConversionStep::ReverseDebitTarget;
        self.attempts = 0;
        self.last_error.clear();
        self
    }

    pub(crate) fn is_done(&self) -> bool {
        self.step == ConversionStep::Done
    }
}

/// What the driver does after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Write the new state (the outcome and the next step's intent) before going on.
    Record,
    /// Write the final state; the saga is over.
    Finish,
    /// Ask again: the same step, one more attempt counted. The driver pauses, and parks the saga
    /// with its attempts written after a few tries.
    Retry,
}

/// The pure transition: where the saga goes from `saga` when its step answered `outcome`.
pub(crate) fn next(saga: &ConversionSaga, outcome: StepOutcome) -> (ConversionSaga, Action) {
    let (refused, error) = match outcome {
        StepOutcome::Applied { transaction_id } => {
            return applied(saga, transaction_id.unwrap_or_default());
        }
        StepOutcome::Refused(reason) => (true, reason),
        StepOutcome::Unknown(error) => (false, error),
    };
    let mut after = saga.clone();
    let compensation = compensation(saga, refused, &error);
    if let Some((status, step, reason)) = compensation {
        after.failure_reason = reason;
        return (moved(after, status, step), Action::Record);
    }
    // Steps that may not give up (the ledger post once the points moved, every undo, the
    // reversal's ledger step) ask again for as long as it takes; a refusal there is a partner
    // breaking the gateway contract, shown to ops as the last error.
    after.attempts += 1;
    after.last_error = if refused {
        format!("{} was refused ({error}); ops must look", saga.step)
    } else {
        error
    };
    (after, Action::Retry)
}

/// Where a step that was refused (or, if it may give up, went unanswered too often) hands over:
/// the compensation that undoes, by key, everything that was or may have been applied so far.
/// `None` for steps that never give up.
fn compensation(
    saga: &ConversionSaga,
    refused: bool,
    error: &str,
) -> Option<(ConversionStatus, ConversionStep, String)> {
    use ConversionStatus as Status;
    use ConversionStep as Step;
    let gave_up = !refused && saga.attempts + 1 >= MAX_UNKNOWN_ATTEMPTS;
    let no_answer = || format!("no answer after {} attempts: {error}", saga.attempts + 1);
    // Where a failed step hands over, if it may give up: the compensation that undoes, by key,
    // everything that was or may have been applied so far.
    match saga.step {
        Step::DebitSource if refused => Some((
            Status::Pending,
            Step::UndoDebit,
            format!("the source partner refused the debit: {error}"),
        )),
        Step::DebitSource if gave_up => Some((
            Status::Pending,
            Step::UndoDebit,
            format!("the source partner's gateway gave {}", no_answer()),
        )),
        Step::CreditTarget if refused => Some((
            Status::Pending,
            Step::UndoCredit,
            format!("the target partner refused the credit: {error}"),
        )),
        Step::CreditTarget if gave_up => Some((
            Status::Pending,
            Step::UndoCredit,
            format!("the target partner's gateway gave {}", no_answer()),
        )),
        // Only a refusal of the request itself: the ledger answers a key it holds with its
        // transaction, so it cannot hold this one.
        Step::PostLedger if refused => Some((
            Status::Pending,
            Step::UndoCredit,
            format!("the ledger refused the conversion: {error}"),
        )),
        Step::ReverseDebitTarget if refused => Some((
            Status::Reversing,
            Step::UndoReverseDebit,
            format!("reversal refused: the target partner refused the debit: {error}"),
        )),
        Step::ReverseDebitTarget if gave_up => Some((
            Status::Reversing,
            Step::UndoReverseDebit,
            format!(
                "reversal abandoned: the target partner's gateway gave {}",
                no_answer()
            ),
        )),
        Step::ReverseCreditSource if refused => Some((
            Status::Reversing,
            Step::UndoReverseCredit,
            format!("reversal refused: the source partner refused the credit: {error}"),
        )),
        Step::ReverseCreditSource if gave_up => Some((
            Status::Reversing,
            Step::UndoReverseCredit,
            format!(
                "reversal abandoned: the source partner's gateway gave {}",
                no_answer()
            ),
        )),
        _ => None,
    }
}

/// Where a step that applied leads.
fn applied(saga: &ConversionSaga, transaction_id: String) -> (ConversionSaga, Action) {
    use ConversionStatus as Status;
    use ConversionStep as Step;
    let mut after = saga.clone();
    let (status, step) = match saga.step {
        Step::DebitSource => (Status::Pending, Step::CreditTarget),
        Step::CreditTarget => (Status::Pending, Step::PostLedger),
        Step::PostLedger => {
            after.ledger_transaction_id = transaction_id;
            (Status::Completed, Step::Done)
        }
        Step::UndoCredit => (Status::Pending, Step::UndoDebit),
        Step::UndoDebit => (Status::Failed, Step::Done),
        Step::ReverseDebitTarget => (Status::Reversing, Step::ReverseCreditSource),
        Step::ReverseCreditSource => (Status::Reversing, Step::ReverseLedger),
        Step::ReverseLedger => {
            after.reversal_transaction_id = transaction_id;
            (Status::Reversed, Step::Done)
        }
        Step::UndoReverseCredit => (Status::Reversing, Step::UndoReverseDebit),
        // The reversal is undone: the conversion stands, with why in failure_reason.
        Step::UndoReverseDebit => (Status::Completed, Step::Done),
        Step::Done => return (after, Action::Finish),
    };
    let action = if step == Step::Done {
        Action::Finish
    } else {
        Action::Record
    };
    (moved(after, status, step), action)
}

fn moved(
    mut saga: ConversionSaga,
    status: ConversionStatus,
    step: ConversionStep,
) -> ConversionSaga {
    saga.status = status;
    saga.step = step;
    saga.attempts = 0;
    saga.last_error.clear();
    saga
}

#[cfg(test)]
mod tests;
