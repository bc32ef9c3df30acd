// Command rtmctl is the operators' client of Runtime Manager: it reads and drives runtimes
// through the internal REST API (CONTRACT §6), queues start and stop jobs on the Redis streams
// the way Lobby does (§5), and tails the job results and health events RTM publishes.
//
// Exit codes scripts can rely on (the root command's help lists them too): 0 when the command did
// what was asked, 1 when the API or Redis refused or failed it (also when the server cannot be
// reached, or a job's or mutation's outcome is failed), 2 for usage errors (unknown command or
// flag, missing or bad argument), 3 when what was asked was not reached in time: a mutation RTM
// accepted had not converged when --timeout ran out, or wait's condition was not met.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// version is set at build time with -ldflags "-X main.version=…"; a binary built with
// `go install …@vX` reports its module version instead of "dev".
var version = "dev"

// Exit codes.
const (
	exitOK         = 0
	exitFailed     = 1
	exitUsage      = 2
	exitNotReached = 3
	usageSuffix    = "Run '%s --help' for usage.\n"
)

func main() {
	// go-redis prints its pool's dial failures on its own; rtmctl reports them once, as errors.
	redis.SetLogger(quietRedis{})
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// quietRedis drops go-redis's own log lines.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// run executes rtmctl with args (without the program name) and returns the exit code. SIGINT
// and SIGTERM cancel the command's context: a watch then ends with 0, a wait with 1.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runContext(ctx, args, stdout, stderr, os.Getenv)
}

// runContext is run with the context and environment given, for tests.
func runContext(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv, now: time.Now}
	root := a.newRootCmd()
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var f *failure
	if errors.As(err, &f) {
		fmt.Fprintf(stderr, "error: %v\n", f.err)
		for _, h := range f.hints {
			fmt.Fprintf(stderr, "  %s\n", h)
		}
		if f.code != 0 {
			return f.code
		}
		return exitFailed
	}
	// Anything else comes from cobra's parsing (unknown command or flag, bad or missing
	// argument, missing required flag) or from our own argument checks: a usage error.
	fmt.Fprintf(stderr, "error: %v\n", err)
	path := root.CommandPath()
	if cmd != nil {
		path = cmd.CommandPath()
	}
	fmt.Fprintf(stderr, usageSuffix, path)
	return exitUsage
}

// failure is an error of a command that ran: the API or Redis refused or failed it, or could not
// be reached. It exits with code (1 when zero); hints are printed below the error line.
type failure struct {
	err   error
	hints []string
	code  int
}

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

// failf returns a failure with a formatted message.
func failf(format string, args ...any) *failure {
	return &failure{err: fmt.Errorf(format, args...)}
}

// usageError is a bad invocation found by a command itself (an invalid game id, a limit out of
// range); it exits 2 like cobra's own parsing errors.
type usageError struct{ msg string }

func (u *usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// versionString returns the version rtmctl reports: the linked-in one, else the module version
// of a `go install`ed binary, else "dev".
func versionString() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

func platform() string { return runtime.GOOS + "/" + runtime.GOARCH }

func goVersion() string { return runtime.Version() }
