-- The exchange: quotes, conversions with their saga state, activities and their earnings.
-- Times are microseconds since the Unix epoch; amounts are integers in minor units; decimals
-- are TEXT.

-- A price held for a short time. Everything the conversion needs is copied here, so executing a
-- quote (and resuming it after a crash) asks nobody for anything.
CREATE TABLE quotes (
    quote_id TEXT PRIMARY KEY,
    link_id TEXT NOT NULL,
    source_partner_id TEXT NOT NULL,
    source_member_id TEXT NOT NULL,
    source_gateway TEXT NOT NULL,
    source_program TEXT NOT NULL,
    source_scale BIGINT NOT NULL,
    source_points BIGINT NOT NULL,
    target_partner_id TEXT NOT NULL,
    target_member_id TEXT NOT NULL,
    target_gateway TEXT NOT NULL,
    target_program TEXT NOT NULL,
    target_scale BIGINT NOT NULL,
    target_points BIGINT NOT NULL,
    agreement_id TEXT NOT NULL,
    terms_version BIGINT NOT NULL,
    conversion_rate TEXT NOT NULL,
    settlement_currency TEXT NOT NULL,
    currency_scale BIGINT NOT NULL,
    settlement_amount_minor BIGINT NOT NULL,
    fee_amount_minor BIGINT NOT NULL,
    -- The caps and reversal window of the terms priced; NULL caps mean none.
    member_daily_cap_points BIGINT,
    agreement_monthly_cap_points BIGINT,
    reversal_hours BIGINT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    expires_at_micros BIGINT NOT NULL
);

-- A conversion and its saga. status: PENDING, COMPLETED, FAILED, REVERSING, REVERSED.
-- step: the next thing to do (see ConversionStep). Whoever drives a saga holds its lease
-- (lease_owner until lease_until), so two workers never drive one saga at once.
CREATE TABLE conversions (
    conversion_id TEXT PRIMARY KEY,
    quote_id TEXT NOT NULL CONSTRAINT conversions_quote_key UNIQUE,
    source_partner_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    source_member_id TEXT NOT NULL,
    target_partner_id TEXT NOT NULL,
    target_member_id TEXT NOT NULL,
    agreement_id TEXT NOT NULL,
    source_points BIGINT NOT NULL,
    status TEXT NOT NULL,
    step TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    failure_reason TEXT NOT NULL,
    ledger_transaction_id TEXT NOT NULL,
    reversal_transaction_id TEXT NOT NULL,
    reverse_reason TEXT NOT NULL,
    next_attempt_micros BIGINT NOT NULL,
    lease_owner TEXT NOT NULL,
    lease_until_micros BIGINT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    updated_at_micros BIGINT NOT NULL,
    finished_at_micros BIGINT,
    CONSTRAINT conversions_idempotency_key UNIQUE (source_partner_id, idempotency_key)
);
CREATE INDEX conversions_unfinished ON conversions (next_attempt_micros)
    WHERE status IN ('PENDING', 'REVERSING');
CREATE INDEX conversions_by_source ON conversions (source_partner_id, created_at_micros, conversion_id);
CREATE INDEX conversions_by_target ON conversions (target_partner_id, created_at_micros, conversion_id);
CREATE INDEX conversions_by_creation ON conversions (created_at_micros, conversion_id);
CREATE INDEX conversions_by_member ON conversions (agreement_id, source_member_id, created_at_micros);

-- One row per agreement with caps: locked while a conversion checks and takes its share, so caps
-- hold under concurrency on PostgreSQL (SQLite serializes writers anyway).
CREATE TABLE cap_locks (
    agreement_id TEXT PRIMARY KEY
);

-- A purchase a partner reported. status: RECORDED or REVERSED.
CREATE TABLE activities (
    activity_id TEXT PRIMARY KEY,
    partner_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    spend_amount_minor BIGINT NOT NULL,
    spend_currency TEXT NOT NULL,
    category TEXT NOT NULL,
    member_tier TEXT NOT NULL,
    activity_at_micros BIGINT NOT NULL,
    recorded_at_micros BIGINT NOT NULL,
    status TEXT NOT NULL,
    reverse_reason TEXT NOT NULL,
    CONSTRAINT activities_external_id UNIQUE (partner_id, external_id)
);

-- What one activity earns at one linked partner, and its saga (status and step as for
-- conversions; see EarningStatus).
CREATE TABLE earnings (
    earning_id TEXT PRIMARY KEY,
    activity_id TEXT NOT NULL,
    source_partner_id TEXT NOT NULL,
    source_member_id TEXT NOT NULL,
    target_partner_id TEXT NOT NULL,
    target_member_id TEXT NOT NULL,
    target_gateway TEXT NOT NULL,
    link_id TEXT NOT NULL,
    agreement_id TEXT NOT NULL,
    terms_version BIGINT NOT NULL,
    target_program TEXT NOT NULL,
    target_scale BIGINT NOT NULL,
    points BIGINT NOT NULL,
    eligible_spend_minor BIGINT NOT NULL,
    -- The calendar year (UTC) of the activity, for the annual spend cap.
    spend_year BIGINT NOT NULL,
    multiplier TEXT NOT NULL,
    settlement_currency TEXT NOT NULL,
    currency_scale BIGINT NOT NULL,
    settlement_amount_minor BIGINT NOT NULL,
    fee_amount_minor BIGINT NOT NULL,
    status TEXT NOT NULL,
    step TEXT NOT NULL,
    refund_requested BIGINT NOT NULL,
    hold_until_micros BIGINT,
    note TEXT NOT NULL,
    ledger_transaction_id TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    next_attempt_micros BIGINT NOT NULL,
    lease_owner TEXT NOT NULL,
    lease_until_micros BIGINT NOT NULL,
    updated_at_micros BIGINT NOT NULL
);
CREATE INDEX earnings_by_activity ON earnings (activity_id);
CREATE INDEX earnings_unfinished ON earnings (next_attempt_micros)
    WHERE step <> 'DONE';
CREATE INDEX earnings_by_member_year ON earnings (agreement_id, source_member_id, spend_year);
