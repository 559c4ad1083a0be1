-- Several kvmfs daemons on one database reconcile once, not once each: the daemon named in
-- this one row's `holder` until `expires_at` (unix seconds) does the reconciliation of
-- every daemon's abandoned work; the others only finish their own, after a restart. A
-- daemon renews its lease with its heartbeat; another takes it once it has expired.
CREATE TABLE reconcile_lease (
    id INTEGER NOT NULL PRIMARY KEY,
    holder VARCHAR(64) NOT NULL DEFAULT '',
    expires_at BIGINT NOT NULL DEFAULT 0
);

INSERT INTO reconcile_lease (id, holder, expires_at) VALUES (1, '', 0);
