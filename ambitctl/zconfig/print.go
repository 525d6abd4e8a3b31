package zconfig

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// The parts of ztunnel's config dump the tables show (ztunnel/state and ztunnel/certs
// write them; unknown fields are ignored, so either side may grow).
type (
	workload struct {
		UID            string           `json:"uid"`
		Name           string           `json:"name"`
		Namespace      string           `json:"namespace"`
		Addresses      []string         `json:"addresses"`
		HBONE          bool             `json:"hbone"`
		TrustDomain    string           `json:"trustDomain"`
		ServiceAccount string           `json:"serviceAccount"`
		Node           string           `json:"node"`
		Services       map[string][]any `json:"services"`
		Waypoint       *gatewayAddress  `json:"waypoint"`
		Healthy        bool             `json:"healthy"`
	}
	// gatewayAddress is how ztunnel's dump writes a waypoint: the workload API's
	// GatewayAddress with its oneof under "Destination" and the address as base64 bytes.
	gatewayAddress struct {
		Destination struct {
			Hostname *struct {
				Namespace string `json:"namespace"`
				Hostname  string `json:"hostname"`
			} `json:"Hostname"`
			Address *struct {
				Address []byte `json:"address"`
			} `json:"Address"`
		} `json:"Destination"`
	}
	service struct {
		Key       string `json:"key"`
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
		Hostname  string `json:"hostname"`
		VIPs      []struct {
			Addr string `json:"addr"`
		} `json:"vips"`
		Waypoint *gatewayAddress `json:"waypoint"`
	}
	policy struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
		Scope     string `json:"scope"`
		Action    string `json:"action"`
	}
	certificate struct {
		Identity  string    `json:"identity"`
		Ready     bool      `json:"ready"`
		Serial    string    `json:"serial"`
		NotBefore time.Time `json:"notBefore"`
		NotAfter  time.Time `json:"notAfter"`
		LastError string    `json:"lastError"`
	}
)

// Node is one ztunnel's dump of a section (and of workloads, for the services table's
// endpoint counts).
type Node struct {
	Name      string
	Section   []byte
	Workloads []byte
}

// PrintTable writes the section of every node as one table; with more than one node the
// first column names the node.
func PrintTable(w io.Writer, section string, nodes []Node) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	multi := len(nodes) > 1
	t, ok := tables[section]
	if !ok {
		return fmt.Errorf("section %q: want one of %s", section, strings.Join(Sections, ", "))
	}
	if multi {
		fmt.Fprint(tw, "ZTUNNEL NODE\t")
	}
	fmt.Fprintln(tw, t.header)
	for _, n := range nodes {
		rows, err := t.rows(n)
		if err != nil {
			return fmt.Errorf("ztunnel on %s: %w", n.Name, err)
		}
		for _, r := range rows {
			if multi {
				fmt.Fprint(tw, n.Name+"\t")
			}
			fmt.Fprintln(tw, r)
		}
	}
	return tw.Flush()
}

// table is a section's header (tab-separated) and its rows for one ztunnel.
type table struct {
	header string
	rows   func(Node) ([]string, error)
}

var tables = map[string]table{
	"workloads":    {"NAMESPACE\tPOD NAME\tADDRESS\tNODE\tWAYPOINT\tPROTOCOL\tIDENTITY", func(n Node) ([]string, error) { return workloadRows(n.Section) }},
	"services":     {"NAMESPACE\tSERVICE NAME\tSERVICE VIP\tWAYPOINT\tENDPOINTS", func(n Node) ([]string, error) { return serviceRows(n.Section, n.Workloads) }},
	"policies":     {"NAMESPACE\tPOLICY NAME\tACTION\tSCOPE", func(n Node) ([]string, error) { return policyRows(n.Section) }},
	"certificates": {"CERTIFICATE NAME\tSTATUS\tSERIAL NUMBER\tNOT AFTER\tNOT BEFORE", func(n Node) ([]string, error) { return certificateRows(n.Section) }},
}

func decode[T any](raw []byte, what string) ([]T, error) {
	var out []T
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("decoding the %s section: %w", what, err)
	}
	return out, nil
}

func workloadRows(raw []byte) ([]string, error) {
	ws, err := decode[workload](raw, "workloads")
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ws, func(a, b workload) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	var rows []string
	for _, w := range ws {
		proto := "TCP"
		if w.HBONE {
			proto = "HBONE"
		}
		id := "spiffe://" + w.TrustDomain + "/ns/" + w.Namespace + "/sa/" + w.ServiceAccount
		rows = append(rows, strings.Join([]string{w.Namespace, w.Name, strings.Join(w.Addresses, ","), w.Node, waypointName(w.Waypoint), proto, id}, "\t"))
	}
	return rows, nil
}

func waypointName(g *gatewayAddress) string {
	switch {
	case g == nil:
		return "None"
	case g.Destination.Hostname != nil:
		return g.Destination.Hostname.Hostname
	case g.Destination.Address != nil:
		if a, ok := netip.AddrFromSlice(g.Destination.Address.Address); ok {
			return a.String()
		}
		return fmt.Sprintf("invalid address %x", g.Destination.Address.Address)
	}
	return "None"
}

func serviceRows(raw, workloads []byte) ([]string, error) {
	svcs, err := decode[service](raw, "services")
	if err != nil {
		return nil, err
	}
	ws, err := decode[workload](workloads, "workloads")
	if err != nil {
		return nil, err
	}
	endpoints := map[string]int{}
	for _, w := range ws {
		for key := range w.Services {
			endpoints[key]++
		}
	}
	var rows []string
	for _, s := range svcs {
		var vips []string
		for _, v := range s.VIPs {
			vips = append(vips, v.Addr)
		}
		rows = append(rows, strings.Join([]string{s.Namespace, s.Name, strings.Join(vips, ","), waypointName(s.Waypoint), fmt.Sprint(endpoints[s.Key])}, "\t"))
	}
	return rows, nil
}

func policyRows(raw []byte) ([]string, error) {
	ps, err := decode[policy](raw, "policies")
	if err != nil {
		return nil, err
	}
	var rows []string
	for _, p := range ps {
		// protobuf JSON leaves enums at their zero value out.
		action, scope := p.Action, p.Scope
		if action == "" {
			action = "ALLOW"
		}
		if scope == "" {
			scope = "GLOBAL"
		}
		rows = append(rows, strings.Join([]string{p.Namespace, p.Name, action, scope}, "\t"))
	}
	return rows, nil
}

func certificateRows(raw []byte) ([]string, error) {
	cs, err := decode[certificate](raw, "certificates")
	if err != nil {
		return nil, err
	}
	var rows []string
	for _, c := range cs {
		status := "Available"
		switch {
		case !c.Ready && c.LastError != "":
			status = "Failed: " + c.LastError
		case !c.Ready:
			status = "Pending"
		case time.Now().After(c.NotAfter):
			status = "Expired"
		}
		rows = append(rows, strings.Join([]string{c.Identity, status, c.Serial, formatTime(c.NotAfter), formatTime(c.NotBefore)}, "\t"))
	}
	return rows, nil
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
