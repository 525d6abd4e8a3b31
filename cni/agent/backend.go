package agent

import (
	"fmt"
	"log/slog"

	"github.com/ambit-mesh/ambit/cni/redirect"
)

// SelectBackend returns the redirection backend name asks for: "ebpf", "nftables", or "auto"
// (eBPF where the kernel supports it, else nftables with a log line saying why).
func SelectBackend(name string, log *slog.Logger) (redirect.Backend, error) {
	switch name {
	case "ebpf":
		b, err := redirect.NewEBPF()
		if err != nil {
			return nil, fmt.Errorf("eBPF redirection backend: %w", err)
		}
		return b, nil
	case "nftables":
		b, err := redirect.NewNFTables()
		if err != nil {
			return nil, fmt.Errorf("nftables redirection backend: %w", err)
		}
		return b, nil
	case "auto", "":
		b, err := redirect.NewEBPF()
		if err == nil {
			return b, nil
		}
		if log != nil {
			log.Warn("eBPF redirection unavailable; using nftables", "reason", err)
		}
		return SelectBackend("nftables", log)
	default:
		return nil, fmt.Errorf("redirection backend %q: expected auto, ebpf or nftables", name)
	}
}
