// Command ambitctl installs Ambit on a Kubernetes cluster and looks inside it:
//
//	ambitctl install [--set profile=ambient] [--set key=value]...
//	ambitctl uninstall [--purge]
//	ambitctl manifest generate [--set key=value]...
//	ambitctl precheck
//	ambitctl waypoint apply|list|delete [-n NS] [--enroll-namespace]
//	ambitctl ztunnel-config workloads|services|policies|certificates [--node N]
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ambitctl:", err)
		os.Exit(1)
	}
}
