-- A change stamp on every `vm` row: each write kvmfs makes sets `rev` to a value above every
-- stamp that daemon has seen (microseconds of its clock, or one more than the highest seen).
-- A poll then learns from one aggregate, `COUNT(*)` and `MAX(rev)`, whether anything changed
-- since it last read the table, instead of reading every row every time.
ALTER TABLE vm ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
