package install

import (
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestParseSettingsRefusesWithTheValidChoices(t *testing.T) {
	for _, tc := range []struct {
		set  []string
		want []string // substrings of the error
	}{
		{[]string{"profile=ambiant"}, []string{`profile=ambiant`, "ambient, minimal"}},
		{[]string{"hubb=x"}, []string{"hubb", "profile=ambient|minimal", "values.<component>.<chart value>"}},
		{[]string{"noequals"}, []string{"want key=value"}},
		{[]string{"pullPolicy=Sometimes"}, []string{"Always, IfNotPresent or Never"}},
		{[]string{"components.waypoint.enabled=true"}, []string{`unknown component "waypoint"`, "base, gateway-api, istiod-lite, cni, ztunnel"}},
		{[]string{"components.cni.enabled=maybe"}, []string{"want true or false"}},
		{[]string{"components.cni.replicas=2"}, []string{"only the key enabled"}},
		{[]string{"values.ztunnel.logLevle=debug"}, []string{"values.ztunnel.logLevle", "values.ztunnel.logLevel", "values.ztunnel.image.tag"}},
		{[]string{"values.cni.image.digest=x"}, []string{"values.cni.image.digest", "values.cni.image.repository"}},
		{[]string{"values.base.anything=1"}, []string{"the base chart has no values"}},
		{[]string{"values.ztunnel=1"}, []string{"name a value of the ztunnel chart"}},
	} {
		_, err := ParseSettings(tc.set)
		if err == nil {
			t.Errorf("--set %v accepted; want an error", tc.set)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("--set %v: error %q does not say %q", tc.set, err, w)
			}
		}
	}
}

func TestParseSettings(t *testing.T) {
	s, err := ParseSettings([]string{"profile=minimal", "components.cni.enabled=true,hub=registry.example/ambit/",
		"tag=1.2", "values.cni.backend=nftables", "values.ztunnel.extraArgs={--a,--b}", "values.istiod-lite.nodeSelector.disk=ssd"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.Components(), []string{Base, IstiodLite, CNI}; !slices.Equal(got, want) {
		t.Errorf("components %v; want %v", got, want)
	}
	v := s.chartValues(CNI)
	img := v["image"].(map[string]any)
	if img["repository"] != "registry.example/ambit/cni-agent" || img["tag"] != "1.2" || v["backend"] != "nftables" {
		t.Errorf("cni values %v", v)
	}
	if args := s.Values[Ztunnel]["extraArgs"]; !slices.Equal(args.([]any), []any{"--a", "--b"}) {
		t.Errorf("ztunnel extraArgs %v; want [--a --b]", args)
	}
	def, err := ParseSettings(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := def.Components(); !slices.Equal(got, Order) {
		t.Errorf("the default profile installs %v; want every component %v", got, Order)
	}
}

// The rendered charts carry the settings, and every object is one a cluster can apply.
func TestRenderAmbient(t *testing.T) {
	s, err := ParseSettings([]string{"tag=v9", "pullPolicy=Never", "values.ztunnel.logLevel=debug"})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := Render(s)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	var images []string
	for _, m := range ms {
		objs, err := Decode(m.YAML())
		if err != nil {
			t.Fatalf("%s: %v", m.Component, err)
		}
		for _, o := range objs {
			if o.GetName() == "" {
				t.Errorf("%s: a %s without a name", m.Component, o.GetKind())
			}
			kinds[o.GetKind()]++
			clusterScoped := strings.HasPrefix(o.GetKind(), "Cluster") || o.GetKind() == "CustomResourceDefinition"
			if !clusterScoped && o.GetNamespace() != Namespace {
				t.Errorf("%s: %s %s in namespace %q; want %s", m.Component, o.GetKind(), o.GetName(), o.GetNamespace(), Namespace)
			}
			if o.GetKind() == "Deployment" || o.GetKind() == "DaemonSet" {
				cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
				for _, c := range cs {
					c := c.(map[string]any)
					images = append(images, c["image"].(string)+" "+c["imagePullPolicy"].(string))
					if o.GetName() == "ztunnel" && !slices.Contains(toStrings(c["args"]), "--log-level=debug") {
						t.Errorf("ztunnel args %v lack --log-level=debug", c["args"])
					}
				}
			}
		}
	}
	slices.Sort(images)
	want := []string{"ambit.local/cni-agent:v9 Never", "ambit.local/istiod-lite:v9 Never", "ambit.local/ztunnel:v9 Never"}
	if !slices.Equal(images, want) {
		t.Errorf("images %v; want %v", images, want)
	}
	// The Istio CRDs and the ten Gateway API CRDs.
	if kinds["CustomResourceDefinition"] < 20 || kinds["DaemonSet"] != 2 || kinds["Deployment"] != 1 {
		t.Errorf("kinds %v; want the CRDs, 2 DaemonSets and 1 Deployment", kinds)
	}
}

func toStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

func TestDecode(t *testing.T) {
	objs, err := Decode("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[0].GetName() != "a" || objs[1].GetKind() != "Service" {
		t.Fatalf("Decode = %v; want ConfigMap a and Service b", objs)
	}
	for _, bad := range []string{"kind: ConfigMap\nmetadata: {name: a}\n", "apiVersion: v1\nkind: [\n"} {
		if _, err := Decode(bad); err == nil {
			t.Errorf("Decode(%q) succeeded; want an error", bad)
		}
	}
}
