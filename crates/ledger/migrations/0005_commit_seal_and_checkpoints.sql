-- The commit seal and balance checkpoints.
--
-- An entry's commit time is taken when its batch starts, so batches can commit out of the order
-- of their times: a total "as of T" read now could miss an entry stamped before T that commits a
-- moment later. Sealing at T closes that: it waits for every batch in flight (each holds the seal
-- row shared until it commits), and every later batch stamps its entries at T or after. Once
-- sealed, the entries before T are final, so their sums can be recorded and never recounted.
CREATE TABLE ledger_commit_seal (
    seal_id BIGINT PRIMARY KEY,
    -- Every entry committed from now on carries a commit time at or after this.
    sealed_before_micros BIGINT NOT NULL
);

INSERT INTO ledger_commit_seal (seal_id, sealed_before_micros) VALUES (1, 0);

-- An account's posted totals over its entries committed before as_of_micros: a balance is the
-- latest checkpoint plus the entries from its as_of on, so reads and guards stop summing an
-- account's whole history.
CREATE TABLE ledger_checkpoints (
    account_id TEXT NOT NULL,
    as_of_micros BIGINT NOT NULL,
    posted_debit_minor BIGINT NOT NULL,
    posted_credit_minor BIGINT NOT NULL,
    PRIMARY KEY (account_id, as_of_micros)
);

-- Pending entries by account, for the totals of open holds, which no checkpoint carries: a few
-- rows, where the index by account would walk the account's whole history to find them.
CREATE INDEX ledger_entries_pending ON ledger_entries (account_id, committed_at_micros)
    WHERE phase = 'PENDING';
