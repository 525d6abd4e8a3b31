package main

import (
	"bytes"
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestLinksNoHeavyPackages keeps out of ztunnel's binary the packages it was slimmed of: its
// resident memory is mostly the binary's own pages (issue #4). The check is on the whole
// import graph, which depguard's per-file rules cannot see.
func TestLinksNoHeavyPackages(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is not on PATH (%v): it lists the imports", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The tags of the Makefile's builds, whatever GOFLAGS this test runs with.
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, goTool, "list", "-deps", "-tags=grpcnotrace", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", ".")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, stderr.Bytes())
	}
	banned := []struct{ prefix, why string }{
		{"github.com/envoyproxy/", "Envoy's API tree is ~3 MB; speak xDS with api/discovery"},
		{"github.com/cncf/xds/", "comes with Envoy's API tree"},
		{"net/http/pprof", "links the profile parser; ztunnel/admin serves pprof on runtime/pprof"},
		{"html/template", "its reflect method lookups keep every exported method in the binary (2.3 MB)"},
		{"text/template", "its reflect method lookups keep every exported method in the binary (2.3 MB)"},
		{"google.golang.org/grpc", "grpc-go is ~1 MB of binary; ztunnel calls istiod-lite with internal/grpcwire (api/ca's generated service links it: encode the CA messages by hand, as ztunnel/certs does)"},
		{"github.com/prometheus/", "client_golang with its model, expfmt and procfs is ~0.5 MB; ztunnel/metrics writes the exposition with internal/prom (tests may still parse it with expfmt)"},
		{"github.com/ambit-mesh/ambit/api/", "the generated messages link protobuf's runtime; decode and encode them with internal/apiwire (xDS, workloads, policies) or internal/zds (ZDS)"},
		{"google.golang.org/protobuf/", "protobuf's runtime and descriptor registry are ~1.9 MB of binary and heap at start; only encoding/protowire (with its small internal deps) is allowed, for internal/apiwire, internal/zds and ztunnel/certs"},
	}
	// protowire and what it imports: the varint and tag helpers the hand-written codecs use.
	allowed := map[string]bool{
		"google.golang.org/protobuf/encoding/protowire": true,
		"google.golang.org/protobuf/internal/errors":    true,
		"google.golang.org/protobuf/internal/detrand":   true,
	}
	// Exact names: their subpackages (x/net/http2/hpack) are fine.
	bannedExact := map[string]string{
		"golang.org/x/net/http2": "it imports net/http; internal/hbone frames HTTP/2 itself (x/net/http2/hpack alone is fine)",
	}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		pkg, imports := f[0], f[1:]
		for _, b := range banned {
			if strings.HasPrefix(pkg, b.prefix) && !allowed[pkg] {
				t.Errorf("ztunnel links %s: %s (find the importer with go list -deps -f '{{.ImportPath}} {{.Imports}}' ./ztunnel)", pkg, b.why)
			}
		}
		if why, ok := bannedExact[pkg]; ok {
			t.Errorf("ztunnel links %s: %s (find the importer with go list -deps -f '{{.ImportPath}} {{.Imports}}' ./ztunnel)", pkg, why)
		}
		// With its HTTP/2 bundle, idna and mime, net/http is about 1 MB of binary.
		if slices.Contains(imports, "net/http") {
			t.Errorf("%s imports net/http, which is about 1 MB of ztunnel's binary: serve HTTP with internal/httpserve, call gRPC with internal/grpcwire", pkg)
		}
	}
}

// TestGrpcwireLinksNoNetHTTP keeps net/http out of internal/grpcwire, ztunnel's gRPC client:
// it speaks HTTP/2 itself (with x/net's hpack only), so that ztunnel can leave net/http out.
func TestGrpcwireLinksNoNetHTTP(t *testing.T) {
	for _, pkg := range listDeps(t, "github.com/ambit-mesh/ambit/internal/grpcwire") {
		if pkg == "net/http" || strings.HasPrefix(pkg, "net/http/") || pkg == "golang.org/x/net/http2" {
			t.Errorf("internal/grpcwire links %s: it writes its HTTP/2 frames itself; net/http's client (or x/net/http2, which imports net/http) would bring net/http back into ztunnel, about 0.9 MB of its binary (find the importer with go list -deps -f '{{.ImportPath}} {{.Imports}}' ./internal/grpcwire)", pkg)
		}
	}
}

// listDeps returns what go list -deps says pkg links, with the tags of the Makefile's builds.
func listDeps(t *testing.T, pkg string) []string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is not on PATH (%v): it lists the imports", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, goTool, "list", "-deps", "-tags=grpcnotrace", pkg)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr.Bytes())
	}
	return strings.Fields(string(out))
}
