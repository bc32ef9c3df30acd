package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// Stream names (CONTRACT §1, §5) and the environment variables RTM reads them from; rtmctl takes
// its defaults from the same variables, so on RTM's host it needs no flags.
const (
	defaultRedisAddr     = "127.0.0.1:6379"
	defaultStartStream   = "runtime:start_jobs"
	defaultStopStream    = "runtime:stop_jobs"
	defaultResultsStream = "runtime:job_results"
	defaultHealthStream  = "runtime:health_events"

	envRedisAddr     = "RTMANAGER_REDIS_MASTER_ADDR"
	envRedisPassword = "RTMANAGER_REDIS_PASSWORD"
	envStartStream   = "RTMANAGER_REDIS_START_JOBS_STREAM"
	envStopStream    = "RTMANAGER_REDIS_STOP_JOBS_STREAM"
	envResultsStream = "RTMANAGER_REDIS_JOB_RESULTS_STREAM"
	envHealthStream  = "RTMANAGER_REDIS_HEALTH_EVENTS_STREAM"

	// pollBlock bounds one XREAD BLOCK, so that Ctrl-C and --timeout are noticed promptly.
	pollBlock = time.Second
	// lookBack is how many recent job results are searched for an answer to a request id given
	// with --request-id, since RTM answers each request id once only.
	lookBack = 10000
)

// redisFlags are the Redis flags of jobs and watch.
type redisFlags struct {
	addr, password string
	startStream    string
	stopStream     string
	resultsStream  string
	healthStream   string
}

func (a *app) envOr(name, def string) string {
	if v := a.getenv(name); v != "" {
		return v
	}
	return def
}

// addRedisFlags declares the connection flags and the named stream flags on fs.
func (a *app) addRedisFlags(fs *pflag.FlagSet, streams ...string) {
	fs.StringVar(&a.redis.addr, "redis", a.envOr(envRedisAddr, defaultRedisAddr),
		"Redis address host:port, or a redis:// (rediss://) URL: redis://:PASSWORD@HOST:PORT/DB (env "+envRedisAddr+")")
	fs.StringVar(&a.redis.password, "redis-password", "", "Redis password (env "+envRedisPassword+"; overrides one in a URL)")
	for _, s := range streams {
		switch s {
		case "start":
			fs.StringVar(&a.redis.startStream, "start-stream", a.envOr(envStartStream, defaultStartStream), "start jobs stream (env "+envStartStream+")")
		case "stop":
			fs.StringVar(&a.redis.stopStream, "stop-stream", a.envOr(envStopStream, defaultStopStream), "stop jobs stream (env "+envStopStream+")")
		case "results":
			fs.StringVar(&a.redis.resultsStream, "results-stream", a.envOr(envResultsStream, defaultResultsStream), "job results stream (env "+envResultsStream+")")
		case "health":
			fs.StringVar(&a.redis.healthStream, "health-stream", a.envOr(envHealthStream, defaultHealthStream), "health events stream (env "+envHealthStream+")")
		}
	}
}

// redisClient connects as the flags say and checks the connection with PING. A malformed
// --redis is a usage error; an unreachable or refusing server a failure.
func (a *app) redisClient(ctx context.Context, cmd *cobra.Command) (*redis.Client, error) {
	opts, err := a.redisOptions(cmd)
	if err != nil {
		return nil, err
	}
	rc := redis.NewClient(opts)
	pctx, cancel := context.WithTimeout(ctx, min(a.timeout, 10*time.Second))
	defer cancel()
	if err := rc.Ping(pctx).Err(); err != nil {
		rc.Close()
		if ctx.Err() != nil {
			return nil, failf("interrupted")
		}
		return nil, &failure{err: fmt.Errorf("redis at %s: %v", opts.Addr, err),
			hints: []string{"set the address with --redis (or " + envRedisAddr + ") and the password with --redis-password (or " + envRedisPassword + ")"}}
	}
	return rc, nil
}

// redisOptions reads the connection flags; a malformed --redis is a usage error.
func (a *app) redisOptions(cmd *cobra.Command) (*redis.Options, error) {
	addr := strings.TrimSpace(a.redis.addr)
	var opts *redis.Options
	if strings.Contains(addr, "://") {
		o, err := redis.ParseURL(addr)
		if err != nil {
			return nil, usagef("--redis %q is not a valid redis:// URL: %v", redactURL(addr), err)
		}
		opts = o
	} else {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, usagef("--redis must be host:port or a redis:// URL, got %q", addr)
		}
		opts = &redis.Options{Addr: addr}
	}
	switch {
	case cmd.Flags().Changed("redis-password"):
		opts.Password = a.redis.password
	case opts.Password == "":
		opts.Password = a.getenv(envRedisPassword)
	}
	opts.DialTimeout = 5 * time.Second
	opts.MaxRetries = 1
	return opts, nil
}

// redactURL hides the password of a redis URL in messages.
func redactURL(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		if j := strings.LastIndex(s, "@"); j > i {
			return s[:i+3] + "***" + s[j:]
		}
	}
	return s
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "rtmctl-" + hex.EncodeToString(b[:])
}

func (a *app) newJobsCmd() *cobra.Command {
	var wait bool
	jobs := asGroup(&cobra.Command{
		Use:   "jobs",
		Short: "Queue start and stop jobs on RTM's Redis streams, as Lobby does",
		Long: `Queue start and stop jobs on the Redis streams RTM consumes, with the fields Lobby sends
(game_id, image_ref or reason, request_id), and wait for the job result RTM publishes for the
request id. Exit code 1 when the result's outcome is failed, or none comes within --timeout.

The connection and stream names default to RTM's own environment variables
(RTMANAGER_REDIS_MASTER_ADDR, RTMANAGER_REDIS_PASSWORD, RTMANAGER_REDIS_*_STREAM).`,
		Example: `  rtmctl jobs start game-42 --image galaxy/game:1.4.2 --redis 127.0.0.1:6379 --redis-password local
  rtmctl jobs stop game-42 --redis redis://:local@127.0.0.1:6379/0`,
	})
	pf := jobs.PersistentFlags()
	a.addRedisFlags(pf, "start", "stop", "results")
	pf.BoolVar(&wait, "wait", true, "wait up to --timeout for the job's result on the results stream (--wait=false: only queue it)")

	var image string
	start := a.jobCmd(&cobra.Command{
		Use:   "start GAME_ID --image REF [--request-id ID]",
		Short: "Queue a start job and wait for its result",
		Long: `XADD a start job (game_id, image_ref, request_id) to the start jobs stream and wait for its
result. The request id defaults to a fresh rtmctl-<random>; RTM answers each request id once,
so a job repeated with the same --request-id gets the earlier result, which is looked up.`,
		Example: `  rtmctl jobs start game-42 --image galaxy/game:1.4.2
  rtmctl jobs start game-42 --image galaxy/game:1.4.2 --request-id lobby-retry-7 -o json
  rtmctl jobs start game-42 --image galaxy/game:1.4.2 --wait=false`,
	}, "start", &a.redis.startStream, &wait, func() []any { return []any{"image_ref", image} })
	start.Flags().StringVar(&image, "image", "", "engine image reference, e.g. galaxy/game:1.4.2 (required)")
	_ = start.MarkFlagRequired("image")

	var reason string
	stop := a.jobCmd(&cobra.Command{
		Use:   "stop GAME_ID [--reason R] [--request-id ID]",
		Short: "Queue a stop job and wait for its result",
		Long: `XADD a stop job (game_id, reason, request_id) to the stop jobs stream and wait for its
result. The request id defaults to a fresh rtmctl-<random>.`,
		Example: `  rtmctl jobs stop game-42
  rtmctl jobs stop game-42 --reason game_finished --request-id lobby-7`,
	}, "stop", &a.redis.stopStream, &wait, func() []any { return []any{"reason", reason} })
	stop.Flags().StringVar(&reason, "reason", "admin_request", "why the game is stopped")

	jobs.AddCommand(start, stop)
	return jobs
}

// jobCmd completes c into a jobs subcommand taking a game id: it queues a job of kind job on
// *stream, with game_id and the fields more returns (read when it runs), and waits for its
// result when *wait is set. It owns the --request-id flag.
func (a *app) jobCmd(c *cobra.Command, job string, stream *string, wait *bool, more func() []any) *cobra.Command {
	var requestID string
	c.Args = gameIDArg
	c.ValidArgsFunction = a.completeGameIDs
	c.RunE = act(func(cmd *cobra.Command, args []string) error {
		return a.sendJob(cmd.Context(), cmd, job, *stream, args[0], append([]any{"game_id", args[0]}, more()...), requestID, *wait)
	})
	c.Flags().StringVar(&requestID, "request-id", "", "request id of the job (default: rtmctl-<random>)")
	return c
}

// sendJob queues one job and, when wait is set, waits for its result and prints it.
//
// The results stream's last entry id is read before the job is added, so a result published
// however fast is not missed; a --request-id given by the operator may already have its answer
// (RTM answers a request id once), so recent results are searched for it first.
func (a *app) sendJob(ctx context.Context, cmd *cobra.Command, job, stream, gameID string, fields []any, requestID string, wait bool) error {
	explicit := requestID != ""
	if !explicit {
		requestID = newRequestID()
	}
	if len(requestID) > 1024 {
		return usagef("--request-id is longer than 1024 bytes")
	}
	rc, err := a.redisClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer rc.Close()
	wctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()

	var after string
	var prior *redis.XMessage
	if wait {
		if after, err = lastEntryID(wctx, rc, a.redis.resultsStream); err != nil {
			return a.redisFailure(ctx, err, "reading "+a.redis.resultsStream)
		}
		if explicit {
			if prior, err = findResult(wctx, rc, a.redis.resultsStream, requestID, job); err != nil {
				return a.redisFailure(ctx, err, "searching "+a.redis.resultsStream)
			}
		}
	}
	entry, err := rc.XAdd(wctx, &redis.XAddArgs{Stream: stream, Values: append(fields, "request_id", requestID)}).Result()
	if err != nil {
		return a.redisFailure(ctx, err, "adding the job to "+stream)
	}
	queued := fmt.Sprintf("%s job for game %s queued on %s as entry %s, request_id %s", job, gameID, stream, entry, requestID)
	if !wait {
		if a.output.structured() {
			return a.printValue(map[string]string{"stream": stream, "entry_id": entry, "request_id": requestID, "job": job, "game_id": gameID})
		}
		_, err := fmt.Fprintln(a.stdout, queued)
		return err
	}

	res := prior
	if res == nil {
		res, err = awaitResult(wctx, rc, a.redis.resultsStream, after, requestID, job)
	} else {
		fmt.Fprintf(a.stderr, "note: request_id %s already had a result (RTM answers a request id once); it is shown below\n", requestID)
	}
	if err != nil {
		hints := []string{queued, "follow it with: rtmctl watch results --game " + gameID}
		switch {
		case ctx.Err() != nil:
			return &failure{err: errors.New("interrupted while waiting for the job's result"), hints: hints}
		case errors.Is(err, context.DeadlineExceeded):
			return &failure{err: fmt.Errorf("timeout: no result for request_id %s on %s within %s (--timeout); is RTM consuming %s?",
				requestID, a.redis.resultsStream, a.timeout, stream), hints: hints}
		}
		return a.redisFailure(ctx, err, "waiting on "+a.redis.resultsStream)
	}
	if err := a.printResults([]redis.XMessage{*res}); err != nil {
		return err
	}
	if str(res.Values, "outcome") != "succeeded" {
		code, msg := str(res.Values, "error_code"), str(res.Values, "error_message")
		if code == "" {
			code = "job_failed"
		}
		if msg == "" {
			msg = "outcome " + str(res.Values, "outcome")
		}
		return fmt.Errorf("%s: %s", code, msg)
	}
	return nil
}

func (a *app) redisFailure(ctx context.Context, err error, doing string) error {
	if ctx.Err() != nil {
		return failf("interrupted")
	}
	return failf("redis: %s: %v", doing, err)
}

// lastEntryID returns the id of the stream's newest entry, "0-0" when it has none: reading after
// it yields exactly what is added from now on.
func lastEntryID(ctx context.Context, rc *redis.Client, stream string) (string, error) {
	msgs, err := rc.XRevRangeN(ctx, stream, "+", "-", 1).Result()
	if err != nil {
		return "", err
	}
	if len(msgs) == 0 {
		return "0-0", nil
	}
	return msgs[0].ID, nil
}

// findResult searches the newest lookBack results for the request's result.
func findResult(ctx context.Context, rc *redis.Client, stream, requestID, job string) (*redis.XMessage, error) {
	end := "+"
	for seen := 0; seen < lookBack; {
		msgs, err := rc.XRevRangeN(ctx, stream, end, "-", 500).Result()
		if err != nil {
			return nil, err
		}
		for i := range msgs {
			if isResultOf(msgs[i], requestID, job) {
				return &msgs[i], nil
			}
		}
		if len(msgs) < 500 {
			return nil, nil
		}
		seen += len(msgs)
		end = "(" + msgs[len(msgs)-1].ID
	}
	return nil, nil
}

// isResultOf reports whether m answers the request: the same request id on the same job stream
// (a start and a stop job may share a request id and are different requests).
func isResultOf(m redis.XMessage, requestID, job string) bool {
	if str(m.Values, "request_id") != requestID {
		return false
	}
	j := str(m.Values, "job")
	return j == "" || j == job
}

// awaitResult reads the stream after the entry id after until the request's result comes or ctx
// ends.
func awaitResult(ctx context.Context, rc *redis.Client, stream, after, requestID, job string) (*redis.XMessage, error) {
	for {
		block := pollBlock
		if dl, ok := ctx.Deadline(); ok {
			block = min(block, time.Until(dl))
		}
		if block < time.Millisecond {
			return nil, context.DeadlineExceeded
		}
		res, err := rc.XRead(ctx, &redis.XReadArgs{Streams: []string{stream, after}, Count: 100, Block: block}).Result()
		switch {
		case errors.Is(err, redis.Nil):
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		for _, s := range res {
			for i := range s.Messages {
				after = s.Messages[i].ID
				if isResultOf(s.Messages[i], requestID, job) {
					return &s.Messages[i], nil
				}
			}
		}
	}
}

// str returns a stream field as a string.
func str(v map[string]any, k string) string {
	switch x := v[k].(type) {
	case string:
		return x
	case nil:
		return ""
	default:
		return fmt.Sprint(x)
	}
}

// entryObject is a stream entry as a flat JSON object: its fields and its entry_id.
func entryObject(m redis.XMessage) map[string]string {
	o := make(map[string]string, len(m.Values)+1)
	for k := range m.Values {
		o[k] = str(m.Values, k)
	}
	o["entry_id"] = m.ID
	return o
}

// printResults prints job results: a table with ages, or one JSON / YAML object per result.
func (a *app) printResults(msgs []redis.XMessage) error {
	if a.output.structured() {
		for _, m := range msgs {
			if err := a.printValue(entryObject(m)); err != nil {
				return err
			}
		}
		return nil
	}
	now := a.now()
	header := []string{"REQUEST ID", "JOB", "GAME ID", "OUTCOME", "ERROR", "CONTAINER", "IMAGE", "FINISHED"}
	wide := a.output == outWide
	if wide {
		header = append(header, "ENDPOINT", "MESSAGE")
	}
	rows := make([][]string, 0, len(msgs))
	for _, m := range msgs {
		v := m.Values
		finished := str(v, "finished_at")
		if t, err := time.Parse(time.RFC3339Nano, finished); err == nil {
			finished = age(now, t)
		}
		row := []string{str(v, "request_id"), str(v, "job"), str(v, "game_id"), str(v, "outcome"),
			str(v, "error_code"), shortID(str(v, "container_id")), str(v, "image_ref"), finished}
		if wide {
			row = append(row, str(v, "engine_endpoint"), trunc(str(v, "error_message"), 120))
		}
		rows = append(rows, row)
	}
	return a.writeTable(header, rows)
}

func (a *app) newWatchCmd() *cobra.Command {
	watch := asGroup(&cobra.Command{
		Use:   "watch",
		Short: "Tail the job results or health events RTM publishes",
		Long: `Tail one of the streams RTM publishes, one aligned line per entry, until Ctrl-C. By default
only new entries are shown (XREAD from $); --from 0 replays the stream from its start, and
--from <entry id> resumes after that entry. -o json prints one JSON object per line, with the
entry's fields and its entry_id.`,
		Example: `  rtmctl watch results
  rtmctl watch health --game game-42 --from 0`,
	})
	a.addRedisFlags(watch.PersistentFlags(), "results", "health")
	var game, from string
	watch.PersistentFlags().StringVar(&game, "game", "", "only entries of this game")
	watch.PersistentFlags().StringVar(&from, "from", "$", `where to start: "$" (new entries only), "0" (the whole stream) or an entry id to resume after`)

	results := &cobra.Command{
		Use:   "results",
		Short: "Tail runtime:job_results",
		Long: `Tail the job results stream: one line per start or stop job RTM answered, with its
request id, outcome and error code. -o wide adds the engine endpoint and the error message.`,
		Example: `  rtmctl watch results
  rtmctl watch results --game game-42 --from 0
  rtmctl watch results -o json | jq 'select(.outcome == "failed")'`,
		Args: cobra.NoArgs,
		RunE: act(func(cmd *cobra.Command, args []string) error {
			return a.watch(cmd.Context(), cmd, a.redis.resultsStream, resultLine(), game, from)
		}),
	}
	health := &cobra.Command{
		Use:   "health",
		Short: "Tail runtime:health_events",
		Long: `Tail the health events stream: container started, exited, OOM-killed or gone, probe
failures and recoveries, unhealthy inspections. -o wide shows the full container id and
message.`,
		Example: `  rtmctl watch health
  rtmctl watch health --game game-42 --from 0 -o wide`,
		Args: cobra.NoArgs,
		RunE: act(func(cmd *cobra.Command, args []string) error {
			return a.watch(cmd.Context(), cmd, a.redis.healthStream, healthLine(), game, from)
		}),
	}
	watch.AddCommand(results, health)
	return watch
}

// streamLine describes how a watched stream's entries print as lines.
type streamLine struct {
	header, wideHeader []string
	minWidths          []int
	timeField          string
	cells              func(v map[string]any, wide bool) []string
}

var entryIDPattern = regexp.MustCompile(`^[0-9]+(-[0-9]+)?$`)

func resultLine() streamLine {
	return streamLine{
		header:     []string{"TIME", "REQUEST ID", "JOB", "GAME ID", "OUTCOME", "ERROR", "CONTAINER", "IMAGE"},
		wideHeader: []string{"ENDPOINT", "MESSAGE"},
		minWidths:  []int{20, 23, 5, 16, 9, 22, 12, 20},
		timeField:  "finished_at",
		cells: func(v map[string]any, wide bool) []string {
			c := []string{str(v, "request_id"), str(v, "job"), str(v, "game_id"), str(v, "outcome"),
				str(v, "error_code"), shortID(str(v, "container_id")), str(v, "image_ref")}
			if wide {
				c = append(c, str(v, "engine_endpoint"), str(v, "error_message"))
			}
			return c
		},
	}
}

func healthLine() streamLine {
	return streamLine{
		header:    []string{"TIME", "GAME ID", "EVENT", "CONTAINER", "EXIT", "MESSAGE"},
		minWidths: []int{20, 16, 21, 12, 4},
		timeField: "observed_at",
		cells: func(v map[string]any, wide bool) []string {
			id, msg := str(v, "container_id"), str(v, "message")
			if !wide {
				id, msg = shortID(id), trunc(msg, 100)
			}
			return []string{str(v, "game_id"), str(v, "event_type"), id, str(v, "exit_code"), msg}
		},
	}
}

// watch tails stream until ctx ends (Ctrl-C: exit 0) or Redis fails (exit 1, with the entry id
// to resume from).
func (a *app) watch(ctx context.Context, cmd *cobra.Command, stream string, sl streamLine, game, from string) error {
	if game != "" {
		if err := checkGameID(game); err != nil {
			return err
		}
	}
	if from != "$" && !entryIDPattern.MatchString(from) {
		return usagef(`--from must be "$", "0" or an entry id such as 1700000000000-0, got %q`, from)
	}
	rc, err := a.redisClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer rc.Close()
	after := from
	if from == "$" {
		// Resolve "$" once: XREAD from "$" again after an empty poll would miss what was added
		// between two polls.
		if after, err = lastEntryID(ctx, rc, stream); err != nil {
			return a.redisFailure(ctx, err, "reading "+stream)
		}
	}

	wide := a.output == outWide
	var lw *lineWriter
	if !a.output.structured() {
		header := sl.header
		if wide {
			header = append(append([]string(nil), header...), sl.wideHeader...)
		}
		lw = newLineWriter(a.stdout, header, sl.minWidths)
		if !a.noHeaders {
			if err := lw.write(header); err != nil {
				return err
			}
		}
	}
	for {
		res, err := rc.XRead(ctx, &redis.XReadArgs{Streams: []string{stream, after}, Count: 100, Block: pollBlock}).Result()
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return &failure{err: fmt.Errorf("redis: reading %s: %v", stream, err),
				hints: []string{"resume with --from " + after}}
		}
		for _, s := range res {
			for _, m := range s.Messages {
				after = m.ID
				if game != "" && str(m.Values, "game_id") != game {
					continue
				}
				if err := a.printEntry(lw, sl, m, wide); err != nil {
					return err
				}
			}
		}
	}
}

func (a *app) printEntry(lw *lineWriter, sl streamLine, m redis.XMessage, wide bool) error {
	if a.output == outJSON || a.output == outYAML {
		// One JSON object a line, or one YAML document an entry.
		marshal, format := json.Marshal, "%s\n"
		if a.output == outYAML {
			marshal, format = yaml.Marshal, "---\n%s"
		}
		b, err := marshal(entryObject(m))
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, format, b)
		return err
	}
	return lw.write(append([]string{entryTime(m, sl.timeField)}, sl.cells(m.Values, wide)...))
}

// entryTime is the entry's own timestamp in RFC 3339 UTC to the second, or the time in its
// entry id when the field is missing or malformed.
func entryTime(m redis.XMessage, field string) string {
	if t, err := time.Parse(time.RFC3339Nano, str(m.Values, field)); err == nil {
		return t.UTC().Truncate(time.Second).Format(time.RFC3339)
	}
	ms, _, _ := strings.Cut(m.ID, "-")
	if n, err := strconv.ParseInt(ms, 10, 64); err == nil {
		return time.UnixMilli(n).UTC().Truncate(time.Second).Format(time.RFC3339)
	}
	return str(m.Values, field)
}
