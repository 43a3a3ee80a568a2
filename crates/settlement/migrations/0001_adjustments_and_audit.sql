-- Settlement's own tables, beside the ledger's in the settlement database. Their migrations are
-- tracked in their own table (_settlement_migrations), apart from the ledger's.

-- Corrections requested by operations staff. A row is written before anything is posted, so a
-- crash between the ledger post and the row's update leaves a POSTING adjustment that is posted
-- again by the same ledger key (tandem:adjustment:<id>), which the ledger answers as a replay.
CREATE TABLE settlement_adjustments (
    adjustment_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    -- The legs as JSON: [{"account_id": …, "direction": "DEBIT"|"CREDIT", "amount_minor": …}].
    legs TEXT NOT NULL,
    reason TEXT NOT NULL,
    reference TEXT NOT NULL,
    -- AWAITING_APPROVAL, POSTING, POSTED, REJECTED or FAILED.
    status TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    rejection_reason TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    decided_at_micros BIGINT
);

CREATE INDEX settlement_adjustments_by_status ON settlement_adjustments (status, adjustment_id);

-- Every ops action, appended and never changed.
CREATE TABLE settlement_audit_events (
    event_id TEXT PRIMARY KEY,
    at_micros BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    -- String details as a JSON object.
    details TEXT NOT NULL
);

CREATE INDEX settlement_audit_events_by_actor ON settlement_audit_events (actor, event_id);
CREATE INDEX settlement_audit_events_by_object ON settlement_audit_events (object_id, event_id);
