-- What Tandem says each move is for (the conversion or activity id, and CONVERSION, EARN or
-- REVERSAL), as the gateway contract sends it: a partner keeps it to reconcile with Tandem.
-- Operations stored before Tandem sent it have none.
ALTER TABLE sim_operations ADD COLUMN tandem_reference TEXT NOT NULL DEFAULT '';
ALTER TABLE sim_operations ADD COLUMN tandem_kind TEXT NOT NULL DEFAULT '';
