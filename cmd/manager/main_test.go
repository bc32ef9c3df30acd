package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

func TestLobbyDiagnostic_getsTheGameAndNeverFails(t *testing.T) {
	var hits atomic.Int32
	var path atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		path.Store(r.URL.Path)
		w.WriteHeader(http.StatusNotFound)
	}))
	defer srv.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if lobbyDiagnostic("", log) != nil {
		t.Fatal("an empty base URL must turn the diagnostic off")
	}
	lobbyDiagnostic(srv.URL, log)(context.Background(), "g1")
	if hits.Load() != 1 || path.Load() != "/api/v1/internal/games/g1" {
		t.Fatalf("hits %d path %v", hits.Load(), path.Load())
	}
	// An unreachable Lobby is only logged.
	lobbyDiagnostic("http://127.0.0.1:1", log)(context.Background(), "g1")
}

func TestStepOf(t *testing.T) {
	if got := stepOf(step("docker ping", io.EOF)); got != "docker ping" {
		t.Fatalf("stepOf = %q", got)
	}
	if step("x", nil) != nil {
		t.Fatal("step of nil must be nil")
	}
}
