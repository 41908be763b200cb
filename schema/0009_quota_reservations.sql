-- Every reservation writes its quota rows (the check-and-reserve of
-- check-workers/src/modules/quotas/store/check.rs). Under Galera a locking read (SELECT ... FOR
-- UPDATE) holds its locks on its own node only, so two reservations of the last unit made on two
-- nodes at once would both commit. Writing the rows makes their write sets overlap: Galera
-- certifies the first and aborts the other (1213), which is tried again and then counts the
-- first one's reservation. On a single server the row is locked already; the write costs little.
ALTER TABLE quota ADD COLUMN reservations BIGINT UNSIGNED NOT NULL DEFAULT 0;
