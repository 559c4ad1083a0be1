-- Crash recovery. `vm.worker` names the kvmfs daemon that runs the row's build or delete
-- (set with state 'building' or 'deleting'); `worker` holds each daemon's heartbeat. A row
-- whose worker is this daemon after a restart, or whose worker stopped beating, was cut off
-- mid-operation: the reconciliation finishes or undoes it.
ALTER TABLE vm ADD COLUMN worker VARCHAR(64) NULL;

CREATE TABLE worker (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    description VARCHAR(1024) NOT NULL DEFAULT '',
    started_at BIGINT NOT NULL DEFAULT 0,
    heartbeat_at BIGINT NOT NULL DEFAULT 0
);
