-- Game ids equal but for case must not both have a record: Docker's DNS is case-insensitive, so
-- the engines galaxy-game-Foo and galaxy-game-foo would answer to one name on the game network.
--
-- Existing records that collide are not merged or renamed here (either game may be the one
-- Lobby still drives, and each may own a container and a state dir): the migration fails,
-- naming them, and changes nothing. The operator removes one record (docs/runbook.md), then
-- starts RTM again.
DO $$
DECLARE
    dup text;
BEGIN
    SELECT string_agg(ids, '; ') INTO dup FROM (
        SELECT string_agg(game_id, ', ' ORDER BY game_id) AS ids
        FROM runtime_records GROUP BY lower(game_id) HAVING count(*) > 1
    ) d;
    IF dup IS NOT NULL THEN
        RAISE EXCEPTION 'runtime_records holds game ids equal but for case: %', dup
            USING HINT = 'keep one record of each group (delete the others'' rows) and start again';
    END IF;
END
$$;

CREATE UNIQUE INDEX runtime_records_game_id_lower_idx ON runtime_records (lower(game_id));
