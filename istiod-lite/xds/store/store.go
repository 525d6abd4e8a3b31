// Package store holds the resources that istiod-lite serves over xDS: named, versioned
// resources by type URL, each tagged with the scope that decides which clients receive it. It
// knows neither Kubernetes (the model fills it) nor gRPC (the xds package serves it).
//
// Scoping (the answer to Istio's full-state-to-every-node scale wall): under a wildcard
// subscription a client on node N receives the resources with no node (for the workload API:
// Services and Authorizations) and the resources of node N (the workloads running there).
// Anything else it asks for by name, or by an alias such as "<network>/<ip>"; a resource
// subscribed by name also brings the resources it includes (a Service brings the workloads
// behind it). A client that does not say its node receives everything.
package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Resource is one named resource of a type.
type Resource struct {
	// Name is the resource's xDS name (its key).
	Name string
	// Message is the resource itself.
	Message proto.Message
	// Node scopes the resource to the clients on that node; empty means every client.
	Node string
	// Aliases are other names a client may subscribe to it by.
	Aliases []string
	// Includes names resources of the same type that a client receives along with this one
	// when it subscribes to it by name.
	Includes []string
}

// entry is a Resource as stored.
type entry struct {
	Resource
	// Body is the encoded resource.
	Body *anypb.Any
	// Version is a hash of Body.
	Version string
}

// typeStore holds the resources of one type URL.
type typeStore struct {
	byName  map[string]*entry
	byAlias map[string]string
	global  map[string]struct{}
	byNode  map[string]map[string]struct{}
}

func newTypeStore() *typeStore {
	return &typeStore{byName: map[string]*entry{}, byAlias: map[string]string{}, global: map[string]struct{}{}, byNode: map[string]map[string]struct{}{}}
}

func (t *typeStore) remove(name string) {
	e, ok := t.byName[name]
	if !ok {
		return
	}
	delete(t.byName, name)
	for _, a := range e.Aliases {
		if t.byAlias[a] == name {
			delete(t.byAlias, a)
		}
	}
	if e.Node == "" {
		delete(t.global, name)
	} else if set := t.byNode[e.Node]; set != nil {
		delete(set, name)
		if len(set) == 0 {
			delete(t.byNode, e.Node)
		}
	}
}

func (t *typeStore) add(e *entry) {
	t.byName[e.Name] = e
	for _, a := range e.Aliases {
		t.byAlias[a] = e.Name
	}
	if e.Node == "" {
		t.global[e.Name] = struct{}{}
		return
	}
	set := t.byNode[e.Node]
	if set == nil {
		set = map[string]struct{}{}
		t.byNode[e.Node] = set
	}
	set[e.Name] = struct{}{}
}

// Store holds the resources served to clients. It is safe for concurrent use; clients are
// woken on every change.
type Store struct {
	mu      sync.RWMutex // guards the fields below
	types   map[string]*typeStore
	changed chan struct{} // closed and replaced on every change
	gen     uint64
}

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{types: map[string]*typeStore{}, changed: make(chan struct{})}
}

// Update sets and removes resources of typeURL in one step. A set resource whose encoding has
// not changed keeps its version, so clients are not sent it again.
func (s *Store) Update(typeURL string, set []Resource, remove []string) error {
	entries := make([]*entry, 0, len(set))
	for _, r := range set {
		body, err := anypb.New(r.Message)
		if err != nil {
			return fmt.Errorf("encoding %s %s: %w", typeURL, r.Name, err)
		}
		if body.TypeUrl != typeURL {
			return fmt.Errorf("resource %s is a %s, not a %s", r.Name, body.TypeUrl, typeURL)
		}
		sum := sha256.Sum256(body.Value)
		entries = append(entries, &entry{Resource: r, Body: body, Version: hex.EncodeToString(sum[:8])})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.types[typeURL]
	if t == nil {
		t = newTypeStore()
		s.types[typeURL] = t
	}
	changed := false
	for _, name := range remove {
		if _, ok := t.byName[name]; ok {
			t.remove(name)
			changed = true
		}
	}
	for _, e := range entries {
		if old, ok := t.byName[e.Name]; ok && old.Version == e.Version && old.Node == e.Node &&
			equalStrings(old.Aliases, e.Aliases) && equalStrings(old.Includes, e.Includes) {
			continue
		}
		t.remove(e.Name)
		t.add(e)
		changed = true
	}
	if changed {
		s.gen++
		close(s.changed)
		s.changed = make(chan struct{})
	}
	return nil
}

// Len returns how many resources of typeURL the Store holds.
func (s *Store) Len(typeURL string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if t := s.types[typeURL]; t != nil {
		return len(t.byName)
	}
	return 0
}

// Watch returns a channel closed at the next change.
func (s *Store) Watch() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// Entry is a stored resource: encoded once, with a version that is a hash of its encoding.
type Entry = entry

// View is what one client should have of one type: name -> entry.
type View map[string]*Entry

// View computes the resources of typeURL a client should have: under a wildcard subscription
// the resources of no node plus those of node (everything when node is empty), plus the names
// it subscribed to (or their aliases) and what those include.
func (s *Store) View(typeURL string, wildcard bool, node string, names map[string]struct{}) View {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := s.types[typeURL]
	v := View{}
	if t == nil {
		return v
	}
	if wildcard {
		if node == "" {
			for name, e := range t.byName {
				v[name] = e
			}
		} else {
			for name := range t.global {
				v[name] = t.byName[name]
			}
			for name := range t.byNode[node] {
				v[name] = t.byName[name]
			}
		}
	}
	for name := range names {
		if alias, ok := t.byAlias[name]; ok {
			name = alias
		}
		e, ok := t.byName[name]
		if !ok {
			continue
		}
		v[name] = e
		for _, inc := range e.Includes {
			if ie, ok := t.byName[inc]; ok {
				v[inc] = ie
			}
		}
	}
	return v
}

// Resolve maps a subscribed name (possibly an alias) to the resource name, if known.
func (s *Store) Resolve(typeURL, name string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := s.types[typeURL]
	if t == nil {
		return "", false
	}
	if alias, ok := t.byAlias[name]; ok {
		return alias, true
	}
	_, ok := t.byName[name]
	return name, ok
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
