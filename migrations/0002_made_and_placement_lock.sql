-- `made`: what a build has made, or is about to make, on its node, as a comma-separated set
-- of `domain`, `disk` and `seed`. Each part is recorded before the call that makes it, so an
-- undo, an `rmdir` or the reconciliation after a crash removes exactly what kvmfs made and
-- never a volume or domain of the same name that it found there.
ALTER TABLE vm ADD COLUMN made VARCHAR(64) NOT NULL DEFAULT '';

-- One row whose update serialises placement between every kvmfs sharing the database: a
-- placement locks it, reads the committed resources of every node, chooses, records the
-- choice and commits, so two mounts never both fill the last room on a node.
CREATE TABLE placement_lock (
    id INTEGER NOT NULL PRIMARY KEY,
    generation BIGINT NOT NULL DEFAULT 0
);

INSERT INTO placement_lock (id, generation) VALUES (1, 0);

-- Instances built before this column existed have all three parts.
UPDATE vm SET made = 'domain,disk,seed' WHERE state IN ('building', 'ready', 'deleting');
