-- The simulated loyalty program: members' wallets and every operation Tandem asked for.

CREATE TABLE sim_members (
    member_id TEXT PRIMARY KEY,
    balance_minor BIGINT NOT NULL,
    -- 1 in good standing, 0 blocked.
    in_good_standing BIGINT NOT NULL
);

CREATE TABLE sim_operations (
    -- Tandem's transaction key: the same key is the same operation, applied at most once.
    transaction_key TEXT PRIMARY KEY,
    -- DEBIT, CREDIT, REVERSAL, or VOID (a key reversed before it was ever seen).
    kind TEXT NOT NULL,
    member_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    -- For a REVERSAL: the key it undoes.
    original_key TEXT,
    -- For a DEBIT or CREDIT: the reversal that undid it; unique, so at most one.
    reversed_by TEXT CONSTRAINT sim_operations_reversed_by_key UNIQUE,
    applied_at_micros BIGINT NOT NULL
);
