package metrics

import "github.com/ambit-mesh/ambit/internal/apiwire"

// Labels are Istio's standard TCP metric labels for one connection, as ztunnel reports them.
// Empty values are reported as "unknown", except the canonical revisions ("latest", as Istio
// does), RequestProtocol ("tcp") and ResponseFlags ("-").
type Labels struct {
	// Reporter is "source" (the client's ztunnel) or "destination" (the server's).
	Reporter string

	SourceWorkload          string
	SourceCanonicalService  string
	SourceCanonicalRevision string
	SourceWorkloadNamespace string
	SourcePrincipal         string // SPIFFE URI, e.g. spiffe://cluster.local/ns/a/sa/b
	SourceApp               string
	SourceVersion           string
	SourceCluster           string

	DestinationService           string // the Service's hostname, e.g. reviews.default.svc.cluster.local
	DestinationServiceNamespace  string
	DestinationServiceName       string
	DestinationWorkload          string
	DestinationCanonicalService  string
	DestinationCanonicalRevision string
	DestinationWorkloadNamespace string
	DestinationPrincipal         string
	DestinationApp               string
	DestinationVersion           string
	DestinationCluster           string

	RequestProtocol          string // "tcp"
	ResponseFlags            string // Envoy-style flags; "-" for none
	ConnectionSecurityPolicy string // "mutual_tls" or "none"
}

// Label values Istio uses.
const (
	ReporterSource      = "source"
	ReporterDestination = "destination"
	SecurityMutualTLS   = "mutual_tls"
	SecurityNone        = "none"
	unknown             = "unknown"
	latest              = "latest"
)

// labelNames are the metric label names, in the order of Labels.values.
var labelNames = []string{
	"reporter",
	"source_workload",
	"source_canonical_service",
	"source_canonical_revision",
	"source_workload_namespace",
	"source_principal",
	"source_app",
	"source_version",
	"source_cluster",
	"destination_service",
	"destination_service_namespace",
	"destination_service_name",
	"destination_workload",
	"destination_canonical_service",
	"destination_canonical_revision",
	"destination_workload_namespace",
	"destination_principal",
	"destination_app",
	"destination_version",
	"destination_cluster",
	"request_protocol",
	"response_flags",
	"connection_security_policy",
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func (l Labels) values() []string {
	u := func(v string) string { return orDefault(v, unknown) }
	return []string{
		u(l.Reporter),
		u(l.SourceWorkload),
		u(l.SourceCanonicalService),
		orDefault(l.SourceCanonicalRevision, latest),
		u(l.SourceWorkloadNamespace),
		u(l.SourcePrincipal),
		u(l.SourceApp),
		u(l.SourceVersion),
		u(l.SourceCluster),
		u(l.DestinationService),
		u(l.DestinationServiceNamespace),
		u(l.DestinationServiceName),
		u(l.DestinationWorkload),
		u(l.DestinationCanonicalService),
		orDefault(l.DestinationCanonicalRevision, latest),
		u(l.DestinationWorkloadNamespace),
		u(l.DestinationPrincipal),
		u(l.DestinationApp),
		u(l.DestinationVersion),
		u(l.DestinationCluster),
		orDefault(l.RequestProtocol, "tcp"),
		orDefault(l.ResponseFlags, "-"),
		u(l.ConnectionSecurityPolicy),
	}
}

// SetSource fills the source_* labels from the client's workload and the identity it proved
// (principal, a SPIFFE URI; "" when it proved none). A nil w leaves the workload labels alone.
func (l *Labels) SetSource(w *apiwire.Workload, principal string) {
	l.SourcePrincipal = principal
	if w == nil {
		return
	}
	l.SourceWorkload = w.WorkloadName
	l.SourceWorkloadNamespace = w.Namespace
	l.SourceCanonicalService = w.CanonicalName
	l.SourceCanonicalRevision = w.CanonicalRevision
	l.SourceApp = w.CanonicalName
	l.SourceVersion = w.CanonicalRevision
	l.SourceCluster = w.ClusterID
}

// SetDestination fills the destination workload labels from the server's workload and its
// identity (principal, a SPIFFE URI). A nil w leaves the workload labels alone.
func (l *Labels) SetDestination(w *apiwire.Workload, principal string) {
	l.DestinationPrincipal = principal
	if w == nil {
		return
	}
	l.DestinationWorkload = w.WorkloadName
	l.DestinationWorkloadNamespace = w.Namespace
	l.DestinationCanonicalService = w.CanonicalName
	l.DestinationCanonicalRevision = w.CanonicalRevision
	l.DestinationApp = w.CanonicalName
	l.DestinationVersion = w.CanonicalRevision
	l.DestinationCluster = w.ClusterID
}

// SetService fills the destination_service* labels from the Service the client addressed; a
// nil s (the client dialled a pod IP) leaves them alone.
func (l *Labels) SetService(s *apiwire.Service) {
	if s == nil {
		return
	}
	l.DestinationService = s.Hostname
	l.DestinationServiceName = s.Name
	l.DestinationServiceNamespace = s.Namespace
}
