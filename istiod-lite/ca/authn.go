package ca

import (
	"context"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// The keys of a TokenReview's status.user.extra that describe the pod a service-account
// token is bound to (k8s.io/apiserver pkg/authentication/serviceaccount: PodNameKey,
// PodUIDKey, NodeNameKey, NodeUIDKey). The node keys are set for pod-bound tokens since
// Kubernetes 1.30 (feature ServiceAccountTokenPodNodeInfo, GA in 1.32).
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraNodeUID  = "authentication.kubernetes.io/node-uid"
)

const serviceAccountUserPrefix = "system:serviceaccount:"

// Caller is an authenticated Kubernetes service account, and the pod and node its token is
// bound to when the token says so.
type Caller struct {
	Namespace      string
	ServiceAccount string
	// PodName and PodUID are set for pod-bound (projected) tokens.
	PodName string
	PodUID  string
	// NodeName and NodeUID are set for pod-bound tokens issued by Kubernetes >= 1.30.
	NodeName string
	NodeUID  string
}

// String returns namespace/service-account, the form of Config.TrustedNodeAccounts.
func (c Caller) String() string { return c.Namespace + "/" + c.ServiceAccount }

// authenticator checks bearer tokens with the Kubernetes TokenReview API.
type authenticator struct {
	client    kubernetes.Interface
	audiences []string
	// apiServerAudience also accepts tokens for the API server's own audience.
	apiServerAudience bool
}

// bearerToken returns the token of the incoming request's "authorization: Bearer" metadata.
func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, token, ok := strings.Cut(strings.TrimSpace(v), " ")
		if ok && strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(token) != "" {
			return strings.TrimSpace(token), nil
		}
	}
	return "", status.Error(codes.Unauthenticated,
		"no bearer token: send the service-account token as gRPC metadata \"authorization: Bearer <token>\"")
}

// authenticate reviews token and returns the service account it belongs to. Errors are gRPC
// statuses: Unauthenticated for a token the API server refuses, PermissionDenied for a
// valid token that is not a service account's, Unavailable when the review itself fails.
func (a *authenticator) authenticate(ctx context.Context, token string) (Caller, error) {
	review, err := a.review(ctx, token, a.audiences)
	if err != nil {
		return Caller{}, err
	}
	if !review.Status.Authenticated && a.apiServerAudience {
		// A nil audience list makes the API server check its own audience.
		if r, err := a.review(ctx, token, nil); err == nil && r.Status.Authenticated {
			review = r
		}
	}
	st := review.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "token not authenticated"
		}
		return Caller{}, status.Errorf(codes.Unauthenticated,
			"token review: %s; send a current service-account token issued for audience %s", reason, strings.Join(a.audiences, " or "))
	}
	if len(review.Spec.Audiences) > 0 && !slices.ContainsFunc(st.Audiences, func(s string) bool { return slices.Contains(review.Spec.Audiences, s) }) {
		// An authenticator that ignores audiences answers with none; the token may then be
		// one for the API server, which must not be usable here.
		return Caller{}, status.Errorf(codes.Unauthenticated,
			"token review: token audiences %q do not include %q; request a token for audience %s",
			st.Audiences, review.Spec.Audiences, strings.Join(review.Spec.Audiences, " or "))
	}
	ns, sa, ok := splitServiceAccountUser(st.User.Username)
	if !ok {
		return Caller{}, status.Errorf(codes.PermissionDenied,
			"caller %q is not a Kubernetes service account; use the workload's service-account token", st.User.Username)
	}
	extra := func(k string) string {
		if v := st.User.Extra[k]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	return Caller{
		Namespace:      ns,
		ServiceAccount: sa,
		PodName:        extra(ExtraPodName),
		PodUID:         extra(ExtraPodUID),
		NodeName:       extra(ExtraNodeName),
		NodeUID:        extra(ExtraNodeUID),
	}, nil
}

func (a *authenticator) review(ctx context.Context, token string, audiences []string) (*authnv1.TokenReview, error) {
	r, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable,
			"token review: %v; istiod-lite needs to reach the API server and may create tokenreviews (RBAC)", err)
	}
	if r.Spec.Audiences == nil {
		// Answers do not always echo the spec; keep what was asked for the audience check.
		r.Spec.Audiences = audiences
	}
	return r, nil
}

// splitServiceAccountUser splits "system:serviceaccount:<ns>:<sa>".
func splitServiceAccountUser(user string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(user, serviceAccountUserPrefix)
	if !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return "", "", false
	}
	return ns, sa, true
}
