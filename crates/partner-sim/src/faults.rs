//! Switchable faults, per gateway RPC, for tests of what Tandem does when a partner misbehaves.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

/// What the next calls of an RPC do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Refuse,
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

/// The faults currently armed.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    armed: Arc<Mutex<HashMap<String, Armed>>>,
}

impl Faults {
    /// Arms `fault` for the next `times` calls of `rpc` (every call when `times` is 0); `None`
    /// clears it.
    pub fn set(&self, rpc: &str, fault: Option<Fault>, times: u32) {
        let mut armed = self.armed.lock().expect("faults lock");
        match fault {
            Some(fault) => {
                armed.insert(
                    rpc.to_owned(),
                    Armed {
                        fault,
                        remaining: (times > 0).then_some(times),
                    },
                );
            }
            None => {
                armed.remove(rpc);
            }
        }
    }

    /// The fault for this call of `rpc`, counting it against its remaining calls.
    pub fn take(&self, rpc: &str) -> Option<Fault> {
        let mut armed = self.armed.lock().expect("faults lock");
        let entry = armed.get_mut(rpc)?;
        let fault = entry.fault;
        match entry.remaining {
            Some(1) => {
                armed.remove(rpc);
            }
            Some(ref mut left) => *left -= 1,
            None => {}
        }
        Some(fault)
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
}
