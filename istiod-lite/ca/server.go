package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"k8s.io/client-go/kubernetes"

	pb "github.com/ambit-mesh/ambit/api/ca"
)

// Config configures a Server. Zero fields take the values of DefaultConfig.
type Config struct {
	// TrustDomain of the identities issued; must equal the Authority's.
	TrustDomain string
	// TrustedNodeAccounts are the service accounts ("namespace/name") that may ask for the
	// identity of pods on their own node.
	TrustedNodeAccounts []string
	// Audiences a caller's token must be issued for.
	Audiences []string
	// AcceptAPIServerAudience also accepts tokens issued for the API server's own audience
	// (Istio's "first-party-jwt"): a token that fails the Audiences review is reviewed again
	// with no audience.
	AcceptAPIServerAudience bool
	// DefaultTTL is granted to requests that ask for no lifetime; MaxTTL caps longer ones.
	// The Authority's own limits apply as well (the smaller wins).
	DefaultTTL time.Duration
	MaxTTL     time.Duration
	// Logger receives one audit line per issued certificate and per refusal; nil: none.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults: trust domain cluster.local, trusted node account
// istio-system/ztunnel, audience istio-ca, TTL 24 h, at most 48 h.
func DefaultConfig() Config {
	return Config{
		TrustDomain:         "cluster.local",
		TrustedNodeAccounts: []string{"istio-system/ztunnel"},
		Audiences:           []string{"istio-ca"},
		DefaultTTL:          DefaultTTL,
		MaxTTL:              DefaultMaxTTL,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.TrustDomain == "" {
		c.TrustDomain = d.TrustDomain
	}
	if c.TrustedNodeAccounts == nil {
		c.TrustedNodeAccounts = d.TrustedNodeAccounts
	}
	if len(c.Audiences) == 0 {
		c.Audiences = d.Audiences
	}
	if c.DefaultTTL <= 0 {
		c.DefaultTTL = d.DefaultTTL
	}
	if c.MaxTTL <= 0 {
		c.MaxTTL = d.MaxTTL
	}
	return c
}

// Server implements api/ca's IstioCertificateServiceServer.
type Server struct {
	pb.UnimplementedIstioCertificateServiceServer

	authority *Authority
	authn     authenticator
	authz     authorizer
	ttl       ttlPolicy
	log       *slog.Logger // nil: no audit lines
}

var _ pb.IstioCertificateServiceServer = (*Server)(nil)

// New returns a Server that authenticates callers with kubeClient's TokenReview API, finds
// pods for impersonation in pods, and signs with authority. pods must be synced before the
// server answers requests that impersonate.
func New(cfg Config, authority *Authority, kubeClient kubernetes.Interface, pods PodLister) (*Server, error) {
	cfg = cfg.withDefaults()
	switch {
	case authority == nil:
		return nil, errors.New("creating CA server: no Authority")
	case kubeClient == nil:
		return nil, errors.New("creating CA server: no Kubernetes client")
	case pods == nil:
		return nil, errors.New("creating CA server: no PodLister")
	case authority.TrustDomain() != cfg.TrustDomain:
		return nil, fmt.Errorf("creating CA server: Config.TrustDomain %q differs from the Authority's %q; use the same trust domain for both",
			cfg.TrustDomain, authority.TrustDomain())
	}
	trusted := map[string]bool{}
	for _, a := range cfg.TrustedNodeAccounts {
		ns, sa, ok := strings.Cut(a, "/")
		if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
			return nil, fmt.Errorf("creating CA server: trusted node account %q: want namespace/service-account, e.g. istio-system/ztunnel", a)
		}
		trusted[a] = true
	}
	return &Server{
		authority: authority,
		authn:     authenticator{client: kubeClient, audiences: cfg.Audiences, apiServerAudience: cfg.AcceptAPIServerAudience},
		authz:     authorizer{trustDomain: cfg.TrustDomain, trusted: trusted, pods: pods},
		ttl:       ttlPolicy{def: cfg.DefaultTTL, max: cfg.MaxTTL},
		log:       cfg.Logger,
	}, nil
}

// Register registers s on a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) { pb.RegisterIstioCertificateServiceServer(r, s) }

// CreateCertificate implements pb.IstioCertificateServiceServer.
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	a := audit{requested: metadataString(req.GetMetadata(), ImpersonatedIdentityKey)}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		a.peer = p.Addr.String()
	}
	resp, err := s.create(ctx, req, &a)
	if err != nil {
		s.refused(ctx, &a, err)
		return nil, err
	}
	return resp, nil
}

func (s *Server) create(ctx context.Context, req *pb.IstioCertificateRequest, a *audit) (*pb.IstioCertificateResponse, error) {
	token, err := bearerToken(ctx)
	if err != nil {
		return nil, err
	}
	caller, err := s.authn.authenticate(ctx, token)
	if err != nil {
		return nil, err
	}
	a.caller = &caller
	impersonated, err := impersonatedIdentity(req.GetMetadata())
	if err != nil {
		return nil, err
	}
	g, err := s.authz.authorize(caller, impersonated)
	if err != nil {
		return nil, err
	}
	a.identity, a.node = g.identity.String(), g.node
	leaf, chain, err := s.authority.issue([]byte(req.GetCsr()), g.identity.String(), s.ttl.grant(seconds(req.GetValidityDuration())))
	switch {
	case errors.Is(err, ErrInvalidCSR):
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	case errors.Is(err, ErrCAExpired):
		return nil, status.Errorf(codes.Unavailable, "signing %s: %v", g.identity, err)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "signing %s: %v", g.identity, err)
	}
	s.issued(ctx, a, leaf.SerialNumber.Text(16), leaf.NotAfter)
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}

// impersonatedIdentity returns the ImpersonatedIdentity metadata value, "" when absent.
func impersonatedIdentity(md *structpb.Struct) (string, error) {
	v, ok := md.GetFields()[ImpersonatedIdentityKey]
	if !ok {
		return "", nil
	}
	sv, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return "", status.Errorf(codes.InvalidArgument,
			"metadata %s must be a string spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", ImpersonatedIdentityKey)
	}
	if sv.StringValue == "" {
		return "", status.Errorf(codes.InvalidArgument,
			"metadata %s is empty; omit it or set spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", ImpersonatedIdentityKey)
	}
	return sv.StringValue, nil
}

func metadataString(md *structpb.Struct, key string) string {
	return md.GetFields()[key].GetStringValue()
}

// seconds converts a requested validity without overflowing; ttlPolicy clamps the result.
func seconds(n int64) time.Duration {
	if n > math.MaxInt64/int64(time.Second) {
		return math.MaxInt64
	}
	return time.Duration(n) * time.Second
}

// audit collects what the audit line of one request reports.
type audit struct {
	peer      string
	caller    *Caller
	requested string // ImpersonatedIdentity as sent
	identity  string // identity granted
	node      string
}

func (a *audit) attrs() []slog.Attr {
	attrs := []slog.Attr{slog.String("peer", a.peer)}
	if a.caller != nil {
		attrs = append(attrs, slog.String("caller", a.caller.String()))
		if a.caller.PodName != "" {
			attrs = append(attrs, slog.String("caller_pod", a.caller.Namespace+"/"+a.caller.PodName))
		}
	}
	if a.requested != "" {
		attrs = append(attrs, slog.String("impersonated_identity", a.requested))
	}
	return attrs
}

func (s *Server) issued(ctx context.Context, a *audit, serial string, expiry time.Time) {
	if s.log == nil {
		return
	}
	attrs := append(a.attrs(),
		slog.String("identity", a.identity),
		slog.String("node", a.node),
		slog.String("serial", serial),
		slog.Time("expiry", expiry))
	s.log.LogAttrs(ctx, slog.LevelInfo, "certificate issued", attrs...)
}

func (s *Server) refused(ctx context.Context, a *audit, err error) {
	if s.log == nil {
		return
	}
	st := status.Convert(err)
	attrs := append(a.attrs(), slog.String("code", st.Code().String()), slog.String("reason", st.Message()))
	s.log.LogAttrs(ctx, slog.LevelWarn, "certificate refused", attrs...)
}
