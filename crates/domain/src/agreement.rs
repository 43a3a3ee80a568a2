//! Agreements and their versioned terms: the state machine, and which terms apply at a time.

use crate::{AgreementId, PartnerId, Terms, Timestamp};

/// Where one terms version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TermsVersionStatus {
    Proposed,
    Accepted,
    Rejected,
    Withdrawn,
}

impl TermsVersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TermsVersionStatus::Proposed => "PROPOSED",
            TermsVersionStatus::Accepted => "ACCEPTED",
            TermsVersionStatus::Rejected => "REJECTED",
            TermsVersionStatus::Withdrawn => "WITHDRAWN",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Proposed,
            Self::Accepted,
            Self::Rejected,
            Self::Withdrawn,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

/// One numbered version of an agreement's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermsVersion {
    pub version: u32,
    pub terms: Terms,
    pub status: TermsVersionStatus,
    pub proposed_by: PartnerId,
    pub proposed_at: Timestamp,
    /// The time the proposer asked for; `None` means "on acceptance".
    pub requested_effective_at: Option<Timestamp>,
    /// When the version applies from; set on acceptance.
    pub effective_at: Option<Timestamp>,
    pub decided_at: Option<Timestamp>,
    pub decision_reason: Option<String>,
}

/// The stored lifecycle state. Termination is separate (a time), because it may be scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgreementState {
    Proposed,
    Active,
    Rejected,
}

impl AgreementState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgreementState::Proposed => "PROPOSED",
            AgreementState::Active => "ACTIVE",
            AgreementState::Rejected => "REJECTED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Proposed, Self::Active, Self::Rejected]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// Where an agreement stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgreementStatus {
    Proposed,
    Active,
    Rejected,
    Terminated,
}

impl AgreementStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgreementStatus::Proposed => "PROPOSED",
            AgreementStatus::Active => "ACTIVE",
            AgreementStatus::Rejected => "REJECTED",
            AgreementStatus::Terminated => "TERMINATED",
        }
    }
}

/// Why an agreement refused a change. The registry maps each to a gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgreementRuleError {
    #[error("the caller is not a party to this agreement")]
    NotAParty,
    #[error("terms version {0} does not exist")]
    VersionNotFound(u32),
    #[error("terms version {version} is {status}, not PROPOSED")]
    VersionNotProposed { version: u32, status: &'static str },
    #[error("a partner cannot accept terms it proposed itself")]
    OwnProposal,
    #[error("the agreement is {0}, not {1}")]
    WrongStatus(&'static str, &'static str),
    #[error("terms version {0} is still awaiting a decision; accept or reject it first")]
    AmendmentPending(u32),
    #[error("the agreement is already terminated")]
    AlreadyTerminated,
}

/// A directional agreement from a source partner to a target partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub id: AgreementId,
    pub source: PartnerId,
    pub target: PartnerId,
    pub state: AgreementState,
    /// Every version, oldest first; version numbers are 1, 2, 3, … in order.
    pub versions: Vec<TermsVersion>,
    pub terminate_at: Option<Timestamp>,
    pub terminated_by: Option<PartnerId>,
    pub termination_reason: Option<String>,
    pub created_at: Timestamp,
    /// Bumped on every change, so concurrent changes are detected rather than lost.
    pub revision: i64,
}

impl Agreement {
    /// A new agreement proposed by `source`, with its first terms version.
    pub fn propose(
        source: PartnerId,
        target: PartnerId,
        terms: Terms,
        requested_effective_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Self {
        Self {
            id: AgreementId::generate(),
            source,
            target,
            state: AgreementState::Proposed,
            versions: vec![TermsVersion {
                version: 1,
                terms,
                status: TermsVersionStatus::Proposed,
                proposed_by: source,
                proposed_at: now,
                requested_effective_at,
                effective_at: None,
                decided_at: None,
                decision_reason: None,
            }],
            terminate_at: None,
            terminated_by: None,
            termination_reason: None,
            created_at: now,
            revision: 0,
        }
    }

    pub fn is_party(&self, partner: PartnerId) -> bool {
        partner == self.source || partner == self.target
    }

    pub fn status_at(&self, at: Timestamp) -> AgreementStatus {
        match self.state {
            AgreementState::Rejected => AgreementStatus::Rejected,
            _ if self.terminate_at.is_some_and(|end| end <= at) => AgreementStatus::Terminated,
            AgreementState::Proposed => AgreementStatus::Proposed,
            AgreementState::Active => AgreementStatus::Active,
        }
    }

    /// The terms version that applies at `at`, if any. See [`terms_in_force`].
    pub fn terms_in_force(&self, at: Timestamp) -> Option<&TermsVersion> {
        if self.state != AgreementState::Active || self.terminate_at.is_some_and(|end| end <= at) {
            return None;
        }
        terms_in_force(&self.versions, at)
    }

    fn pending_version(&self) -> Option<&TermsVersion> {
        self.versions
            .iter()
            .find(|version| version.status == TermsVersionStatus::Proposed)
    }

    fn proposed_version_mut(
        &mut self,
        number: u32,
    ) -> Result<&mut TermsVersion, AgreementRuleError> {
        let version = self
            .versions
            .iter_mut()
            .find(|version| version.version == number)
            .ok_or(AgreementRuleError::VersionNotFound(number))?;
        if version.status != TermsVersionStatus::Proposed {
            return Err(AgreementRuleError::VersionNotProposed {
                version: number,
                status: version.status.as_str(),
            });
        }
        Ok(version)
    }

    fn require_open(&self, now: Timestamp) -> Result<(), AgreementRuleError> {
        match self.status_at(now) {
            AgreementStatus::Terminated => Err(AgreementRuleError::AlreadyTerminated),
            AgreementStatus::Rejected => Err(AgreementRuleError::WrongStatus(
                "REJECTED",
                "PROPOSED or ACTIVE",
            )),
            AgreementStatus::Proposed | AgreementStatus::Active => Ok(()),
        }
    }

    /// The latest effective time of any accepted version: later versions never take effect
    /// before earlier ones, so the terms timeline follows the version order.
    fn latest_effective_at(&self) -> Option<Timestamp> {
        self.versions
            .iter()
            .filter_map(|version| version.effective_at)
            .max()
    }

    /// `by` accepts the proposed version `number`. It applies from the latest of: the requested
    /// time, now (terms never apply retroactively), and the previous version's effective time.
    pub fn accept(
        &mut self,
        by: PartnerId,
        number: u32,
        now: Timestamp,
    ) -> Result<(), AgreementRuleError> {
        if !self.is_party(by) {
            return Err(AgreementRuleError::NotAParty);
        }
        self.require_open(now)?;
        let floor = self
            .latest_effective_at()
            .map_or(now, |latest| latest.max(now));
        let version = self.proposed_version_mut(number)?;
        if version.proposed_by == by {
            return Err(AgreementRuleError::OwnProposal);
        }
        version.status = TermsVersionStatus::Accepted;
        version.decided_at = Some(now);
        version.effective_at = Some(
            version
                .requested_effective_at
                .map_or(floor, |requested| requested.max(floor)),
        );
        self.state = AgreementState::Active;
        Ok(())
    }

    /// `by` declines the proposed version `number`; the proposer declining its own version
    /// withdraws it. Declining the first version ends the agreement.
    pub fn reject(
        &mut self,
        by: PartnerId,
        number: u32,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<(), AgreementRuleError> {
        if !self.is_party(by) {
            return Err(AgreementRuleError::NotAParty);
        }
        self.require_open(now)?;
        let version = self.proposed_version_mut(number)?;
        version.status = if version.proposed_by == by {
            TermsVersionStatus::Withdrawn
        } else {
            TermsVersionStatus::Rejected
        };
        version.decided_at = Some(now);
        version.decision_reason = reason;
        if number == 1 {
            self.state = AgreementState::Rejected;
        }
        Ok(())
    }

    /// `by` proposes new terms for an active agreement. One proposal at a time, so that an
    /// acceptance always refers to exactly one open offer.
    pub fn amend(
        &mut self,
        by: PartnerId,
        terms: Terms,
        requested_effective_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<u32, AgreementRuleError> {
        if !self.is_party(by) {
            return Err(AgreementRuleError::NotAParty);
        }
        match self.status_at(now) {
            AgreementStatus::Active => {}
            AgreementStatus::Terminated => return Err(AgreementRuleError::AlreadyTerminated),
            other => return Err(AgreementRuleError::WrongStatus(other.as_str(), "ACTIVE")),
        }
        if let Some(pending) = self.pending_version() {
            return Err(AgreementRuleError::AmendmentPending(pending.version));
        }
        let number = self.versions.len() as u32 + 1;
        self.versions.push(TermsVersion {
            version: number,
            terms,
            status: TermsVersionStatus::Proposed,
            proposed_by: by,
            proposed_at: now,
            requested_effective_at,
            effective_at: None,
            decided_at: None,
            decision_reason: None,
        });
        Ok(number)
    }

    /// `by` ends the agreement at `requested` (now when unset or past). A termination already
    /// scheduled can be brought forward, never pushed back.
    pub fn terminate(
        &mut self,
        by: PartnerId,
        requested: Option<Timestamp>,
        reason: String,
        now: Timestamp,
    ) -> Result<(), AgreementRuleError> {
        if !self.is_party(by) {
            return Err(AgreementRuleError::NotAParty);
        }
        self.require_open(now)?;
        let at = requested.map_or(now, |requested| requested.max(now));
        self.terminate_at = Some(self.terminate_at.map_or(at, |scheduled| scheduled.min(at)));
        self.terminated_by = Some(by);
        self.termination_reason = Some(reason);
        Ok(())
    }

    /// Ends the agreement now for a reason outside both parties, such as one partner being
    /// offboarded. A termination scheduled later is brought forward.
    pub fn end_now(&mut self, reason: String, now: Timestamp) {
        self.terminate_at = Some(
            self.terminate_at
                .map_or(now, |scheduled| scheduled.min(now)),
        );
        self.terminated_by = None;
        self.termination_reason = Some(reason);
    }
}

/// The accepted version in force at `at`: the one with the latest effective time not after `at`.
/// Accepted versions take effect in version order (see [`Agreement::accept`]), so this is also
/// the newest such version, and each version applies until the next one's effective time.
pub fn terms_in_force(versions: &[TermsVersion], at: Timestamp) -> Option<&TermsVersion> {
    versions
        .iter()
        .filter(|version| version.status == TermsVersionStatus::Accepted)
        .filter(|version| {
            version
                .effective_at
                .is_some_and(|effective| effective <= at)
        })
        .max_by_key(|version| (version.effective_at, version.version))
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use proptest::prelude::*;

    use super::*;
    use crate::terms::tests::sample_terms;

    fn at(hours: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap() + Duration::hours(hours)
    }

    fn active_agreement() -> (Agreement, PartnerId, PartnerId) {
        let (source, target) = (PartnerId::generate(), PartnerId::generate());
        let mut agreement = Agreement::propose(source, target, sample_terms(), None, at(0));
        agreement.accept(target, 1, at(1)).unwrap();
        (agreement, source, target)
    }

    #[test]
    fn only_the_counterparty_accepts_and_acceptance_activates() {
        let (source, target) = (PartnerId::generate(), PartnerId::generate());
        let mut agreement = Agreement::propose(source, target, sample_terms(), None, at(0));
        assert_eq!(
            agreement.accept(source, 1, at(1)),
            Err(AgreementRuleError::OwnProposal)
        );
        assert_eq!(
            agreement.accept(PartnerId::generate(), 1, at(1)),
            Err(AgreementRuleError::NotAParty)
        );
        assert_eq!(
            agreement.accept(target, 2, at(1)),
            Err(AgreementRuleError::VersionNotFound(2))
        );
        assert_eq!(agreement.terms_in_force(at(1)), None);
        agreement.accept(target, 1, at(1)).unwrap();
        assert_eq!(agreement.status_at(at(1)), AgreementStatus::Active);
        assert_eq!(agreement.terms_in_force(at(1)).unwrap().version, 1);
        assert!(matches!(
            agreement.accept(target, 1, at(2)),
            Err(AgreementRuleError::VersionNotProposed { .. })
        ));
    }

    #[test]
    fn terms_never_apply_before_acceptance() {
        let (source, target) = (PartnerId::generate(), PartnerId::generate());
        let mut agreement =
            Agreement::propose(source, target, sample_terms(), Some(at(-10)), at(0));
        agreement.accept(target, 1, at(5)).unwrap();
        assert_eq!(agreement.versions[0].effective_at, Some(at(5)));
        assert_eq!(agreement.terms_in_force(at(4)), None);
    }

    #[test]
    fn an_amendment_applies_from_its_effective_time() {
        let (mut agreement, source, target) = active_agreement();
        assert_eq!(
            agreement.amend(target, sample_terms(), Some(at(48)), at(2)),
            Ok(2)
        );
        assert_eq!(
            agreement.amend(source, sample_terms(), None, at(3)),
            Err(AgreementRuleError::AmendmentPending(2))
        );
        agreement.accept(source, 2, at(10)).unwrap();
        assert_eq!(agreement.terms_in_force(at(47)).unwrap().version, 1);
        assert_eq!(agreement.terms_in_force(at(48)).unwrap().version, 2);
        assert_eq!(agreement.terms_in_force(at(1000)).unwrap().version, 2);
    }

    #[test]
    fn a_later_version_never_takes_effect_before_an_earlier_one() {
        let (mut agreement, source, target) = active_agreement();
        agreement
            .amend(target, sample_terms(), Some(at(100)), at(2))
            .unwrap();
        agreement.accept(source, 2, at(3)).unwrap();
        agreement
            .amend(source, sample_terms(), Some(at(50)), at(4))
            .unwrap();
        agreement.accept(target, 3, at(5)).unwrap();
        assert_eq!(agreement.versions[2].effective_at, Some(at(100)));
        assert_eq!(agreement.terms_in_force(at(99)).unwrap().version, 1);
        assert_eq!(agreement.terms_in_force(at(100)).unwrap().version, 3);
    }

    #[test]
    fn rejecting_or_withdrawing_an_amendment_keeps_the_terms_in_force() {
        let (mut agreement, source, target) = active_agreement();
        agreement
            .amend(source, sample_terms(), None, at(2))
            .unwrap();
        agreement
            .reject(target, 2, Some("too generous".into()), at(3))
            .unwrap();
        assert_eq!(agreement.versions[1].status, TermsVersionStatus::Rejected);
        agreement
            .amend(source, sample_terms(), None, at(4))
            .unwrap();
        agreement.reject(source, 3, None, at(5)).unwrap();
        assert_eq!(agreement.versions[2].status, TermsVersionStatus::Withdrawn);
        assert_eq!(agreement.status_at(at(6)), AgreementStatus::Active);
        assert_eq!(agreement.terms_in_force(at(6)).unwrap().version, 1);
    }

    #[test]
    fn rejecting_the_first_version_ends_the_agreement() {
        let (source, target) = (PartnerId::generate(), PartnerId::generate());
        let mut agreement = Agreement::propose(source, target, sample_terms(), None, at(0));
        agreement.reject(target, 1, None, at(1)).unwrap();
        assert_eq!(agreement.status_at(at(1)), AgreementStatus::Rejected);
        assert!(
            agreement
                .amend(source, sample_terms(), None, at(2))
                .is_err()
        );
        assert!(agreement.accept(target, 1, at(2)).is_err());
    }

    #[test]
    fn termination_ends_the_terms_at_its_time_and_only_moves_earlier() {
        let (mut agreement, source, target) = active_agreement();
        agreement
            .terminate(source, Some(at(100)), "ending".into(), at(2))
            .unwrap();
        agreement
            .terminate(target, Some(at(200)), "later".into(), at(3))
            .unwrap();
        assert_eq!(agreement.terminate_at, Some(at(100)));
        assert_eq!(agreement.status_at(at(99)), AgreementStatus::Active);
        assert_eq!(agreement.terms_in_force(at(99)).unwrap().version, 1);
        assert_eq!(agreement.status_at(at(100)), AgreementStatus::Terminated);
        assert_eq!(agreement.terms_in_force(at(100)), None);
        assert_eq!(
            agreement.terminate(source, None, "again".into(), at(101)),
            Err(AgreementRuleError::AlreadyTerminated)
        );
        assert_eq!(
            agreement.amend(source, sample_terms(), None, at(101)),
            Err(AgreementRuleError::AlreadyTerminated)
        );
    }

    proptest! {
        /// Whatever amendments are accepted and whenever, the version in force never goes
        /// backwards in time, and at any instant it is the newest version already effective.
        #[test]
        fn the_version_in_force_only_moves_forward(
            steps in proptest::collection::vec((0i64..200, proptest::option::of(0i64..400), any::<bool>()), 1..12),
        ) {
            let (mut agreement, source, target) = active_agreement();
            let mut now = 1;
            for (wait, requested, accept) in steps {
                now += wait;
                let number = agreement.amend(source, sample_terms(), requested.map(at), at(now)).unwrap();
                now += 1;
                if accept {
                    agreement.accept(target, number, at(now)).unwrap();
                } else {
                    agreement.reject(target, number, None, at(now)).unwrap();
                }
            }
            let mut previous = 0;
            for hour in 0..(now + 500) {
                let in_force = agreement.terms_in_force(at(hour)).map_or(0, |version| version.version);
                prop_assert!(in_force >= previous, "version went back from {} to {} at hour {}", previous, in_force, hour);
                let newest_effective = agreement.versions.iter()
                    .filter(|version| version.effective_at.is_some_and(|effective| effective <= at(hour)))
                    .map(|version| version.version)
                    .max()
                    .unwrap_or(0);
                prop_assert_eq!(in_force, newest_effective);
                previous = in_force;
            }
        }
    }
}
