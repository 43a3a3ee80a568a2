-- An account's entries indexed by account and commit time only.
--
-- The index by account also carried each entry's transaction id and leg, to hand back a
-- statement in (commit time, transaction, leg) order without sorting. But the few settlement and
-- clearing accounts take nearly every entry, each at the point in the index where its own entries
-- end, so all but the last account split their pages in the middle and left them half full, and
-- every entry wrote a key twice the size it needed: in a stream of earned activities this index
-- wrote more than the entries themselves. Keyed by (account, commit time), the entries of one
-- batch share a key, so the index stays small, and a statement sorts only the entries of one
-- commit time by transaction and leg.

DROP INDEX ledger_entries_by_account;
CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, committed_at_micros);
