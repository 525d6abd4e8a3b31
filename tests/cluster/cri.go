package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RemoveSandboxes removes the pod sandboxes ids from node name's container runtime, as the
// kubelet's garbage collection does a while after their pods are gone: the runtime stops any
// that still run (tearing down their network through the CNI chain, again if it did so
// before) and deletes them. A sandbox the runtime no longer has is not an error. Tests that
// measure the node call it so that the kubelet has nothing left to collect in the middle of
// their measurement.
func (c *Cluster) RemoveSandboxes(ctx context.Context, name string, ids []string) error {
	node, err := c.node(name)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+node.containerdSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connecting to the container runtime of %s: %w", name, err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	var errs []error
	for _, id := range ids {
		// The kubelet may be removing the sandbox's containers at the same time; the runtime
		// then refuses ("already in removing state") until it is done.
		deadline := time.Now().Add(removeRetry)
		for {
			_, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
			if err == nil || status.Code(err) == codes.NotFound {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				errs = append(errs, fmt.Errorf("removing pod sandbox %s on %s (tried for %v): %w", id, name, removeRetry, err))
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// removeRetry is how long RemoveSandboxes retries one sandbox the runtime refuses to remove.
const removeRetry = 10 * time.Second
