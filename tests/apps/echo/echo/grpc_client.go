package echo

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

type grpcSender struct {
	target string
	cfg    ClientConfig
	md     metadata.MD
	conn   *grpc.ClientConn // nil with NewConn
}

func newGRPCSender(hostport string, cfg ClientConfig) (*grpcSender, error) {
	s := &grpcSender{target: hostport, cfg: cfg, md: metadata.MD{}}
	for name, values := range cfg.Headers {
		s.md.Append(name, values...)
	}
	if !cfg.NewConn {
		conn, err := s.dial()
		if err != nil {
			return nil, err
		}
		s.conn = conn
	}
	return s, nil
}

func (s *grpcSender) dial() (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if s.cfg.Host != "" {
		opts = append(opts, grpc.WithAuthority(s.cfg.Host))
	}
	// passthrough: dial the address as given, like the HTTP and TCP modes,
	// rather than resolving every backend behind a name.
	conn, err := grpc.NewClient("passthrough:///"+s.target, opts...)
	if err != nil {
		return nil, fmt.Errorf("creating grpc client for %s: %w", s.target, err)
	}
	return conn, nil
}

func (s *grpcSender) send(ctx context.Context) (Response, error) {
	conn := s.conn
	if conn == nil {
		var err error
		if conn, err = s.dial(); err != nil {
			return Response{}, err
		}
		defer conn.Close()
	}
	req, err := structpb.NewStruct(map[string]any{"payload": s.cfg.Payload})
	if err != nil {
		return Response{}, fmt.Errorf("building request: %w", err)
	}
	out := new(structpb.Struct)
	ctx = metadata.NewOutgoingContext(ctx, s.md)
	if err := conn.Invoke(ctx, GRPCMethod, req, out); err != nil {
		return Response{}, fmt.Errorf("calling %s: %w", GRPCMethod, err)
	}
	resp, err := fromStruct(out)
	if err != nil {
		return resp, err
	}
	if resp.Payload != s.cfg.Payload {
		return resp, fmt.Errorf("payload: got %q, want %q", truncate(resp.Payload, 200), truncate(s.cfg.Payload, 200))
	}
	return resp, nil
}

func (s *grpcSender) close() {
	if s.conn != nil {
		s.conn.Close()
	}
}
