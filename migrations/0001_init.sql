-- Portable between MariaDB/MySQL and SQLite: no AUTO_INCREMENT, no engine options.
-- `host` and `vm` keep the original system's tables and columns (hostname, ip) and
-- (vmname, hostname, vmip, ram, ip_eth1) so its queries keep working; the further
-- columns are kvmfs's own.

CREATE TABLE host (
    hostname VARCHAR(64) NOT NULL PRIMARY KEY,
    ip VARCHAR(255) NOT NULL DEFAULT '',
    uri VARCHAR(1024) NOT NULL DEFAULT '',
    registered_at BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE vm (
    vmname VARCHAR(64) NOT NULL PRIMARY KEY,
    hostname VARCHAR(64) NULL,
    vmip VARCHAR(45) NULL,
    ram INTEGER NULL,
    ip_eth1 VARCHAR(45) NULL,
    vcpus INTEGER NULL,
    disk_gb INTEGER NULL,
    image VARCHAR(255) NULL,
    purpose VARCHAR(16) NULL,
    git_url VARCHAR(2048) NULL,
    state VARCHAR(16) NOT NULL DEFAULT 'draft',
    step VARCHAR(32) NOT NULL DEFAULT '',
    error TEXT NULL,
    spec TEXT NULL,
    ssh_public_key TEXT NULL,
    ssh_private_key TEXT NULL,
    owner_uid BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE ip_alloc (
    pool VARCHAR(64) NOT NULL,
    address VARCHAR(45) NOT NULL,
    vmname VARCHAR(64) NOT NULL,
    PRIMARY KEY (pool, address)
);

CREATE INDEX ip_alloc_vmname ON ip_alloc (vmname);
