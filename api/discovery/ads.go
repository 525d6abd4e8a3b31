package discovery

import (
	"context"

	"google.golang.org/grpc"
)

// DeltaAggregatedResourcesMethod is the gRPC method of Envoy's delta Aggregated Discovery
// Service, which istiod-lite serves. It is written out here rather than generated: a service
// declared in discovery.proto would take that file's proto package and so be named
// /ambit.discovery.v3.AggregatedDiscoveryService/..., which no xDS server serves.
const DeltaAggregatedResourcesMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

// DeltaADSStream is the client's side of one delta ADS stream.
type DeltaADSStream = grpc.BidiStreamingClient[DeltaDiscoveryRequest, DeltaDiscoveryResponse]

// deltaADS describes the method as protoc-gen-go-grpc would: both sides stream.
var deltaADS = grpc.StreamDesc{
	StreamName:    "DeltaAggregatedResources",
	ClientStreams: true,
	ServerStreams: true,
}

// OpenDeltaADS opens a delta ADS stream on cc. The stream ends with ctx. Errors are gRPC
// status errors, as from generated client code.
func OpenDeltaADS(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (DeltaADSStream, error) {
	s, err := cc.NewStream(ctx, &deltaADS, DeltaAggregatedResourcesMethod, opts...)
	if err != nil {
		return nil, err
	}
	return &grpc.GenericClientStream[DeltaDiscoveryRequest, DeltaDiscoveryResponse]{ClientStream: s}, nil
}
