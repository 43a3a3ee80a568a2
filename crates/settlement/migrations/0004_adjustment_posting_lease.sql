-- Who posts a POSTING adjustment: a request, a retry and the start-up job may all try, and only
-- the one holding this lease asks the ledger, so a refusal one of them records as FAILED can never
-- stand beside a post another one made.
ALTER TABLE settlement_adjustments ADD COLUMN posting_until_micros BIGINT NOT NULL DEFAULT 0;
