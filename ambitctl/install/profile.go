// Package install renders Ambit's charts (deploy/charts, embedded in the binary) for an install
// profile and --set values, applies them to a cluster in order, waits for each component to be
// ready (reporting why a pod is not), and removes them again. It is what `ambitctl install`,
// `uninstall` and `manifest generate` run.
package install

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"helm.sh/helm/v3/pkg/strvals"
)

// Namespace is where Ambit's components run, as Istio's do.
const Namespace = "istio-system"

// Components, in install order. Each is one chart of deploy/charts.
const (
	Base       = "base"
	GatewayAPI = "gateway-api"
	IstiodLite = "istiod-lite"
	CNI        = "cni"
	Ztunnel    = "ztunnel"
)

// Order is the install order of the components.
var Order = []string{Base, GatewayAPI, IstiodLite, CNI, Ztunnel}

// Profiles are the components each install profile enables.
var Profiles = map[string][]string{
	// ambient is the L4 mesh: the CRDs, the control plane, the node agent and ztunnel, and the
	// Gateway API CRDs that waypoints need (only where the cluster does not have them yet).
	"ambient": {Base, GatewayAPI, IstiodLite, CNI, Ztunnel},
	// minimal is the control plane alone.
	"minimal": {Base, IstiodLite},
}

// DefaultProfile is the profile of an install that names none.
const DefaultProfile = "ambient"

// images are the images of the components that run a binary.
var images = map[string]string{IstiodLite: "istiod-lite", CNI: "cni-agent", Ztunnel: "ztunnel"}

// Settings are an install's choices, from --set flags.
type Settings struct {
	Profile string
	// Hub, Tag and PullPolicy override the image of every component (empty: the charts'
	// defaults, ambit.local/<image>:dev).
	Hub, Tag, PullPolicy string
	// Enabled overrides the profile per component.
	Enabled map[string]bool
	// Values are chart values per component, over the chart's defaults.
	Values map[string]map[string]any
}

// settingKeys lists the --set keys, for error messages.
var settingKeys = []string{
	"profile=" + strings.Join(slices.Sorted(maps.Keys(Profiles)), "|"),
	"hub=REGISTRY", "tag=TAG", "pullPolicy=Always|IfNotPresent|Never",
	"components.<component>.enabled=true|false",
	"values.<component>.<chart value>=VALUE",
}

// ParseSettings reads --set flags (key=value; several may be given, comma-separated, as with
// helm). It refuses unknown keys, profiles, components and chart values with the valid ones.
func ParseSettings(sets []string) (Settings, error) {
	s := Settings{Profile: DefaultProfile, Enabled: map[string]bool{}, Values: map[string]map[string]any{}}
	for _, set := range sets {
		for _, kv := range splitSets(set) {
			if err := s.set(kv); err != nil {
				return Settings{}, err
			}
		}
	}
	for comp, vals := range s.Values {
		if err := checkValues(comp, vals); err != nil {
			return Settings{}, err
		}
	}
	return s, nil
}

// splitSets splits "a=1,b=2" into its key=value pairs, keeping commas inside {...} lists
// (values.ztunnel.extraArgs={--a,--b}).
func splitSets(set string) []string {
	var out []string
	depth, start := 0, 0
	for i, r := range set {
		switch r {
		case '{':
			depth++
		case '}':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, set[start:i])
				start = i + 1
			}
		}
	}
	return append(out, set[start:])
}

func (s *Settings) set(kv string) error {
	key, value, ok := strings.Cut(kv, "=")
	if !ok || key == "" {
		return fmt.Errorf("--set %q: want key=value; keys are %s", kv, strings.Join(settingKeys, ", "))
	}
	switch {
	case key == "profile":
		if _, ok := Profiles[value]; !ok {
			return fmt.Errorf("--set profile=%s: unknown profile; profiles are %s", value, strings.Join(slices.Sorted(maps.Keys(Profiles)), ", "))
		}
		s.Profile = value
	case key == "hub":
		s.Hub = strings.TrimSuffix(value, "/")
	case key == "tag":
		s.Tag = value
	case key == "pullPolicy":
		if !slices.Contains([]string{"Always", "IfNotPresent", "Never"}, value) {
			return fmt.Errorf("--set pullPolicy=%s: want Always, IfNotPresent or Never", value)
		}
		s.PullPolicy = value
	case strings.HasPrefix(key, "components."):
		comp, field, _ := strings.Cut(strings.TrimPrefix(key, "components."), ".")
		if !slices.Contains(Order, comp) {
			return fmt.Errorf("--set %s: unknown component %q; components are %s", key, comp, strings.Join(Order, ", "))
		}
		if field != "enabled" {
			return fmt.Errorf("--set %s: a component has only the key enabled (components.%s.enabled=true|false)", key, comp)
		}
		on, err := strconv.ParseBool(value)
		if err != nil {
			return fmt.Errorf("--set %s=%s: want true or false", key, value)
		}
		s.Enabled[comp] = on
	case strings.HasPrefix(key, "values."):
		comp, path, _ := strings.Cut(strings.TrimPrefix(key, "values."), ".")
		if !slices.Contains(Order, comp) {
			return fmt.Errorf("--set %s: unknown component %q; components are %s", key, comp, strings.Join(Order, ", "))
		}
		if path == "" {
			return fmt.Errorf("--set %s: name a value of the %s chart (values.%s.<key>=VALUE)", key, comp, comp)
		}
		if s.Values[comp] == nil {
			s.Values[comp] = map[string]any{}
		}
		if err := strvals.ParseInto(path+"="+value, s.Values[comp]); err != nil {
			return fmt.Errorf("--set %s: %w", kv, err)
		}
	default:
		return fmt.Errorf("--set %s: unknown key; keys are %s", key, strings.Join(settingKeys, ", "))
	}
	return nil
}

// Components returns the enabled components in install order.
func (s Settings) Components() []string {
	var out []string
	for _, c := range Order {
		on := slices.Contains(Profiles[s.Profile], c)
		if v, ok := s.Enabled[c]; ok {
			on = v
		}
		if on {
			out = append(out, c)
		}
	}
	return out
}

// chartValues returns the values for component's chart: the image settings, then the user's
// values over them.
func (s Settings) chartValues(component string) map[string]any {
	out := map[string]any{}
	if img, ok := images[component]; ok {
		image := map[string]any{}
		if s.Hub != "" {
			image["repository"] = s.Hub + "/" + img
		}
		if s.Tag != "" {
			image["tag"] = s.Tag
		}
		if s.PullPolicy != "" {
			image["pullPolicy"] = s.PullPolicy
		}
		if len(image) > 0 {
			out["image"] = image
		}
	}
	return mergeValues(out, s.Values[component])
}

// mergeValues returns a copy of base with over merged into it (maps merge, other values replace).
func mergeValues(base, over map[string]any) map[string]any {
	out := maps.Clone(base)
	for k, v := range over {
		if bm, ok := out[k].(map[string]any); ok {
			if om, ok := v.(map[string]any); ok {
				out[k] = mergeValues(bm, om)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// SettingKeys lists the --set keys with their forms, for help texts.
func SettingKeys() []string { return slices.Clone(settingKeys) }
