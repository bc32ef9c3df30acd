package main

import (
	"context"
	"sync"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// rtmProc is the running rtmanager binary (harness.Proc) with the WARN and ERROR lines of its
// log counted by message.
type rtmProc struct {
	*harness.Proc

	mu       sync.Mutex
	problems map[string]int // "LEVEL msg" → lines
}

// startRTM runs the binary with env and waits until every worker has started. Its log goes to
// rtmanager.log in the work dir.
func (w *world) startRTM(ctx context.Context, env map[string]string) (*rtmProc, error) {
	p := &rtmProc{problems: map[string]int{}}
	var err error
	p.Proc, err = w.StartRTM(ctx, env, "rtmanager.log", func(l harness.LogLine) bool {
		if l.Level == "WARN" || l.Level == "ERROR" {
			p.mu.Lock()
			p.problems[l.Level+" "+l.Msg]++
			p.mu.Unlock()
		}
		return false // the soak waits for no line but the start-up ones, which are always kept
	})
	return p, err
}

// logProblems returns the WARN and ERROR line counts by message.
func (p *rtmProc) logProblems() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.problems))
	for k, v := range p.problems {
		out[k] = v
	}
	return out
}
