package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/istiod-lite/ca"
	"github.com/ambit-mesh/ambit/istiod-lite/kube"
)

// Secrets that hold the CA's material in istiod-lite's namespace, as in Istio: a user-provided
// CA in cacerts, else istiod-lite's own self-signed root, kept across restarts.
const (
	userCASecret       = "cacerts"
	selfSignedCASecret = "istio-ca-secret"
)

// loadAuthority returns the CA: the user's cacerts if present, else the self-signed root stored
// by an earlier start, else a new self-signed root that it stores.
func loadAuthority(ctx context.Context, client kubernetes.Interface, namespace, trustDomain string, log *slog.Logger) (*ca.Authority, error) {
	secrets := client.CoreV1().Secrets(namespace)
	for _, name := range []string{userCASecret, selfSignedCASecret} {
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading Secret %s/%s: %w", namespace, name, err)
		}
		a, err := ca.NewFromPluginCerts(trustDomain, ca.PluginCertsFromSecretData(s.Data))
		if err != nil {
			return nil, fmt.Errorf("secret %s/%s: %w", namespace, name, err)
		}
		log.Info("CA loaded", "secret", namespace+"/"+name)
		return a, nil
	}
	a, err := ca.NewSelfSigned(trustDomain)
	if err != nil {
		return nil, err
	}
	pc, err := a.Export()
	if err != nil {
		return nil, err
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: selfSignedCASecret, Namespace: namespace,
			Labels: map[string]string{ca.ManagedByLabel: ca.ManagedBy}},
		Data: map[string][]byte{ca.CACertKey: pc.CACert, ca.CAKeyKey: pc.CAKey, ca.RootCertKey: pc.RootCert, ca.CertChainKey: pc.CertChain},
	}
	if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// Another replica stored its root first: use that one.
			return loadAuthority(ctx, client, namespace, trustDomain, log)
		}
		return nil, fmt.Errorf("storing the self-signed CA in Secret %s/%s (does the namespace exist?): %w", namespace, selfSignedCASecret, err)
	}
	log.Info("CA created: self-signed root", "secret", namespace+"/"+selfSignedCASecret)
	return a, nil
}

// servingCert renews istiod-lite's own TLS certificate at half its life.
type servingCert struct {
	authority *ca.Authority
	dnsNames  []string
	ttl       time.Duration

	mu   sync.Mutex // guards cert
	cert *tls.Certificate
}

func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cert != nil {
		l := s.cert.Leaf
		if time.Now().Before(l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore) / 2)) {
			return s.cert, nil
		}
	}
	c, err := s.authority.IssueServing(s.dnsNames, s.ttl)
	if err != nil {
		return nil, err
	}
	s.cert = c
	return c, nil
}

// startCA prepares the CA service on w's pod informer (before the informers start), and the
// root publication once they run.
func (s *Server) startCA(ctx context.Context, cfg Config, client kubernetes.Interface, w *kube.Watcher, logger *slog.Logger) (*ca.Server, *servingCert, error) {
	log := logger.With("component", "ca")
	authority, err := loadAuthority(ctx, client, cfg.Namespace, cfg.Model.TrustDomain, log)
	if err != nil {
		return nil, nil, err
	}
	pods, err := ca.NewInformerPodLister(w.PodInformer())
	if err != nil {
		return nil, nil, err
	}
	caCfg := cfg.CA
	caCfg.TrustDomain = cfg.Model.TrustDomain
	caCfg.Logger = log
	srv, err := ca.New(caCfg, authority, client, pods)
	if err != nil {
		return nil, nil, err
	}
	namespaces := w.NamespaceInformer()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := ca.PublishRoot(ctx, client, authority.RootPEM(), namespaces,
			ca.OnPublishError(func(ns string, err error) { log.Warn("publishing the root certificate", "namespace", ns, "err", err) }))
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Error("publishing the root certificate", "err", err)
		}
	}()
	return srv, &servingCert{authority: authority, dnsNames: cfg.ServingDNSNames, ttl: 30 * 24 * time.Hour}, nil
}
