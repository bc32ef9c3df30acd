package httpapi

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

func TestAnswers_notifyWakesOnlyThatRESTRequestsWaiters(t *testing.T) {
	w := NewAnswers()
	a1, done1 := w.wait("r1")
	a2, done2 := w.wait("r1")
	b, doneB := w.wait("r2")
	defer doneB()
	w.Notify(rtm.ChannelStartJobs, "r1") // a job's answer with the same id wakes no REST call
	w.Notify(rtm.ChannelREST, "r1")
	w.Notify(rtm.ChannelREST, "r1") // never blocks, however often
	for _, c := range []<-chan struct{}{a1, a2} {
		select {
		case <-c:
		default:
			t.Fatal("a waiter of r1 was not woken")
		}
	}
	select {
	case <-b:
		t.Fatal("the waiter of r2 was woken by r1's answer")
	default:
	}
	done1()
	done2()
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.waiting["r1"]; ok || len(w.waiting) != 1 {
		t.Fatalf("waiters left after done: %v", w.waiting)
	}
}

// answerStore answers RequestAnswer with what the test set, counting the reads.
type answerStore struct {
	Store
	mu    sync.Mutex
	ans   *rtm.Answer
	reads atomic.Int64
}

func (s *answerStore) RequestAnswer(context.Context, rtm.Channel, string) (*rtm.Answer, error) {
	s.reads.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ans, nil
}

func (s *answerStore) set(a rtm.Answer) {
	s.mu.Lock()
	s.ans = &a
	s.mu.Unlock()
}

// waitReads waits until st has been read at least n times.
func waitReads(t *testing.T, st *answerStore, n int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); st.reads.Load() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the answer was read %d times, waited for %d", st.reads.Load(), n)
		}
	}
}

// A waiting mutation reads its answer when the commit that answered it is reported, and finds
// an answer committed elsewhere (no report) by its poll.
func TestAwaitAnswer_wakesOnTheCommitAndPollsForAnswersCommittedElsewhere(t *testing.T) {
	for _, notify := range []bool{true, false} {
		st := &answerStore{}
		a := &api{store: st, wait: 30 * time.Second, answers: NewAnswers()}
		got := make(chan *rtm.Answer, 1)
		go func() {
			ans, _ := a.awaitAnswer(context.Background(), "r1")
			got <- ans
		}()
		waitReads(t, st, 3) // waiting, its polls already spaced out
		st.set(rtm.Answer{Outcome: rtm.OutcomeSucceeded})
		if notify {
			a.answers.Notify(rtm.ChannelREST, "r1")
		}
		if ans := <-got; ans == nil || ans.Outcome != rtm.OutcomeSucceeded {
			t.Fatalf("notify=%v: awaitAnswer returned %+v", notify, ans)
		}
		a.answers.mu.Lock()
		left := len(a.answers.waiting)
		a.answers.mu.Unlock()
		if left != 0 {
			t.Fatalf("notify=%v: %d waits left registered", notify, left)
		}
	}
}

// TestAwaitAnswer_drainEndsTheWait: when the listener starts to drain, a mutation still waiting
// for its answer stops waiting (its caller gets 202) instead of holding the drain until the
// shutdown budget cuts the connection. The rolling-restart chaos test met that cut as EOF.
func TestAwaitAnswer_drainEndsTheWait(t *testing.T) {
	st := &answerStore{}
	draining := make(chan struct{})
	a := &api{store: st, wait: time.Hour, answers: NewAnswers(), draining: draining}
	got := make(chan *rtm.Answer, 1)
	go func() {
		ans, _ := a.awaitAnswer(context.Background(), "r1")
		got <- ans
	}()
	waitReads(t, st, 2)
	close(draining)
	if ans := <-got; ans != nil {
		t.Fatalf("awaitAnswer returned %+v after the drain began, want nil", ans)
	}
}
