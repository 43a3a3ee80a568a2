//! Switchable faults, per gateway RPC, for tests of what Tandem does when a partner misbehaves.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

/// What the next calls of an RPC do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Refuse a key the program has not stored, as a program's own rule would; a key it has
    /// stored is answered as stored, as the gateway contract requires.
    Refuse,
    /// Refuse every call, stored key or not: a gateway that forgot what it applied, or changed
    /// its rules after an unanswered call. It breaks the contract on purpose, so tests show that
    /// Tandem never trusts a refusal that follows an unknown outcome.
    Forgetful,
    Fail,
    FailAfterApplying,
    Delay(Duration),
    /// Answer UNIMPLEMENTED, as a gateway without the RPC would.
    Unimplemented,
}

#[derive(Debug, Clone, Copy)]
struct Armed {
    fault: Fault,
    /// Calls left; `None` means until cleared.
    remaining: Option<u32>,
}

/// The faults currently armed: per RPC, a queue whose head acts first.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    armed: Arc<Mutex<HashMap<String, VecDeque<Armed>>>>,
}

impl Faults {
    /// Arms `fault` for the next `times` calls of `rpc` (every call when `times` is 0), in place
    /// of whatever was armed; `None` clears the RPC's faults.
    pub fn set(&self, rpc: &str, fault: Option<Fault>, times: u32) {
        let mut armed = self.armed.lock().expect("faults lock");
        armed.remove(rpc);
        if let Some(fault) = fault {
            armed.insert(rpc.to_owned(), VecDeque::from([Armed::new(fault, times)]));
        }
    }

    /// Arms `fault` for `times` calls of `rpc` after those already armed, so that a test can
    /// script a sequence (apply then fail, then forget).
    pub fn queue(&self, rpc: &str, fault: Fault, times: u32) {
        self.armed
            .lock()
            .expect("faults lock")
            .entry(rpc.to_owned())
            .or_default()
            .push_back(Armed::new(fault, times));
    }

    /// The fault for this call of `rpc`, counting it against its remaining calls.
    pub fn take(&self, rpc: &str) -> Option<Fault> {
        let mut armed = self.armed.lock().expect("faults lock");
        let queue = armed.get_mut(rpc)?;
        let head = queue.front_mut()?;
        let fault = head.fault;
        match head.remaining {
            Some(1) => {
                queue.pop_front();
                if queue.is_empty() {
                    armed.remove(rpc);
                }
            }
            Some(ref mut left) => *left -= 1,
            None => {}
        }
        Some(fault)
    }
}

impl Armed {
    fn new(fault: Fault, times: u32) -> Self {
        Self {
            fault,
            remaining: (times > 0).then_some(times),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_lasts_its_number_of_calls() {
        let faults = Faults::default();
        faults.set("DebitPoints", Some(Fault::Fail), 2);
        assert_eq!(faults.take("DebitPoints"), Some(Fault::Fail));
        assert_eq!(faults.take("CreditPoints"), None);
        assert_eq!(faults.take("DebitPoints"), Some(Fault::Fail));
        assert_eq!(faults.take("DebitPoints"), None);
        faults.set("CreditPoints", Some(Fault::Refuse), 0);
        for _ in 0..5 {
            assert_eq!(faults.take("CreditPoints"), Some(Fault::Refuse));
        }
        faults.set("CreditPoints", None, 0);
        assert_eq!(faults.take("CreditPoints"), None);
    }

    #[test]
    fn queued_faults_act_in_turn() {
        let faults = Faults::default();
        faults.queue("CreditPoints", Fault::FailAfterApplying, 1);
        faults.queue("CreditPoints", Fault::Forgetful, 2);
        assert_eq!(faults.take("CreditPoints"), Some(Fault::FailAfterApplying));
        assert_eq!(faults.take("CreditPoints"), Some(Fault::Forgetful));
        assert_eq!(faults.take("CreditPoints"), Some(Fault::Forgetful));
        assert_eq!(faults.take("CreditPoints"), None);
        faults.queue("DebitPoints", Fault::Fail, 1);
        faults.set("DebitPoints", Some(Fault::Refuse), 1);
        assert_eq!(
            faults.take("DebitPoints"),
            Some(Fault::Refuse),
            "set replaces the queue"
        );
        assert_eq!(faults.take("DebitPoints"), None);
    }
}
