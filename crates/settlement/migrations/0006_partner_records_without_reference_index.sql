-- Partner records without their index by reference.
--
-- A reconciliation now reads both sides in one statement: the partner's records by their
-- reconciliation (the primary key's prefix), hash-joined to Tandem's. Nothing looks a record up
-- by reference any more, and the index cost every staged record a second insert into a B-tree
-- of long text keys: a third of the time to stage a million records (tandem bench reconcile).
DROP INDEX settlement_partner_records_by_reference;
