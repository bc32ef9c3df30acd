// Package store is RTM's PostgreSQL access: the runtime records, requests, operation log, health
// snapshots and the transactional outbox, plus the embedded migrations runner. It converts pgx
// types into the domain types of package rtmanager at its boundary.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"

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
	pool     *pool
	timeouts Timeouts
	// onOutbox is handed the rows a transaction added to the outbox once it has committed, so
	// that the publisher relays them at once, without reading them back.
	onOutbox func([]rtm.OutboxEntry)
	// onAnswered is told each request a transaction answered once it has committed.
	onAnswered func(ch rtm.Channel, requestID string)
}

// Options tune a Store.
type Options struct {
	// OnOutbox is called after every commit that added outbox rows, with those rows; may be nil.
	// It must not block: it runs on the committing goroutine.
	OnOutbox func([]rtm.OutboxEntry)
	// OnAnswered is called after every commit that answered requests, once per request; may be
	// nil. It must not block: it runs on the committing goroutine. A REST call waiting for its
	// answer wakes on it instead of polling.
	OnAnswered func(ch rtm.Channel, requestID string)
	// MaxConns bounds the pool (default 20).
	MaxConns int32
	// Timeouts bound every connection and call (zero fields take their defaults).
	Timeouts Timeouts
}

// Timeouts bound RTM's PostgreSQL sessions, so that a database that stops answering (packets
// dropped, not refused) fails calls within a known time, as errors wrapping rtm.ErrUnavailable,
// instead of hanging them. A zero field takes the default named beside it.
type Timeouts struct {
	// Connect bounds one connection's dial, TLS handshake and authentication, and replaces any
	// connect_timeout of the DSN. A connection idle that long gets TCP keepalive probes.
	Connect time.Duration // DefaultConnectTimeout
	// Operation bounds one store call, from acquiring a connection to reading its last row (one
	// transaction for a write), unless the caller's context ends sooner. It is also how long
	// sent data may stay unacknowledged before the kernel drops the connection (TCP_USER_TIMEOUT,
	// on Linux), which bounds the calls of the migrations runner, which take no context.
	Operation time.Duration // DefaultOperationTimeout
	// Statement and Lock are statement_timeout and lock_timeout of the pool's sessions: the
	// server gives up a statement, or a wait for a row lock, of a call the client may already
	// have given up. They replace any value of the DSN.
	Statement time.Duration // DefaultStatementTimeout
	Lock      time.Duration // DefaultLockTimeout
	// MigrationLock is lock_timeout of Migrate's session: how long it waits for golang-migrate's
	// advisory lock (another process is migrating) and for the table locks its DDL needs.
	MigrationLock time.Duration // DefaultMigrationLockTimeout
}

// Defaults of Timeouts, and of the RTMANAGER_POSTGRES_*_TIMEOUT settings.
const (
	DefaultConnectTimeout       = 5 * time.Second
	DefaultOperationTimeout     = 10 * time.Second
	DefaultStatementTimeout     = 5 * time.Second
	DefaultLockTimeout          = 3 * time.Second
	DefaultMigrationLockTimeout = time.Minute
)

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Connect, DefaultConnectTimeout)
	def(&t.Operation, DefaultOperationTimeout)
	def(&t.Statement, DefaultStatementTimeout)
	def(&t.Lock, DefaultLockTimeout)
	def(&t.MigrationLock, DefaultMigrationLockTimeout)
	return t
}

// bound applies t to a parsed connection config: the connect timeout, a dialer with TCP
// keepalive and user timeout, and params as session settings (replacing the DSN's), with
// application_name defaulting to name.
func (t Timeouts) bound(cfg *pgconn.Config, name string, params map[string]string) {
	cfg.ConnectTimeout = t.Connect
	cfg.DialFunc = dialer(t).DialContext
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = name
	}
}

// dialer dials with the connect timeout, keepalive probes after Connect of silence, and (on
// Linux) TCP_USER_TIMEOUT of Operation, so that a black-holed database breaks the connection
// even while a call without a deadline waits on it.
func dialer(t Timeouts) *net.Dialer {
	interval := max(t.Connect/5, time.Second)
	return &net.Dialer{
		Timeout:         t.Connect,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: t.Connect, Interval: interval, Count: 5},
		Control:         userTimeout(t.Operation),
	}
}

// millis formats d as a PostgreSQL time setting.
func millis(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }

// Open prepares a pool on dsn (either DSN form of CONTRACT §1); it connects lazily, so Ping is
// the first call to reach the database. Every connection and call is bounded by opts.Timeouts.
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
	t := opts.Timeouts.withDefaults()
	t.bound(&cfg.ConnConfig.Config, "rtmanager", map[string]string{
		"statement_timeout": millis(t.Statement),
		"lock_timeout":      millis(t.Lock),
		// A session whose client vanished mid-transaction frees its row locks once no call
		// could still be using it.
		"idle_in_transaction_session_timeout": millis(t.Operation),
	})
	pgxPool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening postgres pool: %w", redactErr(err))
	}
	s := &Store{pool: &pool{pgx: pgxPool, timeout: t.Operation}, timeouts: t, onOutbox: opts.OnOutbox,
		onAnswered: opts.OnAnswered}
	if s.onOutbox == nil {
		s.onOutbox = func([]rtm.OutboxEntry) {}
	}
	return s, nil
}

// Close closes the pool. It waits for the connections in use, at most the operation timeout.
func (s *Store) Close() { s.pool.Close() }

// Ping checks, within the operation timeout, that the database answers and that the session is
// in schema rtmanager. A database that does not answer in time is an error wrapping
// rtm.ErrUnavailable.
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
//
// timeouts (at most one; none means the defaults) bound it: the connection by Connect, the waits
// for the advisory lock and for the DDL's table locks by MigrationLock, and a database that stops
// answering by the keepalive and TCP_USER_TIMEOUT of Operation. A database that cannot be reached
// or a lock not taken in time is an error wrapping rtm.ErrUnavailable. (The argument is variadic
// so that the tests' callers keep the defaults.)
func Migrate(ctx context.Context, dsn string, timeouts ...Timeouts) error {
	var t Timeouts
	if len(timeouts) > 0 {
		t = timeouts[0]
	}
	t = t.withDefaults()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("parsing postgres dsn: %w", redactErr(err))
	}
	t.bound(&cfg.Config, "rtmanager migrations", map[string]string{"lock_timeout": millis(t.MigrationLock)})
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	pctx, cancel := bound(ctx, t.Connect+t.Operation)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		return fmt.Errorf("connecting for migrations: %w", unavailable(err))
	}
	if err := migrateDB(db, t.MigrationLock+t.Operation); err != nil {
		return unavailable(err)
	}
	return nil
}

// migrateDB runs the migrations on db. lockWait bounds golang-migrate's own wait for its lock;
// it is longer than the session's lock_timeout, so that the server's refusal comes first.
func migrateDB(db *sql.DB, lockWait time.Duration) error {
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
	defer m.Close()
	m.LockTimeout = lockWait
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
