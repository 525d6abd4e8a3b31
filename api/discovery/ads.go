package discovery

// DeltaAggregatedResourcesMethod is the gRPC method of Envoy's delta Aggregated Discovery
// Service, which istiod-lite serves; both sides stream, requests are DeltaDiscoveryRequest and
// responses DeltaDiscoveryResponse. It is written out here rather than generated: a service
// declared in discovery.proto would take that file's proto package and so be named
// /ambit.discovery.v3.AggregatedDiscoveryService/..., which no xDS server serves. Nor is there a
// client here: ztunnel calls it with internal/grpcwire, so as not to link grpc-go.
const DeltaAggregatedResourcesMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
