package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Defaults of the global flags.
const (
	defaultServer  = "http://127.0.0.1:8096"
	defaultCaller  = "admin"
	defaultTimeout = 60 * time.Second

	envServer = "RTMCTL_SERVER"
	envToken  = "RTMANAGER_INTERNAL_TOKEN"
)

// app is one invocation of rtmctl: where it writes, its environment and clock, and the values of
// its flags. Nothing of it outlives run.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time

	server    string
	caller    string
	token     string
	output    outputFormat
	noHeaders bool
	timeout   time.Duration

	redis redisFlags
}

// newRootCmd builds the command tree.
func (a *app) newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "rtmctl",
		Short: "Operate Runtime Manager: inspect and drive game runtimes, queue jobs, tail events",
		Long: `rtmctl is the operators' client of Runtime Manager (RTM), in the manner of kubectl.

It reads and drives game runtimes through RTM's internal REST API (get, describe, logs, ops,
health, start, stop, restart, patch, cleanup, wait), queues start and stop jobs on the Redis
streams the way Lobby does (jobs), and tails the job results and health events RTM publishes
(watch).

The server is --server, else $RTMCTL_SERVER (make dev's environment file sets it), else
` + defaultServer + `; the token is --token, else $RTMANAGER_INTERNAL_TOKEN.

Exit codes:
  0  done: the answer is printed; a mutation converged; wait's condition was met
  1  failed: the API or Redis refused or failed the request, printed on stderr as
     "error: <code>: <message>" (e.g. semver_patch_only); a job's or a mutation's outcome
     is failed; the server cannot be reached or did not answer within --timeout
  2  usage error: unknown command or flag, missing or bad argument
  3  not reached in time: RTM accepted a mutation (202) but the game had not converged when
     --timeout ran out (RTM keeps working on it), or wait's --for condition was not met
     within --timeout`,
		Example: `  # What runs, and how it is
  rtmctl get runtimes
  rtmctl get runtimes --status failed -o wide
  rtmctl describe game-42
  rtmctl logs game-42 --tail 50 -f

  # Drive a game and wait for it
  rtmctl start game-42 --image galaxy/game:1.4.2
  rtmctl patch game-42 --image galaxy/game:1.4.3 --timeout 5m
  rtmctl stop game-42 && rtmctl wait game-42 --for=status=stopped

  # Follow changes, and feed scripts
  rtmctl get runtimes -w
  rtmctl get runtimes -o name
  rtmctl get runtime game-42 -o jsonpath='{.current_image_ref}'

  # Against another RTM, with its token
  RTMCTL_SERVER=http://rtm-1:8096 RTMANAGER_INTERNAL_TOKEN=… rtmctl version`,
		Version:       versionString(),
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if a.timeout <= 0 {
				return usagef("--timeout must be positive, got %s", a.timeout)
			}
			switch a.caller {
			case "", "admin", "gm", "lobby":
			default:
				return usagef("--caller must be admin, gm or lobby (or empty to send none), got %q", a.caller)
			}
			return checkOutput(cmd, a.output)
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetVersionTemplate("rtmctl {{.Version}}\n")
	root.SuggestionsMinimumDistance = 2

	a.output = outTable
	pf := root.PersistentFlags()
	server := a.getenv(envServer)
	if server == "" {
		server = defaultServer
	}
	pf.StringVar(&a.server, "server", server, "base URL of RTM's internal listener (env "+envServer+")")
	pf.StringVar(&a.caller, "caller", defaultCaller, "X-Galaxy-Caller to send: admin, gm or lobby (mutations need admin or gm)")
	pf.StringVar(&a.token, "token", "", "bearer token for the internal API (env "+envToken+")")
	pf.VarP(&a.output, "output", "o", "output format: table, wide, json, yaml, name or jsonpath=TEMPLATE (which apply is in each command's help)")
	pf.BoolVar(&a.noHeaders, "no-headers", false, "print tables without their header line")
	pf.DurationVar(&a.timeout, "timeout", defaultTimeout, "how long to wait: for an answer (HTTP request, a job's result), a mutation to converge, wait's condition")
	_ = root.RegisterFlagCompletionFunc("output", fixedCompletions("table", "wide", "json", "yaml", "name", "jsonpath="))
	_ = root.RegisterFlagCompletionFunc("caller", fixedCompletions("admin", "gm", "lobby"))

	root.AddCommand(
		a.newGetCmd(),
		a.newDescribeCmd(),
		a.newLogsCmd(),
		a.newWaitCmd(),
		a.newOpsCmd(),
		a.newHealthCmd(),
		a.newStartCmd(),
		a.newStopCmd(),
		a.newRestartCmd(),
		a.newPatchCmd(),
		a.newCleanupCmd(),
		a.newJobsCmd(),
		a.newWatchCmd(),
		a.newVersionCmd(),
	)
	// Cobra adds its completion command when it executes; adding it now lets it get the same
	// usage-error behaviour as the other command groups.
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Example = `  # bash, for the current shell and for new ones
  source <(rtmctl completion bash)
  rtmctl completion bash > /etc/bash_completion.d/rtmctl

  # zsh
  rtmctl completion zsh > "${fpath[1]}/_rtmctl"

  # fish
  rtmctl completion fish > ~/.config/fish/completions/rtmctl.fish`
			asGroup(c)
		}
	}
	return root
}

// asGroup makes a command that only holds subcommands answer a missing or unknown subcommand
// with a usage error (exit 2) instead of printing its help and exiting 0.
func asGroup(c *cobra.Command) *cobra.Command {
	c.Args = cobra.ArbitraryArgs
	c.SuggestionsMinimumDistance = 2
	c.RunE = func(cmd *cobra.Command, args []string) error {
		var names []string
		for _, s := range cmd.Commands() {
			if s.IsAvailableCommand() {
				names = append(names, s.Name())
			}
		}
		if len(args) == 0 {
			return usagef("%s needs a subcommand: %s", cmd.CommandPath(), strings.Join(names, ", "))
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return usagef("%s", msg)
	}
	return c
}

// gameIDArg requires exactly one argument, a valid game id (CONTRACT §3).
func gameIDArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usagef("%s needs exactly one GAME_ID argument, got %d", cmd.CommandPath(), len(args))
	}
	return checkGameID(args[0])
}

func checkGameID(id string) error {
	if err := rtm.ValidateGameID(id); err != nil {
		return usagef("invalid game id %q: %s", id, rtm.MessageOf(err))
	}
	return nil
}

// act wraps a command's work: every error it returns that is not a usage error is a failure
// (exit 1).
func act(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := fn(cmd, args)
		if err == nil {
			return nil
		}
		var u *usageError
		var f *failure
		if errors.As(err, &u) || errors.As(err, &f) {
			return err
		}
		return &failure{err: err}
	}
}

func fixedCompletions(values ...string) cobra.CompletionFunc {
	return func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}

// annOutputs is the annotation listing the -o kinds a command accepts, separated by spaces;
// without it a command accepts table, wide, json and yaml.
const annOutputs = "rtmctl/outputs"

// Output kinds of the commands that print records, and of those that print other JSON.
const (
	recordOutputs = "table wide json yaml name jsonpath"
	jsonOutputs   = "table wide json yaml jsonpath"
)

// outputs returns the annotation that makes a command accept kinds.
func outputs(kinds string) map[string]string { return map[string]string{annOutputs: kinds} }

// checkOutput refuses an -o the command cannot print (exit 2).
func checkOutput(cmd *cobra.Command, o outputFormat) error {
	allowed := cmd.Annotations[annOutputs]
	if allowed == "" {
		allowed = "table wide json yaml"
	}
	kinds := strings.Fields(allowed)
	for _, k := range kinds {
		if k == o.kind() {
			return nil
		}
	}
	if len(kinds) == 1 {
		return usagef("-o %s does not apply to %s", o.kind(), cmd.CommandPath())
	}
	return usagef("-o %s does not apply to %s; it prints %s", o.kind(), cmd.CommandPath(), strings.Join(kinds, ", "))
}
