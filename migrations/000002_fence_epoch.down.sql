ALTER TABLE runtime_records DROP COLUMN fence_epoch;
