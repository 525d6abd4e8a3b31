package state

import (
	"encoding/json"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
)

// Dump is everything a State holds, for the admin config dump. It marshals to JSON.
type Dump struct {
	Workloads []*Workload `json:"workloads"`
	Services  []*Service  `json:"services"`
	// Policies are the Authorizations as received, in protobuf JSON.
	Policies []json.RawMessage `json:"policies"`
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
	keys := make([]string, 0, len(s.policyProtos))
	for k := range s.policyProtos {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		b, err := protojson.Marshal(s.policyProtos[k])
		if err != nil {
			// protojson fails only on invalid UTF-8; keep the key so the dump still says it is there.
			b, _ = json.Marshal(map[string]string{"key": k, "error": err.Error()})
		}
		d.Policies = append(d.Policies, b)
	}
	for k := range s.fetched {
		d.FetchedServices = append(d.FetchedServices, k)
	}
	slices.Sort(d.FetchedServices)
	return d
}
