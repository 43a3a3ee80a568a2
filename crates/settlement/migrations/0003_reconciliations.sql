-- Reconciliations: a partner's own records of a period, compared with Tandem's. Nothing here
-- ever changes a ledger entry; a discrepancy is resolved by an adjustment or accepted.
CREATE TABLE settlement_reconciliations (
    reconciliation_id TEXT PRIMARY KEY,
    partner_id TEXT NOT NULL,
    start_micros BIGINT NOT NULL,
    end_micros BIGINT NOT NULL,
    partner_record_count BIGINT NOT NULL,
    tandem_record_count BIGINT NOT NULL,
    -- Count per class, as a JSON object.
    counts TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    created_at_micros BIGINT NOT NULL
);

-- The partner's records as sent, by the line they came on. Written while the report streams in,
-- before its reconciliation row: a report refused part-way has its records deleted.
CREATE TABLE settlement_partner_records (
    reconciliation_id TEXT NOT NULL,
    line BIGINT NOT NULL,
    partner_record_id TEXT NOT NULL,
    reference TEXT NOT NULL,
    kind TEXT NOT NULL,
    points BIGINT NOT NULL,
    money_minor BIGINT,
    at_micros BIGINT NOT NULL,
    PRIMARY KEY (reconciliation_id, line)
);

CREATE INDEX settlement_partner_records_by_reference
    ON settlement_partner_records (reconciliation_id, reference, kind, line);

CREATE TABLE settlement_discrepancies (
    discrepancy_id TEXT PRIMARY KEY,
    reconciliation_id TEXT NOT NULL,
    -- MISSING_OURS, MISSING_THEIRS, AMOUNT_MISMATCH, TIME_MISMATCH or DUPLICATE.
    class TEXT NOT NULL,
    reference TEXT NOT NULL,
    kind TEXT NOT NULL,
    partner_record_id TEXT NOT NULL,
    line BIGINT NOT NULL,
    our_points BIGINT NOT NULL,
    their_points BIGINT NOT NULL,
    our_money_minor BIGINT NOT NULL,
    their_money_minor BIGINT,
    our_at_micros BIGINT,
    their_at_micros BIGINT,
    -- OPEN, ADJUSTED or ACCEPTED.
    status TEXT NOT NULL,
    adjustment_id TEXT NOT NULL,
    resolved_by TEXT NOT NULL,
    resolution_reason TEXT NOT NULL
);

CREATE INDEX settlement_discrepancies_by_class
    ON settlement_discrepancies (reconciliation_id, class, discrepancy_id);
