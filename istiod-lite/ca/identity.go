package ca

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// workloadID is a Kubernetes workload identity: spiffe://<td>/ns/<ns>/sa/<sa>.
type workloadID struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

func (w workloadID) String() string {
	return "spiffe://" + w.TrustDomain + "/ns/" + w.Namespace + "/sa/" + w.ServiceAccount
}

// parseWorkloadID parses s as spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func parseWorkloadID(s string) (workloadID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return workloadID{}, fmt.Errorf("%w %q: %w; want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", ErrInvalidSPIFFEID, s, err)
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" || seg[1] == "" || seg[3] == "" {
		return workloadID{}, fmt.Errorf("%w %q: path %q is not /ns/<namespace>/sa/<service-account>", ErrInvalidSPIFFEID, s, id.Path())
	}
	return workloadID{TrustDomain: id.TrustDomain().Name(), Namespace: seg[1], ServiceAccount: seg[3]}, nil
}
