package admin

import (
	"errors"
	"slices"
	"strings"
	"sync"
)

// Readiness is a set of named conditions ztunnel waits for before it reports ready (e.g.
// "xds synced", "zds connected"). Its Err method is a [ReadyFunc]. It is safe for concurrent
// use.
type Readiness struct {
	// mu guards pending.
	mu      sync.Mutex
	pending []string // in the order given to NewReadiness
	all     []string
}

// NewReadiness returns a Readiness waiting for every one of conditions.
func NewReadiness(conditions ...string) *Readiness {
	return &Readiness{pending: slices.Clone(conditions), all: slices.Clone(conditions)}
}

// Set marks condition as holding. Unknown names are ignored.
func (r *Readiness) Set(condition string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending = slices.DeleteFunc(r.pending, func(c string) bool { return c == condition })
}

// Unset marks condition as no longer holding (e.g. the node agent disconnected).
func (r *Readiness) Unset(condition string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Contains(r.all, condition) || slices.Contains(r.pending, condition) {
		return
	}
	r.pending = append(r.pending, condition)
	slices.SortStableFunc(r.pending, func(a, b string) int { return slices.Index(r.all, a) - slices.Index(r.all, b) })
}

// Err returns nil once every condition holds, or an error naming those still pending.
func (r *Readiness) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) == 0 {
		return nil
	}
	return errors.New("waiting for " + strings.Join(r.pending, ", "))
}
