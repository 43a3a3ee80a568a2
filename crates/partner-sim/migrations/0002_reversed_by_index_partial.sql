-- Only reversed operations in the index of reversals.
--
-- The unique constraint on reversed_by kept an index entry for every debit and credit, though
-- nearly all of them are never reversed and hold NULL there: one index write per operation that
-- guarded nothing. A partial unique index guards the same thing (an operation is undone at most
-- once) and holds only the operations that were.
--
-- SQLite cannot drop a constraint, so the table is rebuilt; the same statements work on both
-- backends. The primary key takes a new name, sim_operations_by_key, since the old table's index
-- keeps its name until that table is dropped.

CREATE TABLE sim_operations_rebuilt (
    -- Tandem's transaction key: the same key is the same operation, applied at most once.
    transaction_key TEXT NOT NULL CONSTRAINT sim_operations_by_key PRIMARY KEY,
    -- DEBIT, CREDIT, REVERSAL, or VOID (a key reversed before it was ever seen).
    kind TEXT NOT NULL,
    member_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    -- For a REVERSAL: the key it undoes.
    original_key TEXT,
    -- For a DEBIT or CREDIT: the reversal that undid it; at most one (see the index below).
    reversed_by TEXT,
    applied_at_micros BIGINT NOT NULL
);

INSERT INTO sim_operations_rebuilt
    (transaction_key, kind, member_id, amount_minor, original_key, reversed_by, applied_at_micros)
SELECT transaction_key, kind, member_id, amount_minor, original_key, reversed_by, applied_at_micros
FROM sim_operations;

DROP TABLE sim_operations;
ALTER TABLE sim_operations_rebuilt RENAME TO sim_operations;

CREATE UNIQUE INDEX sim_operations_reversed_once ON sim_operations (reversed_by)
    WHERE reversed_by IS NOT NULL;
