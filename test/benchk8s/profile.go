package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// A diagnosis run with -profile records, for each RTM burst, where RTM's side spends its CPU: a
// CPU profile of the rtmanager process over the burst's first seconds, and what PostgreSQL did
// (pg_stat_statements, the database's commits and row writes) over the whole burst; and, for
// the bursts of both sides, what the API server did (its requests, watch events and CPU).

// enableStatements loads pg_stat_statements into the world's PostgreSQL (a restart) and creates
// the extension in its admin database, where the view covers every database.
func (w *world) enableStatements(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, w.Env.AdminDSN)
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'`)
	conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("loading pg_stat_statements: %w", err)
	}
	if err := w.Env.StopPostgres(); err != nil {
		return err
	}
	if err := w.Env.StartPostgres(); err != nil {
		return err
	}
	if conn, err = pgx.Connect(ctx, w.Env.AdminDSN); err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		return fmt.Errorf("creating pg_stat_statements: %w", err)
	}
	return nil
}

// profiler is one burst's profile; stop writes what it gathered into the work dir.
type profiler struct {
	w      *world
	name   string
	conn   *pgx.Conn
	before dbCounters
	cpu    chan string
}

// dbCounters are pg_stat_database's counters of every database together.
type dbCounters struct{ commits, inserted, updated, deleted, returned int64 }

func readCounters(ctx context.Context, conn *pgx.Conn) (dbCounters, error) {
	var c dbCounters
	err := conn.QueryRow(ctx, `SELECT sum(xact_commit)::bigint, sum(tup_inserted)::bigint, sum(tup_updated)::bigint,
		sum(tup_deleted)::bigint, sum(tup_returned)::bigint FROM pg_stat_database`).
		Scan(&c.commits, &c.inserted, &c.updated, &c.deleted, &c.returned)
	return c, err
}

// startProfile resets the statement counters and starts a CPU profile of proc over seconds.
func (w *world) startProfile(ctx context.Context, proc *harness.Proc, name string, seconds int) (*profiler, error) {
	conn, err := pgx.Connect(ctx, w.Env.AdminDSN)
	if err != nil {
		return nil, err
	}
	pr := &profiler{w: w, name: name, conn: conn, cpu: make(chan string, 1)}
	if _, err := conn.Exec(ctx, `SELECT pg_stat_statements_reset()`); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	if pr.before, err = readCounters(ctx, conn); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	go func() {
		body, err := proc.Get(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds))
		if err != nil {
			pr.cpu <- ""
			harness.Logf("  CPU profile: %v", err)
			return
		}
		pr.cpu <- body
	}()
	return pr, nil
}

// stop writes PostgreSQL's statements of the burst (n games) and, once it is taken, the CPU
// profile.
func (pr *profiler) stop(ctx context.Context, n int) {
	defer pr.conn.Close(ctx)
	after, err := readCounters(ctx, pr.conn)
	if err != nil {
		harness.Logf("  PostgreSQL counters: %v", err)
		return
	}
	var b strings.Builder
	d := func(a, b int64) float64 { return float64(a-b) / float64(n) }
	fmt.Fprintf(&b, "per game: commits %.2f, rows inserted %.2f, updated %.2f, deleted %.2f, returned %.1f\n\n",
		d(after.commits, pr.before.commits), d(after.inserted, pr.before.inserted), d(after.updated, pr.before.updated),
		d(after.deleted, pr.before.deleted), d(after.returned, pr.before.returned))
	rows, err := pr.conn.Query(ctx, `SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 160)
		FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 30`)
	if err == nil {
		var total float64
		for rows.Next() {
			var calls, nrows int64
			var ms float64
			var q string
			if err = rows.Scan(&calls, &ms, &nrows, &q); err != nil {
				break
			}
			total += ms
			fmt.Fprintf(&b, "%8d calls %7.2f per game %9.1f ms %6.1f µs each  %s\n", calls, float64(calls)/float64(n), ms, 1000*ms/float64(max(calls, 1)), q)
		}
		rows.Close()
		fmt.Fprintf(&b, "\nexecution time of these statements: %.0f ms (%.0f µs per game)\n", total, 1000*total/float64(n))
	}
	if err != nil {
		harness.Logf("  pg_stat_statements: %v", err)
	}
	path := filepath.Join(pr.w.Work, "pgstat-"+pr.name+".txt")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		harness.Logf("  %v", err)
	}
	harness.Logf("  PostgreSQL during the burst: %s", strings.SplitN(b.String(), "\n", 2)[0])
	// The profile's request ends within the harness client's timeout, answered or not.
	if body := <-pr.cpu; body != "" {
		cpuPath := filepath.Join(pr.w.Work, "cpu-"+pr.name+".pprof")
		_ = os.WriteFile(cpuPath, []byte(body), 0o644)
		harness.Logf("  CPU profile and statements: %s, %s", cpuPath, path)
	}
}

// apiCounted are the API server's counters a profile compares before and after a burst: the
// requests it served and how long they took, the watch events it sent, its requests to etcd and
// how long they took, and its own CPU.
var apiCounted = []string{"apiserver_request_total{", "apiserver_watch_events_total{", "apiserver_watch_events_sizes_sum{",
	"process_cpu_seconds_total", "apiserver_request_duration_seconds_sum{", "apiserver_request_duration_seconds_count{",
	"etcd_request_duration_seconds_sum{", "etcd_request_duration_seconds_count{"}

// apiCounters scrapes the API server's /metrics: the series of apiCounted by their full name.
func (w *world) apiCounters(ctx context.Context) (map[string]float64, error) {
	body, err := w.cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("the API server's metrics: %w", err)
	}
	return harness.PromText(body).Series(apiCounted...), nil
}

// apiProfile returns a stop that writes, into name in the work dir, what the API server did
// since: each counter of apiCounted that grew, the largest growth first. Nothing without -profile.
func (w *world) apiProfile(ctx context.Context, name string, n int) (stop func()) {
	if !w.profile {
		return func() {}
	}
	before, err := w.apiCounters(ctx)
	if err != nil {
		harness.Logf("  %v", err)
		return func() {}
	}
	return func() {
		after, err := w.apiCounters(ctx)
		if err != nil {
			harness.Logf("  %v", err)
			return
		}
		type grown struct {
			series string
			by     float64
		}
		var list []grown
		for k, v := range after {
			if d := v - before[k]; d > 0 {
				list = append(list, grown{k, d})
			}
		}
		slices.SortFunc(list, func(a, b grown) int { return cmp.Compare(b.by, a.by) })
		var b strings.Builder
		for _, g := range list {
			fmt.Fprintf(&b, "%12.2f %8.3f per game  %s\n", g.by, g.by/float64(n), g.series)
		}
		path := filepath.Join(w.Work, "apiserver-"+name+".txt")
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			harness.Logf("  %v", err)
			return
		}
		harness.Logf("  API server: CPU %.1f s; %s", after["process_cpu_seconds_total"]-before["process_cpu_seconds_total"], path)
	}
}
