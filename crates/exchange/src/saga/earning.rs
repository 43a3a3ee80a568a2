//! An earning's saga as a state machine, as [`super::conversion`] is a conversion's: its
//! statuses, its steps, and one pure function from where it stands and what its step answered to
//! where it goes next. The driver (`crate::earn`) performs steps and writes states.
//!
//! Without a hold the ledger goes first (`POST`), then the member's credit (`CREDIT`), the last
//! movement: a refusal of the credit, which may follow a credit that applied without an answer,
//! is reversed by key (`UNDO_CREDIT`) and the posted transaction reversed (`REVERSE_FAILED`).
//! With a hold the ledger holds the price PENDING (`POST_HOLD`) until the hold ends
//! (`WAIT_HOLD`); then the member is credited (`RELEASE_CREDIT`) and the pending transaction
//! posted (`RELEASE_POST`), or on a refusal the credit is reversed by key and the pending one
//! voided (`VOID_FAILED`). A refund inside the hold voids it (`VOID`); after posting, the points
//! are debited back (`CLAWBACK`) and the transaction reversed (`REVERSE_LEDGER`), or on a refusal
//! the clawback is reversed by key (`UNDO_CLAWBACK`) and the earning stays paid for.

pub(crate) use super::StepOutcome;
use super::{UnknownValue, stored_names};

/// An earning's status, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EarningStatus {
    Crediting,
    Held,
    Posted,
    Voided,
    Reversed,
    ClawingBack,
    Failed,
    ClawbackRefused,
    NotEarned,
}

/// The next thing an earning's saga does, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EarningStep {
    Post,
    Credit,
    UndoCredit,
    ReverseFailed,
    PostHold,
    WaitHold,
    ReleaseCredit,
    ReleasePost,
    Void,
    VoidFailed,
    Clawback,
    UndoClawback,
    ReverseLedger,
    Done,
}

stored_names!(EarningStatus, "earning status", {
    Crediting => "CREDITING",
    Held => "HELD",
    Posted => "POSTED",
    Voided => "VOIDED",
    Reversed => "REVERSED",
    ClawingBack => "CLAWING_BACK",
    Failed => "FAILED",
    ClawbackRefused => "CLAWBACK_REFUSED",
    NotEarned => "NOT_EARNED",
});

stored_names!(EarningStep, "earning step", {
    Post => "POST",
    Credit => "CREDIT",
    UndoCredit => "UNDO_CREDIT",
    ReverseFailed => "REVERSE_FAILED",
    PostHold => "POST_HOLD",
    WaitHold => "WAIT_HOLD",
    ReleaseCredit => "RELEASE_CREDIT",
    ReleasePost => "RELEASE_POST",
    Void => "VOID",
    VoidFailed => "VOID_FAILED",
    Clawback => "CLAWBACK",
    UndoClawback => "UNDO_CLAWBACK",
    ReverseLedger => "REVERSE_LEDGER",
    Done => "DONE",
});

/// The one call a step makes. Keys are suffixes of `tandem:earning:<id>:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// Post the earning's ledger transaction under `key`: PENDING while it is held.
    Post { key: &'static str, pending: bool },
    /// Credit (or, for a clawback, debit) the member at the target's gateway under `key`.
    Move { credit: bool, key: &'static str },
    /// Reverse, under `key`, the movement made (or never made) under `original`.
    Reverse {
        key: &'static str,
        original: &'static str,
    },
    /// Post (or void) the pending transaction under `key`.
    Resolve { key: &'static str, post: bool },
    /// Reverse the posted transaction under `key`, saying why.
    ReverseLedger {
        key: &'static str,
        reason: &'static str,
    },
    /// Nothing: waiting for the hold, or the saga is over.
    Nothing,
}

impl EarningStep {
    /// The call this step makes.
    pub(crate) fn call(self) -> Call {
        use EarningStep as Step;
        match self {
            Step::Post => Call::Post {
                key: "ledger",
                pending: false,
            },
            Step::PostHold => Call::Post {
                key: "hold",
                pending: true,
            },
            Step::Credit | Step::ReleaseCredit => Call::Move {
                credit: true,
                key: "credit",
            },
            Step::Clawback => Call::Move {
                credit: false,
                key: "clawback",
            },
            Step::UndoCredit => Call::Reverse {
                key: "credit:undo",
                original: "credit",
            },
            Step::UndoClawback => Call::Reverse {
                key: "clawback:undo",
                original: "clawback",
            },
            Step::ReleasePost => Call::Resolve {
                key: "release",
                post: true,
            },
            Step::Void | Step::VoidFailed => Call::Resolve {
                key: "void",
                post: false,
            },
            Step::ReverseFailed => Call::ReverseLedger {
                key: "reverse:failed",
                reason: "the target partner refused the credit",
            },
            Step::ReverseLedger => Call::ReverseLedger {
                key: "reverse",
                reason: "the purchase was refunded",
            },
            Step::WaitHold | Step::Done => Call::Nothing,
        }
    }
}

/// Where an earning's saga stands: what its row says about the saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EarningSaga {
    pub status: EarningStatus,
    pub step: EarningStep,
    pub attempts: i64,
    pub last_error: String,
    /// Why it earned nothing, failed, or could not be clawed back.
    pub note: String,
    /// The posted (or, while held, pending) ledger transaction; empty before the ledger has it.
    pub ledger_transaction_id: String,
}

impl EarningSaga {
    /// An earning just recorded, with a hold or without.
    pub(crate) fn start(held: bool) -> Self {
        let (status, step) = if held {
            (EarningStatus::Held, EarningStep::PostHold)
        } else {
            (EarningStatus::Crediting, EarningStep::Post)
        };
        Self {
            status,
            step,
            attempts: 0,
            last_error: String::new(),
            note: String::new(),
            ledger_transaction_id: String::new(),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.step == EarningStep::Done
    }
}

/// What the saga knows besides its own state when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The purchase was refunded.
    pub refund_requested: bool,
    /// The earning was held, so its ledger transaction is (or was) PENDING.
    pub held: bool,
    /// The hold has ended (only read at `WAIT_HOLD`).
    pub hold_over: bool,
}

/// What the driver does after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Go on to the next step at once, recording nothing: the step is safe to repeat from the
    /// last record (each call is idempotent by its key, and nothing after it compensates).
    Continue,
    /// Record the new state before the next step starts.
    Record,
    /// Record the final state; the saga is over.
    Finish,
    /// Record the state and leave the saga until its hold ends.
    WaitForHold,
    /// Ask again: the same step, one more attempt counted.
    Retry,
}

/// The ledger's reason for a pending transaction past its timeout, which leads its refusals.
pub(crate) const PENDING_EXPIRED: &str = "PENDING_EXPIRED";

/// The pure transition of an earning's saga.
pub(crate) fn next(
    saga: &EarningSaga,
    facts: Facts,
    outcome: StepOutcome,
) -> (EarningSaga, Action) {
    let (refused, error) = match outcome {
        StepOutcome::Applied { transaction_id } => return applied(saga, facts, transaction_id),
        StepOutcome::Refused(reason) => (true, reason),
        StepOutcome::Unknown(error) => (false, error),
    };
    let mut after = saga.clone();
    let refusal = match saga.step {
        EarningStep::Credit | EarningStep::ReleaseCredit if refused => Some((
            EarningStep::UndoCredit,
            format!("the target partner refused the credit: {error}"),
        )),
        EarningStep::Clawback if refused => Some((
            EarningStep::UndoClawback,
            format!(
                "the target partner refused to take the points back ({error}); they stay \
                 earned and paid for"
            ),
        )),
        // The pending transaction can no longer be posted (its hold outlived the ledger's
        // timeout): the credit just made is undone by key, then the pending one voided.
        EarningStep::ReleasePost if refused => Some((
            EarningStep::UndoCredit,
            format!("the held transaction could not be posted: {error}"),
        )),
        _ => None,
    };
    if let Some((step, note)) = refusal {
        after.note = note;
        return (moved(after, saga.status, step), Action::Record);
    }
    // A pending transaction that expired holds nothing: voiding it is done.
    if refused
        && matches!(saga.step, EarningStep::Void | EarningStep::VoidFailed)
        && error.starts_with(PENDING_EXPIRED)
    {
        return applied(saga, facts, None);
    }
    // Every other step asks again for as long as it takes: the ledger steps and the undoing of
    // a movement have no way back, and an unanswered credit or clawback may have applied.
    after.attempts += 1;
    after.last_error = if refused {
        format!("{} was refused ({error}); ops must look", saga.step)
    } else {
        error
    };
    (after, Action::Retry)
}

/// Where a step that applied leads.
fn applied(
    saga: &EarningSaga,
    facts: Facts,
    transaction_id: Option<String>,
) -> (EarningSaga, Action) {
    use Action::{Continue, Finish, Record, WaitForHold};
    use EarningStatus as Status;
    use EarningStep as Step;
    let mut after = saga.clone();
    if matches!(saga.step, Step::Post | Step::PostHold | Step::ReleasePost) {
        after.ledger_transaction_id = transaction_id.unwrap_or_default();
    }
    // Posted: done, unless a refund came meanwhile and the points go back.
    let posted = if facts.refund_requested {
        (Status::ClawingBack, Step::Clawback, Record)
    } else {
        (Status::Posted, Step::Done, Finish)
    };
    let (status, step, action) = match saga.step {
        Step::Post => (Status::Crediting, Step::Credit, Continue),
        // An earning recorded when the credit went first has not posted yet.
        Step::Credit if saga.ledger_transaction_id.is_empty() => {
            (Status::Crediting, Step::Post, Record)
        }
        Step::Credit | Step::ReleasePost => posted,
        Step::UndoCredit if facts.held => (Status::Held, Step::VoidFailed, Record),
        Step::UndoCredit if saga.ledger_transaction_id.is_empty() => {
            (Status::Failed, Step::Done, Finish)
        }
        Step::UndoCredit => (Status::Crediting, Step::ReverseFailed, Record),
        Step::ReverseFailed | Step::VoidFailed => (Status::Failed, Step::Done, Finish),
        Step::PostHold => (Status::Held, Step::WaitHold, Continue),
        Step::WaitHold if facts.refund_requested => (Status::Held, Step::Void, Continue),
        Step::WaitHold if facts.hold_over => (Status::Held, Step::ReleaseCredit, Record),
        Step::WaitHold => return (after, WaitForHold),
        // Recorded before the pending transaction posts, so that a refusal seen by a driver
        // that resumes here can still void it.
        Step::ReleaseCredit => (Status::Held, Step::ReleasePost, Record),
        Step::Void => (Status::Voided, Step::Done, Finish),
        // Recorded before the ledger reversal, so that a resumed saga never asks for the
        // clawback again once the ledger has reversed.
        Step::Clawback => (Status::ClawingBack, Step::ReverseLedger, Record),
        Step::UndoClawback => (Status::ClawbackRefused, Step::Done, Finish),
        Step::ReverseLedger => (Status::Reversed, Step::Done, Finish),
        Step::Done => return (after, Finish),
    };
    (moved(after, status, step), action)
}

fn moved(mut saga: EarningSaga, status: EarningStatus, step: EarningStep) -> EarningSaga {
    saga.status = status;
    saga.step = step;
    saga.attempts = 0;
    saga.last_error.clear();
    saga
}

#[cfg(test)]
mod tests;
