// Package store is RTM's PostgreSQL access: the runtime records, requests, operation log, health
// snapshots and the transactional outbox, plus the embedded migrations runner. It converts pgx
// types into the domain types of package rtmanager at its boundary.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/galaxy-platform/rtmanager/migrations"
)

// Schema is the PostgreSQL schema RTM lives in; the DSN's search_path must name it.
const Schema = "rtmanager"

// Store is the PostgreSQL side of RTM. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	// onOutbox is handed the rows a transaction added to the outbox once it has committed, so
	// that the publisher relays them at once, without reading them back.
	onOutbox func([]OutboxEntry)
}

// Options tune a Store.
type Options struct {
	// OnOutbox is called after every commit that added outbox rows, with those rows; may be nil.
	// It must not block: it runs on the committing goroutine.
	OnOutbox func([]OutboxEntry)
	// MaxConns bounds the pool (default 20).
	MaxConns int32
}

// Open connects a pool to dsn (either DSN form of CONTRACT §1) and pings it.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parsing postgres dsn: %w", redactErr(err))
	}
	cfg.MaxConns = 20
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	cfg.MaxConnIdleTime = time.Minute
	cfg.HealthCheckPeriod = 15 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening postgres pool: %w", redactErr(err))
	}
	s := &Store{pool: pool, onOutbox: opts.OnOutbox}
	if s.onOutbox == nil {
		s.onOutbox = func([]OutboxEntry) {}
	}
	return s, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers and that the session is in schema rtmanager.
func (s *Store) Ping(ctx context.Context) error {
	var schema *string
	if err := s.pool.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return fmt.Errorf("pinging postgres: %w", err)
	}
	if schema == nil || *schema != Schema {
		return fmt.Errorf("the session's schema is not %s: set search_path=%s in the DSN", Schema, Schema)
	}
	return nil
}

// Migrate applies every embedded migration not yet applied, as the DSN's role, keeping
// golang-migrate's bookkeeping table in schema rtmanager. Concurrent callers serialise on
// golang-migrate's advisory lock; an up-to-date schema is not an error.
func Migrate(ctx context.Context, dsn string) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("parsing postgres dsn: %w", redactErr(err))
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("connecting for migrations: %w", err)
	}
	return migrateDB(db)
}

func migrateDB(db *sql.DB) error {
	drv, err := migratepgx.WithInstance(db, &migratepgx.Config{SchemaName: Schema, MigrationsTable: "schema_migrations"})
	if err != nil {
		return fmt.Errorf("preparing migrations: %w", err)
	}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return fmt.Errorf("reading embedded migrations: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", drv)
	if err != nil {
		return fmt.Errorf("preparing migrations: %w", err)
	}
	if err := m.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return fmt.Errorf("applying migrations: %w", err)
	}
	return nil
}

// redactErr keeps a DSN parse error from echoing the DSN, and so its password, into logs.
func redactErr(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return errors.New("invalid connection string")
	}
	return err
}
