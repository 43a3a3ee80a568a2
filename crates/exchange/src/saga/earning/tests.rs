//! The earning saga's transitions, and a property test that drives it against a model gateway
//! and a model ledger that misbehave at random, with refunds arriving at random moments and
//! crashes that reload the saga from what was last recorded.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::saga::test_faults::{Fault, fault, gateway_answer};

use Action::{Continue, Finish, Record, Retry, WaitForHold};
use EarningStatus::*;
use EarningStep::*;

fn at(status: EarningStatus, step: EarningStep, ledger: &str) -> EarningSaga {
    EarningSaga {
        status,
        step,
        ledger_transaction_id: ledger.to_owned(),
        ..EarningSaga::start(false)
    }
}

const PLAIN: Facts = Facts {
    refund_requested: false,
    held: false,
    hold_over: false,
};

fn applied() -> StepOutcome {
    StepOutcome::Applied {
        transaction_id: Some("tx".to_owned()),
    }
}

fn refused() -> StepOutcome {
    StepOutcome::Refused("PARTNER_RULE".to_owned())
}

fn after(
    saga: EarningSaga,
    facts: Facts,
    outcome: StepOutcome,
) -> (EarningStatus, EarningStep, Action) {
    let (saga, action) = next(&saga, facts, outcome);
    (saga.status, saga.step, action)
}

#[test]
fn without_a_hold_the_ledger_goes_first_then_the_credit() {
    assert_eq!(
        (
            EarningSaga::start(false).status,
            EarningSaga::start(false).step
        ),
        (Crediting, Post)
    );
    let (saga, action) = next(&EarningSaga::start(false), PLAIN, applied());
    assert_eq!(
        (saga.step, action, saga.ledger_transaction_id.as_str()),
        (Credit, Continue, "tx")
    );
    assert_eq!(after(saga, PLAIN, applied()), (Posted, Done, Finish));
}

#[test]
fn a_refused_credit_is_undone_by_key_then_the_ledger_reversed() {
    let (saga, action) = next(&at(Crediting, Credit, "tx"), PLAIN, refused());
    assert_eq!((saga.step, action), (UndoCredit, Record));
    assert!(saga.note.contains("refused the credit"));
    assert_eq!(
        after(saga, PLAIN, applied()),
        (Crediting, ReverseFailed, Record)
    );
    assert_eq!(
        after(at(Crediting, ReverseFailed, "tx"), PLAIN, applied()),
        (Failed, Done, Finish)
    );
}

#[test]
fn an_earning_recorded_credit_first_posts_after_its_credit() {
    assert_eq!(
        after(at(Crediting, Credit, ""), PLAIN, applied()),
        (Crediting, Post, Record)
    );
    assert_eq!(
        after(at(Crediting, UndoCredit, ""), PLAIN, applied()),
        (Failed, Done, Finish)
    );
}

#[test]
fn a_held_earning_waits_then_credits_then_posts() {
    let held = Facts {
        held: true,
        ..PLAIN
    };
    let (saga, action) = next(&EarningSaga::start(true), held, applied());
    assert_eq!((saga.status, saga.step, action), (Held, WaitHold, Continue));
    assert_eq!(
        after(saga.clone(), held, applied()),
        (Held, WaitHold, WaitForHold)
    );
    let over = Facts {
        hold_over: true,
        ..held
    };
    assert_eq!(after(saga, over, applied()), (Held, ReleaseCredit, Record));
    assert_eq!(
        after(at(Held, ReleaseCredit, "tx"), over, applied()),
        (Held, ReleasePost, Record)
    );
    assert_eq!(
        after(at(Held, ReleasePost, "tx"), over, applied()),
        (Posted, Done, Finish)
    );
    let (saga, _) = next(&at(Held, ReleaseCredit, "tx"), over, refused());
    assert_eq!(saga.step, UndoCredit);
    assert_eq!(after(saga, over, applied()), (Held, VoidFailed, Record));
    assert_eq!(
        after(at(Held, VoidFailed, "tx"), over, applied()),
        (Failed, Done, Finish)
    );
}

#[test]
fn refunds_void_a_hold_and_claw_back_what_posted() {
    let refunded = Facts {
        refund_requested: true,
        held: true,
        hold_over: false,
    };
    assert_eq!(
        after(at(Held, WaitHold, "tx"), refunded, applied()),
        (Held, Void, Continue)
    );
    assert_eq!(
        after(at(Held, Void, "tx"), refunded, applied()),
        (Voided, Done, Finish)
    );
    let refunded = Facts {
        held: false,
        ..refunded
    };
    assert_eq!(
        after(at(Crediting, Credit, "tx"), refunded, applied()),
        (ClawingBack, Clawback, Record)
    );
    assert_eq!(
        after(at(ClawingBack, Clawback, "tx"), refunded, applied()),
        (ClawingBack, ReverseLedger, Record)
    );
    assert_eq!(
        after(at(ClawingBack, ReverseLedger, "tx"), refunded, applied()),
        (Reversed, Done, Finish)
    );
    let (saga, action) = next(&at(ClawingBack, Clawback, "tx"), refunded, refused());
    assert_eq!((saga.step, action), (UndoClawback, Record));
    assert_eq!(
        after(saga, refunded, applied()),
        (ClawbackRefused, Done, Finish)
    );
}

#[test]
fn a_hold_that_expired_before_it_posted_is_undone() {
    let over = Facts {
        held: true,
        hold_over: true,
        ..PLAIN
    };
    let expired = || StepOutcome::Refused(format!("{PENDING_EXPIRED}: the hold expired"));
    let (saga, action) = next(&at(Held, ReleasePost, "tx"), over, expired());
    assert_eq!((saga.step, action), (UndoCredit, Record));
    assert!(saga.note.contains("could not be posted"));
    assert_eq!(after(saga, over, applied()), (Held, VoidFailed, Record));
    assert_eq!(
        after(at(Held, VoidFailed, "tx"), over, expired()),
        (Failed, Done, Finish),
        "an expired pending transaction holds nothing"
    );
    assert_eq!(
        after(at(Held, Void, "tx"), over, expired()),
        (Voided, Done, Finish)
    );
}

#[test]
fn every_other_failure_is_asked_again() {
    let (saga, action) = next(
        &at(Held, ReleasePost, "tx"),
        PLAIN,
        StepOutcome::Unknown("timed out".to_owned()),
    );
    assert_eq!((saga.step, action), (ReleasePost, Retry));
    for step in [
        Post,
        PostHold,
        Void,
        VoidFailed,
        ReverseLedger,
        ReverseFailed,
        UndoCredit,
        UndoClawback,
    ] {
        for outcome in [refused(), StepOutcome::Unknown("timed out".to_owned())] {
            let (saga, action) = next(&at(Crediting, step, "tx"), PLAIN, outcome);
            assert_eq!(
                (saga.step, action, saga.attempts),
                (step, Retry, 1),
                "{step}"
            );
        }
    }
    let (saga, action) = next(
        &at(Crediting, Credit, "tx"),
        PLAIN,
        StepOutcome::Unknown("lost".to_owned()),
    );
    assert_eq!((saga.step, action), (Credit, Retry));
}

#[test]
fn stored_names_round_trip_and_unknown_ones_are_errors() {
    for step in [
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
    ] {
        assert_eq!(EarningStep::parse(step.as_str()), Ok(step));
    }
    for status in [
        Crediting,
        Held,
        Posted,
        Voided,
        Reversed,
        ClawingBack,
        Failed,
        ClawbackRefused,
        NotEarned,
    ] {
        assert_eq!(EarningStatus::parse(status.as_str()), Ok(status));
    }
    assert!(EarningStep::parse("RELEASE").is_err());
    assert!(EarningStatus::parse("").is_err());
}

// ---- The property test. ----

const POINTS: i64 = 70;

/// The target's gateway: each key once; a reversal of an unseen key voids it.
#[derive(Debug, Default)]
struct Gateway {
    /// key → (delta, reversed); a void is (0, true).
    keys: HashMap<&'static str, (i64, bool)>,
    reversals: Vec<&'static str>,
    balance: i64,
}

impl Gateway {
    fn apply_move(&mut self, key: &'static str, delta: i64, fault: Fault) -> StepOutcome {
        if let Some((_, reversed)) = self.keys.get(key) {
            return gateway_answer(!reversed, fault);
        }
        if matches!(fault, Fault::RefuseNew | Fault::Forgetful | Fault::Lost) {
            return gateway_answer(false, fault);
        }
        self.keys.insert(key, (delta, false));
        self.balance += delta;
        gateway_answer(true, fault)
    }

    fn reverse(&mut self, key: &'static str, original: &'static str, fault: Fault) -> StepOutcome {
        if self.reversals.contains(&key) {
            return gateway_answer(true, fault);
        }
        if matches!(fault, Fault::RefuseNew | Fault::Forgetful | Fault::Lost) {
            return gateway_answer(false, fault);
        }
        match self.keys.get(original).copied() {
            None => {
                self.keys.insert(original, (0, true));
            }
            Some((delta, false)) => {
                self.keys.insert(original, (delta, true));
                self.balance -= delta;
            }
            Some((_, true)) => {}
        }
        self.reversals.push(key);
        gateway_answer(true, fault)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Pending,
    Posted,
    Voided,
    Reversed,
}

/// The ledger holds the earning's one transaction; it keeps its contract, answers may be lost.
#[derive(Debug, Default)]
struct Ledger {
    entry: Option<Entry>,
}

impl Ledger {
    /// Posts the transaction; its key asked again returns it, whatever became of it since.
    fn post(&mut self, kind: Entry, fault: Fault) -> StepOutcome {
        match self.entry {
            Some(_) => self.act(&[], self.entry.unwrap_or(kind), fault),
            None => self.act(&[None], kind, fault),
        }
    }

    /// Moves the transaction from one of `from` to `to` (or finds it there already).
    fn act(&mut self, from: &[Option<Entry>], to: Entry, fault: Fault) -> StepOutcome {
        if fault == Fault::Lost {
            return StepOutcome::Unknown("lost".to_owned());
        }
        if self.entry != Some(to) {
            if !from.contains(&self.entry) {
                return StepOutcome::Refused(format!("{:?} cannot become {to:?}", self.entry));
            }
            self.entry = Some(to);
        }
        if fault == Fault::AppliedThenLost {
            return StepOutcome::Unknown("lost".to_owned());
        }
        StepOutcome::Applied {
            transaction_id: Some("tx".to_owned()),
        }
    }
}

#[derive(Debug, Default)]
struct World {
    gateway: Gateway,
    ledger: Ledger,
}

impl World {
    fn perform(&mut self, step: EarningStep, fault: Fault) -> StepOutcome {
        use Entry::*;
        let ledger_fault = if matches!(fault, Fault::RefuseNew | Fault::Forgetful) {
            Fault::None
        } else {
            fault
        };
        match step {
            EarningStep::Post => self.ledger.post(Posted, ledger_fault),
            EarningStep::PostHold => self.ledger.post(Pending, ledger_fault),
            EarningStep::ReleasePost => self.ledger.act(&[Some(Pending)], Posted, ledger_fault),
            EarningStep::Void | EarningStep::VoidFailed => {
                self.ledger.act(&[Some(Pending)], Voided, ledger_fault)
            }
            EarningStep::ReverseFailed | EarningStep::ReverseLedger => {
                self.ledger.act(&[Some(Posted)], Reversed, ledger_fault)
            }
            EarningStep::Credit | EarningStep::ReleaseCredit => {
                self.gateway.apply_move("credit", POINTS, fault)
            }
            EarningStep::UndoCredit => self.gateway.reverse("credit:undo", "credit", fault),
            EarningStep::Clawback => self.gateway.apply_move("clawback", -POINTS, fault),
            EarningStep::UndoClawback => self.gateway.reverse("clawback:undo", "clawback", fault),
            EarningStep::WaitHold => StepOutcome::Applied {
                transaction_id: None,
            },
            EarningStep::Done => unreachable!("a finished saga performs nothing"),
        }
    }
}

/// One random run: its faults, crashes, when the refund comes (if it does) and when the hold
/// ends, counted in steps performed.
#[derive(Debug)]
struct Run {
    faults: Vec<Fault>,
    crashes: Vec<bool>,
    refund_at: Option<usize>,
    hold_over_at: usize,
    held: bool,
}

/// The writer's rule: a state recorded as POSTED after a refund goes on to its clawback.
fn as_stored(saga: EarningSaga, refund_requested: bool) -> EarningSaga {
    if refund_requested && saga.status == EarningStatus::Posted {
        return moved(saga, EarningStatus::ClawingBack, EarningStep::Clawback);
    }
    saga
}

fn drive(world: &mut World, run: &Run) -> EarningSaga {
    let mut stored = EarningSaga::start(run.held);
    let mut saga = stored.clone();
    let (mut faults, mut crashes) = (run.faults.iter(), run.crashes.iter());
    for performed in 0..2_000 {
        let refund_requested = run.refund_at.is_some_and(|at| performed >= at);
        if refund_requested {
            // ReverseActivity sends an earning that has posted back to its saga.
            stored = as_stored(stored, true);
            if saga.is_done() {
                saga = stored.clone();
            }
        }
        if saga.is_done() {
            if run.refund_at.is_some_and(|at| performed < at) {
                continue;
            }
            return stored;
        }
        let facts = Facts {
            refund_requested,
            held: run.held,
            hold_over: performed >= run.hold_over_at,
        };
        let outcome = world.perform(saga.step, faults.next().copied().unwrap_or(Fault::None));
        let (after, action) = next(&saga, facts, outcome);
        if crashes.next().copied().unwrap_or(false) {
            saga = stored.clone();
            continue;
        }
        match action {
            Record | Finish | WaitForHold => {
                stored = as_stored(after.clone(), refund_requested);
                saga = stored.clone();
            }
            Continue | Retry => saga = after,
        }
    }
    panic!("the saga never finished: {saga:?}");
}

fn check_agrees(world: &World, saga: &EarningSaga) {
    let (balance, entry) = (world.gateway.balance, world.ledger.entry);
    let expected: &[(i64, Option<Entry>)] = match saga.status {
        Posted | ClawbackRefused => &[(POINTS, Some(Entry::Posted))],
        Voided => &[(0, Some(Entry::Voided))],
        Reversed => &[(0, Some(Entry::Reversed))],
        Failed => &[(0, Some(Entry::Voided)), (0, Some(Entry::Reversed))],
        Crediting | Held | ClawingBack | NotEarned => panic!("unfinished: {saga:?}"),
    };
    assert!(
        expected.contains(&(balance, entry)),
        "{saga:?} with the member at {balance} and the ledger at {entry:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn whatever_fails_and_whenever_the_gateway_and_the_ledger_agree(
        faults in proptest::collection::vec(fault(), 0..40),
        crashes in proptest::collection::vec(proptest::bool::weighted(0.15), 0..60),
        refund_at in proptest::option::of(0_usize..40),
        hold_over_at in 0_usize..20,
        held in any::<bool>(),
    ) {
        let run = Run { faults, crashes, refund_at, hold_over_at, held };
        let mut world = World::default();
        let saga = drive(&mut world, &run);
        check_agrees(&world, &saga);
    }
}
