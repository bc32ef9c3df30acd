package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	rtm "github.com/galaxy-platform/rtmanager"
)

// maxPage is the largest page the API serves (CONTRACT §6: ?limit= ≤ 500).
const maxPage = 500

func (a *app) newGetCmd() *cobra.Command {
	get := asGroup(&cobra.Command{
		Use:   "get",
		Short: "Show runtime records",
		Example: `  rtmctl get runtimes
  rtmctl get runtime game-42 -o json`,
	})
	var status string
	var limit int
	var watch bool
	var interval time.Duration
	rt := &cobra.Command{
		Use:     "runtimes [GAME_ID]",
		Aliases: []string{"runtime", "rt"},
		Short:   "List runtimes (all pages), or show one; -w follows changes",
		Long: `List the runtime records RTM holds, ordered by game id, or show one game's record.

Without --limit every page is fetched (following next_cursor). The table shows what each game
should be (DESIRED) next to what RTM last saw (STATUS), and HEALTH from the game's health
snapshot: healthy; probe_failing (the engine failed its latest probes, fewer than the
threshold that makes it unhealthy); unhealthy (it failed the threshold of probes in a row,
exited, was OOM-killed or vanished); "-" when nothing was observed yet or the game is not
meant to run; "?" when the snapshot could not be read. IMAGE reads "current → desired" while
a change of image is pending. -o wide adds the engine endpoint, the last update and the last
error; --no-headers drops the header line.

-o json and -o yaml print the API's JSON: the record itself for one game, {"runtimes": […]}
for a list; -o jsonpath=TEMPLATE runs a kubectl-style template over it; -o name prints
runtime/<game_id> per game.

-w (--watch) prints the table (or the records) once, then polls every --interval and prints
the row of every game whose row changed, until Ctrl-C (exit 0). With -o json a changed record
is one line of JSON.`,
		Example: `  # Every runtime, and only the failed ones with their errors
  rtmctl get runtimes
  rtmctl get runtimes --status failed -o wide

  # The first 20, as JSON; every game id, one per line
  rtmctl get runtimes --limit 20 -o json
  rtmctl get runtimes -o name
  rtmctl get runtimes -o jsonpath='{range .runtimes[*]}{.game_id}{"\t"}{.status}{"\n"}{end}'

  # One game; its current image, for a script
  rtmctl get runtime game-42
  rtmctl get runtime game-42 -o jsonpath='{.current_image_ref}'
  rtmctl get runtime game-42 --no-headers

  # Follow changes as they happen
  rtmctl get runtimes -w
  rtmctl get runtime game-42 -w --interval 1s`,
		Annotations: outputs(recordOutputs),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("%s takes at most one GAME_ID, got %d arguments", cmd.CommandPath(), len(args))
			}
			if len(args) == 1 {
				if cmd.Flags().Changed("status") || cmd.Flags().Changed("limit") {
					return usagef("--status and --limit filter a list; they do not apply to one GAME_ID")
				}
				return checkGameID(args[0])
			}
			return nil
		},
		ValidArgsFunction: a.completeGameIDs,
		RunE: act(func(cmd *cobra.Command, args []string) error {
			if interval <= 0 {
				return usagef("--interval must be positive, got %s", interval)
			}
			gameID := ""
			if len(args) == 1 {
				gameID = args[0]
			} else {
				if status != "" && !rtm.Status(status).Known() {
					return usagef("--status must be one of %s, got %q", rtm.StatusNames(), status)
				}
				if cmd.Flags().Changed("limit") && limit < 1 {
					return usagef("--limit must be at least 1, got %d", limit)
				}
			}
			if watch {
				return a.watchRuntimes(cmd.Context(), gameID, status, limit, interval)
			}
			if gameID != "" {
				return a.getRuntime(cmd.Context(), gameID)
			}
			return a.listRuntimesCmd(cmd.Context(), status, limit)
		}),
	}
	rt.Flags().StringVar(&status, "status", "", "only runtimes with this status ("+rtm.StatusNames()+")")
	rt.Flags().IntVar(&limit, "limit", 0, "at most this many runtimes (default: all, page by page)")
	rt.Flags().BoolVarP(&watch, "watch", "w", false, "after printing, poll every --interval and print what changed, until Ctrl-C")
	rt.Flags().DurationVar(&interval, "interval", 2*time.Second, "how often -w polls the API")
	_ = rt.RegisterFlagCompletionFunc("status", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, s := range rtm.Statuses {
			out = append(out, string(s))
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	})
	get.AddCommand(rt)
	return get
}

func (a *app) newOpsCmd() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:     "ops GAME_ID",
		Aliases: []string{"operations"},
		Short:   "Show a game's operation log, newest first",
		Long: `Show a game's operation log (operation_log), newest first: every start, stop, restart,
patch and cleanup, who asked for it (SOURCE), how it ended and the request id that links it
to a job result or a REST call. -o wide adds the images, the container, the duration and the
error message.`,
		Example: `  rtmctl ops game-42
  rtmctl ops game-42 --limit 200 -o wide
  rtmctl ops game-42 -o json | jq '.operations[] | select(.outcome == "failed")'
  rtmctl ops game-42 -o jsonpath='{.operations[0].outcome}'`,
		Annotations:       outputs(jsonOutputs),
		Args:              gameIDArg,
		ValidArgsFunction: a.completeGameIDs,
		RunE: act(func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("limit") && (limit < 1 || limit > maxPage) {
				return usagef("--limit must be from 1 to %d, got %d", maxPage, limit)
			}
			return a.opsCmd(cmd.Context(), args[0], limit)
		}),
	}
	cmd.Flags().IntVar(&limit, "limit", 0, fmt.Sprintf("at most this many operations, 1 to %d (default: the server's, 50)", maxPage))
	return cmd
}

func (a *app) newHealthCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "health GAME_ID",
		Short: "Show a game's health snapshot",
		Long: `Show a game's latest health summary (health_snapshots): healthy, unhealthy or unknown,
the last health event, consecutive probe failures, exit code and OOM kill, and Docker's state.`,
		Example: `  rtmctl health game-42
  rtmctl health game-42 -o jsonpath='{.consecutive_probe_failures}'`,
		Annotations:       outputs(jsonOutputs),
		Args:              gameIDArg,
		ValidArgsFunction: a.completeGameIDs,
		RunE: act(func(cmd *cobra.Command, args []string) error {
			return a.healthCmd(cmd.Context(), args[0])
		}),
	}
}

// mutationLong is the common part of the mutations' help.
const mutationLong = `

The command returns when the game has converged and prints its record (-o name prints
runtime/<game_id>). When RTM's own wait for convergence (RTMANAGER_REST_WAIT_TIMEOUT, 30s by
default) runs out first, RTM answers 202 and rtmctl keeps waiting, reading the operation log for
the request's outcome, until --timeout (counted from the start of the command) runs out too:
then it prints the record as it stands, says "not converged" on stderr and exits 3; RTM keeps
working on the request. A refusal, or an outcome that is a failure, prints
"error: <code>: <message>" on stderr and exits 1.`

func (a *app) newStartCmd() *cobra.Command {
	var image string
	cmd := a.mutation(&cobra.Command{
		Use:   "start GAME_ID --image REF",
		Short: "Run a game's engine with an image",
		Long: `Ask RTM to run the game with the image (desired state running). A game already running
that image is left as it is; another image for a running game is refused with conflict (use
patch).`,
		Example: `  rtmctl start game-42 --image galaxy/game:1.4.2
  rtmctl start game-42 --image galaxy/game:1.4.2 --timeout 5m -o name`,
	}, http.MethodPost, "start", func() any { return map[string]string{"image_ref": image} })
	cmd.Flags().StringVar(&image, "image", "", "engine image reference, e.g. galaxy/game:1.4.2 (required)")
	_ = cmd.MarkFlagRequired("image")
	return cmd
}

func (a *app) newStopCmd() *cobra.Command {
	var reason string
	cmd := a.mutation(&cobra.Command{
		Use:   "stop GAME_ID [--reason R]",
		Short: "Stop a game's engine",
		Long: `Ask RTM to stop the game (desired state stopped). The container stays until cleanup;
the state directory is never touched.`,
		Example: `  rtmctl stop game-42
  rtmctl stop game-42 --reason engine_wedged`,
	}, http.MethodPost, "stop", func() any { return map[string]string{"reason": reason} })
	cmd.Flags().StringVar(&reason, "reason", "admin_request", "why the game is stopped, kept with the request")
	return cmd
}

func (a *app) newRestartCmd() *cobra.Command {
	return a.mutation(&cobra.Command{
		Use:   "restart GAME_ID",
		Short: "Replace a game's container with a fresh one, same image",
		Long: `Ask RTM for a fresh container with the game's image, also after the container was
disposed of. The state directory carries over.`,
		Example: `  rtmctl restart game-42
  rtmctl restart game-42 --timeout 3m || echo "exit $? (3: not converged yet)"`,
	}, http.MethodPost, "restart", func() any { return struct{}{} })
}

func (a *app) newPatchCmd() *cobra.Command {
	var image string
	cmd := a.mutation(&cobra.Command{
		Use:   "patch GAME_ID --image REF",
		Short: "Upgrade a running game to another patch release",
		Long: `Replace a running game's container with one of a new patch release of its image; the
state directory carries over. The tags must be semver (else image_ref_not_semver) with the
same major and minor (else semver_patch_only). If the new engine fails to start or to pass its
probe, RTM runs the previous image again and the command fails with patch_rolled_back.`,
		Example: `  rtmctl patch game-42 --image galaxy/game:1.4.3
  rtmctl patch game-42 --image galaxy/game:1.4.3 --timeout 5m -o jsonpath='{.current_image_ref}'`,
	}, http.MethodPost, "patch", func() any { return map[string]string{"image_ref": image} })
	cmd.Flags().StringVar(&image, "image", "", "new engine image reference, e.g. galaxy/game:1.4.3 (required)")
	_ = cmd.MarkFlagRequired("image")
	return cmd
}

func (a *app) newCleanupCmd() *cobra.Command {
	return a.mutation(&cobra.Command{
		Use:   "cleanup GAME_ID",
		Short: "Remove a stopped game's container",
		Long: `Remove the game's container; its record becomes removed. A running game is refused with
runtime_running: stop it first. The state directory on the host is never deleted.`,
		Example: `  rtmctl stop game-42 && rtmctl cleanup game-42`,
	}, http.MethodDelete, "container", func() any { return nil })
}

// call sends one request and adds the hints an API error deserves.
func (a *app) call(ctx context.Context, c *client, method, path string, q url.Values, body any, gameID string) (*response, error) {
	resp, err := c.do(ctx, method, path, q, body)
	if err != nil {
		var f *failure
		var ae *apiError
		if errors.As(err, &f) && errors.As(err, &ae) {
			f.hints = append(f.hints, c.hintsFor(ae, gameID)...)
			if method != http.MethodGet && ae.RequestID != "" {
				f.hints = append(f.hints, "request id: "+ae.RequestID)
			}
		}
		return nil, err
	}
	return resp, nil
}

// callGame opens a client and sends one request about gameID to its path below /runtimes/{id}
// (sub "" for the record itself), as call does; it returns the client for the calls that follow.
func (a *app) callGame(ctx context.Context, method, gameID, sub string, body any) (*client, *response, error) {
	c, err := a.client()
	if err != nil {
		return nil, nil, err
	}
	resp, err := a.call(ctx, c, method, gamePath(gameID)+sub, nil, body, gameID)
	if err != nil {
		return nil, nil, err
	}
	return c, resp, nil
}

func gamePath(gameID string) string { return "/runtimes/" + url.PathEscape(gameID) }

// listRuntimes fetches runtimes page by page until limit (0: all) are in or the last page is.
// next is the cursor of what was left, when limit stopped it.
func (a *app) listRuntimes(ctx context.Context, c *client, status string, limit int) (items []json.RawMessage, next string, err error) {
	q := url.Values{}
	if status != "" {
		q.Set("status", status)
	}
	seen := map[string]bool{}
	for {
		page := maxPage
		if limit > 0 {
			page = min(maxPage, limit-len(items))
		}
		q.Set("limit", strconv.Itoa(page))
		resp, err := a.call(ctx, c, http.MethodGet, "/runtimes", q, nil, "")
		if err != nil {
			return nil, "", err
		}
		var body struct {
			Runtimes   []json.RawMessage `json:"runtimes"`
			NextCursor string            `json:"next_cursor"`
		}
		if err := json.Unmarshal(resp.body, &body); err != nil {
			return nil, "", failf("unexpected answer to GET %s/runtimes: %v", apiBase, err)
		}
		items = append(items, body.Runtimes...)
		if limit > 0 && len(items) >= limit {
			if len(items) > limit {
				items = items[:limit]
			}
			return items, body.NextCursor, nil
		}
		if body.NextCursor == "" {
			return items, "", nil
		}
		if seen[body.NextCursor] {
			return nil, "", failf("the server returned next_cursor %q twice; stopping to avoid a loop", body.NextCursor)
		}
		seen[body.NextCursor] = true
		q.Set("cursor", body.NextCursor)
	}
}

func (a *app) listRuntimesCmd(ctx context.Context, status string, limit int) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	items, next, err := a.listRuntimes(ctx, c, status, limit)
	if err != nil {
		return err
	}
	if a.output.structured() {
		if items == nil {
			items = []json.RawMessage{}
		}
		return a.printValue(struct {
			Runtimes   []json.RawMessage `json:"runtimes"`
			NextCursor string            `json:"next_cursor,omitempty"`
		}{items, next})
	}
	recs, err := decodeRecords(items)
	if err != nil {
		return err
	}
	if len(recs) == 0 {
		if status != "" {
			fmt.Fprintf(a.stderr, "No runtimes with status %s.\n", status)
		} else {
			fmt.Fprintln(a.stderr, "No runtimes.")
		}
		return nil
	}
	if err := a.printRecords(ctx, c, recs); err != nil {
		return err
	}
	if next != "" {
		fmt.Fprintf(a.stderr, "More runtimes exist; raise --limit or leave it out to list them all.\n")
	}
	return nil
}

func decodeRecords(items []json.RawMessage) ([]rtm.Record, error) {
	recs := make([]rtm.Record, len(items))
	for i, raw := range items {
		if err := json.Unmarshal(raw, &recs[i]); err != nil {
			return nil, failf("unexpected runtime record from the server: %v", err)
		}
	}
	return recs, nil
}

func (a *app) getRuntime(ctx context.Context, gameID string) error {
	c, resp, err := a.callGame(ctx, http.MethodGet, gameID, "", nil)
	if err != nil {
		return err
	}
	return a.printRecordAnswer(ctx, c, resp.body)
}

// printRecordAnswer prints one record as the API sent it (json, yaml, jsonpath), as its name, or
// as a table row with its health.
func (a *app) printRecordAnswer(ctx context.Context, c *client, body []byte) error {
	if a.output.structured() {
		return a.printJSON(body)
	}
	var rec rtm.Record
	if err := json.Unmarshal(body, &rec); err != nil {
		return failf("unexpected runtime record from the server: %v", err)
	}
	return a.printRecords(ctx, c, []rtm.Record{rec})
}

// printRecords prints records as name lines or as a table with their health (fetched here).
func (a *app) printRecords(ctx context.Context, c *client, recs []rtm.Record) error {
	if a.output == outName {
		for _, r := range recs {
			if _, err := fmt.Fprintln(a.stdout, resourceName(r.GameID)); err != nil {
				return err
			}
		}
		return nil
	}
	health := a.healthOf(ctx, c, recs)
	now := a.now()
	rows := make([][]string, 0, len(recs))
	for _, r := range recs {
		rows = append(rows, a.recordRow(now, r, health))
	}
	return a.writeTable(a.recordHeader(), rows)
}

// resourceName is a game's name in -o name output, as kubectl names its objects.
func resourceName(gameID string) string { return "runtime/" + gameID }

// recordHeader is the header of the runtime table in the chosen format.
func (a *app) recordHeader() []string {
	header := []string{"GAME ID", "STATUS", "HEALTH", "DESIRED", "IMAGE", "CONTAINER", "AGE"}
	if a.output == outWide {
		header = append(header, "ENDPOINT", "UPDATED", "ERROR")
	}
	return header
}

// ageColumn is the index of AGE in recordHeader: the one cell that changes with time alone.
const ageColumn = 6

// recordRow is a record's row of the runtime table.
func (a *app) recordRow(now time.Time, r rtm.Record, health map[string]*rtm.HealthSnapshot) []string {
	h, read := health[r.GameID]
	row := []string{r.GameID, string(r.Status), healthCell(r, h, read), string(r.DesiredState), imageCell(r),
		shortID(r.CurrentContainerID), age(now, r.CreatedAt)}
	if a.output == outWide {
		row = append(row, r.EngineEndpoint, age(now, r.UpdatedAt), errorCell(string(r.LastErrorCode), r.LastErrorMessage, 80))
	}
	return row
}

// Values of the HEALTH column besides the snapshot's healthy and unhealthy.
const (
	healthProbeFailing = "probe_failing" // healthy, but the latest probes failed (below the threshold)
	healthUnread       = "?"             // the snapshot could not be read
)

// healthCell sums a game's health up for the HEALTH column: unhealthy, probe_failing, healthy;
// "" (printed "-") when the game is not meant to run or nothing was observed yet; "?" when the
// snapshot could not be read (read is false).
func healthCell(r rtm.Record, h *rtm.HealthSnapshot, read bool) string {
	switch {
	case r.DesiredState != rtm.DesiredRunning:
		return ""
	case !read:
		return healthUnread
	case h.Status == rtm.HealthUnhealthy:
		return string(rtm.HealthUnhealthy)
	case h.Status == rtm.HealthHealthy && h.ConsecutiveProbeFailures > 0:
		return healthProbeFailing
	case h.Status == rtm.HealthHealthy:
		return string(rtm.HealthHealthy)
	}
	return ""
}

// healthFetches bounds the health requests a table sends at once.
const healthFetches = 8

// healthOf reads the health snapshots of the records meant to run, healthFetches requests at a
// time. A snapshot that could not be read is missing from the map; the table shows "?" for it.
func (a *app) healthOf(ctx context.Context, c *client, recs []rtm.Record) map[string]*rtm.HealthSnapshot {
	out := make(map[string]*rtm.HealthSnapshot, len(recs))
	var mu sync.Mutex
	var wg sync.WaitGroup
	slots := make(chan struct{}, healthFetches)
	for _, r := range recs {
		if r.DesiredState != rtm.DesiredRunning {
			continue
		}
		wg.Add(1)
		slots <- struct{}{}
		go func(gameID string) {
			defer wg.Done()
			defer func() { <-slots }()
			resp, err := c.do(ctx, http.MethodGet, gamePath(gameID)+"/health", nil, nil)
			if err != nil {
				return
			}
			var h rtm.HealthSnapshot
			if json.Unmarshal(resp.body, &h) != nil {
				return
			}
			mu.Lock()
			out[gameID] = &h
			mu.Unlock()
		}(r.GameID)
	}
	wg.Wait()
	return out
}

// imageCell shows the image running, and the one asked for when a change is pending.
func imageCell(r rtm.Record) string {
	cur, want := r.CurrentImageRef, r.DesiredImageRef
	switch {
	case cur == "":
		return want
	case want == "" || want == cur || r.DesiredState != rtm.DesiredRunning:
		return cur
	}
	// Same repository: the tag alone says what changes.
	if i := strings.LastIndex(want, ":"); i > 0 && strings.HasPrefix(cur, want[:i+1]) {
		return cur + " → " + want[i+1:]
	}
	return cur + " → " + want
}

func errorCell(code, msg string, n int) string {
	switch {
	case code == "":
		return trunc(msg, n)
	case msg == "":
		return code
	}
	return trunc(code+": "+msg, n)
}

func (a *app) opsCmd(ctx context.Context, gameID string, limit int) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	var q url.Values
	if limit > 0 {
		q = url.Values{"limit": {strconv.Itoa(limit)}}
	}
	resp, err := a.call(ctx, c, http.MethodGet, gamePath(gameID)+"/operations", q, nil, gameID)
	if err != nil {
		return err
	}
	if a.output.structured() {
		return a.printJSON(resp.body)
	}
	var body struct {
		Operations []rtm.Operation `json:"operations"`
	}
	if err := json.Unmarshal(resp.body, &body); err != nil {
		return failf("unexpected operation log from the server: %v", err)
	}
	if len(body.Operations) == 0 {
		fmt.Fprintf(a.stderr, "No operations recorded for game %s.\n", gameID)
		return nil
	}
	now := a.now()
	wide := a.output == outWide
	header := []string{"ID", "KIND", "SOURCE", "OUTCOME", "ERROR", "REQUEST", "STARTED"}
	if wide {
		header = append(header, "IMAGE", "CONTAINER", "TOOK", "MESSAGE")
	}
	rows := make([][]string, 0, len(body.Operations))
	for _, o := range body.Operations {
		row := []string{strconv.FormatInt(o.ID, 10), string(o.Kind), string(o.Source), string(o.Outcome),
			string(o.ErrorCode), o.RequestID, age(now, o.StartedAt)}
		if wide {
			took := ""
			if !o.StartedAt.IsZero() && !o.FinishedAt.IsZero() {
				took = roundDuration(o.FinishedAt.Sub(o.StartedAt))
			}
			row = append(row, opImage(o), shortID(o.ContainerID), took, trunc(o.ErrorMessage, 80))
		}
		rows = append(rows, row)
	}
	return a.writeTable(header, rows)
}

func opImage(o rtm.Operation) string {
	switch {
	case o.OldImageRef == "" || o.OldImageRef == o.NewImageRef:
		return o.NewImageRef
	case o.NewImageRef == "":
		return o.OldImageRef
	}
	return o.OldImageRef + " → " + o.NewImageRef
}

// roundDuration shows an operation's duration to a useful precision: 85ms, 1.2s, 45s, 3m20s.
func roundDuration(d time.Duration) string {
	switch {
	case d < 0:
		return ""
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func (a *app) healthCmd(ctx context.Context, gameID string) error {
	_, resp, err := a.callGame(ctx, http.MethodGet, gameID, "/health", nil)
	if err != nil {
		return err
	}
	if a.output.structured() {
		return a.printJSON(resp.body)
	}
	var h rtm.HealthSnapshot
	if err := json.Unmarshal(resp.body, &h); err != nil {
		return failf("unexpected health snapshot from the server: %v", err)
	}
	now := a.now()
	exit, lastProbe, oom := snapshotCells(now, &h)
	failures := strconv.Itoa(h.ConsecutiveProbeFailures)
	if h.ConsecutiveProbeFailures > 0 {
		failures += " in a row"
	}
	return writeKV(a.stdout, [][2]string{
		{"Game ID", h.GameID},
		{"Status", string(h.Status)},
		{"Last event", string(h.LastEventType)},
		{"Probe failures", failures},
		{"Last probe", lastProbe},
		{"Exit code", exit},
		{"OOM killed", oom},
		{"Docker state", h.DockerState},
		{"Updated", ago(now, h.UpdatedAt)},
	})
}

// snapshotCells formats the health snapshot's values that take more than a conversion, for health
// and describe: the exit code ("" when there is none), when it was last probed and whether it was
// OOM killed.
func snapshotCells(now time.Time, h *rtm.HealthSnapshot) (exit, lastProbe, oom string) {
	if h.ExitCode != nil {
		exit = strconv.Itoa(*h.ExitCode)
	}
	var probe time.Time
	if h.LastProbeAt != nil {
		probe = *h.LastProbeAt
	}
	oom = "no"
	if h.OOMKilled {
		oom = "yes"
	}
	return exit, ago(now, probe), oom
}

// mutate sends a mutation and prints the record it answers with once the game has converged. A
// 202 means RTM's own wait ran out first: rtmctl then reads the operation log for the request's
// outcome until its --timeout (counted from now) runs out too (converge). A success prints the
// record, a failed outcome is a failure with its code (exit 1), and no outcome in time prints
// the record as it stands and exits 3 (notConverged).
func (a *app) mutate(ctx context.Context, method, gameID, action string, body any) error {
	deadline := time.Now().Add(a.timeout)
	c, resp, err := a.callGame(ctx, method, gameID, "/"+action, body)
	if err != nil {
		return err
	}
	if resp.status != http.StatusAccepted {
		return a.printRecordAnswer(ctx, c, resp.body)
	}
	return a.converge(ctx, c, gameID, resp, deadline)
}

// completeGameIDs offers the game ids of the first page of runtimes, with their status.
func (a *app) completeGameIDs(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	c, err := a.client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
	defer cancel()
	items, _, err := a.listRuntimes(ctx, c, "", maxPage)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, raw := range items {
		var r rtm.Record
		if json.Unmarshal(raw, &r) == nil && strings.HasPrefix(r.GameID, toComplete) {
			out = append(out, cobra.CompletionWithDesc(r.GameID, string(r.Status)))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// mutation completes the command of one mutation route (start, stop, restart, patch, cleanup):
// a GAME_ID argument with completion, the record outputs, the mutations' help on waiting and exit
// codes, and a run that sends method to the game's action with the body that body returns then.
func (a *app) mutation(cmd *cobra.Command, method, action string, body func() any) *cobra.Command {
	cmd.Long += mutationLong
	cmd.Annotations = outputs(recordOutputs)
	cmd.Args = gameIDArg
	cmd.ValidArgsFunction = a.completeGameIDs
	cmd.RunE = act(func(cmd *cobra.Command, args []string) error {
		return a.mutate(cmd.Context(), method, args[0], action, body())
	})
	return cmd
}
