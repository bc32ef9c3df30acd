-- The prober's state lives in the snapshot, so that a transition is decided from what was
-- committed, in the transaction that records it: consecutive_probe_failures counts the failures
-- of probe_container_id (reset when the container changes); probe_failed_reported says that a
-- probe_failed was published and no probe_recovered since, whatever other events came between.
ALTER TABLE health_snapshots
    ADD COLUMN probe_failed_reported boolean NOT NULL DEFAULT false,
    ADD COLUMN probe_container_id    text    NOT NULL DEFAULT '';

-- A snapshot whose last transition was an unrecovered probe_failed keeps saying so.
UPDATE health_snapshots SET probe_failed_reported = true WHERE last_event_type = 'probe_failed';
