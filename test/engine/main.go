// Command engine is a stand-in game engine for RTM's tests and for `make dev`.
//
// It serves GET /healthz on :8080 (or $ENGINE_PORT) and keeps a boot counter in the file
// "boots" of $GALAXY_STATE_DIR (default /var/lib/galaxy-game), incremented at each start, so a
// test can tell a restarted engine from a surviving one and check that state survives a patch.
//
// Environment: GALAXY_GAME_ID and ENGINE_VERSION are echoed by /healthz; ENGINE_SICK=1 makes the
// probe fail from the start (a "bad release").
//
// Control endpoints (any method) let a test steer the engine from outside:
//
//	/control/sick          /healthz answers 500 from now on
//	/control/well          /healthz answers 200 again and releases hung probes
//	/control/exit?code=N   the process exits with N after 50 ms
//	/control/oom           allocate and touch 64 MiB chunks until the kernel kills us
//	/control/hang          /healthz blocks (up to 1h) until /control/well
//
// The engine writes nothing outside its state dir, so it runs with a read-only root file system
// and as any user; when the state dir is not writable it logs that and serves anyway. It exits 0
// on SIGTERM or SIGINT.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// engine holds the probe behaviour that the control endpoints switch.
type engine struct {
	gameID  string
	version string
	boots   int

	mu     sync.Mutex
	sick   bool
	hang   bool
	wellCh chan struct{} // closed by /control/well to release hung probes
	hog    [][]byte      // memory held by /control/oom
}

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	log.SetPrefix("engine: ")

	dir := envOr("GALAXY_STATE_DIR", "/var/lib/galaxy-game")
	port := envOr("ENGINE_PORT", "8080")

	e := &engine{
		gameID:  os.Getenv("GALAXY_GAME_ID"),
		version: os.Getenv("ENGINE_VERSION"),
		boots:   countBoot(dir),
		sick:    os.Getenv("ENGINE_SICK") == "1",
		wellCh:  make(chan struct{}),
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", e.healthz)
	mux.HandleFunc("/control/sick", e.setSick)
	mux.HandleFunc("/control/well", e.setWell)
	mux.HandleFunc("/control/hang", e.setHang)
	mux.HandleFunc("/control/exit", exitSoon)
	mux.HandleFunc("/control/oom", e.oom)

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		log.Printf("listen on :%s: %v", port, err)
		os.Exit(1)
	}
	log.Printf("serving on :%s game=%q version=%q boots=%d sick=%v", port, e.gameID, e.version, e.boots, e.sick)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sig
		log.Printf("received %v, exiting", s)
		// Hung probes would hold Shutdown for their full hour: give in-flight requests a
		// moment, then exit 0 regardless, as a well-behaved engine does on SIGTERM.
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		_ = srv.Shutdown(ctx)
		os.Exit(0)
	}()

	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Printf("serve: %v", err)
		os.Exit(1)
	}
	select {} // Shutdown has begun; the signal goroutine exits the process.
}

// countBoot reads, increments and writes back the boot counter in dir. A missing or unreadable
// counter counts as zero boots; a failed write is logged, not fatal, so the engine still serves
// when the state dir is not writable.
func countBoot(dir string) int {
	path := filepath.Join(dir, "boots")
	boots := 0
	if b, err := os.ReadFile(path); err == nil {
		boots, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	boots++
	if err := os.WriteFile(path, []byte(strconv.Itoa(boots)), 0o644); err != nil {
		log.Printf("writing boot counter: %v", err)
	}
	return boots
}

func (e *engine) healthz(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	sick, hang, well := e.sick, e.hang, e.wellCh
	e.mu.Unlock()

	if hang {
		t := time.NewTimer(time.Hour)
		defer t.Stop()
		select {
		case <-well:
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		e.mu.Lock()
		sick = e.sick
		e.mu.Unlock()
	}

	body := health{Status: "ok", Game: e.gameID, Boots: e.boots, Version: e.version}
	w.Header().Set("Content-Type", "application/json")
	if sick {
		body.Status = "sick"
		w.WriteHeader(http.StatusInternalServerError)
	}
	_ = json.NewEncoder(w).Encode(body)
}

// health is the /healthz body; field order is the documented one.
type health struct {
	Status  string `json:"status"`
	Game    string `json:"game"`
	Boots   int    `json:"boots"`
	Version string `json:"version"`
}

func (e *engine) setSick(w http.ResponseWriter, _ *http.Request) {
	e.mu.Lock()
	e.sick = true
	e.mu.Unlock()
	fmt.Fprintln(w, "sick")
}

func (e *engine) setWell(w http.ResponseWriter, _ *http.Request) {
	e.mu.Lock()
	e.sick = false
	if e.hang {
		e.hang = false
		close(e.wellCh)
		e.wellCh = make(chan struct{})
	}
	e.mu.Unlock()
	fmt.Fprintln(w, "well")
}

func (e *engine) setHang(w http.ResponseWriter, _ *http.Request) {
	e.mu.Lock()
	e.hang = true
	e.mu.Unlock()
	fmt.Fprintln(w, "hanging")
}

func exitSoon(w http.ResponseWriter, r *http.Request) {
	code, err := strconv.Atoi(r.URL.Query().Get("code"))
	if err != nil {
		code = 0
	}
	fmt.Fprintf(w, "exiting with %d\n", code)
	go func() {
		time.Sleep(50 * time.Millisecond)
		log.Printf("exiting with %d as asked", code)
		os.Exit(code)
	}()
}

func (e *engine) oom(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintln(w, "allocating")
	go func() {
		for {
			b := make([]byte, 64<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1 // touch every page so the memory is resident, not just reserved
			}
			e.mu.Lock()
			e.hog = append(e.hog, b)
			e.mu.Unlock()
		}
	}()
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
