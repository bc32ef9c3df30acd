ALTER TABLE health_snapshots
    DROP COLUMN probe_container_id,
    DROP COLUMN probe_failed_reported;
