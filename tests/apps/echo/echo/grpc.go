package echo

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/structpb"
)

// The gRPC service is declared by hand so that building needs no protoc:
// one unary method whose request and response are google.protobuf.Struct.
const (
	GRPCService = "ambit.echo.Echo"
	GRPCMethod  = "/" + GRPCService + "/Echo"
)

// echoer is the handler type of the service.
type echoer interface {
	Echo(ctx context.Context, req *structpb.Struct) (*structpb.Struct, error)
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: GRPCService,
	HandlerType: (*echoer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler:    echoHandler,
	}},
}

func echoHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	req := new(structpb.Struct)
	if err := dec(req); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(echoer).Echo(ctx, req)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: GRPCMethod}
	return interceptor(ctx, req, info, func(ctx context.Context, req any) (any, error) {
		return srv.(echoer).Echo(ctx, req.(*structpb.Struct))
	})
}

type grpcService struct {
	srv *grpc.Server
}

func newGRPCService(id Identity, port int) *grpcService {
	srv := grpc.NewServer()
	srv.RegisterService(&serviceDesc, &grpcEcho{id: id, port: port})
	return &grpcService{srv: srv}
}

func (s *grpcService) serve(ln net.Listener) error {
	if err := s.srv.Serve(ln); err != nil {
		return fmt.Errorf("serving grpc: %w", err)
	}
	return nil
}

func (s *grpcService) shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.srv.Stop()
		<-done
		return fmt.Errorf("shutting down grpc server: %w", ctx.Err())
	}
}

type grpcEcho struct {
	id   Identity
	port int
}

// Echo answers with the [Response] fields; headers come from the incoming
// metadata, payload from the request's "payload" field.
func (g *grpcEcho) Echo(ctx context.Context, req *structpb.Struct) (*structpb.Struct, error) {
	resp := g.id.response(ProtocolGRPC, g.port)
	if p, ok := peer.FromContext(ctx); ok {
		resp.SourceAddr = p.Addr.String()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for name, values := range md {
		if strings.HasPrefix(name, ":") {
			continue
		}
		resp.addHeader(name, values)
	}
	if a := md.Get(":authority"); len(a) > 0 {
		resp.Host = a[0]
	}
	resp.Method = "POST"
	resp.Path, _ = grpc.Method(ctx)
	resp.Payload = req.GetFields()["payload"].GetStringValue()
	return toStruct(resp)
}

func toStruct(r Response) (*structpb.Struct, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encoding response: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decoding response: %w", err)
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil, fmt.Errorf("converting response to struct: %w", err)
	}
	return s, nil
}

func fromStruct(s *structpb.Struct) (Response, error) {
	var r Response
	b, err := json.Marshal(s.AsMap())
	if err != nil {
		return r, fmt.Errorf("encoding struct: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("decoding response: %w", err)
	}
	return r, nil
}
