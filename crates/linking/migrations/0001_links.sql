-- Account linking. A link request carries a one-time code (stored hashed); a link joins two
-- members of two partners; every change is an event in the append-only history.

CREATE TABLE link_requests (
    request_id TEXT PRIMARY KEY,
    initiator_partner_id TEXT NOT NULL,
    initiator_member_id TEXT NOT NULL,
    target_partner_id TEXT NOT NULL,
    -- The code's public half. Unique among open requests (open_handle, NULL once closed), so a
    -- wrong secret counts against exactly one request; kept in handle to tell a used code.
    handle TEXT NOT NULL,
    open_handle TEXT CONSTRAINT link_requests_open_handle_key UNIQUE,
    -- SHA-256 of the request id and the code's secret half.
    secret_hash TEXT NOT NULL,
    failed_attempts BIGINT NOT NULL,
    -- OPEN, COMPLETED or LOCKED (expiry is the time below).
    status TEXT NOT NULL,
    expires_at_micros BIGINT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    -- Who started it (a client id), for the link's history.
    started_by TEXT NOT NULL,
    link_id TEXT
);

CREATE TABLE links (
    link_id TEXT PRIMARY KEY,
    initiator_partner_id TEXT NOT NULL,
    initiator_member_id TEXT NOT NULL,
    acceptor_partner_id TEXT NOT NULL,
    acceptor_member_id TEXT NOT NULL,
    -- The partners' categories, for the one-partner-per-category rule.
    initiator_category TEXT NOT NULL,
    acceptor_category TEXT NOT NULL,
    -- ACTIVE or ENDED.
    status TEXT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    ended_at_micros BIGINT
);
CREATE INDEX links_by_initiator ON links (initiator_partner_id, initiator_member_id);
CREATE INDEX links_by_acceptor ON links (acceptor_partner_id, acceptor_member_id);
CREATE INDEX links_by_creation ON links (created_at_micros, link_id);
CREATE INDEX link_requests_by_handle ON link_requests (handle, created_at_micros);

-- One row per member ever seen: locked while a link involving the member is made, so the
-- one-link rules hold under concurrency.
CREATE TABLE link_members (
    partner_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (partner_id, member_id)
);

CREATE TABLE link_events (
    event_id TEXT PRIMARY KEY,
    link_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor_partner_id TEXT,
    actor TEXT NOT NULL,
    reason TEXT,
    at_micros BIGINT NOT NULL
);
CREATE INDEX link_events_by_link ON link_events (link_id, at_micros);

CREATE TABLE link_policies (
    partner_id TEXT PRIMARY KEY,
    allow_multiple_accounts_per_partner BIGINT NOT NULL,
    -- Comma-separated categories, such as "HOTEL,AIRLINE".
    exclusive_categories TEXT NOT NULL
);
