package probe

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"time"
)

// Lobby is the per-start diagnostic lookup of a game in Lobby's internal API
// (GET <base>/api/v1/internal/games/<id>). It only logs what Lobby answers: its failure is logged
// at debug and never aborts a start.
type Lobby struct {
	base   string
	client *http.Client
	log    *slog.Logger
}

// NewLobby returns the lookup against base, or nil when base is empty (no lookup).
func NewLobby(base string, log *slog.Logger) *Lobby {
	if base == "" {
		return nil
	}
	return &Lobby{base: base, client: &http.Client{Timeout: 2 * time.Second}, log: log}
}

// Diagnose looks gameID up in Lobby and logs the answer's status at debug.
func (l *Lobby) Diagnose(ctx context.Context, gameID string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.base+"/api/v1/internal/games/"+url.PathEscape(gameID), nil)
	if err != nil {
		l.log.Debug("lobby diagnostic failed", "game_id", gameID, "error", err)
		return
	}
	resp, err := l.client.Do(req)
	if err != nil {
		l.log.Debug("lobby diagnostic failed", "game_id", gameID, "error", err)
		return
	}
	resp.Body.Close()
	l.log.Debug("lobby diagnostic", "game_id", gameID, "status", resp.StatusCode)
}
