// Package after runs work once the answer to a request has been sent. A server gives each
// request's context a Queue and runs it after answering; code the request calls, at any depth
// and without knowing the server, leaves work there with Reply. The CNI agent is the user: the
// pod sandbox waits for its answer, and the work the answer does not need (the pod's
// annotation, the node's probe rule, loading the next pod's eBPF programs) would otherwise
// compete with it for the node's CPU.
package after

import (
	"context"
	"sync"
)

type key struct{}

// Queue is the work one request left for after its answer.
type Queue struct {
	mu  sync.Mutex // guards fns and ran
	fns []func()
	ran bool
}

// With returns a context for a request whose work for after the answer goes to q.
func With(ctx context.Context, q *Queue) context.Context {
	return context.WithValue(ctx, key{}, q)
}

// Reply runs f once the answer to ctx's request has been sent (the server runs its Queue), or
// at once when ctx has no Queue or it has run already.
func Reply(ctx context.Context, f func()) {
	if q, ok := ctx.Value(key{}).(*Queue); ok {
		q.mu.Lock()
		if !q.ran {
			q.fns = append(q.fns, f)
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
	}
	f()
}

// Run runs the queued work, in the order it was left, on the calling goroutine; the server
// calls it once it has sent the answer. Work left after Run runs at once.
func (q *Queue) Run() {
	q.mu.Lock()
	fns := q.fns
	q.fns, q.ran = nil, true
	q.mu.Unlock()
	for _, f := range fns {
		f()
	}
}
