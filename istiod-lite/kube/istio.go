package kube

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"google.golang.org/protobuf/types/known/timestamppb"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/ambit-mesh/ambit/istiod-lite/model"
)

// ConditionZtunnelAccepted is the status condition istiod-lite writes on security policies:
// True when ztunnel enforces the policy as written, False with the reason when parts of it
// were dropped (as Istio does for ambient).
const ConditionZtunnelAccepted = "ZtunnelAccepted"

// watchIstio adds informers for the Istio security policies to w.
func (w *Watcher) watchIstio(client istioclient.Interface) error {
	w.istio = istioinformers.NewSharedInformerFactoryWithOptions(client, 0, istioinformers.WithTransform(trim))
	sec := w.istio.Security().V1()
	kinds := []struct {
		informer cache.SharedIndexInformer
		set      func(any) error
		del      func(ns, name string) error
	}{
		{sec.AuthorizationPolicies().Informer(), func(o any) error { return w.index.SetAuthorizationPolicy(o.(*securityv1.AuthorizationPolicy)) }, w.index.DeleteAuthorizationPolicy},
		{sec.PeerAuthentications().Informer(), func(o any) error { return w.index.SetPeerAuthentication(o.(*securityv1.PeerAuthentication)) }, w.index.DeletePeerAuthentication},
	}
	for _, k := range kinds {
		reg, err := k.informer.AddEventHandler(w.handler(k.set, k.del))
		if err != nil {
			return fmt.Errorf("watching Istio policies: %w", err)
		}
		w.synced = append(w.synced, reg.HasSynced)
	}
	w.status = newStatusWriter(client, w.log)
	w.index.OnPolicyStatus(w.status.enqueue)
	return nil
}

// statusWriter writes the model's PolicyStatus onto the policies, off the model's lock, last
// state wins per policy.
type statusWriter struct {
	client istioclient.Interface
	log    *slog.Logger
	wake   chan struct{}

	mu      sync.Mutex // guards pending
	pending map[string]model.PolicyStatus
}

func newStatusWriter(client istioclient.Interface, log *slog.Logger) *statusWriter {
	return &statusWriter{client: client, log: log, wake: make(chan struct{}, 1), pending: map[string]model.PolicyStatus{}}
}

func (s *statusWriter) enqueue(st model.PolicyStatus) {
	s.mu.Lock()
	s.pending[st.Kind+"/"+st.Namespace+"/"+st.Name] = st
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run writes pending statuses until ctx ends.
func (s *statusWriter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		s.mu.Lock()
		batch := s.pending
		s.pending = map[string]model.PolicyStatus{}
		s.mu.Unlock()
		for _, st := range batch {
			if err := s.write(ctx, st); err != nil && ctx.Err() == nil {
				s.log.Warn("writing policy status", "kind", st.Kind, "policy", st.Namespace+"/"+st.Name, "err", err)
			}
		}
	}
}

// condition is the ZtunnelAccepted condition for a status.
func condition(st model.PolicyStatus) *metav1alpha1.IstioCondition {
	c := &metav1alpha1.IstioCondition{Type: ConditionZtunnelAccepted, Status: "True", Reason: "Accepted",
		Message: "ztunnel enforces this policy as written", ObservedGeneration: st.Generation}
	if len(st.Dropped) > 0 {
		c.Status, c.Reason = "False", "UnsupportedValue"
		c.Message = "ztunnel does not enforce parts of this policy: " + strings.Join(st.Dropped, "; ")
	}
	return c
}

// setCondition replaces the ZtunnelAccepted condition in conds; it reports whether anything
// changed (the transition time moves only when the status does).
func setCondition(status *metav1alpha1.IstioStatus, c *metav1alpha1.IstioCondition) bool {
	for i, old := range status.Conditions {
		if old.Type != c.Type {
			continue
		}
		if old.Status == c.Status && old.Reason == c.Reason && old.Message == c.Message && old.ObservedGeneration == c.ObservedGeneration {
			return false
		}
		c.LastTransitionTime = old.LastTransitionTime
		if old.Status != c.Status {
			c.LastTransitionTime = timestamppb.Now()
		}
		status.Conditions[i] = c
		return true
	}
	c.LastTransitionTime = timestamppb.Now()
	status.Conditions = append(status.Conditions, c)
	return true
}

func (s *statusWriter) write(ctx context.Context, st model.PolicyStatus) error {
	c := condition(st)
	switch st.Kind {
	case "AuthorizationPolicy":
		p, err := s.client.SecurityV1().AuthorizationPolicies(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || err == nil && p.Generation != st.Generation {
			return nil // gone or changed meanwhile: a newer status follows
		}
		if err != nil {
			return err
		}
		if !setCondition(&p.Status, c) {
			return nil
		}
		_, err = s.client.SecurityV1().AuthorizationPolicies(st.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	case "PeerAuthentication":
		p, err := s.client.SecurityV1().PeerAuthentications(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || err == nil && p.Generation != st.Generation {
			return nil
		}
		if err != nil {
			return err
		}
		if !setCondition(&p.Status, c) {
			return nil
		}
		_, err = s.client.SecurityV1().PeerAuthentications(st.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	}
	return nil
}
