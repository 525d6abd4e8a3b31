package redirect

import (
	"context"
	"errors"
	"fmt"

	"github.com/ambit-mesh/ambit/bpf"
)

// EBPF captures pods with tc and sk_lookup programs and policy routes inside each pod's netns
// (see package bpf). Like NFTables it keeps no state in the process: a new EBPF finds and
// reconciles what an earlier process installed.
type EBPF struct {
	r *bpf.Redirector
}

// NewEBPF returns the eBPF backend pinning under bpf.DefaultPinDir (/sys/fs/bpf/ambit), as
// NewEBPFAt does.
func NewEBPF() (*EBPF, error) { return NewEBPFAt("") }

// NewEBPFAt returns the eBPF backend, or an error wrapping ErrNotSupported (and
// bpf.ErrNotSupported) when this kernel lacks TC programs, sk_lookup, bpf_sk_assign or the socket
// lookups, or pinDir is not on a bpffs. pinDir ("" for bpf.DefaultPinDir) holds one small
// directory per enrolled pod and must be the same across agent restarts.
func NewEBPFAt(pinDir string) (*EBPF, error) {
	r, err := bpf.New(bpf.Options{PinDir: pinDir})
	if errors.Is(err, bpf.ErrNotSupported) {
		return nil, fmt.Errorf("preparing ebpf redirection: %w: %w", ErrNotSupported, err)
	}
	if err != nil {
		return nil, fmt.Errorf("preparing ebpf redirection: %w", err)
	}
	return &EBPF{r: r}, nil
}

// Name implements Backend.
func (*EBPF) Name() string { return "ebpf" }

// Enroll implements Backend.
func (b *EBPF) Enroll(ctx context.Context, p Pod) error {
	if err := b.r.Attach(ctx, p.Netns, p.IPs); err != nil {
		return fmt.Errorf("enrolling pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// Unenroll implements Backend. A pod whose netns is already gone has nothing left to remove.
func (b *EBPF) Unenroll(ctx context.Context, p Pod) error {
	if err := b.r.Detach(ctx, p.Netns); err != nil {
		return fmt.Errorf("unenrolling pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}
