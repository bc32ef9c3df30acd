package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Reading a pending mutation's outcome: the first read at once, then after firstPoll, doubling
// to maxPoll.
const (
	firstPoll = 200 * time.Millisecond
	maxPoll   = 2 * time.Second
	// outcomeWindow is how many of a game's latest operations are searched for a request's row.
	outcomeWindow = 50
)

// transient reports whether a failed request may succeed if sent again: no answer came (the
// server is restarting, a network blip) or the server answered 5xx.
func transient(err error) bool {
	var ae *apiError
	if !errors.As(err, &ae) {
		var u *usageError
		return !errors.As(err, &u)
	}
	return ae.Status >= 500
}

// notFound reports whether the API answered 404 runtime_not_found.
func notFound(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

func interrupted(method string) error {
	f := failf("interrupted")
	if method != http.MethodGet {
		f.hints = []string{"the request may still be carried out: check with rtmctl get runtime / rtmctl ops"}
	}
	return f
}

// statusFor is the status a game reaches once it has converged on desired state d.
func statusFor(d rtm.DesiredState) rtm.Status {
	switch d {
	case rtm.DesiredStopped:
		return rtm.StatusStopped
	case rtm.DesiredRemoved:
		return rtm.StatusRemoved
	}
	return rtm.StatusRunning
}

// converge follows a mutation RTM answered 202 (resp): it reads the game's operation log until
// the request's row (its request id is the answer's X-Request-Id) shows the outcome or deadline
// passes. A succeeded outcome prints the fresh record; a failed one is a failure with its code
// (exit 1); no outcome in time prints the record as it stands and exits 3.
func (a *app) converge(ctx context.Context, c *client, gameID string, resp *response, deadline time.Time) error {
	rid := resp.requestID
	if rid != "" && time.Now().Before(deadline) {
		fmt.Fprintf(a.stderr, "RTM answered before game %s converged; waiting for request %s (up to --timeout %s) …\n", gameID, rid, a.timeout)
		op, err := a.awaitOutcome(ctx, c, gameID, rid, deadline)
		if err != nil {
			return err
		}
		if op != nil && op.Outcome == rtm.OutcomeSucceeded {
			fresh, err := a.call(ctx, c, http.MethodGet, gamePath(gameID), nil, nil, gameID)
			if err != nil {
				return err
			}
			return a.printRecordAnswer(ctx, c, fresh.body)
		}
		if op != nil {
			code := string(op.ErrorCode)
			if code == "" {
				code = string(op.Outcome)
			}
			ae := &apiError{Code: code, Message: op.ErrorMessage, RequestID: rid}
			return &failure{err: ae, hints: append(c.hintsFor(ae, gameID), "request id: "+rid)}
		}
	}

	// Not converged in time: the record as it stands, read afresh when the server answers soon.
	body := resp.body
	late, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if fresh, err := c.do(late, http.MethodGet, gamePath(gameID), nil, nil); err == nil {
		body = fresh.body
	}
	if err := a.printRecordAnswer(late, c, body); err != nil {
		return err
	}
	var rec rtm.Record
	_ = json.Unmarshal(body, &rec)
	hints := []string{fmt.Sprintf("follow it with: rtmctl wait %s --for=status=%s; rtmctl ops %s",
		gameID, statusFor(rec.DesiredState), gameID)}
	if rid != "" {
		hints = append(hints, "request id: "+rid)
	}
	return &failure{code: exitNotReached, hints: hints,
		err: fmt.Errorf("not converged within %s (--timeout): game %s is %s, desired %s; RTM keeps working on it",
			a.timeout, gameID, cell(string(rec.Status)), cell(string(rec.DesiredState)))}
}

// awaitOutcome reads the game's latest operations until one carries requestID, and returns it;
// nil when deadline passed first. Transient failures are retried; an interrupt or any other
// failure ends the wait with an error.
func (a *app) awaitOutcome(ctx context.Context, c *client, gameID, requestID string, deadline time.Time) (*rtm.Operation, error) {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	q := url.Values{"limit": {fmt.Sprint(outcomeWindow)}}
	for delay := firstPoll; ; delay = min(2*delay, maxPoll) {
		resp, err := c.do(dctx, http.MethodGet, gamePath(gameID)+"/operations", q, nil)
		switch {
		case ctx.Err() != nil:
			return nil, interrupted(http.MethodPost)
		case dctx.Err() != nil:
			return nil, nil
		case err != nil && !transient(err):
			return nil, err
		case err == nil:
			var body struct {
				Operations []rtm.Operation `json:"operations"`
			}
			if err := json.Unmarshal(resp.body, &body); err != nil {
				return nil, failf("unexpected operation log from the server: %v", err)
			}
			for i := range body.Operations {
				if body.Operations[i].RequestID == requestID {
					return &body.Operations[i], nil
				}
			}
		}
		if !rtm.Sleep(dctx, delay) {
			if ctx.Err() != nil {
				return nil, interrupted(http.MethodPost)
			}
			return nil, nil
		}
	}
}

func (a *app) newWaitCmd() *cobra.Command {
	var cond string
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "wait GAME_ID --for=status=STATUS",
		Short: "Wait until a game has a status",
		Long: `Read the game's record every --interval until its status is the one asked for, then print
"runtime/<game_id> condition met" (or the record, with -o json, yaml, jsonpath; its name with
-o name) and exit 0.

When --timeout (default 60s) runs out first, say so on stderr and exit 3. A game that has no
record yet is waited for (a start job may not have been read yet); an unreachable server or a
5xx answer is retried until the timeout; any other refusal exits 1, and so does Ctrl-C.

STATUS is one of ` + rtm.StatusNames() + `.`,
		Example: `  # After queueing a start job, as Lobby does
  rtmctl jobs start game-42 --image galaxy/game:1.4.2 --wait=false
  rtmctl wait game-42 --for=status=running --timeout 2m

  # Stop, wait, clean up
  rtmctl stop game-42 && rtmctl wait game-42 --for=status=stopped && rtmctl cleanup game-42

  # In a script: 0 reached, 3 timed out, 1 refused or interrupted
  rtmctl wait game-42 --for=status=removed --timeout 30s; echo "exit $?"`,
		Annotations:       outputs(recordOutputs),
		Args:              gameIDArg,
		ValidArgsFunction: a.completeGameIDs,
		RunE: act(func(cmd *cobra.Command, args []string) error {
			want, err := parseCondition(cond)
			if err != nil {
				return err
			}
			if interval <= 0 {
				return usagef("--interval must be positive, got %s", interval)
			}
			return a.wait(cmd.Context(), args[0], want, interval)
		}),
	}
	cmd.Flags().StringVar(&cond, "for", "", "the condition to wait for: status=STATUS (required)")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "how often the record is read")
	_ = cmd.MarkFlagRequired("for")
	_ = cmd.RegisterFlagCompletionFunc("for", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, s := range rtm.Statuses {
			out = append(out, "status="+string(s))
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

// parseCondition reads --for: status=STATUS.
func parseCondition(s string) (rtm.Status, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k != "status" {
		return "", usagef("--for must be status=STATUS (STATUS one of %s), got %q", rtm.StatusNames(), s)
	}
	if !rtm.Status(v).Known() {
		return "", usagef("--for status must be one of %s, got %q", rtm.StatusNames(), v)
	}
	return rtm.Status(v), nil
}

// wait reads the game's record until its status is want; see newWaitCmd.
func (a *app) wait(ctx context.Context, gameID string, want rtm.Status, interval time.Duration) error {
	deadline := time.Now().Add(a.timeout)
	c, err := a.client()
	if err != nil {
		return err
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	seen := "nothing read yet"
	for {
		resp, err := c.do(dctx, http.MethodGet, gamePath(gameID), nil, nil)
		switch {
		case ctx.Err() != nil:
			return interrupted(http.MethodGet)
		case dctx.Err() != nil:
		case err == nil:
			var rec rtm.Record
			if err := json.Unmarshal(resp.body, &rec); err != nil {
				return failf("unexpected runtime record from the server: %v", err)
			}
			if rec.Status == want {
				return a.printWaited(gameID, resp.body)
			}
			seen = "it is " + cell(string(rec.Status))
		case notFound(err):
			seen = "it has no runtime record"
		case transient(err):
			seen = "last error: " + err.Error()
		default:
			var f *failure
			var ae *apiError
			if errors.As(err, &f) && errors.As(err, &ae) {
				f.hints = append(f.hints, c.hintsFor(ae, gameID)...)
			}
			return err
		}
		if !rtm.Sleep(dctx, interval) {
			if ctx.Err() != nil {
				return interrupted(http.MethodGet)
			}
			return &failure{code: exitNotReached,
				err: fmt.Errorf("timed out after %s (--timeout) waiting for game %s to be %s (%s)", a.timeout, gameID, want, seen)}
		}
	}
}

// printWaited reports a condition met, as kubectl wait does, or the record in the chosen format.
func (a *app) printWaited(gameID string, body []byte) error {
	switch {
	case a.output == outName:
		_, err := fmt.Fprintln(a.stdout, resourceName(gameID))
		return err
	case a.output.structured():
		return a.printJSON(body)
	}
	_, err := fmt.Fprintf(a.stdout, "%s condition met\n", resourceName(gameID))
	return err
}

// watchRuntimes is get -w: it prints the runtimes (one game's when gameID is set) once, then
// polls every interval and prints each one that changed, until ctx ends (exit 0). A table row
// counts as changed when a cell other than AGE did; a record printed as JSON, YAML, jsonpath or
// name when anything in it did. A failed poll the server may answer later (unreachable, 5xx) is
// warned about once and retried; any other failure ends the watch (exit 1).
func (a *app) watchRuntimes(ctx context.Context, gameID, status string, limit int, interval time.Duration) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	fetch := func() ([]json.RawMessage, error) {
		if gameID != "" {
			resp, err := a.call(ctx, c, http.MethodGet, gamePath(gameID), nil, nil, gameID)
			if err != nil {
				return nil, err
			}
			return []json.RawMessage{resp.body}, nil
		}
		items, _, err := a.listRuntimes(ctx, c, status, limit)
		return items, err
	}
	items, err := fetch()
	if err != nil {
		return err
	}
	w := &runtimeWatch{a: a, c: c, seen: map[string]string{}}
	for {
		if err := w.print(ctx, items); err != nil {
			return err
		}
		warned := false
		for {
			if !rtm.Sleep(ctx, interval) {
				return nil
			}
			if items, err = fetch(); err == nil {
				break
			}
			switch {
			case ctx.Err() != nil:
				return nil
			case !transient(err):
				return err
			case !warned:
				fmt.Fprintf(a.stderr, "warning: %v; retrying every %s\n", err, interval)
				warned = true
			}
		}
	}
}

// runtimeWatch prints what changed between polls of get -w.
type runtimeWatch struct {
	a    *app
	c    *client
	seen map[string]string // by game id: what was printed last, as compared
	lw   *lineWriter       // the table's writer, once the first rows are printed
}

func (w *runtimeWatch) print(ctx context.Context, items []json.RawMessage) error {
	a := w.a
	recs, err := decodeRecords(items)
	if err != nil {
		return err
	}
	if a.output == outTable || a.output == outWide {
		return w.printRows(ctx, recs)
	}
	for i, r := range recs {
		key := string(items[i])
		if w.seen[r.GameID] == key {
			continue
		}
		w.seen[r.GameID] = key
		if err := w.printRecord(r.GameID, items[i]); err != nil {
			return err
		}
	}
	return nil
}

// printRecord prints one changed record: a line of JSON, a YAML document, the jsonpath
// template's output or the name.
func (w *runtimeWatch) printRecord(gameID string, raw json.RawMessage) error {
	a := w.a
	switch {
	case a.output == outName:
		_, err := fmt.Fprintln(a.stdout, resourceName(gameID))
		return err
	case a.output == outJSON:
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return failf("unexpected runtime record from the server: %v", err)
		}
		buf.WriteByte('\n')
		_, err := buf.WriteTo(a.stdout)
		return err
	case a.output == outYAML:
		y, err := yaml.JSONToYAML(raw)
		if err != nil {
			return fmt.Errorf("converting to yaml: %w", err)
		}
		_, err = fmt.Fprintf(a.stdout, "---\n%s", y)
		return err
	}
	return a.printJSON(raw)
}

// printRows prints the rows that changed; the first call prints the header (unless
// --no-headers) and every row, aligned on their widest cells.
func (w *runtimeWatch) printRows(ctx context.Context, recs []rtm.Record) error {
	a := w.a
	health := a.healthOf(ctx, w.c, recs)
	now := a.now()
	var changed [][]string
	for _, r := range recs {
		row := a.recordRow(now, r, health)
		key := strings.Join(append(append([]string(nil), row[:ageColumn]...), row[ageColumn+1:]...), "\x00")
		if w.seen[r.GameID] == key {
			continue
		}
		w.seen[r.GameID] = key
		changed = append(changed, row)
	}
	if w.lw == nil {
		header := a.recordHeader()
		// Room for the longest STATUS, HEALTH and DESIRED values from the start, so that a
		// change to one of them does not shift the rows after it.
		widths := make([]int, len(header))
		widths[1], widths[2], widths[3] = len(rtm.StatusStarting), len(healthProbeFailing), len(rtm.DesiredStopped)
		for _, row := range append([][]string{header}, changed...) {
			for i, c := range row {
				widths[i] = max(widths[i], utf8.RuneCountInString(cell(c)))
			}
		}
		w.lw = newLineWriter(a.stdout, header, widths)
		if !a.noHeaders {
			if err := w.lw.write(header); err != nil {
				return err
			}
		}
	}
	for _, row := range changed {
		if err := w.lw.write(row); err != nil {
			return err
		}
	}
	return nil
}
