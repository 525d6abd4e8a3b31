package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func execute(args ...string) (string, error) {
	var out bytes.Buffer
	root := newRoot(&out, &out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// Bad input is refused before any cluster is needed, naming what is valid.
func TestBadInputIsRefusedWithTheChoices(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"install", "--set", "profile=demo"}, "profiles are ambient, minimal"},
		{[]string{"manifest", "generate", "--set", "values.istiod-lite.replica=2"}, "values.istiod-lite.replicas"},
		{[]string{"ztunnel-config", "clusters"}, "workloads, services, policies, certificates"},
		{[]string{"ztunnel-config"}, "name one section"},
		{[]string{"ztunnel-config", "workloads", "-o", "yaml"}, "want table or json"},
		{[]string{"waypoint", "delete", "a", "--all"}, "not both"},
	} {
		_, err := execute(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ambitctl %s: %v; want an error saying %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

func TestManifestGenerate(t *testing.T) {
	out, err := execute("manifest", "generate", "--set", "profile=minimal", "--set", "tag=t1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: CustomResourceDefinition", "name: authorizationpolicies.security.istio.io", `image: "ambit.local/istiod-lite:t1"`} {
		if !strings.Contains(out, want) {
			t.Errorf("manifest generate lacks %q", want)
		}
	}
	if strings.Contains(out, "kind: DaemonSet") {
		t.Error("the minimal profile renders a DaemonSet; want only the CRDs and istiod-lite")
	}
}
