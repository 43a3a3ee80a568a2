-- Unfinished earnings and when each is next due, kept beside the earnings instead of in a
-- partial index on them.
--
-- An earning is written once when it is recorded and once more when its saga ends. The index of
-- unfinished earnings was keyed by the next attempt and limited to steps other than DONE, so the
-- ending write changed indexed columns: PostgreSQL wrote the whole ~500-byte row again on
-- another page and added it to every index of the table. With the queue here, the ending write
-- changes no indexed column of `earnings`, and on PostgreSQL (where the table also keeps room on
-- each page for that write, see `tandem_exchange::prepare_database`) it is a heap-only update: the
-- new version lands on the same page, no index is touched, and the page reclaims the old one. An
-- earning is in this table from the moment it is recorded until its saga ends (or again, when a
-- refund sends an ended one back to its saga).

CREATE TABLE earnings_due (
    earning_id TEXT PRIMARY KEY,
    next_attempt_micros BIGINT NOT NULL
);
CREATE INDEX earnings_due_by_time ON earnings_due (next_attempt_micros);

INSERT INTO earnings_due (earning_id, next_attempt_micros)
SELECT earning_id, next_attempt_micros FROM earnings WHERE step <> 'DONE';

DROP INDEX earnings_unfinished;
