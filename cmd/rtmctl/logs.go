package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"

	"github.com/spf13/cobra"
)

// maxLogTail is the most lines the logs route sends (its ?tail= bound).
const maxLogTail = 10000

func (a *app) newLogsCmd() *cobra.Command {
	var tail int
	var follow, timestamps bool
	cmd := &cobra.Command{
		Use:   "logs GAME_ID [--tail N] [-f] [--timestamps]",
		Short: "Print the output of a game's engine",
		Long: `Print what the game's engine container wrote to stdout and stderr, as Docker keeps it (a
size-limited json-file log), through RTM's read-only route GET /runtimes/{game_id}/logs.

--tail N prints the last N lines (default: the server's, 100; at most ` + strconv.Itoa(maxLogTail) + `; 0 prints
none, useful with -f). -f (--follow) keeps printing what the engine writes until the container
stops (exit 0), RTM shuts down, or Ctrl-C (exit 0). --timestamps prefixes each line with
Docker's RFC 3339 time.

A game without a record or without a container is "error: runtime_not_found" (exit 1).`,
		Example: `  rtmctl logs game-42
  rtmctl logs game-42 --tail 500 --timestamps
  rtmctl logs game-42 -f --tail 0
  rtmctl logs game-42 --tail 10000 | grep -i panic`,
		Annotations:       outputs(kindTable),
		Args:              gameIDArg,
		ValidArgsFunction: a.completeGameIDs,
		RunE: act(func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			if cmd.Flags().Changed("tail") {
				if tail < 0 || tail > maxLogTail {
					return usagef("--tail must be from 0 to %d, got %d", maxLogTail, tail)
				}
				q.Set("tail", strconv.Itoa(tail))
			}
			if follow {
				q.Set("follow", "true")
			}
			if timestamps {
				q.Set("timestamps", "true")
			}
			return a.logs(cmd.Context(), args[0], q, follow)
		}),
	}
	cmd.Flags().IntVar(&tail, "tail", 100, "how many of the last lines to print (0 to "+strconv.Itoa(maxLogTail)+")")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the container stops or Ctrl-C")
	cmd.Flags().BoolVar(&timestamps, "timestamps", false, "prefix each line with its RFC 3339 time")
	return cmd
}

// logs copies the engine's output to stdout as it comes. Ctrl-C ends a stream with exit 0, as
// the container stopping does.
func (a *app) logs(ctx context.Context, gameID string, q url.Values, follow bool) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	body, err := c.stream(ctx, gamePath(gameID)+"/logs", q, follow)
	if err != nil {
		var f *failure
		var ae *apiError
		if errors.As(err, &f) && errors.As(err, &ae) {
			f.hints = append(f.hints, c.hintsFor(ae, gameID)...)
		}
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer body.Close()
	_, err = io.Copy(a.stdout, body)
	switch {
	case err == nil, ctx.Err() != nil:
		return nil
	case follow:
		return failf("the output stream of game %s broke: %v", gameID, err)
	}
	return &failure{err: fmt.Errorf("reading the output of game %s: %v", gameID, err),
		hints: []string{"a long output may need a longer --timeout, or a smaller --tail"}}
}
