-- Each row's incarnation: a random id given when the row is made (`mkdir`). A name can be
-- deleted and made again; its folder's inode, open file handles and the writes through them
-- belong to one incarnation, never to whatever has the name later. Rows made before this
-- column existed keep '' and are told apart by their creation time.
ALTER TABLE vm ADD COLUMN incarnation VARCHAR(32) NOT NULL DEFAULT '';
