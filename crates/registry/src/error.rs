//! The registry's one error enum, and its one mapping to gRPC codes.

use tandem_domain::{
    AgreementId, AgreementRuleError, Category, PartnerId, PartnerStatus, Timestamp, Violations,
};
use tandem_proto::status;
use tonic::{Code, Status};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    InvalidArgument(Violations),
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    #[error("partner {0} not found")]
    PartnerNotFound(PartnerId),
    #[error("agreement {0} not found")]
    AgreementNotFound(AgreementId),
    #[error("partner code {0:?} is already registered")]
    PartnerCodeTaken(String),
    #[error("program code {0:?} is already registered")]
    ProgramCodeTaken(String),
    #[error(
        "a live agreement from this source to this target already exists; amend or terminate it"
    )]
    AgreementExists,
    #[error("partner {0} is {status}, not ACTIVE", status = .1.as_str())]
    PartnerNotActive(PartnerId, PartnerStatus),
    #[error("partner {0}: {1}")]
    StatusTransition(PartnerId, String),
    #[error("a partner cannot agree with itself")]
    SamePartner,
    #[error("both partners are in category {0}; agreements join only non-competing categories")]
    SameCategory(Category),
    #[error("{0}")]
    AgreementRule(AgreementRuleError),
    #[error("agreement {0} has no terms in force at {1}")]
    NoTermsInForce(AgreementId, Timestamp),
    #[error("the record changed concurrently; retry the request")]
    Conflict,
    #[error("the registry's database is busy; retry shortly")]
    DatabaseBusy,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::PartnerCodeTaken(code) => RegistryError::PartnerCodeTaken(code),
            StoreError::ProgramCodeTaken(code) => RegistryError::ProgramCodeTaken(code),
            StoreError::AgreementLive => RegistryError::AgreementExists,
            StoreError::Conflict => RegistryError::Conflict,
            StoreError::Busy => RegistryError::DatabaseBusy,
            StoreError::Corrupt(message) => RegistryError::Internal(message),
            StoreError::Database(error) => RegistryError::Internal(error.to_string()),
        }
    }
}

impl From<RegistryError> for Status {
    fn from(error: RegistryError) -> Self {
        let message = error.to_string();
        let (code, reason) = match &error {
            RegistryError::InvalidArgument(violations) => {
                return status::invalid_argument(
                    violations.iter().map(|violation| {
                        (violation.field.as_str(), violation.description.as_str())
                    }),
                );
            }
            RegistryError::Internal(cause) => return status::internal(cause),
            RegistryError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
            RegistryError::PartnerNotFound(_) => (Code::NotFound, "PARTNER_NOT_FOUND"),
            RegistryError::AgreementNotFound(_) => (Code::NotFound, "AGREEMENT_NOT_FOUND"),
            RegistryError::PartnerCodeTaken(_) => (Code::AlreadyExists, "PARTNER_CODE_TAKEN"),
            RegistryError::ProgramCodeTaken(_) => (Code::AlreadyExists, "PROGRAM_CODE_TAKEN"),
            RegistryError::AgreementExists => (Code::AlreadyExists, "AGREEMENT_EXISTS"),
            RegistryError::PartnerNotActive(..) => (Code::FailedPrecondition, "PARTNER_NOT_ACTIVE"),
            RegistryError::StatusTransition(..) => {
                (Code::FailedPrecondition, "PARTNER_STATUS_TRANSITION")
            }
            RegistryError::SamePartner => (Code::InvalidArgument, "SAME_PARTNER"),
            RegistryError::SameCategory(_) => (Code::FailedPrecondition, "SAME_CATEGORY"),
            RegistryError::AgreementRule(rule) => match rule {
                AgreementRuleError::NotAParty => (Code::PermissionDenied, "NOT_A_PARTY"),
                AgreementRuleError::VersionNotFound(_) => {
                    (Code::NotFound, "TERMS_VERSION_NOT_FOUND")
                }
                AgreementRuleError::VersionNotProposed { .. } => {
                    (Code::FailedPrecondition, "TERMS_VERSION_NOT_PROPOSED")
                }
                AgreementRuleError::OwnProposal => (Code::FailedPrecondition, "OWN_PROPOSAL"),
                AgreementRuleError::WrongStatus(..) => {
                    (Code::FailedPrecondition, "AGREEMENT_STATUS")
                }
                AgreementRuleError::AmendmentPending(_) => {
                    (Code::FailedPrecondition, "AMENDMENT_PENDING")
                }
                AgreementRuleError::AlreadyTerminated => {
                    (Code::FailedPrecondition, "AGREEMENT_TERMINATED")
                }
            },
            RegistryError::NoTermsInForce(..) => (Code::FailedPrecondition, "NO_TERMS_IN_FORCE"),
            RegistryError::Conflict => (Code::Aborted, "CONCURRENT_CHANGE"),
            RegistryError::DatabaseBusy => (Code::Unavailable, "DATABASE_BUSY"),
        };
        status::with_reason(code, reason, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(error: sqlx::Error) -> Status {
        Status::from(RegistryError::from(StoreError::from(error)))
    }

    #[test]
    fn an_exhausted_pool_is_unavailable_so_clients_retry() {
        let status = status_of(sqlx::Error::PoolTimedOut);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status::reason(&status), "DATABASE_BUSY");
        assert_eq!(status_of(sqlx::Error::RowNotFound).code(), Code::Internal);
    }
}
