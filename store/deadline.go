package store

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"time"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	rtm "github.com/galaxy-platform/rtmanager"
)

// pool is the connection pool as the store's calls see it: the pgxpool methods they use, each
// bounded by the operation timeout (see bound) and each turning a failure to reach PostgreSQL in
// time into an error wrapping rtm.ErrUnavailable (see unavailable). A deadline costs a timer,
// never a round trip.
type pool struct {
	pgx     *pgxpool.Pool
	timeout time.Duration // Timeouts.Operation
}

// noCancel is what bound returns when the caller's deadline already comes first.
func noCancel() {}

// bound returns ctx with a deadline timeout from now, unless ctx already ends no later.
func bound(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= timeout {
		return ctx, noCancel
	}
	return context.WithTimeout(ctx, timeout)
}

// Exec runs one statement under the operation timeout.
func (p *pool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	ctx, cancel := bound(ctx, p.timeout)
	defer cancel()
	tag, err := p.pgx.Exec(ctx, sql, args...)
	return tag, unavailable(err)
}

// Query runs a query whose rows are read under the operation timeout; the timeout ends when the
// rows are closed or exhausted.
func (p *pool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	ctx, cancel := bound(ctx, p.timeout)
	rows, err := p.pgx.Query(ctx, sql, args...)
	if err != nil {
		cancel()
		return nil, unavailable(err)
	}
	return &boundRows{Rows: rows, cancel: cancel}, nil
}

// QueryRow runs a query of one row whose Scan happens under the operation timeout.
func (p *pool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	ctx, cancel := bound(ctx, p.timeout)
	return boundRow{row: p.pgx.QueryRow(ctx, sql, args...), cancel: cancel}
}

// SendBatch sends b in one round trip; its results are read under the operation timeout, which
// ends when they are closed.
func (p *pool) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	ctx, cancel := bound(ctx, p.timeout)
	return &boundBatch{BatchResults: p.pgx.SendBatch(ctx, b), cancel: cancel}
}

// Close closes the pool; it waits for the connections in use, which the operation timeout
// releases.
func (p *pool) Close() { p.pgx.Close() }

type boundRows struct {
	pgx.Rows
	cancel context.CancelFunc
}

func (r *boundRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.cancel()
	return false
}

func (r *boundRows) Close() {
	r.Rows.Close()
	r.cancel()
}

func (r *boundRows) Err() error { return unavailable(r.Rows.Err()) }

type boundRow struct {
	row    pgx.Row
	cancel context.CancelFunc
}

func (r boundRow) Scan(dest ...any) error {
	defer r.cancel()
	return unavailable(r.row.Scan(dest...))
}

type boundBatch struct {
	pgx.BatchResults
	cancel context.CancelFunc
}

func (b *boundBatch) Exec() (pgconn.CommandTag, error) {
	tag, err := b.BatchResults.Exec()
	return tag, unavailable(err)
}

func (b *boundBatch) Query() (pgx.Rows, error) {
	rows, err := b.BatchResults.Query()
	return rows, unavailable(err)
}

func (b *boundBatch) QueryRow() pgx.Row {
	return boundRow{row: b.BatchResults.QueryRow(), cancel: noCancel}
}

func (b *boundBatch) Close() error {
	defer b.cancel()
	return unavailable(b.BatchResults.Close())
}

// unavailableError is a store call that failed because PostgreSQL did not answer in time or
// could not be reached: transient, so it wraps rtm.ErrUnavailable besides the cause.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string   { return "postgres unavailable: " + e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{rtm.ErrUnavailable, e.err} }

// unavailable returns err wrapping rtm.ErrUnavailable when it says PostgreSQL did not answer in
// time (a deadline, statement_timeout, lock_timeout) or could not be reached (a refused or broken
// connection, a server shutting down or out of connections); other errors, nil and a context the
// caller cancelled are returned as they are.
func unavailable(err error) error {
	if err == nil || errors.Is(err, rtm.ErrUnavailable) || errors.Is(err, context.Canceled) {
		return err
	}
	if transient(err) {
		return &unavailableError{err: err}
	}
	return err
}

func transient(err error) bool {
	// golang-migrate's driver reports its failures as database.Error, which hides the cause
	// from errors.As.
	var de *database.Error
	if errors.As(err, &de) && de.OrigErr != nil && transient(de.OrigErr) {
		return true
	}
	if code := sqlState(err); code != "" {
		switch code {
		case "57014", // query_canceled: statement_timeout
			"55P03",                   // lock_not_available: lock_timeout
			"57P01", "57P02", "57P03", // admin_shutdown, crash_shutdown, cannot_connect_now
			"53300": // too_many_connections
			return true
		}
		return strings.HasPrefix(code, "08") // connection_exception
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) ||
		errors.As(err, &ce) || errors.As(err, &ne) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, migrate.ErrLockTimeout)
}
