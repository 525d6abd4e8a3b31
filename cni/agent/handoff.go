package agent

import (
	"fmt"
	"os"

	"github.com/ambit-mesh/ambit/internal/netns"
)

// migrateReqPath is net.ipv4.tcp_migrate_req; /proc/sys/net shows the calling thread's netns.
const migrateReqPath = "/proc/sys/net/ipv4/tcp_migrate_req"

// setListenerHandoff sets net.ipv4.tcp_migrate_req in the pod netns at nsPath. ztunnel's
// in-pod listeners share their ports with SO_REUSEPORT, so in a rolling update the new
// ztunnel listens next to the old one (ARCHITECTURE.md, the data-plane contract). When the
// old one closes its listeners, the kernel resets the connections they had queued but not yet
// accepted, and the half-open ones; with the sysctl on it moves them to the new listener
// instead. Unenrolling sets it back to the kernel's default, 0.
func setListenerHandoff(nsPath string, on bool) error {
	h, err := netns.Open(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	v := "0"
	if on {
		v = "1"
	}
	err = h.Do(func() error { return os.WriteFile(migrateReqPath, []byte(v), 0o644) })
	if err != nil {
		return fmt.Errorf("setting net.ipv4.tcp_migrate_req = %s in %s (needs Linux 5.14 and a writable /proc/sys): %w", v, nsPath, err)
	}
	return nil
}
