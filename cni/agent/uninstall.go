package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/cni/plugin"
)

// removed reports whether the agent is stopping because the mesh is being uninstalled rather
// than restarted: its DaemonSet is gone or being deleted, or the API server no longer accepts
// the agent's own service account (a restart or upgrade never removes either). Without a
// DaemonSet name it always answers false: the agent then leaves everything in place.
func (a *Agent) removed(ctx context.Context) (bool, string) {
	ns, name, ok := strings.Cut(a.cfg.DaemonSet, "/")
	if !ok {
		return false, ""
	}
	ds, err := a.client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, "DaemonSet " + a.cfg.DaemonSet + " is gone"
	case apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err):
		return true, "the API server refuses the agent's service account: " + err.Error()
	case err != nil:
		return false, ""
	case ds.DeletionTimestamp != nil:
		return true, "DaemonSet " + a.cfg.DaemonSet + " is being deleted"
	}
	return false, ""
}

// uninstall undoes what the agent did on the node, for an uninstall: the plugin leaves the
// CNI chain first (new pods no longer wait for an agent that is gone), then every enrolled
// pod goes back to direct traffic, then the plugin binary and the probe rule go.
func (a *Agent) uninstall(ctx context.Context) error {
	var errs []error
	if a.cfg.PluginBinary != "" {
		if path, err := removeConflistEntry(a.cfg.CNIConfDir); err != nil {
			errs = append(errs, err)
		} else if path != "" {
			a.log.Info("removed ambit-cni from the CNI conflist", "path", path)
		}
	}
	a.mu.Lock()
	for uid, m := range a.members {
		if err := a.unenrollLocked(ctx, uid); err != nil {
			errs = append(errs, err)
		}
		// Best effort: the agent's own RBAC may already be gone.
		if ns, name, ok := strings.Cut(m.key, "/"); ok {
			if pod, err := a.pods.Pods(ns).Get(name); err == nil {
				if err := a.annotate(ctx, pod, stateDirect); err != nil {
					a.log.Warn("leaving the redirection annotation on an unenrolled pod", "pod", m.key, "err", err)
				}
			}
		}
	}
	a.mu.Unlock()
	if a.cfg.PluginBinary != "" {
		if err := os.Remove(filepath.Join(a.cfg.CNIBinDir, plugin.Type)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing the plugin binary: %w", err))
		}
	}
	if a.cfg.ProbeRule {
		if err := removeProbeRules(a.cfg.NodeNetns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
