package inpod

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/zds"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
)

// fakeProxy records the pods it serves.
type fakeProxy struct {
	mu   sync.Mutex
	pods map[string]proxy.PodInfo
}

func (f *fakeProxy) AddPod(_ context.Context, p proxy.PodInfo, ns *netns.Handle) error {
	ns.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods[p.UID] = p
	return nil
}

func (f *fakeProxy) RemovePod(uid string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pods, uid)
}

func (f *fakeProxy) uids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for uid := range f.pods {
		out = append(out, uid)
	}
	slices.Sort(out)
	return out
}

// fakeCerts counts references per identity.
type fakeCerts map[identity.Identity]int

func (f fakeCerts) Add(id identity.Identity)    { f[id]++ }
func (f fakeCerts) Remove(id identity.Identity) { f[id]-- }

func ns(t *testing.T) *netns.Handle {
	t.Helper()
	h, err := netns.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func info(name string) *zds.WorkloadInfo {
	return &zds.WorkloadInfo{Name: name, Namespace: "shop", ServiceAccount: name}
}

func TestReplay(t *testing.T) {
	ctx := context.Background()
	px := &fakeProxy{pods: map[string]proxy.PodInfo{}}
	certs := fakeCerts{}
	h := New(px, certs, "cluster.local", nil)

	h.Connected(ctx)
	for _, n := range []string{"a", "b", "c"} {
		if err := h.AddWorkload(ctx, "uid-"+n, info(n), ns(t)); err != nil {
			t.Fatal(err)
		}
	}
	if h.Snapshotted() {
		t.Error("Snapshotted before SnapshotSent")
	}
	h.SnapshotSent(ctx)
	if !h.Snapshotted() {
		t.Error("not Snapshotted after SnapshotSent")
	}
	if got := px.pods["uid-a"].Identity.String(); got != "spiffe://cluster.local/ns/shop/sa/a" {
		t.Errorf("identity of a = %s", got)
	}
	// Added after the snapshot, then forgotten by the agent while ztunnel was disconnected.
	h.AddWorkload(ctx, "uid-d", info("d"), ns(t))
	h.Connected(ctx)
	h.KeepWorkload(ctx, "uid-a")
	h.AddWorkload(ctx, "uid-b", info("b"), ns(t))
	h.SnapshotSent(ctx)
	if got, want := px.uids(), []string{"uid-a", "uid-b"}; !slices.Equal(got, want) {
		t.Errorf("after the replay ztunnel serves %v, want %v", got, want)
	}
	for n, want := range map[string]int{"a": 1, "b": 1, "c": 0, "d": 0} {
		id := identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: n}
		if certs[id] != want {
			t.Errorf("certificate references of %s: got %d, want %d", n, certs[id], want)
		}
	}
	if err := h.KeepWorkload(ctx, "uid-zz"); err == nil {
		t.Error("KeepWorkload of a pod never added: want an error")
	}
	h.DelWorkload(ctx, "uid-a")
	h.DelWorkload(ctx, "uid-unknown")
	if got := px.uids(); !slices.Equal(got, []string{"uid-b"}) {
		t.Errorf("after deleting a: %v", got)
	}
}

func TestBadAdd(t *testing.T) {
	h := New(&fakeProxy{pods: map[string]proxy.PodInfo{}}, fakeCerts{}, "cluster.local", nil)
	for name, tc := range map[string]struct {
		uid  string
		info *zds.WorkloadInfo
	}{
		"no uid":       {"", info("a")},
		"no info":      {"u", nil},
		"no namespace": {"u", &zds.WorkloadInfo{Name: "a"}},
		"bad sa":       {"u", &zds.WorkloadInfo{Name: "a", Namespace: "shop", ServiceAccount: "x/y"}},
	} {
		if err := h.AddWorkload(context.Background(), tc.uid, tc.info, ns(t)); err == nil {
			t.Errorf("%s: AddWorkload succeeded, want an error", name)
		}
	}
}
