package httpapi

import (
	"sync"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Answers wakes the REST calls waiting for their request's answer when the store commits it:
// wire Notify to the store's OnAnswered. A call answered by another RTM process is not told;
// it finds its answer by a slow poll (answerPoll).
type Answers struct {
	mu      sync.Mutex
	waiting map[string][]chan struct{} // by REST request id
}

// NewAnswers returns an Answers with no one waiting.
func NewAnswers() *Answers { return &Answers{waiting: map[string][]chan struct{}{}} }

// Notify wakes the calls waiting for requestID's answer; answers of other channels are ignored.
// It never blocks.
func (w *Answers) Notify(ch rtm.Channel, requestID string) {
	if ch != rtm.ChannelREST {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.waiting[requestID] {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// wait registers a wait for requestID's answer: the channel receives when it may have come. The
// caller must call done when it stops waiting.
func (w *Answers) wait(requestID string) (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	w.mu.Lock()
	w.waiting[requestID] = append(w.waiting[requestID], c)
	w.mu.Unlock()
	return c, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		cs := w.waiting[requestID]
		for i := range cs {
			if cs[i] == c {
				cs = append(cs[:i], cs[i+1:]...)
				break
			}
		}
		if len(cs) == 0 {
			delete(w.waiting, requestID)
		} else {
			w.waiting[requestID] = cs
		}
	}
}
