-- The partner registry. Portable SQL for SQLite and PostgreSQL: ids are UUID text, times are
-- Unix microseconds, decimals live inside the terms document as text.

-- A brand in the coalition with its one loyalty program.
CREATE TABLE partners (
    partner_id TEXT PRIMARY KEY,
    code TEXT NOT NULL CONSTRAINT partners_code_key UNIQUE,
    display_name TEXT NOT NULL,
    category TEXT NOT NULL,
    -- The program's point currency names a ledger unit, so it is unique across the coalition.
    program_code TEXT NOT NULL CONSTRAINT partners_program_code_key UNIQUE,
    program_name TEXT NOT NULL,
    program_scale BIGINT NOT NULL,
    settlement_currency TEXT NOT NULL,
    gateway_endpoint TEXT,
    status TEXT NOT NULL,
    status_reason TEXT,
    created_at_micros BIGINT NOT NULL,
    updated_at_micros BIGINT NOT NULL
);
CREATE INDEX partners_by_creation ON partners (created_at_micros, partner_id);

-- Client credentials. Only an Argon2id hash of the secret is kept. Rotation revokes the old row
-- and adds a new one, so the history of who could sign in when is kept.
CREATE TABLE partner_credentials (
    client_id TEXT PRIMARY KEY,
    partner_id TEXT NOT NULL REFERENCES partners (partner_id),
    secret_hash TEXT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    revoked_at_micros BIGINT
);
CREATE INDEX partner_credentials_by_partner ON partner_credentials (partner_id);

-- A directional agreement from a source partner to a target partner.
CREATE TABLE agreements (
    agreement_id TEXT PRIMARY KEY,
    source_partner_id TEXT NOT NULL REFERENCES partners (partner_id),
    target_partner_id TEXT NOT NULL REFERENCES partners (partner_id),
    -- PROPOSED, ACTIVE or REJECTED; termination is the time below, since it may be scheduled.
    state TEXT NOT NULL,
    -- "source/target" while the agreement is proposed or active and not yet terminated, NULL
    -- after: the unique constraint allows one live agreement per direction between two partners.
    live_pair TEXT CONSTRAINT agreements_live_pair_key UNIQUE,
    terminate_at_micros BIGINT,
    terminated_by_partner_id TEXT,
    termination_reason TEXT,
    created_at_micros BIGINT NOT NULL,
    -- Bumped on every change: a change made from a stale read is refused, never lost.
    revision BIGINT NOT NULL
);
CREATE INDEX agreements_by_source ON agreements (source_partner_id, created_at_micros);
CREATE INDEX agreements_by_target ON agreements (target_partner_id, created_at_micros);
CREATE INDEX agreements_by_creation ON agreements (created_at_micros, agreement_id);

-- Every terms version ever proposed. The terms themselves never change once written; only the
-- decision (status, effective time) is recorded later.
CREATE TABLE agreement_terms (
    agreement_id TEXT NOT NULL REFERENCES agreements (agreement_id),
    version BIGINT NOT NULL,
    -- The terms as a JSON document; decimals are strings so nothing is rounded.
    terms_json TEXT NOT NULL,
    status TEXT NOT NULL,
    proposed_by_partner_id TEXT NOT NULL,
    proposed_at_micros BIGINT NOT NULL,
    requested_effective_at_micros BIGINT,
    effective_at_micros BIGINT,
    decided_at_micros BIGINT,
    decision_reason TEXT,
    PRIMARY KEY (agreement_id, version)
);
