package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Names provisioned in every database NewDatabase creates, as production provisions them.
const (
	ServiceRole     = "rtmanagerservice"
	ServicePassword = "rtmanagerservice"
	ServiceSchema   = "rtmanager"
)

// usePostgres adopts an external server given by a superuser DSN.
func (e *Env) usePostgres(dsn string) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("testenv: parsing %s: %w", EnvPostgresDSN, err)
	}
	e.AdminDSN = dsn
	e.PGHost = cfg.Host
	e.PGPort = int(cfg.Port)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("testenv: connecting to %s: %w", EnvPostgresDSN, err)
	}
	_ = conn.Close(ctx)
	return nil
}

// findPGBin returns the bin dir of the newest PostgreSQL under /usr/lib/postgresql that has
// initdb, or the dir of an initdb on PATH.
func findPGBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	type cand struct {
		dir string
		ver []int
	}
	var cands []cand
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			continue
		}
		var ver []int
		for _, p := range strings.Split(filepath.Base(filepath.Dir(d)), ".") {
			n, _ := strconv.Atoi(p)
			ver = append(ver, n)
		}
		cands = append(cands, cand{d, ver})
	}
	if len(cands) > 0 {
		sort.Slice(cands, func(i, j int) bool {
			a, b := cands[i].ver, cands[j].ver
			for k := 0; k < len(a) && k < len(b); k++ {
				if a[k] != b[k] {
					return a[k] > b[k]
				}
			}
			return len(a) > len(b)
		})
		return cands[0].dir, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("testenv: no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin or on PATH; install postgresql-15 or set " + EnvPostgresDSN)
}

// pgCommand runs a PostgreSQL binary, as the postgres user when we are root (initdb and the
// server refuse to run as root).
func (e *Env) pgCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	bin := filepath.Join(e.PGBin, name)
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", bin}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, bin, args...)
	}
	// The caller's working directory may not be readable by the postgres user.
	cmd.Dir = filepath.Dir(e.PGDataDir)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	return cmd
}

func (e *Env) pgCtl(ctx context.Context, args ...string) error {
	return runLogged(e.pgCommand(ctx, "pg_ctl", append([]string{"-D", e.PGDataDir}, args...)...), e.pgLog)
}

// startPostgresCluster initdbs a cluster in the work dir and starts it on a free loopback port.
func (e *Env) startPostgresCluster(ctx context.Context) error {
	bin, err := findPGBin()
	if err != nil {
		return err
	}
	e.PGBin = bin
	e.PGDataDir = filepath.Join(e.WorkDir, "pg")
	e.pgLog = filepath.Join(e.WorkDir, "pg.log")
	if err := os.Mkdir(e.PGDataDir, 0o700); err != nil {
		return fmt.Errorf("testenv: creating data dir: %w", err)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("testenv: running as root needs a postgres user for initdb: %w", err)
		}
		e.pgUID, _ = strconv.Atoi(u.Uid)
		e.pgGID, _ = strconv.Atoi(u.Gid)
		if err := os.Chown(e.PGDataDir, e.pgUID, e.pgGID); err != nil {
			return fmt.Errorf("testenv: chown data dir: %w", err)
		}
	}

	initdb := e.pgCommand(ctx, "initdb", "-D", e.PGDataDir, "-A", "trust", "-U", "postgres",
		"-E", "UTF8", "--no-locale", "--no-sync")
	if err := runLogged(initdb, e.pgLog); err != nil {
		return fmt.Errorf("testenv: initdb: %w", err)
	}

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := FreePort()
		if err != nil {
			return err
		}
		// Settings go into postgresql.auto.conf (read last) so StartPostgres reuses them.
		conf := fmt.Sprintf("port = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n"+
			"fsync = off\nfull_page_writes = off\nsynchronous_commit = off\nmax_connections = 300\n"+
			"shared_buffers = 32MB\nlog_min_messages = warning\n", port, e.PGDataDir)
		autoConf := filepath.Join(e.PGDataDir, "postgresql.auto.conf")
		if err := os.WriteFile(autoConf, []byte(conf), 0o600); err != nil {
			return fmt.Errorf("testenv: writing postgresql.auto.conf: %w", err)
		}
		if os.Geteuid() == 0 {
			if err := os.Chown(autoConf, e.pgUID, e.pgGID); err != nil {
				return fmt.Errorf("testenv: chown postgresql.auto.conf: %w", err)
			}
		}
		e.PGHost, e.PGPort = "127.0.0.1", port
		e.AdminDSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
		e.PostgresManaged = true
		if lastErr = e.StartPostgres(); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

// StopPostgres stops the harness's PostgreSQL (fast shutdown: clients are disconnected), for
// tests of what happens while the database is down. It returns ErrNotManaged for an external
// server.
func (e *Env) StopPostgres() error {
	return e.controlPostgres(60*time.Second, "stopping postgres", "stop", "-m", "fast", "-w", "-t", "50")
}

// StartPostgres (re)starts the harness's PostgreSQL on the same port and data dir and returns
// once it accepts connections. It returns ErrNotManaged for an external server.
func (e *Env) StartPostgres() error {
	serverLog := filepath.Join(e.PGDataDir, "server.log")
	err := e.controlPostgres(90*time.Second, fmt.Sprintf("starting postgres on port %d", e.PGPort),
		"start", "-w", "-t", "60", "-l", serverLog)
	if err != nil && !errors.Is(err, ErrNotManaged) {
		return fmt.Errorf("%w\n%s", err, Tail(serverLog, 10))
	}
	return err
}

// controlPostgres runs pg_ctl with args on the harness's cluster within timeout; a failure says
// what it was doing. It returns ErrNotManaged for an external server.
func (e *Env) controlPostgres(timeout time.Duration, what string, args ...string) error {
	if !e.PostgresManaged {
		return ErrNotManaged
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := e.pgCtl(ctx, args...); err != nil {
		return fmt.Errorf("testenv: %s: %w", what, err)
	}
	return nil
}

// NewDatabase creates a fresh database provisioned like production: the login role
// rtmanagerservice (password rtmanagerservice, created once) and the schema rtmanager owned by
// it. It registers a cleanup that drops the database (forcibly, disconnecting leftover sessions)
// and returns the DSN as that role with search_path=rtmanager:
//
//	postgres://rtmanagerservice:rtmanagerservice@127.0.0.1:PORT/DB?search_path=rtmanager&sslmode=disable
//
// Failing to create it fails the test.
func (e *Env) NewDatabase(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	name := e.databaseName(tb)
	admin, err := pgx.Connect(ctx, e.AdminDSN)
	if err != nil {
		tb.Fatalf("testenv: connecting as superuser: %v", err)
	}
	defer admin.Close(context.Background())

	if err := e.ensureRole(ctx, admin); err != nil {
		tb.Fatalf("testenv: creating role %s: %v", ServiceRole, err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("testenv: creating database %s: %v", name, err)
	}
	tb.Cleanup(func() { e.dropDatabase(tb, name) })

	dbConn, err := pgx.Connect(ctx, e.SuperuserDSN(name))
	if err != nil {
		tb.Fatalf("testenv: connecting to %s: %v", name, err)
	}
	defer dbConn.Close(context.Background())
	if _, err := dbConn.Exec(ctx, fmt.Sprintf("CREATE SCHEMA %s AUTHORIZATION %s",
		pgx.Identifier{ServiceSchema}.Sanitize(), pgx.Identifier{ServiceRole}.Sanitize())); err != nil {
		tb.Fatalf("testenv: creating schema %s in %s: %v", ServiceSchema, name, err)
	}

	return fmt.Sprintf("postgres://%s:%s@%s/%s?search_path=%s&sslmode=disable",
		ServiceRole, ServicePassword, net.JoinHostPort(e.PGHost, strconv.Itoa(e.PGPort)), name, ServiceSchema)
}

// SuperuserDSN returns a superuser DSN to the named database of the cluster (for example to
// inspect a database from NewDatabase with full rights, as an operator's psql would).
func (e *Env) SuperuserDSN(database string) string {
	u, err := url.Parse(e.AdminDSN)
	if err != nil || u.Scheme == "" {
		// A keyword/value DSN: a later dbname keyword wins.
		return e.AdminDSN + " dbname=" + database
	}
	u.Path = "/" + database
	return u.String()
}

// ensureRole creates the service role once per Env; a role that already exists (made by an
// earlier run or a concurrent package on a shared server) is fine.
func (e *Env) ensureRole(ctx context.Context, admin *pgx.Conn) error {
	e.dbMu.Lock()
	defer e.dbMu.Unlock()
	if e.roleDone {
		return nil
	}
	_, err := admin.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'",
		pgx.Identifier{ServiceRole}.Sanitize(), ServicePassword))
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && (pgErr.Code == "42710" || pgErr.Code == "23505" || pgErr.Code == "XX000")) {
		return err
	}
	e.roleDone = true
	return nil
}

var nonIdent = regexp.MustCompile(`[^a-z0-9]+`)

// databaseName makes a unique, readable database name from the test's name.
func (e *Env) databaseName(tb testing.TB) string {
	e.dbMu.Lock()
	e.dbSeq++
	seq := e.dbSeq
	e.dbMu.Unlock()
	slug := strings.Trim(nonIdent.ReplaceAllString(strings.ToLower(tb.Name()), "_"), "_")
	if len(slug) > 32 {
		slug = slug[:32]
	}
	return fmt.Sprintf("rtm_%s_%d_%s", slug, seq, randomHex(3))
}

func (e *Env) dropDatabase(tb testing.TB, name string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, e.AdminDSN)
	if err != nil {
		tb.Logf("testenv: dropping database %s: %v", name, err)
		return
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		tb.Logf("testenv: dropping database %s: %v", name, err)
	}
}
