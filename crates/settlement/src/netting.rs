//! Netting a settlement run: each party's multilateral position, and who owes whom.
//!
//! Pure and streaming: transactions are added one at a time, and the state kept is a few numbers
//! per party and per pair of parties, whatever the number of entries.

use std::collections::BTreeMap;

/// A party's debits and credits in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartyTotals {
    pub debits_minor: i64,
    pub credits_minor: i64,
}

impl PartyTotals {
    /// Credits minus debits: positive when the coalition pays the party.
    pub fn net_minor(&self) -> i64 {
        self.credits_minor - self.debits_minor
    }
}

/// Positions and the bilateral breakdown, built a transaction at a time.
#[derive(Debug, Clone, Default)]
pub struct Netting {
    pub parties: BTreeMap<String, PartyTotals>,
    /// What a debtor owes a creditor, by (debtor, creditor).
    pub bilateral: BTreeMap<(String, String), i64>,
}

impl Netting {
    /// Adds one transaction's entries in the run's currency, as (party, debit, credit). Within
    /// the transaction, each party's net is taken; the parties that pay are matched to the
    /// parties that are paid in the order they appear, which is exact for the common shape (one
    /// payer, a payee and the exchange's fee) and sums to every party's net in any shape.
    pub fn add_transaction(&mut self, entries: &[(String, i64, i64)]) {
        let mut nets: Vec<(&str, i64)> = Vec::new();
        for (party, debit, credit) in entries {
            let totals = self.parties.entry(party.clone()).or_default();
            totals.debits_minor += debit;
            totals.credits_minor += credit;
            match nets.iter_mut().find(|(name, _)| name == party) {
                Some((_, net)) => *net += credit - debit,
                None => nets.push((party, credit - debit)),
            }
        }
        let mut debtors: Vec<(&str, i64)> = nets
            .iter()
            .filter(|(_, net)| *net < 0)
            .map(|(party, net)| (*party, -net))
            .collect();
        let mut creditors: Vec<(&str, i64)> =
            nets.iter().filter(|(_, net)| *net > 0).copied().collect();
        let (mut debtor, mut creditor) = (0, 0);
        while debtor < debtors.len() && creditor < creditors.len() {
            let amount = debtors[debtor].1.min(creditors[creditor].1);
            *self
                .bilateral
                .entry((
                    debtors[debtor].0.to_owned(),
                    creditors[creditor].0.to_owned(),
                ))
                .or_default() += amount;
            debtors[debtor].1 -= amount;
            creditors[creditor].1 -= amount;
            if debtors[debtor].1 == 0 {
                debtor += 1;
            }
            if creditors[creditor].1 == 0 {
                creditor += 1;
            }
        }
    }

    /// The sum of every party's net: zero when each transaction added balanced.
    pub fn imbalance_minor(&self) -> i64 {
        self.parties.values().map(PartyTotals::net_minor).sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn party(index: usize) -> String {
        format!("party-{index}")
    }

    #[test]
    fn a_conversion_with_a_fee_owes_the_payee_and_the_exchange() {
        let mut netting = Netting::default();
        netting.add_transaction(&[
            ("hotel".to_owned(), 2_600, 0),
            ("ride".to_owned(), 0, 2_500),
            ("exchange".to_owned(), 0, 100),
        ]);
        assert_eq!(netting.imbalance_minor(), 0);
        assert_eq!(
            netting.bilateral,
            BTreeMap::from([
                (("hotel".to_owned(), "ride".to_owned()), 2_500),
                (("hotel".to_owned(), "exchange".to_owned()), 100),
            ])
        );
    }

    /// A balanced transaction among up to five parties: random debits, and credits that
    /// share the same total.
    fn transaction() -> impl Strategy<Value = Vec<(String, i64, i64)>> {
        (
            prop::collection::vec((0..5_usize, 1..10_000_i64), 1..4),
            prop::collection::vec(0..5_usize, 1..4),
        )
            .prop_map(|(debits, creditors)| {
                let total: i64 = debits.iter().map(|(_, amount)| amount).sum();
                let mut entries: Vec<(String, i64, i64)> = debits
                    .iter()
                    .map(|(index, amount)| (party(*index), *amount, 0))
                    .collect();
                let share = total / creditors.len() as i64;
                for (position, index) in creditors.iter().enumerate() {
                    let amount = if position == 0 {
                        total - share * (creditors.len() as i64 - 1)
                    } else {
                        share
                    };
                    if amount > 0 {
                        entries.push((party(*index), 0, amount));
                    }
                }
                entries
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Nets sum to zero, and each party's bilateral amounts (owed to it minus owed by it)
        /// sum to its net, whatever the transactions.
        #[test]
        fn nets_sum_to_zero_and_bilateral_amounts_sum_to_the_nets(
            transactions in prop::collection::vec(transaction(), 0..60)
        ) {
            let mut netting = Netting::default();
            for entries in &transactions {
                netting.add_transaction(entries);
            }
            prop_assert_eq!(netting.imbalance_minor(), 0);
            for (name, totals) in &netting.parties {
                let owed_to: i64 = netting
                    .bilateral
                    .iter()
                    .filter(|((_, creditor), _)| creditor == name)
                    .map(|(_, amount)| amount)
                    .sum();
                let owed_by: i64 = netting
                    .bilateral
                    .iter()
                    .filter(|((debtor, _), _)| debtor == name)
                    .map(|(_, amount)| amount)
                    .sum();
                prop_assert_eq!(owed_to - owed_by, totals.net_minor(), "party {}", name);
            }
            prop_assert!(netting.bilateral.values().all(|amount| *amount > 0));
            prop_assert!(netting.bilateral.keys().all(|(debtor, creditor)| debtor != creditor));
        }
    }
}
