-- Settlement runs: the closing of a period in one currency.
CREATE TABLE settlement_runs (
    run_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    currency TEXT NOT NULL,
    currency_scale BIGINT NOT NULL,
    cutoff_micros BIGINT NOT NULL,
    -- DRAFT, APPROVED, SETTLING, SETTLED or CANCELLED.
    status TEXT NOT NULL,
    created_by TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    settled_by TEXT NOT NULL,
    cancelled_by TEXT NOT NULL,
    cancel_reason TEXT NOT NULL,
    -- Positions, the bilateral breakdown and totals by kind, as JSON: a few rows per party,
    -- whatever the number of entries.
    summary TEXT NOT NULL,
    entry_count BIGINT NOT NULL,
    -- Payment reference per party, as a JSON object, once settled.
    payment_references TEXT NOT NULL,
    -- The settling ledger transactions' ids, as a JSON array.
    settlement_transaction_ids TEXT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    decided_at_micros BIGINT
);

CREATE INDEX settlement_runs_by_status ON settlement_runs (status, run_id);

-- Every ledger entry a run holds. The primary key is the entry's own, so an entry is held by at
-- most one run; a cancelled run's entries are deleted, and the next run takes them.
CREATE TABLE settlement_run_entries (
    transaction_id TEXT NOT NULL,
    leg BIGINT NOT NULL,
    run_id TEXT NOT NULL,
    -- "exchange" or a partner id: the owner of the entry's account.
    party TEXT NOT NULL,
    account_id TEXT NOT NULL,
    -- CONVERSION, EARN, ADJUSTMENT, REVERSAL, …: the transaction's type code, or REVERSAL.
    kind TEXT NOT NULL,
    external_reference TEXT NOT NULL,
    debit_minor BIGINT NOT NULL,
    credit_minor BIGINT NOT NULL,
    committed_at_micros BIGINT NOT NULL,
    PRIMARY KEY (transaction_id, leg)
);

CREATE INDEX settlement_run_entries_by_party
    ON settlement_run_entries (run_id, party, committed_at_micros, transaction_id, leg);
