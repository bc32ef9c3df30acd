package store_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/golang-migrate/migrate/v4/database"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// via returns dsn pointed at addr instead of its host.
func via(t testing.TB, dsn, addr string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = addr
	return u.String()
}

// within calls fn with a context that ends long after the timeouts under test (so that, without
// them, the call fails late instead of hanging the suite) and returns its error and duration.
func within(fn func(ctx context.Context) error) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := fn(ctx)
	return time.Since(start), err
}

// slack is what a loaded test machine may add to a timeout.
const slack = 3 * time.Second

func TestStore_blackHoledCallsFailUnavailableWithinOperationTimeoutAndRecover(t *testing.T) {
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	px := testenv.NewProxy(t, net.JoinHostPort(env.PGHost, strconv.Itoa(env.PGPort)))
	const op = time.Second
	s, err := store.Open(ctx, via(t, dsn, px.Addr()), store.Options{
		Timeouts: store.Timeouts{Connect: op, Operation: op}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	submit(t, s, startJob("r1", "g", "galaxy/game:1.4.1"))
	rec, err := s.Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}

	px.Cut()
	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		// The first call finds the pool's idle connection, the later ones dial new ones.
		{"Submit", func(ctx context.Context) error {
			_, err := s.Submit(ctx, stopJob("s1", "g"), func(rec *rtm.Record, busy bool) rtm.Admission {
				return rtm.Admit(rec, stopJob("s1", "g"), busy, settings())
			})
			return err
		}},
		{"Commit", func(ctx context.Context) error {
			_, err := s.Commit(ctx, rtm.Change{GameID: "g", Gen: rec.Generation,
				Apply: func(x *rtm.Record, _ bool) { x.Status = rtm.StatusRunning }})
			return err
		}},
		{"Fence", func(ctx context.Context) error { _, _, err := s.Fence(ctx, "g"); return err }},
		{"Get", func(ctx context.Context) error { _, err := s.Get(ctx, "g"); return err }},
		{"List", func(ctx context.Context) error { _, err := s.List(ctx, rtm.ListFilter{Limit: 10}); return err }},
		{"MarkSent", func(ctx context.Context) error { return s.MarkSent(ctx, []int64{1}) }},
		{"Ping", s.Ping},
	}
	for _, c := range calls {
		took, err := within(c.call)
		t.Logf("%s: %v after %s", c.name, err, took)
		if !errors.Is(err, rtm.ErrUnavailable) {
			t.Errorf("%s with postgres black-holed: %v, want an error wrapping rtm.ErrUnavailable", c.name, err)
		}
		if took > op+slack {
			t.Errorf("%s with postgres black-holed took %s; the operation timeout is %s", c.name, took, op)
		}
	}

	// A caller's earlier deadline wins over the operation timeout.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	start := time.Now()
	_, err = s.Get(short, "g")
	cancel()
	if !errors.Is(err, rtm.ErrUnavailable) || time.Since(start) > op {
		t.Errorf("Get with a 100ms deadline: %v after %s", err, time.Since(start))
	}

	px.Heal()
	if _, err := s.Get(ctx, "g"); err != nil {
		t.Fatalf("Get after the network healed: %v", err)
	}
	submit(t, s, stopJob("s2", "g"))
}

func TestStore_lockTimeoutIsUnavailable(t *testing.T) {
	ctx := context.Background()
	s, dsn := openTimeouts(t, store.Timeouts{Lock: 200 * time.Millisecond, Operation: 20 * time.Second})
	submit(t, s, startJob("r1", "g", "galaxy/game:1.4.1"))
	rec, err := s.Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	tx := lockRow(t, testenv.MustConn(t, dsn), "runtime_records", "g")
	defer tx.Rollback(ctx)
	took, err := within(func(ctx context.Context) error {
		_, err := s.Commit(ctx, rtm.Change{GameID: "g", Gen: rec.Generation})
		return err
	})
	if !errors.Is(err, rtm.ErrUnavailable) || took > slack {
		t.Fatalf("Commit of a record another session holds locked: %v after %s; want rtm.ErrUnavailable after the 200ms lock timeout", err, took)
	}
}

// openTimeouts migrates a fresh database and opens a store on it with the given timeouts.
func openTimeouts(t testing.TB, to store.Timeouts) (*store.Store, string) {
	t.Helper()
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	s, err := store.Open(ctx, dsn, store.Options{Timeouts: to})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s, dsn
}

func TestMigrate_waitsForTheAdvisoryLockAtMostTheMigrationLockTimeout(t *testing.T) {
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	holder := testenv.MustConn(t, dsn)
	// The lock golang-migrate takes: keyed by database, schema and bookkeeping table.
	id, err := database.GenerateAdvisoryLockId(holder.Config().Database, store.Schema, "schema_migrations")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, id); err != nil {
		t.Fatal(err)
	}
	took, err := within(func(ctx context.Context) error {
		return store.Migrate(ctx, dsn, store.Timeouts{MigrationLock: 300 * time.Millisecond})
	})
	if !errors.Is(err, rtm.ErrUnavailable) || took > slack {
		t.Fatalf("Migrate while another session holds the migrations lock: %v after %s; want rtm.ErrUnavailable after the 300ms lock timeout", err, took)
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, id); err != nil {
		t.Fatal(err)
	}
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatalf("Migrate once the lock is free: %v", err)
	}
}

func TestMigrateAndPing_blackHoledFailWithinConnectTimeout(t *testing.T) {
	dsn := via(t, env.NewDatabase(t), testenv.BlackHole(t))
	to := store.Timeouts{Connect: 500 * time.Millisecond}
	took, err := within(func(ctx context.Context) error { return store.Migrate(ctx, dsn, to) })
	if !errors.Is(err, rtm.ErrUnavailable) || took > to.Connect+slack {
		t.Errorf("Migrate against a black hole: %v after %s; want rtm.ErrUnavailable within the %s connect timeout", err, took, to.Connect)
	}
	s, err := store.Open(context.Background(), dsn, store.Options{Timeouts: to})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	took, err = within(s.Ping)
	if !errors.Is(err, rtm.ErrUnavailable) || took > to.Connect+slack {
		t.Errorf("Ping against a black hole: %v after %s; want rtm.ErrUnavailable within the %s connect timeout", err, took, to.Connect)
	}
}
