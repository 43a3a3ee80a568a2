-- Entries without foreign keys, and without the index by unit.
--
-- Every entry is written by the ledger's writer, in the same database transaction as its
-- transaction row, for an account the writer has just read; nothing else writes entries and
-- nothing deletes anything. The foreign keys therefore never caught anything, but they cost a
-- look-up of both parents for every entry, and on PostgreSQL a KEY SHARE lock on the account row:
-- the few hot settlement and clearing accounts that every conversion touches collected those
-- locks from every concurrent batch. The index by unit served only the trial balance, which
-- reads every posted entry anyway.
--
-- SQLite cannot drop a constraint, so the table is rebuilt; the same statements work on both
-- backends.

CREATE TABLE ledger_entries_rebuilt (
    transaction_id TEXT NOT NULL,
    leg BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    unit TEXT NOT NULL,
    debit_minor BIGINT NOT NULL,
    credit_minor BIGINT NOT NULL,
    -- POSTED entries count in posted balances; PENDING ones while their transaction is open.
    phase TEXT NOT NULL,
    committed_at_micros BIGINT NOT NULL,
    CONSTRAINT ledger_entries_by_transaction PRIMARY KEY (transaction_id, leg)
);

INSERT INTO ledger_entries_rebuilt
    (transaction_id, leg, account_id, unit, debit_minor, credit_minor, phase, committed_at_micros)
SELECT transaction_id, leg, account_id, unit, debit_minor, credit_minor, phase, committed_at_micros
FROM ledger_entries;

DROP TABLE ledger_entries;

ALTER TABLE ledger_entries_rebuilt RENAME TO ledger_entries;

CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, committed_at_micros, transaction_id, leg);
