package state

import (
	"slices"
	"strings"

	"github.com/ambit-mesh/ambit/internal/apiwire"
)

// Dump is everything a State holds, for the admin config dump. It marshals to JSON.
type Dump struct {
	Workloads []*Workload `json:"workloads"`
	Services  []*Service  `json:"services"`
	// Policies are the Authorizations as received; they marshal to protobuf JSON.
	Policies []*apiwire.Authorization `json:"policies"`
	// FetchedServices are the services subscribed by name (their remote endpoints are held).
	FetchedServices  []string `json:"fetchedServices,omitempty"`
	PolicyGeneration uint64   `json:"policyGeneration"`
}

// Dump returns a copy of what s holds, sorted by key.
func (s *State) Dump() Dump {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := Dump{PolicyGeneration: s.policyGen}
	for _, w := range s.workloads {
		d.Workloads = append(d.Workloads, w)
	}
	slices.SortFunc(d.Workloads, func(a, b *Workload) int { return strings.Compare(a.UID, b.UID) })
	for _, svc := range s.services {
		d.Services = append(d.Services, svc)
	}
	slices.SortFunc(d.Services, func(a, b *Service) int { return strings.Compare(a.Key, b.Key) })
	keys := make([]string, 0, len(s.policyResources))
	for k := range s.policyResources {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		d.Policies = append(d.Policies, s.policyResources[k])
	}
	for k := range s.fetched {
		d.FetchedServices = append(d.FetchedServices, k)
	}
	slices.Sort(d.FetchedServices)
	return d
}
