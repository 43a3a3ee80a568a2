-- The uniqueness of a pending transaction's resolution and of a transaction's reversal, kept by
-- indexes on only the rows that resolve or reverse something.
--
-- Most transactions neither resolve a pending one nor reverse one, and those two columns are NULL
-- for them; a unique constraint still gave every one of them an entry in both indexes. Partial
-- unique indexes hold exactly the rows that name a pending transaction or an original, so they
-- guard the same "at most once" for a third of the work. The request's content is now stored as
-- a digest (see store.rs), so the column keeps its name and grows no index.
--
-- SQLite cannot drop a constraint, so the table is rebuilt; the same statements work on both
-- backends. The primary key and the idempotency key take new names, since the old table's
-- indexes keep theirs until it is dropped.

CREATE TABLE ledger_transactions_rebuilt (
    transaction_id TEXT NOT NULL CONSTRAINT ledger_transactions_by_id PRIMARY KEY,
    idempotency_key TEXT NOT NULL CONSTRAINT ledger_transactions_key_once UNIQUE,
    -- The request: a digest ("sha256:…") of its canonical JSON; the JSON itself in rows written
    -- before digests. A reused key is a retry only if this matches.
    content TEXT NOT NULL,
    -- POSTED, PENDING, POST_PENDING, VOID_PENDING or REVERSAL.
    kind TEXT NOT NULL,
    type_code TEXT NOT NULL,
    external_reference TEXT NOT NULL,
    effective_at_micros BIGINT NOT NULL,
    committed_at_micros BIGINT NOT NULL,
    metadata TEXT NOT NULL,
    related_transaction_id TEXT,
    -- Set on POST_PENDING and VOID_PENDING: a pending transaction resolves at most once.
    resolves_pending_id TEXT,
    -- Set on REVERSAL: a transaction is reversed at most once.
    reverses_id TEXT,
    -- Set on PENDING: after this it counts as voided.
    expires_at_micros BIGINT
);

INSERT INTO ledger_transactions_rebuilt
    (transaction_id, idempotency_key, content, kind, type_code, external_reference,
     effective_at_micros, committed_at_micros, metadata, related_transaction_id,
     resolves_pending_id, reverses_id, expires_at_micros)
SELECT transaction_id, idempotency_key, content, kind, type_code, external_reference,
       effective_at_micros, committed_at_micros, metadata, related_transaction_id,
       resolves_pending_id, reverses_id, expires_at_micros
FROM ledger_transactions;

DROP TABLE ledger_transactions;

ALTER TABLE ledger_transactions_rebuilt RENAME TO ledger_transactions;

CREATE UNIQUE INDEX ledger_transactions_resolves_once ON ledger_transactions (resolves_pending_id)
    WHERE resolves_pending_id IS NOT NULL;
CREATE UNIQUE INDEX ledger_transactions_reverses_once ON ledger_transactions (reverses_id)
    WHERE reverses_id IS NOT NULL;
CREATE INDEX ledger_transactions_by_reference ON ledger_transactions (external_reference, committed_at_micros);
