// Package inpod is ztunnel's side of ZDS: it turns the node agent's AddWorkload, KeepWorkload,
// DelWorkload and SnapshotSent into pods served by the proxy, with their certificates fetched
// ahead of the first connection.
package inpod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/zds"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
)

// Proxy serves pods; *proxy.Proxy is one.
type Proxy interface {
	AddPod(ctx context.Context, pod proxy.PodInfo, ns *netns.Handle) error
	RemovePod(uid string)
}

// Certs keeps the certificates of identities in use; *certs.Manager is one.
type Certs interface {
	Add(id identity.Identity)
	Remove(id identity.Identity)
}

// Handler implements zds.Handler.
var _ zds.Handler = (*Handler)(nil)

// Handler turns ZDS requests into pods served by the proxy.
type Handler struct {
	proxy       Proxy
	certs       Certs
	trustDomain string
	log         *slog.Logger

	// mu guards the fields below.
	mu   sync.Mutex
	pods map[string]proxy.PodInfo
	// seen holds the pods added or kept since the current connection started.
	seen map[string]bool
	// snapshotted is false between a connect and its SnapshotSent.
	snapshotted bool
}

// New returns a Handler that serves pods on p and takes certificate references on c.
func New(p Proxy, c Certs, trustDomain string, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{proxy: p, certs: c, trustDomain: trustDomain, log: log,
		pods: map[string]proxy.PodInfo{}, seen: map[string]bool{}}
}

// Connected starts a replay: the pods not added or kept before the next SnapshotSent go.
func (h *Handler) Connected(context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen = map[string]bool{}
	h.snapshotted = false
	return nil
}

// AddWorkload starts serving a pod in the network namespace ns.
func (h *Handler) AddWorkload(ctx context.Context, uid string, info *zds.WorkloadInfo, ns *netns.Handle) error {
	pod, err := h.podInfo(uid, info)
	if err != nil {
		ns.Close()
		return err
	}
	h.certs.Add(pod.Identity)
	if err := h.proxy.AddPod(ctx, pod, ns); err != nil {
		h.certs.Remove(pod.Identity)
		return err
	}
	h.mu.Lock()
	old, had := h.pods[uid]
	h.pods[uid] = pod
	h.seen[uid] = true
	h.mu.Unlock()
	if had {
		h.certs.Remove(old.Identity)
	}
	return nil
}

// KeepWorkload keeps a pod that is already served.
func (h *Handler) KeepWorkload(_ context.Context, uid string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.pods[uid]; !ok {
		return fmt.Errorf("keep pod %s: this ztunnel does not serve it (it restarted since the pod was added); restart the pod or the node agent to send its netns again", uid)
	}
	h.seen[uid] = true
	return nil
}

// DelWorkload stops serving a pod. Unknown pods are fine: deletes go to every ztunnel.
func (h *Handler) DelWorkload(_ context.Context, uid string) error {
	h.remove(uid)
	return nil
}

// SnapshotSent ends the replay: pods that were not in it are no longer enrolled.
func (h *Handler) SnapshotSent(context.Context) error {
	h.mu.Lock()
	var stale []string
	for uid := range h.pods {
		if !h.seen[uid] {
			stale = append(stale, uid)
		}
	}
	h.snapshotted = true
	h.mu.Unlock()
	for _, uid := range stale {
		h.log.Info("pod not in the node agent's snapshot; no longer served", "uid", uid)
		h.remove(uid)
	}
	return nil
}

// Snapshotted reports whether the node agent's snapshot has been applied since the last
// connect: before that ztunnel is not ready.
func (h *Handler) Snapshotted() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.snapshotted
}

func (h *Handler) remove(uid string) {
	h.mu.Lock()
	pod, ok := h.pods[uid]
	delete(h.pods, uid)
	delete(h.seen, uid)
	h.mu.Unlock()
	if !ok {
		return
	}
	h.proxy.RemovePod(uid)
	h.certs.Remove(pod.Identity)
}

// podInfo checks an AddWorkload's workload info.
func (h *Handler) podInfo(uid string, info *zds.WorkloadInfo) (proxy.PodInfo, error) {
	if uid == "" {
		return proxy.PodInfo{}, errors.New("add workload: empty uid")
	}
	if info == nil || info.Name == "" || info.Namespace == "" {
		return proxy.PodInfo{}, fmt.Errorf("add workload %s: workload_info must name the pod and its namespace", uid)
	}
	sa := info.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	id := identity.Identity{TrustDomain: h.trustDomain, Namespace: info.Namespace, ServiceAccount: sa}
	if _, err := identity.Parse(id.String()); err != nil {
		return proxy.PodInfo{}, fmt.Errorf("add workload %s (%s/%s): %w", uid, info.Namespace, info.Name, err)
	}
	return proxy.PodInfo{UID: uid, Name: info.Name, Namespace: info.Namespace, Identity: id}, nil
}
