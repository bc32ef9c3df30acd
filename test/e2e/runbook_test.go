//go:build integration

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// runbookShell runs a snippet of the runbook with bash, as an operator on the RTM host would:
// RTMANAGER_POSTGRES_PRIMARY_DSN is exported, and redis-cli is pointed at the rig's server (the
// runbook's lines assume the default host and port; REDISCLI_AUTH carries the password).
func (r *rig) runbookShell(snippet string) string {
	r.t.Helper()
	script := fmt.Sprintf("set -eo pipefail\nredis-cli() { command redis-cli -h 127.0.0.1 -p %d \"$@\"; }\n%s\n", r.Redis.Port, snippet)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Env = append(os.Environ(), "RTMANAGER_POSTGRES_PRIMARY_DSN="+r.Env["RTMANAGER_POSTGRES_PRIMARY_DSN"],
		"REDISCLI_AUTH="+r.Redis.Password, "PGCONNECT_TIMEOUT=10")
	if onKube() {
		cmd.Env = append(cmd.Env, "KUBECONFIG="+r.Env["KUBECONFIG"])
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("runbook snippet failed: %v\n%s\n--- output:\n%s", err, snippet, out)
	}
	return string(out)
}

// hasRow reports whether a psql table output has a row whose cells, trimmed, start with cells.
func hasRow(out string, cells ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		parts := strings.Split(line, "|")
		if len(parts) < len(cells) {
			continue
		}
		ok := true
		for i, c := range cells {
			if strings.TrimSpace(parts[i]) != c {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// The runbook's Diagnostic Queries, run word for word with psql, redis-cli and docker (on
// Kubernetes: kubectl, as docs/kubernetes.md writes it) against a live RTM whose DSN is in the
// libpq form (the one psql accepts), return the expected rows.
func TestRunbook_DiagnosticQueriesReturnExpectedRows(t *testing.T) {
	r := newRig(t, "runbook")
	r.Env["RTMANAGER_POSTGRES_PRIMARY_DSN"] = r.LibpqDSN
	r.Start()
	g, h := r.game("a"), r.game("b")
	startID := r.StartJob(g, img(v141), "req-"+g)
	r.WaitSucceeded("req-" + g)
	r.StartGame(h, img(v141))
	// Re-sent by Lobby, the same request: the last entry is this one now.
	startID = r.StartJob(h, img(v141), "req-"+h+"-start")
	stopID := r.StopJob(h, "req-"+h+"-stop", "admin_request")
	r.WaitSucceeded("req-" + h + "-stop")
	testenv.Eventually(t, 5*time.Second, "health snapshot of "+g, func() (bool, string) {
		s := r.Snapshot(g)
		return s.Status == "healthy", pretty(s)
	})
	testenv.Eventually(t, 5*time.Second, "offsets persisted", func() (bool, string) {
		a, _ := r.RDB.Get(context.Background(), "rtmanager:stream_offsets:startjobs").Result()
		b, _ := r.RDB.Get(context.Background(), "rtmanager:stream_offsets:stopjobs").Result()
		return a == startID && b == stopID, a + " " + b
	})

	t.Run("LiveRuntimeCountByStatus", func(t *testing.T) {
		out := r.runbookShell(`# Live runtime count by status (PostgreSQL)
psql "$RTMANAGER_POSTGRES_PRIMARY_DSN" -c \
  "SELECT status, COUNT(*) FROM rtmanager.runtime_records GROUP BY status"`)
		expect(t, hasRow(out, "running", "1") && hasRow(out, "stopped", "1"), "status counts:\n%s", out)
	})
	t.Run("RuntimeRecord", func(t *testing.T) {
		out := r.runbookShell(fmt.Sprintf(`# Inspect a specific runtime record
psql "$RTMANAGER_POSTGRES_PRIMARY_DSN" -c \
  "SELECT * FROM rtmanager.runtime_records WHERE game_id = '%s'"`, g))
		expect(t, hasRow(out, g, "running", "running") && strings.Contains(out, "(1 row)"), "record:\n%s", out)
		expect(t, strings.Contains(out, "http://galaxy-game-"+g+":8080"), "no engine_endpoint:\n%s", out)
	})
	t.Run("LastOperations", func(t *testing.T) {
		out := r.runbookShell(fmt.Sprintf(`# Last 20 operations for a game (newest first)
psql "$RTMANAGER_POSTGRES_PRIMARY_DSN" -c \
  "SELECT id, op_kind, op_source, outcome, error_code,
          started_at, finished_at
   FROM rtmanager.operation_log
   WHERE game_id = '%s'
   ORDER BY started_at DESC, id DESC
   LIMIT 20"`, h))
		// Newest first: the stop, then the start.
		stop := regexp.MustCompile(`\|\s*stop\s*\|\s*stop_jobs\s*\|\s*succeeded\s*\|`).FindStringIndex(out)
		start := regexp.MustCompile(`\|\s*start\s*\|\s*start_jobs\s*\|\s*succeeded\s*\|`).FindStringIndex(out)
		expect(t, stop != nil && start != nil && stop[0] < start[0] && strings.Contains(out, "(2 rows)"), "operations:\n%s", out)
	})
	t.Run("HealthSnapshot", func(t *testing.T) {
		out := r.runbookShell(fmt.Sprintf(`# Latest health snapshot
psql "$RTMANAGER_POSTGRES_PRIMARY_DSN" -c \
  "SELECT * FROM rtmanager.health_snapshots WHERE game_id = '%s'"`, g))
		expect(t, hasRow(out, g, "healthy") && strings.Contains(out, "(1 row)"), "snapshot:\n%s", out)
	})
	t.Run("ContainersRTMOwns", func(t *testing.T) {
		if onKube() {
			// Kubernetes: docs/kubernetes.md's line; the stopped game's Pod stays listed,
			// terminated and kept by RTM's finalizer, where docker ps hides an exited container.
			out := r.runbookShell(strings.ReplaceAll(`# RTM's Pods (all games), with game id, image, node and IP
kubectl -n galaxy-games get pods -l com.galaxy.owner=rtmanager -o wide`, "galaxy-games", r.NS))
			rows := map[string][]string{}
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) > 2 {
					rows[f[0]] = f
				}
			}
			a, b := rows[engineName(g)], rows[engineName(h)]
			expect(t, strings.HasPrefix(out, "NAME") && a != nil && a[1] == "1/1" && a[2] == "Running" &&
				strings.Contains(out, "kwok-node-"), "kubectl get pods:\n%s", out)
			expect(t, b != nil && b[2] != "Running", "the stopped game's Pod is not listed as terminated:\n%s", out)
			return
		}
		out := r.runbookShell(`# Containers RTM owns (Docker)
docker ps --filter label=com.galaxy.owner=rtmanager \
          --format 'table {{.ID}}\t{{.Names}}\t{{.Status}}\t{{.Labels}}'`)
		var row string
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "galaxy-game-"+g+" ") || strings.Contains(line, "galaxy-game-"+g+"\t") {
				row = line
			}
		}
		expect(t, strings.HasPrefix(out, "CONTAINER ID") && strings.Contains(row, "Up ") &&
			strings.Contains(row, "com.galaxy.game_id="+g), "docker ps:\n%s", out)
		expect(t, !strings.Contains(out, "galaxy-game-"+h), "the stopped game is listed by docker ps:\n%s", out)
	})
	t.Run("StreamLag", func(t *testing.T) {
		out := r.runbookShell(`# Stream lag (Redis)
redis-cli XINFO STREAM runtime:start_jobs
redis-cli XINFO STREAM runtime:stop_jobs
redis-cli GET rtmanager:stream_offsets:startjobs
redis-cli GET rtmanager:stream_offsets:stopjobs`)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		expect(t, strings.Count(out, "last-generated-id") == 2 && strings.Contains(out, "length"), "XINFO:\n%s", out)
		expect(t, len(lines) >= 2 && lines[len(lines)-2] == startID && lines[len(lines)-1] == stopID,
			"offsets are not the last entries %s and %s:\n%s", startID, stopID, out)
	})
	t.Run("RecentHealthEvents", func(t *testing.T) {
		out := r.runbookShell(`# Recent health events (oldest first)
redis-cli XRANGE runtime:health_events - + COUNT 100`)
		expect(t, strings.Contains(out, "container_started") && strings.Contains(out, g), "health events:\n%s", out)
	})
	t.Run("PerGameLease", func(t *testing.T) {
		out := r.runbookShell(fmt.Sprintf(`# Per-game lease (only present while an operation runs)
redis-cli GET rtmanager:game_lease:%s
redis-cli TTL rtmanager:game_lease:%s`, g, g))
		// Nothing runs on the game now: no lease (redis-cli prints nil as an empty line), TTL -2.
		expect(t, strings.TrimSpace(out) == "-2", "lease of an idle game:\n%q", out)
	})
	t.Run("EngineDiedTriage", func(t *testing.T) {
		out := r.runbookShell(fmt.Sprintf(`curl -s %s/api/v1/internal/runtimes/%s
psql "$RTMANAGER_POSTGRES_PRIMARY_DSN" -c \
  "SELECT id, op_kind, op_source, outcome, error_code, started_at
   FROM rtmanager.operation_log
   WHERE game_id = '%s'
   ORDER BY started_at DESC LIMIT 20"`, r.API, g, g))
		expect(t, strings.Contains(out, `"game_id":"`+g+`"`) && strings.Contains(out, `"status":"running"`), "curl:\n%s", out)
		expect(t, regexp.MustCompile(`\|\s*start\s*\|\s*start_jobs\s*\|\s*succeeded\s*\|`).MatchString(out), "psql:\n%s", out)
	})
}
