-- Runs hold a period of commit times, not a copy of every entry.
--
-- A run used to copy each entry it took into settlement_run_entries, to hold it by its key: a
-- million entries meant a million rows written and checked before the run could be read. The
-- ledger now seals commit times (its migration 0005): once sealed at a cut-off, no entry before
-- it can still appear. So a run in a currency holds exactly the entries committed from the
-- previous live run's cut-off up to its own, and the runs of a currency follow one another
-- without gap or overlap: at most one live run starts at a given time (the index below), and
-- only the newest live run may be cancelled, which hands its period back to the next run.
ALTER TABLE settlement_runs ADD COLUMN start_micros BIGINT NOT NULL DEFAULT 0;

-- Runs created before this held their entries by key; each is given the period its entries came
-- from: after the cut-off of the live run before it.
UPDATE settlement_runs SET start_micros = COALESCE((
    SELECT MAX(previous.cutoff_micros) FROM settlement_runs previous
    WHERE previous.currency = settlement_runs.currency
      AND previous.status <> 'CANCELLED'
      AND previous.cutoff_micros < settlement_runs.cutoff_micros), 0);

CREATE UNIQUE INDEX settlement_runs_one_per_period
    ON settlement_runs (currency, start_micros) WHERE status <> 'CANCELLED';

DROP TABLE settlement_run_entries;
