-- The double-entry ledger. Append-only: transactions and entries are inserted, never updated or
-- deleted; a correction is a new transaction that points at what it corrects. Balances are not
-- stored on a row per account but derived from entries, so concurrent transactions on the same
-- hot accounts never wait for one another (see crates/ledger/README.md).

-- Units of account and their fixed scale (decimal places of the minor unit).
CREATE TABLE ledger_units (
    unit TEXT PRIMARY KEY,
    scale BIGINT NOT NULL
);

CREATE TABLE ledger_accounts (
    account_id TEXT PRIMARY KEY,
    -- "exchange" or a partner id.
    owner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    unit TEXT NOT NULL REFERENCES ledger_units (unit),
    -- NONE, DEBITS_NOT_EXCEED_CREDITS or CREDITS_NOT_EXCEED_DEBITS.
    guard TEXT NOT NULL,
    overdraft_limit_minor BIGINT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    CONSTRAINT ledger_accounts_identity_key UNIQUE (owner, purpose, unit)
);

CREATE TABLE ledger_transactions (
    transaction_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL CONSTRAINT ledger_transactions_idempotency_key UNIQUE,
    -- The request's content as canonical JSON: a reused key is a retry only if this matches.
    content TEXT NOT NULL,
    -- POSTED, PENDING, POST_PENDING, VOID_PENDING or REVERSAL.
    kind TEXT NOT NULL,
    type_code TEXT NOT NULL,
    external_reference TEXT NOT NULL,
    effective_at_micros BIGINT NOT NULL,
    committed_at_micros BIGINT NOT NULL,
    metadata TEXT NOT NULL,
    related_transaction_id TEXT,
    -- Set on POST_PENDING and VOID_PENDING: unique, so a pending transaction resolves at most once.
    resolves_pending_id TEXT CONSTRAINT ledger_transactions_resolves_key UNIQUE,
    -- Set on REVERSAL: unique, so a transaction is reversed at most once.
    reverses_id TEXT CONSTRAINT ledger_transactions_reverses_key UNIQUE,
    -- Set on PENDING: after this it counts as voided.
    expires_at_micros BIGINT
);
CREATE INDEX ledger_transactions_by_reference ON ledger_transactions (external_reference, committed_at_micros);

CREATE TABLE ledger_entries (
    transaction_id TEXT NOT NULL REFERENCES ledger_transactions (transaction_id),
    leg BIGINT NOT NULL,
    account_id TEXT NOT NULL REFERENCES ledger_accounts (account_id),
    unit TEXT NOT NULL,
    debit_minor BIGINT NOT NULL,
    credit_minor BIGINT NOT NULL,
    -- POSTED entries count in posted balances; PENDING ones while their transaction is open.
    phase TEXT NOT NULL,
    committed_at_micros BIGINT NOT NULL,
    PRIMARY KEY (transaction_id, leg)
);
CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, committed_at_micros, transaction_id, leg);
CREATE INDEX ledger_entries_by_unit ON ledger_entries (unit, phase);
