//! Every transition of the conversion saga, and a property test that drives the saga against
//! model gateways and a model ledger that misbehave at random, crashing and reloading the saga
//! from what was recorded at random points.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::saga::test_faults::{Fault, fault, gateway_answer};

fn at(status: ConversionStatus, step: ConversionStep) -> ConversionSaga {
    ConversionSaga {
        status,
        step,
        ..ConversionSaga::start()
    }
}

fn applied() -> StepOutcome {
    StepOutcome::Applied {
        transaction_id: None,
    }
}

fn posted(id: &str) -> StepOutcome {
    StepOutcome::Applied {
        transaction_id: Some(id.to_owned()),
    }
}

fn refused() -> StepOutcome {
    StepOutcome::Refused("PARTNER_RULE".to_owned())
}

fn unknown() -> StepOutcome {
    StepOutcome::Unknown("timed out".to_owned())
}

/// (status, step, action) after `outcome` at `step`.
fn after(
    status: ConversionStatus,
    step: ConversionStep,
    outcome: StepOutcome,
) -> (ConversionStatus, ConversionStep, Action) {
    let (saga, action) = next(&at(status, step), outcome);
    (saga.status, saga.step, action)
}

use Action::{Finish, Record, Retry};
use ConversionStatus::{Completed, Failed, Pending, Reversed, Reversing};
use ConversionStep::*;

#[test]
fn forward_steps_that_apply_are_recorded_before_the_next() {
    assert_eq!(
        after(Pending, DebitSource, applied()),
        (Pending, CreditTarget, Record)
    );
    assert_eq!(
        after(Pending, CreditTarget, applied()),
        (Pending, PostLedger, Record)
    );
    let (saga, action) = next(&at(Pending, PostLedger), posted("tx-1"));
    assert_eq!((saga.status, saga.step, action), (Completed, Done, Finish));
    assert_eq!(saga.ledger_transaction_id, "tx-1");
}

#[test]
fn a_refused_debit_is_reversed_by_key_before_the_conversion_fails() {
    let (saga, action) = next(&at(Pending, DebitSource), refused());
    assert_eq!(
        (saga.status, saga.step, action),
        (Pending, UndoDebit, Record)
    );
    assert!(saga.failure_reason.contains("refused the debit"));
    assert_eq!(after(Pending, UndoDebit, applied()), (Failed, Done, Finish));
}

#[test]
fn a_refused_credit_reverses_the_credit_then_the_debit() {
    let (saga, action) = next(&at(Pending, CreditTarget), refused());
    assert_eq!(
        (saga.status, saga.step, action),
        (Pending, UndoCredit, Record)
    );
    assert!(saga.failure_reason.contains("refused the credit"));
    assert_eq!(
        after(Pending, UndoCredit, applied()),
        (Pending, UndoDebit, Record)
    );
}

#[test]
fn a_ledger_refusal_undoes_both_gateway_steps() {
    let (saga, action) = next(&at(Pending, PostLedger), refused());
    assert_eq!(
        (saga.status, saga.step, action),
        (Pending, UndoCredit, Record)
    );
    assert!(saga.failure_reason.contains("ledger refused"));
}

#[test]
fn unanswered_gateway_steps_are_asked_again_then_compensated() {
    for (step, undo) in [(DebitSource, UndoDebit), (CreditTarget, UndoCredit)] {
        let mut saga = at(Pending, step);
        for attempt in 1..MAX_UNKNOWN_ATTEMPTS {
            let (again, action) = next(&saga, unknown());
            assert_eq!((again.step, action), (step, Retry));
            assert_eq!(again.attempts, attempt);
            assert_eq!(again.last_error, "timed out");
            saga = again;
        }
        let (saga, action) = next(&saga, unknown());
        assert_eq!((saga.status, saga.step, action), (Pending, undo, Record));
        assert_eq!(saga.attempts, 0);
        assert!(saga.failure_reason.contains("no answer after 10 attempts"));
    }
}

#[test]
fn an_unanswered_ledger_post_is_asked_again_for_as_long_as_it_takes() {
    let mut saga = at(Pending, PostLedger);
    for _ in 0..(MAX_UNKNOWN_ATTEMPTS * 3) {
        let (again, action) = next(&saga, unknown());
        assert_eq!(
            (again.status, again.step, action),
            (Pending, PostLedger, Retry)
        );
        saga = again;
    }
    assert_eq!(saga.attempts, MAX_UNKNOWN_ATTEMPTS * 3);
}

#[test]
fn undo_steps_never_give_up_and_show_a_refusal_to_ops() {
    for (status, step) in [
        (Pending, UndoCredit),
        (Pending, UndoDebit),
        (Reversing, ReverseLedger),
        (Reversing, UndoReverseCredit),
        (Reversing, UndoReverseDebit),
    ] {
        let mut saga = at(status, step);
        for _ in 0..(MAX_UNKNOWN_ATTEMPTS * 2) {
            let (again, action) = next(&saga, unknown());
            assert_eq!((again.status, again.step, action), (status, step, Retry));
            saga = again;
        }
        let (refused_once, action) = next(&saga, refused());
        assert_eq!((refused_once.step, action), (step, Retry));
        assert!(refused_once.last_error.contains("ops must look"));
    }
}

#[test]
fn a_reversal_goes_target_then_source_then_ledger() {
    let completed = ConversionSaga {
        ledger_transaction_id: "tx-1".to_owned(),
        ..at(Completed, Done)
    };
    let reversing = completed.start_reversal();
    assert_eq!(
        (reversing.status, reversing.step),
        (Reversing, ReverseDebitTarget)
    );
    assert_eq!(
        after(Reversing, ReverseDebitTarget, applied()),
        (Reversing, ReverseCreditSource, Record)
    );
    assert_eq!(
        after(Reversing, ReverseCreditSource, applied()),
        (Reversing, ReverseLedger, Record)
    );
    let (saga, action) = next(&reversing_at(ReverseLedger), posted("tx-2"));
    assert_eq!((saga.status, saga.step, action), (Reversed, Done, Finish));
    assert_eq!(saga.reversal_transaction_id, "tx-2");
}

fn reversing_at(step: ConversionStep) -> ConversionSaga {
    at(Reversing, step)
}

#[test]
fn a_refused_reversal_is_undone_by_key_and_the_conversion_stands() {
    let (saga, action) = next(&reversing_at(ReverseDebitTarget), refused());
    assert_eq!(
        (saga.status, saga.step, action),
        (Reversing, UndoReverseDebit, Record)
    );
    assert!(saga.failure_reason.starts_with("reversal refused"));
    let (saga, action) = next(&saga, applied());
    assert_eq!((saga.status, saga.step, action), (Completed, Done, Finish));
    assert!(
        saga.failure_reason.starts_with("reversal refused"),
        "the reason stays"
    );

    let (saga, action) = next(&reversing_at(ReverseCreditSource), refused());
    assert_eq!(
        (saga.status, saga.step, action),
        (Reversing, UndoReverseCredit, Record)
    );
    assert_eq!(
        after(Reversing, UndoReverseCredit, applied()),
        (Reversing, UndoReverseDebit, Record)
    );
}

#[test]
fn an_unanswered_reversal_step_is_abandoned_after_its_attempts() {
    for (step, undo) in [
        (ReverseDebitTarget, UndoReverseDebit),
        (ReverseCreditSource, UndoReverseCredit),
    ] {
        let saga = ConversionSaga {
            attempts: MAX_UNKNOWN_ATTEMPTS - 1,
            ..reversing_at(step)
        };
        let (saga, action) = next(&saga, unknown());
        assert_eq!((saga.status, saga.step, action), (Reversing, undo, Record));
        assert!(saga.failure_reason.starts_with("reversal abandoned"));
    }
}

#[test]
fn stored_names_round_trip_and_unknown_ones_are_errors() {
    for status in [Pending, Completed, Failed, Reversing, Reversed] {
        assert_eq!(ConversionStatus::parse(status.as_str()), Ok(status));
    }
    for step in [
        DebitSource,
        CreditTarget,
        PostLedger,
        UndoCredit,
        UndoDebit,
        ReverseDebitTarget,
        ReverseCreditSource,
        ReverseLedger,
        UndoReverseCredit,
        UndoReverseDebit,
        Done,
    ] {
        assert_eq!(ConversionStep::parse(step.as_str()), Ok(step));
    }
    assert!(ConversionStatus::parse("SETTLED").is_err());
    assert!(ConversionStatus::parse("").is_err());
    assert!(ConversionStep::parse("done").is_err());
}

// ---- The property test: a model of the world the saga acts on. ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Moved { delta: i64, reversed: bool },
    Reversal,
    Void,
}

/// A gateway that keeps the contract (each key once; a reversal of an unseen key voids it),
/// except where a fault says otherwise.
#[derive(Debug, Default)]
struct Gateway {
    operations: HashMap<String, Operation>,
    balance: i64,
}

impl Gateway {
    fn apply_move(&mut self, key: &str, delta: i64, fault: Fault) -> StepOutcome {
        match self.operations.get(key) {
            Some(Operation::Moved { .. }) => gateway_answer(true, fault),
            Some(_) => gateway_answer(false, fault),
            None => match fault {
                Fault::RefuseNew | Fault::Forgetful | Fault::Lost => gateway_answer(false, fault),
                Fault::None | Fault::AppliedThenLost => {
                    self.operations.insert(
                        key.to_owned(),
                        Operation::Moved {
                            delta,
                            reversed: false,
                        },
                    );
                    self.balance += delta;
                    gateway_answer(true, fault)
                }
            },
        }
    }

    fn reverse(&mut self, key: &str, original: &str, fault: Fault) -> StepOutcome {
        if self.operations.get(key) == Some(&Operation::Reversal) {
            return gateway_answer(true, fault);
        }
        if matches!(fault, Fault::RefuseNew | Fault::Forgetful | Fault::Lost) {
            return gateway_answer(false, fault);
        }
        match self.operations.get(original).copied() {
            None => {
                self.operations.insert(original.to_owned(), Operation::Void);
            }
            Some(Operation::Moved {
                delta,
                reversed: false,
            }) => {
                self.operations.insert(
                    original.to_owned(),
                    Operation::Moved {
                        delta,
                        reversed: true,
                    },
                );
                self.balance -= delta;
            }
            // Already reversed (the exchange reads ALREADY_REVERSED as done), or a void.
            Some(_) => {}
        }
        self.operations.insert(key.to_owned(), Operation::Reversal);
        gateway_answer(true, fault)
    }
}

/// The ledger: Tandem's own, so it keeps its contract; a call may still go unanswered.
#[derive(Debug, Default)]
struct Ledger {
    posted: u32,
    reversed: u32,
    /// A conversion whose legs the ledger refuses, on every call.
    refuses: bool,
}

impl Ledger {
    fn post(&mut self, fault: Fault) -> StepOutcome {
        if self.refuses {
            return StepOutcome::Refused("INSUFFICIENT_BALANCE".to_owned());
        }
        if fault == Fault::Lost {
            return StepOutcome::Unknown("lost".to_owned());
        }
        self.posted = 1;
        if fault == Fault::AppliedThenLost {
            return StepOutcome::Unknown("lost".to_owned());
        }
        StepOutcome::Applied {
            transaction_id: Some("tx".to_owned()),
        }
    }

    fn reverse(&mut self, fault: Fault) -> StepOutcome {
        if fault == Fault::Lost {
            return StepOutcome::Unknown("lost".to_owned());
        }
        self.reversed = 1;
        if fault == Fault::AppliedThenLost {
            return StepOutcome::Unknown("lost".to_owned());
        }
        StepOutcome::Applied {
            transaction_id: Some("rx".to_owned()),
        }
    }
}

const SOURCE_POINTS: i64 = 400;
const TARGET_POINTS: i64 = 100;

#[derive(Debug, Default)]
struct World {
    source: Gateway,
    target: Gateway,
    ledger: Ledger,
}

impl World {
    fn perform(&mut self, step: ConversionStep, fault: Fault) -> StepOutcome {
        match step {
            DebitSource => self.source.apply_move("debit", -SOURCE_POINTS, fault),
            CreditTarget => self.target.apply_move("credit", TARGET_POINTS, fault),
            PostLedger => self.ledger.post(fault),
            UndoCredit => self.target.reverse("credit:undo", "credit", fault),
            UndoDebit => self.source.reverse("debit:undo", "debit", fault),
            ReverseDebitTarget => self
                .target
                .apply_move("reverse:debit", -TARGET_POINTS, fault),
            ReverseCreditSource => self
                .source
                .apply_move("reverse:credit", SOURCE_POINTS, fault),
            ReverseLedger => self.ledger.reverse(fault),
            UndoReverseCredit => {
                self.source
                    .reverse("reverse:credit:undo", "reverse:credit", fault)
            }
            UndoReverseDebit => self
                .target
                .reverse("reverse:debit:undo", "reverse:debit", fault),
            Done => unreachable!("a finished saga performs nothing"),
        }
    }
}

/// Drives the saga from `stored` until it is done, with `faults` on the calls (then none) and a
/// crash wherever `crashes` says: the driver's memory is lost and the saga is reloaded from
/// what was last recorded. Returns the final stored state and whether the ledger ever held the
/// conversion while a later state was a compensation.
fn drive(
    world: &mut World,
    mut stored: ConversionSaga,
    faults: &mut impl Iterator<Item = Fault>,
    crashes: &mut impl Iterator<Item = bool>,
) -> ConversionSaga {
    let mut saga = stored.clone();
    for _ in 0..1_000 {
        if saga.is_done() {
            return stored;
        }
        let outcome = world.perform(saga.step, faults.next().unwrap_or(Fault::None));
        let (after, action) = next(&saga, outcome);
        if crashes.next().unwrap_or(false) {
            saga = stored.clone();
            continue;
        }
        if world.ledger.posted > 0 && matches!(after.step, UndoCredit | UndoDebit) {
            panic!("compensating a conversion the ledger holds: {saga:?} -> {after:?}");
        }
        match action {
            Record | Finish => stored = after.clone(),
            Retry => {}
        }
        saga = after;
    }
    panic!("the saga never finished: {saga:?}");
}

fn check_agrees(world: &World, saga: &ConversionSaga) {
    let (source, target, ledger) = (
        world.source.balance,
        world.target.balance,
        world.ledger.posted as i64 - world.ledger.reversed as i64,
    );
    match saga.status {
        Completed => {
            assert_eq!(
                (source, target),
                (-SOURCE_POINTS, TARGET_POINTS),
                "{saga:?}"
            );
            assert_eq!(
                (world.ledger.posted, world.ledger.reversed),
                (1, 0),
                "{saga:?}"
            );
        }
        Failed => {
            assert_eq!((source, target, world.ledger.posted), (0, 0, 0), "{saga:?}");
        }
        Reversed => {
            assert_eq!((source, target, ledger), (0, 0, 0), "{saga:?}");
            assert_eq!(world.ledger.reversed, 1, "{saga:?}");
        }
        Pending | Reversing => panic!("unfinished: {saga:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn whatever_fails_and_whenever_the_gateways_and_the_ledger_agree(
        faults in proptest::collection::vec(fault(), 0..40),
        crashes in proptest::collection::vec(proptest::bool::weighted(0.15), 0..60),
        reversal_faults in proptest::collection::vec(fault(), 0..30),
        reverse in any::<bool>(),
        ledger_refuses in proptest::bool::weighted(0.1),
    ) {
        let mut world = World {
            ledger: Ledger { refuses: ledger_refuses, ..Ledger::default() },
            ..World::default()
        };
        let mut crashes = crashes.into_iter();
        let saga = drive(
            &mut world,
            ConversionSaga::start(),
            &mut faults.into_iter(),
            &mut crashes,
        );
        check_agrees(&world, &saga);
        prop_assert!(saga.status == Completed || saga.status == Failed);
        if ledger_refuses {
            prop_assert_eq!(saga.status, Failed);
        }
        if reverse && saga.status == Completed {
            // ReverseConversion records REVERSING before it drives.
            let reversed = drive(
                &mut world,
                saga.start_reversal(),
                &mut reversal_faults.into_iter(),
                &mut crashes,
            );
            check_agrees(&world, &reversed);
            prop_assert!(reversed.status == Reversed || reversed.status == Completed);
            if reversed.status == Completed {
                prop_assert!(reversed.failure_reason.starts_with("reversal"));
            }
        }
    }
}
