package testenv

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/galaxy-platform/rtmanager/store"
)

// MustStore returns a store on a fresh, migrated database of its own, closed when tb ends, and
// the database's DSN (for a direct connection a test reads or writes with).
func (e *Env) MustStore(tb testing.TB) (*store.Store, string) {
	tb.Helper()
	return e.MustStoreWith(tb, store.Options{})
}

// MustStoreWith is MustStore with the store's options (a larger pool for many workers).
func (e *Env) MustStoreWith(tb testing.TB, o store.Options) (*store.Store, string) {
	tb.Helper()
	ctx := context.Background()
	dsn := e.NewDatabase(tb)
	if err := store.Migrate(ctx, dsn); err != nil {
		tb.Fatalf("migrating %s: %v", dsn, err)
	}
	st, err := store.Open(ctx, dsn, o)
	if err != nil {
		tb.Fatalf("opening the store: %v", err)
	}
	tb.Cleanup(st.Close)
	return st, dsn
}

// MustConn returns a direct connection to dsn, closed when tb ends, for what a test reads or
// writes beside the code under test.
func MustConn(tb testing.TB, dsn string) *pgx.Conn {
	tb.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		tb.Fatalf("connecting to %s: %v", dsn, err)
	}
	tb.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// MustPool returns a connection pool to dsn, closed when tb ends, for what concurrent parts of a
// test read or write beside the code under test.
func MustPool(tb testing.TB, dsn string) *pgxpool.Pool {
	tb.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		tb.Fatalf("connecting to %s: %v", dsn, err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// Querier is what OutboxFields reads with: a *pgx.Conn or a *pgxpool.Pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// OutboxFields returns the fields of the outbox entries of a logical stream ("health_events",
// "job_results", …), in outbox order, each as a map.
func OutboxFields(tb testing.TB, q Querier, stream string) []map[string]string {
	tb.Helper()
	rows, err := q.Query(context.Background(), `SELECT fields FROM outbox WHERE stream = $1 ORDER BY id`, stream)
	if err != nil {
		tb.Fatalf("reading the outbox: %v", err)
	}
	fs, err := pgx.CollectRows(rows, pgx.RowTo[[]string])
	if err != nil {
		tb.Fatalf("reading the outbox: %v", err)
	}
	out := make([]map[string]string, 0, len(fs))
	for _, f := range fs {
		m := make(map[string]string, len(f)/2)
		for i := 0; i+1 < len(f); i += 2 {
			m[f[i]] = f[i+1]
		}
		out = append(out, m)
	}
	return out
}
