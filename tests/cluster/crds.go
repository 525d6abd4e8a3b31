package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// istioCRDs is the CRD manifest of deploy/charts/base, relative to the repository root.
const istioCRDs = "deploy/charts/base/files/crd-all.gen.yaml"

// InstallIstioCRDs applies the Istio CRDs Ambit reads (deploy/charts/base) and waits until the
// API server serves them.
func (c *Cluster) InstallIstioCRDs(ctx context.Context) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(root, istioCRDs))
	if err != nil {
		return fmt.Errorf("reading the Istio CRDs: %w", err)
	}
	if err := c.Apply(ctx, "", string(b)); err != nil {
		return err
	}
	return c.Wait(ctx, time.Minute, "the Istio CRDs served", func(ctx context.Context) (bool, error) {
		_, err := c.Client.Discovery().ServerResourcesForGroupVersion("security.istio.io/v1")
		return err == nil, nil
	})
}
