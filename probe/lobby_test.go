package probe_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/galaxy-platform/rtmanager/probe"
)

func TestLobby_Diagnose_getsTheGameAndNeverFails(t *testing.T) {
	var hits atomic.Int32
	var path atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		path.Store(r.URL.Path)
		w.WriteHeader(http.StatusNotFound)
	}))
	defer srv.Close()
	log := slog.New(slog.DiscardHandler)
	if probe.NewLobby("", log) != nil {
		t.Fatal("an empty base URL must turn the diagnostic off")
	}
	probe.NewLobby(srv.URL, log).Diagnose(context.Background(), "g1")
	if hits.Load() != 1 || path.Load() != "/api/v1/internal/games/g1" {
		t.Fatalf("hits %d path %v", hits.Load(), path.Load())
	}
	// An unreachable Lobby is only logged.
	probe.NewLobby("http://127.0.0.1:1", log).Diagnose(context.Background(), "g1")
}
