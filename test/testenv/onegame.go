package testenv

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/store"
)

// OneGame is a migrated store holding one running game g, whose container is c-g at 10.0.0.1,
// and a fake Docker that answers inspections of it: the world of the prober and inspect-sweep
// tests. Its Mutex guards Container and Inspects, and whatever fields a test's own world adds.
type OneGame struct {
	Store *store.Store
	Conn  *pgx.Conn // a direct connection for the test's reads

	sync.Mutex
	Container rtm.Container // what Inspect answers for g
	Inspects  int           // inspections answered
}

// NewOneGame returns a OneGame on a fresh database of its own (MustStore).
func (e *Env) NewOneGame(tb testing.TB) *OneGame {
	tb.Helper()
	st, dsn := e.MustStore(tb)
	conn := MustConn(tb, dsn)
	if _, err := conn.Exec(context.Background(), `INSERT INTO runtime_records (game_id, status, desired_state,
		current_container_id, engine_endpoint) VALUES ('g', 'running', 'running', 'c-g', 'http://galaxy-game-g:8080')`); err != nil {
		tb.Fatalf("recording game g: %v", err)
	}
	return &OneGame{Store: st, Conn: conn,
		Container: rtm.Container{ID: "c-g", GameID: "g", Owned: true, State: rtm.StateRunning, IP: "10.0.0.1"}}
}

// Inspect answers as the runtime does: g's container, or rtm.ErrNotFound for another game.
func (g *OneGame) Inspect(_ context.Context, gameID string) (rtm.Container, error) {
	g.Lock()
	defer g.Unlock()
	g.Inspects++
	if gameID != "g" {
		return rtm.Container{}, rtm.ErrNotFound
	}
	return g.Container, nil
}

// HealthEvents returns the types of the published health events, in outbox order.
func (g *OneGame) HealthEvents(tb testing.TB) []string {
	tb.Helper()
	var out []string
	for _, f := range OutboxFields(tb, g.Conn, "health_events") {
		out = append(out, f["event_type"])
	}
	return out
}
