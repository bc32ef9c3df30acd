-- The fencing epoch of a game: bumped by every lease acquisition (the holder's first read under
-- the lease); every write of the reconciler carries the epoch it got and is refused when the
-- record has moved on, so a holder that lost its lease can no longer change the record.
ALTER TABLE runtime_records ADD COLUMN fence_epoch bigint NOT NULL DEFAULT 0;
