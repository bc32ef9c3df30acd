package httpapi

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// gameIDCaseIndex is migration 000004's unique index on lower(game_id): Docker's DNS does not
// tell game ids apart by case, so two such games' engines would share a name on the network.
const gameIDCaseIndex = "runtime_records_game_id_lower_idx"

// gameIDCaseTaken reports whether err is the refusal to record a game whose id differs only in
// case from a recorded game's. Nothing was recorded; the request is answered 409 conflict, like
// any request the game's state refuses as it stands.
func gameIDCaseTaken(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" && pe.ConstraintName == gameIDCaseIndex
}
