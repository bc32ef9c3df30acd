DROP INDEX IF EXISTS runtime_records_game_id_lower_idx;
