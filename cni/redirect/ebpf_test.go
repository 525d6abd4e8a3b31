package redirect_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/bpf"
	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/cni/redirect/redirecttest"
)

func TestEBPFContract(t *testing.T) {
	redirecttest.Run(t, func(t *testing.T) redirect.Backend {
		b, err := redirect.NewEBPF()
		if errors.Is(err, redirect.ErrNotSupported) {
			t.Skipf("skipping: %v", err)
		}
		if err != nil {
			t.Fatalf("NewEBPF: %v", err)
		}
		r, err := bpf.New()
		if err != nil {
			t.Fatalf("bpf.New: %v", err)
		}
		return &leftoverCheck{Backend: b, t: t, r: r}
	})
}

// leftoverCheck adds to the contract test's snapshot what only package bpf can list (the
// programs on lo and the src_valid_mark sysctls): after each Unenroll nothing may be left.
type leftoverCheck struct {
	redirect.Backend
	t *testing.T
	r *bpf.Redirector
}

func (l *leftoverCheck) Unenroll(ctx context.Context, p redirect.Pod) error {
	if err := l.Backend.Unenroll(ctx, p); err != nil {
		return err
	}
	left, err := l.r.Installed(ctx, p.Netns)
	if err != nil {
		l.t.Errorf("listing what is left after Unenroll: %v", err)
	} else if len(left) > 0 {
		l.t.Errorf("after Unenroll, left in the pod netns:\n%s", strings.Join(left, "\n"))
	}
	return nil
}
