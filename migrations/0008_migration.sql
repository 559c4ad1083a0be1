-- Live migration (`echo NODE > instances/NAME/node`): a row in state 'migrating' is on its
-- way from `hostname` to `migrate_to`, and holds room on both until it has arrived (or is
-- back). `snapshots` keeps the XML of its snapshots while their metadata is on neither node
-- (libvirt does not migrate a domain that has snapshot metadata): they are defined again on
-- the node it ends up on, by the migration or by the reconciliation after a crash.
ALTER TABLE vm ADD COLUMN migrate_to VARCHAR(64) NULL;
ALTER TABLE vm ADD COLUMN snapshots TEXT NULL;

-- A drained node (`echo drain > nodes/NODE/ctl`) takes no instances: placement and
-- migrations pass it by, and its instances are moved elsewhere. `undrain` clears it.
ALTER TABLE host ADD COLUMN drained INTEGER NOT NULL DEFAULT 0;
