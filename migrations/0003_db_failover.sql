-- The failover record: written to the replica when kvmfs moves there from the primary named by
-- `from_url` (its URL without the password). Its presence makes the move sticky: every kvmfs
-- configured with that primary and this replica reads and writes the replica from then on,
-- even after the old primary answers again. An operator who has made this server the new
-- primary (and the configuration say so) may delete the row.
CREATE TABLE db_failover (
    from_url VARCHAR(255) NOT NULL PRIMARY KEY,
    failed_over_at BIGINT NOT NULL,
    by_host VARCHAR(255) NOT NULL DEFAULT ''
);
