// Package sources holds every trigger that puts a game id on the reconciler's queue: the start
// and stop job streams, Docker events, the periodic full pass, and the inspect sweep. (The
// prober enqueues nothing; it lives beside its HTTP client in probe.)
// A job handler validates, writes desired state, then enqueues; it never calls Docker.
package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Intake validates, admits, records and enqueues a request (rtm.Intake).
type Intake interface {
	Take(ctx context.Context, req rtm.Request, guard rtm.Guard) (rtm.Submission, error)
}

// JobStore records the jobs the intake cannot take (malformed ones) and reads answers.
type JobStore interface {
	AnswerInvalid(ctx context.Context, req rtm.Request, a rtm.Answer) (bool, error)
	// RequestAnswer returns a recorded request's answer, nil while it is pending.
	RequestAnswer(ctx context.Context, ch rtm.Channel, requestID string) (*rtm.Answer, error)
}

// StreamReader reads a job stream and keeps the consumer's offset.
type StreamReader interface {
	Offset(ctx context.Context, consumer string) (string, error)
	SetOffset(ctx context.Context, consumer, id string) error
	Read(ctx context.Context, stream, after string, count int64, block time.Duration) ([]rtm.StreamEntry, error)
	// LastGeneratedID returns the greatest id ever added to the stream ("0-0" when absent).
	LastGeneratedID(ctx context.Context, stream string) (string, error)
}

// ResultRepublisher queues again the published result of an answered request when Redis lost it
// (its publication marker, which marks is asked about, is gone); it reports whether it did.
type ResultRepublisher interface {
	RepublishLostResult(ctx context.Context, ch rtm.Channel, requestID string, marks rtm.SentMarks) (bool, error)
}

// JobObserver is told about every handled job, for telemetry.
type JobObserver interface {
	JobHandled(ctx context.Context, kind rtm.JobKind, outcome string)
	StreamLag(consumer string, lag int64)
}

// JobConsumer reads one job stream from its persisted offset and hands each job to the intake,
// which records it and enqueues its game; a malformed job is answered invalid_job here.
// Delivery is at least once; handling is idempotent by request id.
//
// The jobs of one read (up to 64 entries) are handled concurrently across games, Parallel games
// at a time, so that their PostgreSQL commits share WAL flushes; the jobs of one game are handled
// one after the other, in stream order. A game is its entry's game_id field as given (empty,
// missing or invalid included), folded to lower case: ids equal but for case are one game to
// PostgreSQL's unique index, and the first of them in the stream must be the one recorded.
type JobConsumer struct {
	Kind   rtm.JobKind
	Stream string
	Intake Intake
	Store  JobStore
	Redis  StreamReader
	// Enqueue enqueues again the game of a resent job that is still pending (the first
	// delivery's enqueue may have been lost with the process).
	Enqueue  func(gameID string)
	Log      *slog.Logger
	Tracer   trace.Tracer
	Observer JobObserver
	// Results and Marks answer again a resent job whose result Redis lost (nil: such a job is
	// ignored like any other duplicate).
	Results ResultRepublisher
	Marks   rtm.SentMarks
	// Block is how long one XREAD waits (default 1s); it bounds how fast shutdown is noticed.
	Block time.Duration
	// Parallel is how many games' jobs are handled at once (DefaultJobParallel when <= 0), each
	// in its own PostgreSQL transaction: the store's pool needs that many connections beside the
	// reconciler's. 1 handles one game's jobs at a time.
	Parallel int
}

// DefaultJobParallel is JobConsumer.Parallel's default, and RTMANAGER_JOB_PARALLEL's.
const DefaultJobParallel = 8

// Run consumes until ctx ends, then persists the offset and returns nil.
//
// Each read is handled as a batch (see JobConsumer): the offset moves to the batch's last entry
// once every entry of the batch is recorded, never before. A job the store fails to record is
// tried again with backoff, never skipped, and the later jobs of its game wait for it (other
// games go on). When ctx ends mid-batch Run waits for the jobs in flight to return and keeps the
// offset before the batch: its entries are read again at the next start, and those recorded
// already are duplicates (see handle). No goroutine outlives Run.
func (c *JobConsumer) Run(ctx context.Context) error {
	if c.Block <= 0 {
		c.Block = time.Second
	}
	parallel := c.Parallel
	if parallel <= 0 {
		parallel = DefaultJobParallel
	}
	name := string(c.Kind)
	var off string
	for off == "" {
		o, err := c.Redis.Offset(ctx, name)
		if err != nil {
			if !rtm.Sleep(ctx, time.Second) {
				return nil
			}
			c.Log.Warn("reading offset failed, retrying", "worker", name, "error", err)
			continue
		}
		if o == "" {
			o = "0-0"
		}
		off = o
	}
	saved := off
	persist := func(ctx context.Context) error {
		if off == saved {
			return nil
		}
		if err := c.Redis.SetOffset(ctx, name, off); err != nil {
			c.Log.Warn("saving offset failed", "worker", name, "error", err)
			return err
		}
		saved = off
		return nil
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := persist(sctx); err != nil {
			// The jobs after the saved offset are read again at the next start and recognised
			// by their request ids.
			c.Log.Warn("worker stopped without saving its offset", "worker", name, "offset", off, "saved_offset", saved)
			return
		}
		c.Log.Info("worker stopped", "worker", name, "offset", off)
	}()
	off = c.checkReset(ctx, off)
	var backoff rtm.Backoff
	for ctx.Err() == nil {
		entries, err := c.Redis.Read(ctx, c.Stream, off, 64, c.Block)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.Log.Warn("reading job stream failed, retrying", "worker", name, "stream", c.Stream, "error", err)
			if !rtm.Sleep(ctx, backoff.Next()) {
				return nil
			}
			off = c.checkReset(ctx, off)
			continue
		}
		backoff.Reset()
		if len(entries) == 0 {
			off = c.checkReset(ctx, off)
			continue
		}
		if !c.handleBatch(ctx, entries, parallel) {
			return nil // ctx ended: the batch is read again at the next start
		}
		off = entries[len(entries)-1].ID
		_ = persist(ctx) // logged; the next batch or the stop tries again
	}
	return nil
}

// handleBatch handles entries, one lane per game (see JobConsumer), up to parallel lanes at once,
// the first lanes of the stream first. It reports whether every entry was handled: false only
// when ctx ended first. It returns once its goroutines have.
func (c *JobConsumer) handleBatch(ctx context.Context, entries []rtm.StreamEntry, parallel int) bool {
	var lanes [][]rtm.StreamEntry
	laneOf := make(map[string]int, len(entries))
	for _, e := range entries {
		game := strings.ToLower(e.Fields["game_id"])
		i, ok := laneOf[game]
		if !ok {
			i = len(lanes)
			laneOf[game] = i
			lanes = append(lanes, nil)
		}
		lanes[i] = append(lanes[i], e)
	}
	var (
		wg         sync.WaitGroup
		unfinished atomic.Bool
		next       = make(chan []rtm.StreamEntry)
	)
	for range min(parallel, len(lanes)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lane := range next {
				if !c.handleLane(ctx, lane) {
					unfinished.Store(true)
				}
			}
		}()
	}
feed:
	for _, lane := range lanes {
		select {
		case next <- lane:
		case <-ctx.Done():
			unfinished.Store(true)
			break feed
		}
	}
	close(next)
	wg.Wait()
	return !unfinished.Load()
}

// handleLane handles one game's entries in order. An entry the store fails to record is tried
// again with backoff until it is recorded; the entries after it wait. It reports whether every
// entry was handled: false only when ctx ended first.
func (c *JobConsumer) handleLane(ctx context.Context, lane []rtm.StreamEntry) bool {
	var backoff rtm.Backoff
	for _, e := range lane {
		for {
			err := c.handle(ctx, e)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return false
			}
			// The store is down: never skip a job, try it again.
			c.Log.Warn("recording job failed, retrying", "worker", string(c.Kind), "entry_id", e.ID, "error", err)
			if !rtm.Sleep(ctx, backoff.Next()) {
				return false
			}
		}
		backoff.Reset()
	}
	return true
}

// checkReset resumes from the start when the offset lies past the stream's last-generated-id:
// the stream is not the one the offset was taken from (Redis was emptied, the stream is new).
// The newest entry's id would not do: after an XDEL or XTRIM of the newest entries it lies
// before a valid offset, and the jobs already handled would be read again.
func (c *JobConsumer) checkReset(ctx context.Context, off string) string {
	last, err := c.Redis.LastGeneratedID(ctx, c.Stream)
	if err != nil || !idLess(last, off) {
		return off
	}
	c.Log.Warn("offset lies past the stream, resuming from its start", "worker", string(c.Kind), "offset", off, "last_id", last)
	return "0-0"
}

// handle records one job entry. It returns an error only when the job could not be recorded
// (and must be tried again); a bad job is answered, not returned.
func (c *JobConsumer) handle(ctx context.Context, e rtm.StreamEntry) (err error) {
	f := e.Fields
	ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": f["traceparent"]})
	ctx, span := c.Tracer.Start(ctx, "job."+strings.TrimSuffix(string(c.Kind), "jobs"),
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attribute.String("entry_id", e.ID)))
	defer func() {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)

	req := rtm.Request{RequestID: f["request_id"], GameID: f["game_id"], TraceParent: carrier["traceparent"],
		ReceivedAt: time.Now().UTC()}
	if req.RequestID == "" {
		req.RequestID = e.ID
	}
	switch c.Kind {
	case rtm.StartJobs:
		req.Channel, req.Kind, req.Source, req.ImageRef = rtm.ChannelStartJobs, rtm.OpStart, rtm.SourceStartJobs, f["image_ref"]
	default:
		req.Channel, req.Kind, req.Source, req.Reason = rtm.ChannelStopJobs, rtm.OpStop, rtm.SourceStopJobs, f["reason"]
		if req.Reason == "" {
			req.Reason = "unspecified"
		}
	}
	span.SetAttributes(attribute.String("game_id", trunc(req.GameID)), attribute.String("request_id", trunc(req.RequestID)))
	log := c.Log.With("worker", string(c.Kind), "entry_id", e.ID, "request_id", trunc(req.RequestID), "game_id", trunc(req.GameID))

	if bad := invalidJob(c.Kind, f, req); bad != "" {
		// The answer is recorded in PostgreSQL: what it keeps must be text it can store, or the
		// job could never be recorded and would stall the stream.
		if len(req.RequestID) > rtm.MaxFieldBytes || !storable(req.RequestID) {
			req.RequestID = e.ID
		}
		req.GameID = sanitize(trunc(req.GameID))
		req.ImageRef, req.Reason = sanitize(req.ImageRef), sanitize(req.Reason)
		dup, err := c.Store.AnswerInvalid(ctx, req, rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeInvalidJob, Message: bad})
		if err != nil {
			return err
		}
		if !dup {
			log.WarnContext(ctx, "invalid job answered", "error_code", string(rtm.CodeInvalidJob), "reason", bad)
			c.observe(ctx, string(rtm.OutcomeFailed))
			return nil
		}
		return c.republishLost(ctx, log, e, req, rtm.OutcomeFailed)
	}
	sub, err := c.Intake.Take(ctx, req, nil)
	if err != nil {
		return fmt.Errorf("job %s: %w", e.ID, err)
	}
	switch {
	case sub.Duplicate:
		// Recorded before, yet perhaps never enqueued: the COMMIT's reply may have been lost and
		// this is the retry. A pending request's game is enqueued again (a reconcile too many is
		// harmless); an answered one needs nothing.
		ans, err := c.Store.RequestAnswer(ctx, req.Channel, req.RequestID)
		if err != nil && !errors.Is(err, rtm.ErrNotFound) {
			return fmt.Errorf("reading the answer of duplicate job %s: %w", e.ID, err)
		}
		if err == nil && ans == nil {
			log.InfoContext(ctx, "duplicate job still pending, game enqueued")
			c.Enqueue(req.GameID)
			return nil
		}
		if err == nil {
			return c.republishLost(ctx, log, e, req, ans.Outcome)
		}
		log.DebugContext(ctx, "duplicate job ignored")
	case sub.Answer != nil:
		log.InfoContext(ctx, "job answered at once", "outcome", string(sub.Answer.Outcome), "error_code", string(sub.Answer.Code))
		c.observe(ctx, string(sub.Answer.Outcome))
	default:
		log.DebugContext(ctx, "job recorded, game enqueued", "generation", sub.Request.Generation)
	}
	return nil
}

// republishLost handles a resent job whose request was answered: when Redis lost the published
// result, it is queued to be published again (logged at info); otherwise the job is ignored
// (debug). It returns an error only when that could not be checked.
func (c *JobConsumer) republishLost(ctx context.Context, log *slog.Logger, e rtm.StreamEntry, req rtm.Request, outcome rtm.Outcome) error {
	if c.Results != nil && c.Marks != nil {
		again, err := c.Results.RepublishLostResult(ctx, req.Channel, req.RequestID, c.Marks)
		if err != nil {
			return fmt.Errorf("checking the result of duplicate job %s: %w", e.ID, err)
		}
		if again {
			log.InfoContext(ctx, "duplicate job's result lost from redis, published again", "outcome", string(outcome))
			return nil
		}
	}
	log.DebugContext(ctx, "duplicate job ignored")
	return nil
}

func (c *JobConsumer) observe(ctx context.Context, outcome string) {
	if c.Observer != nil {
		c.Observer.JobHandled(ctx, c.Kind, outcome)
	}
}

// invalidJob returns why a job entry cannot be understood, or "". A value that is not text
// PostgreSQL can store (invalid UTF-8, a NUL byte) makes the job invalid: recording it would fail
// on every attempt.
func invalidJob(kind rtm.JobKind, f map[string]string, req rtm.Request) string {
	for k, v := range f {
		if len(v) > rtm.MaxFieldBytes {
			return fmt.Sprintf("field %s is longer than %d bytes", sanitize(trunc(k)), rtm.MaxFieldBytes)
		}
		if !storable(v) {
			return fmt.Sprintf("field %s is not valid UTF-8 text without NUL bytes", sanitize(trunc(k)))
		}
	}
	if _, ok := f["game_id"]; !ok {
		return "game_id is missing"
	}
	if err := rtm.ValidateGameID(req.GameID); err != nil {
		return rtm.MessageOf(err)
	}
	if kind == rtm.StartJobs && f["image_ref"] == "" {
		return "image_ref is missing"
	}
	return ""
}

// trunc keeps hostile values from flooding logs and spans. It cuts at a rune boundary, so that
// valid UTF-8 stays valid.
func trunc(s string) string {
	if len(s) <= 128 {
		return s
	}
	cut := 128
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// storable reports whether s can be kept in a PostgreSQL text column: valid UTF-8, no NUL byte.
func storable(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// sanitize makes s storable, replacing invalid bytes and NULs with U+FFFD.
func sanitize(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// idLess reports whether stream id a sorts before b ("ms-seq").
func idLess(a, b string) bool {
	am, as := splitID(a)
	bm, bs := splitID(b)
	if am != bm {
		return am < bm
	}
	return as < bs
}

func splitID(id string) (uint64, uint64) {
	var ms, seq uint64
	msPart, seqPart, _ := strings.Cut(id, "-")
	for _, ch := range msPart {
		ms = ms*10 + uint64(ch-'0')
	}
	for _, ch := range seqPart {
		seq = seq*10 + uint64(ch-'0')
	}
	return ms, seq
}
