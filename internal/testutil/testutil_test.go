package testutil

import (
	"bytes"
	"fmt"
	"go/build"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs as root)")
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	n := NewNetNS(t, "probe")
	if l, err := os.Readlink(n.Path); err != nil || l == self {
		t.Fatalf("namespace %s: got %q, %v; want a namespace other than ours (%s)", n.Path, l, err, self)
	}
	n.Run(t, "ip", "link", "set", "lo", "up")
	if out := n.Run(t, "ip", "-o", "link", "show"); strings.Count(out, "\n") != 1 || !strings.Contains(out, "lo:") {
		t.Errorf("links in a fresh namespace: got %q, want only lo", out)
	}
	n.Handle.Close()
	n.Kill()
	n.Kill()
	if _, err := os.Stat(n.Path); err == nil {
		t.Errorf("%s still exists after Kill", n.Path)
	}
}

// TestNetNSFromInsideAnother: a holder started from a thread inside another namespace starts
// there, and NewNetNS still returns its own, new namespace.
func TestNetNSFromInsideAnother(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs as root)")
	}
	outer := NewNetNS(t, "outer")
	outerLink, _ := os.Readlink(outer.Path)
	for range 5 {
		var inner *NetNS
		outer.Handle.Do(func() error {
			inner = NewNetNS(t, "inner")
			return nil
		})
		if l, err := os.Readlink(inner.Path); err != nil || l == outerLink {
			t.Fatalf("namespace made from inside %s: got %q, %v; want a new one", outer.Path, l, err)
		}
	}
}

func TestPrivateBPFFS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting a bpffs needs root (CI runs as root)")
	}
	dir := PrivateBPFFS(t)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("statfs %s: type %#x, %v; want a bpffs", dir, st.Type, err)
	}
	_, inner, _ := strings.Cut(strings.TrimPrefix(dir, "/proc/"), "/root")
	if err := unix.Statfs(inner, &st); err != nil || st.Type == unix.BPF_FS_MAGIC {
		t.Errorf("statfs %s in our own mount namespace: type %#x, %v; want the plain directory", inner, st.Type, err)
	}
}

func TestWaitFor(t *testing.T) {
	start := time.Now()
	n := 0
	WaitFor(t, time.Second, "the third poll", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Errorf("polls: got %d, want 3", n)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("WaitFor took %s, want well under its timeout", d)
	}
}

// fatalTB records Fatalf and ends the goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestWaitGoroutines(t *testing.T) {
	// Goroutines of earlier tests may still be ending, so the counts here only ever err low:
	// the checks leave room for that.
	release := make(chan struct{})
	stopped := make(chan struct{})
	go func() { <-release; close(stopped) }()
	before := runtime.NumGoroutine() - 1
	time.AfterFunc(20*time.Millisecond, func() { close(release) })
	WaitGoroutines(t, before, 10*time.Second)
	<-stopped

	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		WaitGoroutines(f, runtime.NumGoroutine()-100, 20*time.Millisecond)
	}()
	<-done
	if !strings.HasPrefix(f.msg, "goroutines: got ") {
		t.Errorf("with 100 goroutines too many: got failure %q, want \"goroutines: got ...\"", f.msg)
	}
}

func TestCheckMain(t *testing.T) {
	var stderr bytes.Buffer
	if got := checkMain(func() int { return 2 }, time.Millisecond, &stderr); got != 2 {
		t.Errorf("failing run: got code %d, want 2", got)
	}
	if got := checkMain(func() int { return 0 }, time.Second, &stderr); got != 0 {
		t.Errorf("clean run: got code %d, want 0 (stderr %q)", got, stderr.String())
	}
	stop := make(chan struct{})
	defer close(stop)
	var f *os.File
	got := checkMain(func() int {
		for range 10 {
			go func() { <-stop }()
		}
		f, _ = os.Open(os.DevNull)
		return 0
	}, 50*time.Millisecond, &stderr)
	defer f.Close()
	if got != 1 || !strings.Contains(stderr.String(), " goroutines:\n") || !strings.Contains(stderr.String(), " file descriptors") {
		t.Errorf("leaky run: got code %d, stderr %q; want 1 and both leaks reported", got, stderr.String())
	}
}

// Any component's tests may import testutil, so testutil imports no component.
func TestImportsNoComponent(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if rest, ok := strings.CutPrefix(imp, "github.com/ambit-mesh/ambit/"); ok && !strings.HasPrefix(rest, "internal/") && !strings.HasPrefix(rest, "api/") {
			t.Errorf("testutil imports %s; want only internal/ and api/ packages of Ambit", imp)
		}
	}
}
