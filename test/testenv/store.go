package testenv

import (
	"context"
	"testing"

	"github.com/galaxy-platform/rtmanager/store"
)

// MustStore returns a store on a fresh, migrated database of its own, closed when tb ends, and
// the database's DSN (for a direct connection a test reads or writes with).
func (e *Env) MustStore(tb testing.TB) (*store.Store, string) {
	tb.Helper()
	ctx := context.Background()
	dsn := e.NewDatabase(tb)
	if err := store.Migrate(ctx, dsn); err != nil {
		tb.Fatalf("migrating %s: %v", dsn, err)
	}
	st, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		tb.Fatalf("opening the store: %v", err)
	}
	tb.Cleanup(st.Close)
	return st, dsn
}
