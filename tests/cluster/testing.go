package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RunTests is the body of a TestMain for a package of cluster tests: it starts one cluster
// that the package's tests share (through *shared), runs them, stops the cluster and checks
// that nothing was left behind. It returns the exit code for os.Exit.
//
// Without root it runs the tests with a nil cluster, and Require skips them saying why; CI
// runs as root, so there they always run. An interrupt (SIGINT, SIGTERM) stops the cluster
// before the process ends.
func RunTests(m *testing.M, cfg Config, shared **Cluster) int {
	if os.Geteuid() != 0 {
		return m.Run()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	before, err := TakeSnapshot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster tests:", err)
		return 1
	}
	c, err := Start(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster tests:", err)
		return 1
	}
	*shared = c

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(os.Stderr, "cluster tests: %v: stopping cluster %s\n", sig, c.Name)
			c.Stop(context.Background())
			// Die of the signal as the process would have without the handler.
			signal.Reset(sig)
			syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		case <-done:
		}
	}()

	// go test's -timeout ends the process with a panic that runs no cleanup: stop the cluster
	// shortly before, so a hung test fails with the cluster already gone.
	if d := testTimeout(); d > 0 {
		watchdog := time.AfterFunc(d-d/10, func() {
			fmt.Fprintf(os.Stderr, "cluster tests: -test.timeout %v nearly reached: stopping cluster %s\n", d, c.Name)
			c.Stop(context.Background())
		})
		defer watchdog.Stop()
	}

	code := m.Run()
	signal.Stop(sigs)
	if err := c.Stop(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "cluster tests: stopping cluster:", err)
		code = 1
	}
	leaks := c.Remains()
	after, err := TakeSnapshot()
	if err != nil {
		leaks = append(leaks, err.Error())
	}
	leaks = append(leaks, before.Diff(after)...)
	if len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "cluster tests: cluster %s left state behind:\n  %s\n", c.Name, strings.Join(leaks, "\n  "))
		code = 1
	} else {
		fmt.Fprintf(os.Stderr, "cluster tests: cluster %s stopped; nothing left behind\n", c.Name)
	}
	return code
}

// testTimeout is the value of go test's -timeout flag (0 if none).
func testTimeout() time.Duration {
	if !flag.Parsed() {
		flag.Parse()
	}
	if f := flag.Lookup("test.timeout"); f != nil {
		if g, ok := f.Value.(flag.Getter); ok {
			d, _ := g.Get().(time.Duration)
			return d
		}
	}
	return 0
}

// Require skips a test when the package's cluster could not be started for lack of root.
func Require(t testing.TB, c *Cluster) {
	t.Helper()
	if c == nil {
		t.Skip("skipping: the test cluster needs root (namespaces, mounts, cgroups); CI runs as root")
	}
}

var nonName = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace creates a namespace for one test, named after it, with the given labels, and
// deletes it when the test ends.
func (c *Cluster) Namespace(t testing.TB, labels map[string]string) string {
	t.Helper()
	suffix := make([]byte, 2)
	rand.Read(suffix)
	base := strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(base) > 50 {
		base = base[:50]
	}
	name := base + "-" + hex.EncodeToString(suffix)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.CreateNamespace(ctx, name, labels); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.DeleteNamespace(ctx, name); err != nil {
			t.Errorf("cleaning up: %v", err)
		}
	})
	return name
}
