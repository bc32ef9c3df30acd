package sources_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/coord"
	"github.com/galaxy-platform/rtmanager/sources"
	"github.com/galaxy-platform/rtmanager/store"
)

// benchJobs is how many start jobs, of as many games, one round admits.
const benchJobs = 1000

// BenchmarkJobConsumer_admit admits 1,000 start jobs of 1,000 games, put on the stream
// beforehand, with PostgreSQL durable as in production (fsync and synchronous_commit on), one
// game at a time and 16 at once. It reports jobs/s, from the first read to the offset saved past
// the last job.
//
//	flock /tmp/heavy.lock nice go test -run '^$' -bench JobConsumer_admit -benchtime 1x ./sources/
func BenchmarkJobConsumer_admit(b *testing.B) {
	durable(b)
	for _, parallel := range []int{1, 16} {
		b.Run(fmt.Sprintf("parallel=%d", parallel), func(b *testing.B) {
			ctx := context.Background()
			st, _ := env.MustStoreWith(b, store.Options{MaxConns: int32(parallel) + 4})
			rdb := redis.NewClient(env.RedisOptions(env.NewRedisDB(b)))
			b.Cleanup(func() { rdb.Close() })
			co := coord.New(rdb, "bench", 10*time.Second)
			intake := &rtm.Intake{Store: st, Enqueue: func(string) {}, Allowed: []string{"galaxy/game"},
				Settings: rtm.Settings{EnginePort: 8080, StateRootJoin: func(id string) string { return "/state/" + id }}}
			var elapsed time.Duration
			for round := range b.N {
				b.StopTimer()
				stream := fmt.Sprintf("runtime:start_jobs:%d", round)
				pipe := rdb.Pipeline()
				var last *redis.StringCmd
				for i := range benchJobs {
					last = pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"game_id", fmt.Sprintf("b%d-%d", round, i),
						"image_ref", "galaxy/game:1.4.2", "request_id", fmt.Sprintf("r%d-%d", round, i)}})
				}
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
				if err := co.SetOffset(ctx, string(rtm.StartJobs), "0-0"); err != nil {
					b.Fatal(err)
				}
				reached := &offsetWatch{StreamReader: co, want: last.Val(), reached: make(chan struct{})}
				c := &sources.JobConsumer{Kind: rtm.StartJobs, Stream: stream, Intake: intake, Store: st, Redis: reached,
					Enqueue: func(string) {}, Parallel: parallel, Block: 50 * time.Millisecond,
					Log: slog.New(slog.DiscardHandler), Tracer: tracenoop.NewTracerProvider().Tracer("")}
				runCtx, stop := context.WithCancel(ctx)
				done := make(chan struct{})
				b.StartTimer()
				began := time.Now()
				go func() { _ = c.Run(runCtx); close(done) }()
				select {
				case <-reached.reached:
				case <-done:
				case <-time.After(5 * time.Minute):
				}
				elapsed += time.Since(began)
				b.StopTimer()
				stop()
				<-done
				select {
				case <-reached.reached:
				default:
					b.Fatalf("round %d: the consumer did not reach the last job", round)
				}
			}
			b.ReportMetric(float64(benchJobs*b.N)/elapsed.Seconds(), "jobs/s")
		})
	}
}

// offsetWatch is the consumer's Redis, which tells when the offset is saved at want.
type offsetWatch struct {
	sources.StreamReader
	want    string
	once    sync.Once
	reached chan struct{}
}

func (w *offsetWatch) SetOffset(ctx context.Context, consumer, id string) error {
	err := w.StreamReader.SetOffset(ctx, consumer, id)
	if err == nil && id == w.want {
		w.once.Do(func() { close(w.reached) })
	}
	return err
}

// durable turns the test cluster's durability back on for the benchmark (testenv starts it with
// fsync, full_page_writes and synchronous_commit off), as test/harness does for the e2e
// benchmarks, and turns it off again when b ends. An external server is left as it is.
func durable(b *testing.B) {
	b.Helper()
	if !env.PostgresManaged {
		b.Log("PostgreSQL is external: durability as it is configured")
		return
	}
	ctx := context.Background()
	// set runs qs as the superuser, then reloads the configuration.
	set := func(qs ...string) error {
		conn, err := pgx.Connect(ctx, env.AdminDSN)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		for _, q := range append(qs, `SELECT pg_reload_conf()`) {
			if _, err := conn.Exec(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		return nil
	}
	b.Cleanup(func() {
		if err := set(`ALTER SYSTEM RESET fsync`, `ALTER SYSTEM RESET synchronous_commit`,
			`ALTER SYSTEM RESET full_page_writes`); err != nil {
			b.Errorf("turning durability off again: %v", err)
		}
	})
	if err := set(`ALTER SYSTEM SET fsync = on`, `ALTER SYSTEM SET synchronous_commit = on`,
		`ALTER SYSTEM SET full_page_writes = on`); err != nil {
		b.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, env.AdminDSN)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	// The reload reaches the backends asynchronously; new connections read it at their start.
	var fsync, syncCommit string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err := conn.QueryRow(ctx, `SELECT current_setting('fsync'), current_setting('synchronous_commit')`).Scan(&fsync, &syncCommit); err != nil {
			b.Fatal(err)
		}
		if fsync == "on" && syncCommit == "on" {
			b.Logf("PostgreSQL durable: fsync=%s synchronous_commit=%s", fsync, syncCommit)
			return
		}
	}
	b.Fatalf("PostgreSQL kept fsync=%s synchronous_commit=%s after the reload", fsync, syncCommit)
}
