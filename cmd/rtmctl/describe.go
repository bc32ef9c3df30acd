package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Defaults of describe's sections.
const (
	describeOps    = 10
	describeEvents = 10
)

func (a *app) newDescribeCmd() *cobra.Command {
	var opsN, eventsN int
	cmd := &cobra.Command{
		Use:   "describe GAME_ID",
		Short: "Show a game's record, health, last operations and recent health events",
		Long: `Show one game in one view, as kubectl describe does: its runtime record, its health (the
summary of the HEALTH column and the whole snapshot), its last operations (--ops, newest
first) and its recent health events (--events, oldest first).

The record, the health snapshot and the operations come from the REST API; the health events
from the health events stream in Redis (the --redis flags, defaulting to RTM's own
environment variables). A part that cannot be read is shown as unavailable, with why; only a
record that cannot be read fails the command (exit 1). --events 0 does not ask Redis.

-o json, yaml or jsonpath print {"runtime", "health", "operations", "events"} with the API's
fields (the events as their stream fields), and "errors" naming the parts that could not be
read.`,
		Example: `  rtmctl describe game-42
  rtmctl describe game-42 --ops 50 --events 0
  rtmctl describe game-42 --redis 127.0.0.1:6379 --redis-password local
  rtmctl describe game-42 -o json | jq '.events[] | select(.event_type == "probe_failed")'`,
		Annotations:       outputs(jsonOutputs),
		Args:              gameIDArg,
		ValidArgsFunction: a.completeGameIDs,
		RunE: act(func(cmd *cobra.Command, args []string) error {
			if opsN < 0 || opsN > maxPage {
				return usagef("--ops must be from 0 to %d, got %d", maxPage, opsN)
			}
			if eventsN < 0 || eventsN > 1000 {
				return usagef("--events must be from 0 to 1000, got %d", eventsN)
			}
			if eventsN > 0 {
				if _, err := a.redisOptions(cmd); err != nil {
					return err
				}
			}
			return a.describe(cmd.Context(), cmd, args[0], opsN, eventsN)
		}),
	}
	cmd.Flags().IntVar(&opsN, "ops", describeOps, "how many of the last operations to show (0 for none)")
	cmd.Flags().IntVar(&eventsN, "events", describeEvents, "how many recent health events to show (0: do not ask Redis)")
	a.addRedisFlags(cmd.Flags(), "health")
	return cmd
}

// description is describe's view as -o json prints it.
type description struct {
	Runtime    json.RawMessage     `json:"runtime"`
	Health     json.RawMessage     `json:"health,omitempty"`
	Operations []json.RawMessage   `json:"operations,omitempty"`
	Events     []map[string]string `json:"events,omitempty"`
	// Errors says, by part (health, operations, events), why it is missing.
	Errors map[string]string `json:"errors,omitempty"`
}

func (a *app) describe(ctx context.Context, cmd *cobra.Command, gameID string, opsN, eventsN int) error {
	c, resp, err := a.callGame(ctx, http.MethodGet, gameID, "", nil)
	if err != nil {
		return err
	}
	d := description{Runtime: resp.body, Errors: map[string]string{}}
	var rec rtm.Record
	if err := json.Unmarshal(resp.body, &rec); err != nil {
		return failf("unexpected runtime record from the server: %v", err)
	}

	var health *rtm.HealthSnapshot
	if resp, err := c.do(ctx, http.MethodGet, gamePath(gameID)+"/health", nil, nil); err != nil {
		d.Errors["health"] = err.Error()
	} else {
		d.Health = resp.body
		health = &rtm.HealthSnapshot{}
		if err := json.Unmarshal(resp.body, health); err != nil {
			health, d.Errors["health"] = nil, "unexpected health snapshot: "+err.Error()
		}
	}

	var ops []rtm.Operation
	if opsN > 0 {
		q := url.Values{"limit": {strconv.Itoa(opsN)}}
		if resp, err := c.do(ctx, http.MethodGet, gamePath(gameID)+"/operations", q, nil); err != nil {
			d.Errors["operations"] = err.Error()
		} else {
			var body struct {
				Operations []json.RawMessage `json:"operations"`
			}
			if err := json.Unmarshal(resp.body, &body); err != nil {
				d.Errors["operations"] = "unexpected operation log: " + err.Error()
			}
			d.Operations = body.Operations
			for _, raw := range body.Operations {
				var op rtm.Operation
				if json.Unmarshal(raw, &op) == nil {
					ops = append(ops, op)
				}
			}
		}
	}

	var events []redis.XMessage
	if eventsN > 0 {
		events, err = a.recentHealthEvents(ctx, cmd, gameID, eventsN)
		var u *usageError
		switch {
		case errors.As(err, &u):
			return err
		case err != nil:
			d.Errors["events"] = err.Error()
		}
		for _, m := range events {
			d.Events = append(d.Events, entryObject(m))
		}
	}

	if a.output.structured() {
		if len(d.Errors) == 0 {
			d.Errors = nil
		}
		return a.printValue(d)
	}
	return a.printDescription(rec, health, ops, events, d.Errors, opsN, eventsN)
}

// recentHealthEvents returns the game's latest n health events, oldest first, searching the
// newest lookBack entries of the stream.
func (a *app) recentHealthEvents(ctx context.Context, cmd *cobra.Command, gameID string, n int) ([]redis.XMessage, error) {
	rc, err := a.redisClient(ctx, cmd)
	if err != nil {
		var f *failure
		if errors.As(err, &f) {
			return nil, f.err
		}
		return nil, err
	}
	defer rc.Close()
	var out []redis.XMessage
	end := "+"
	for seen := 0; seen < lookBack && len(out) < n; {
		msgs, err := rc.XRevRangeN(ctx, a.redis.healthStream, end, "-", 500).Result()
		if err != nil {
			return nil, fmt.Errorf("redis: reading %s: %v", a.redis.healthStream, err)
		}
		for _, m := range msgs {
			if str(m.Values, "game_id") == gameID {
				out = append(out, m)
				if len(out) == n {
					break
				}
			}
		}
		if len(msgs) < 500 {
			break
		}
		seen += len(msgs)
		end = "(" + msgs[len(msgs)-1].ID
	}
	slices.Reverse(out)
	return out, nil
}

// printDescription prints describe's text view.
func (a *app) printDescription(rec rtm.Record, h *rtm.HealthSnapshot, ops []rtm.Operation, events []redis.XMessage,
	errs map[string]string, opsN, eventsN int) error {
	now := a.now()
	var b bytes.Buffer
	exit := ""
	if rec.ExitCode != nil {
		exit = strconv.Itoa(*rec.ExitCode)
	}
	desiredImage := rec.DesiredImageRef
	if desiredImage == rec.CurrentImageRef {
		desiredImage += " (running)"
	}
	gen := fmt.Sprintf("%d (observed %d)", rec.Generation, rec.ObservedGeneration)
	if !rec.Settled() {
		gen += ", work pending"
	}
	_ = writeKV(&b, [][2]string{
		{"Name", rec.GameID},
		{"Status", string(rec.Status)},
		{"Desired State", string(rec.DesiredState)},
		{"Health", healthSummary(rec, h, errs["health"] == "")},
		{"Image", rec.CurrentImageRef},
		{"Desired Image", desiredImage},
		{"Container", rec.CurrentContainerID},
		{"Endpoint", rec.EngineEndpoint},
		{"State Dir", rec.StateDir},
		{"Generation", gen},
		{"Last Error", errorCell(string(rec.LastErrorCode), rec.LastErrorMessage, 200)},
		{"Exit Code", exit},
		{"Created", ago(now, rec.CreatedAt)},
		{"Updated", ago(now, rec.UpdatedAt)},
	})

	switch {
	case h != nil:
		b.WriteString("Health Snapshot:\n")
		var kv bytes.Buffer
		exit, lastProbe, oom := snapshotCells(now, h)
		_ = writeKV(&kv, [][2]string{
			{"Status", string(h.Status)},
			{"Last Event", string(h.LastEventType)},
			{"Probe Failures", strconv.Itoa(h.ConsecutiveProbeFailures) + " in a row"},
			{"Last Probe", lastProbe},
			{"Exit Code", exit},
			{"OOM Killed", oom},
			{"Docker State", h.DockerState},
			{"Updated", ago(now, h.UpdatedAt)},
		})
		indent(&b, kv.Bytes())
	default:
		fmt.Fprintf(&b, "Health Snapshot:  <unavailable: %s>\n", errs["health"])
	}

	switch {
	case opsN == 0:
	case errs["operations"] != "":
		fmt.Fprintf(&b, "Operations:  <unavailable: %s>\n", errs["operations"])
	case len(ops) == 0:
		b.WriteString("Operations:  <none>\n")
	default:
		fmt.Fprintf(&b, "Operations (newest first, up to %d):\n", opsN)
		rows := make([][]string, 0, len(ops))
		for _, o := range ops {
			rows = append(rows, []string{strconv.FormatInt(o.ID, 10), string(o.Kind), string(o.Source), string(o.Outcome),
				errorCell(string(o.ErrorCode), o.ErrorMessage, 60), o.RequestID, age(now, o.StartedAt)})
		}
		var t bytes.Buffer
		_ = writeTable(&t, []string{"ID", "KIND", "SOURCE", "OUTCOME", "ERROR", "REQUEST", "AGE"}, rows)
		indent(&b, t.Bytes())
	}

	switch {
	case eventsN == 0:
	case errs["events"] != "":
		fmt.Fprintf(&b, "Events:  <unavailable: %s>\n", errs["events"])
	case len(events) == 0:
		fmt.Fprintf(&b, "Events:  <none in the last %d entries of %s>\n", lookBack, a.redis.healthStream)
	default:
		fmt.Fprintf(&b, "Events (%s, oldest first):\n", a.redis.healthStream)
		rows := make([][]string, 0, len(events))
		for _, m := range events {
			when := entryTime(m, "observed_at")
			if t, err := time.Parse(time.RFC3339, when); err == nil {
				when = age(now, t)
			}
			rows = append(rows, []string{when, str(m.Values, "event_type"), shortID(str(m.Values, "container_id")),
				str(m.Values, "exit_code"), trunc(str(m.Values, "message"), 100)})
		}
		var t bytes.Buffer
		_ = writeTable(&t, []string{"AGE", "EVENT", "CONTAINER", "EXIT", "MESSAGE"}, rows)
		indent(&b, t.Bytes())
	}
	_, err := b.WriteTo(a.stdout)
	return err
}

// healthSummary is describe's Health line: the HEALTH column's value and why.
func healthSummary(rec rtm.Record, h *rtm.HealthSnapshot, read bool) string {
	s := healthCell(rec, h, read && h != nil)
	switch {
	case s == healthUnread:
		return "? (the health snapshot could not be read)"
	case s == "" && rec.DesiredState != rtm.DesiredRunning:
		return "- (the game is not meant to run)"
	case s == "":
		return "- (nothing observed yet)"
	case s == healthProbeFailing:
		return fmt.Sprintf("%s (%d probes failed in a row, below the threshold)", s, h.ConsecutiveProbeFailures)
	case s == string(rtm.HealthUnhealthy) && h.LastEventType != "":
		return fmt.Sprintf("%s (%s)", s, h.LastEventType)
	}
	return s
}

// indent writes text with every line indented by two spaces.
func indent(w io.Writer, text []byte) {
	for _, l := range strings.SplitAfter(string(text), "\n") {
		if l != "" {
			_, _ = io.WriteString(w, "  "+l)
		}
	}
}
