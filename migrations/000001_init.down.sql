DROP TABLE IF EXISTS outbox;
DROP TABLE IF EXISTS requests;
DROP TABLE IF EXISTS health_snapshots;
DROP TABLE IF EXISTS operation_log;
DROP TABLE IF EXISTS runtime_records;
