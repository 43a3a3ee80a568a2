//! Who is calling: the identity a verified token carries.

use std::{fmt, str::FromStr};

use tandem_domain::PartnerId;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Acts for exactly one partner: its own data only.
    Partner,
    /// The exchange's operations staff: settlement, reconciliation, reports; reads everything.
    Ops,
    /// Registry administration.
    Admin,
    /// Calls between Tandem's own services.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Partner => "partner",
            Role::Ops => "ops",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [Role::Partner, Role::Ops, Role::Admin, Role::Service]
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                format!("unknown role {text:?}; expected partner, ops, admin or service")
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    subject: String,
    role: Role,
    partner_id: Option<PartnerId>,
}

impl Caller {
    /// A partner's caller, acting for `partner_id`.
    pub fn partner(partner_id: PartnerId, subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            role: Role::Partner,
            partner_id: Some(partner_id),
        }
    }

    /// An operator or service caller; `role` must not be [`Role::Partner`].
    pub fn staff(role: Role, subject: impl Into<String>) -> Result<Self, String> {
        if role == Role::Partner {
            return Err("a partner caller needs its partner id".to_owned());
        }
        Ok(Self {
            subject: subject.into(),
            role,
            partner_id: None,
        })
    }

    /// Who the token was issued to: a client id, or an operator's name.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The partner a partner caller acts for; `None` for every other role.
    pub fn partner_id(&self) -> Option<PartnerId> {
        self.partner_id
    }

    /// Whether the caller has one of `roles`.
    pub fn is_any(&self, roles: &[Role]) -> bool {
        roles.contains(&self.role)
    }

    /// Whether the caller is the partner `partner` itself.
    pub fn is_partner(&self, partner: PartnerId) -> bool {
        self.role == Role::Partner && self.partner_id == Some(partner)
    }
}
