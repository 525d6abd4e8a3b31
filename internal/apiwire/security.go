package apiwire

import (
	"encoding/json"
	"strconv"
)

// The types below are the part of istio.security.Authorization (api/security) that ztunnel
// reads; extensions are skipped. Their JSON form is protobuf JSON's (protojson), which the
// config dump served before this package: lowerCamelCase names in the .proto's order, fields
// at their zero value left out, enums by name, bytes in base64.

// Authorization is an istio.security.Authorization.
type Authorization struct {
	Name      string `json:"name,omitempty"`      // 1
	Namespace string `json:"namespace,omitempty"` // 2
	Scope     Scope  `json:"scope,omitempty"`     // 3
	Action    Action `json:"action,omitempty"`    // 4
	Rules     []Rule `json:"rules,omitempty"`     // 5
	DryRun    bool   `json:"dryRun,omitempty"`    // 6
}

// Rule is an istio.security.Rule.
type Rule struct {
	Clauses []Clause `json:"clauses,omitempty"` // 1
}

// Clause is an istio.security.Clause.
type Clause struct {
	Matches []Match `json:"matches,omitempty"` // 2
}

// Match is an istio.security.Match.
type Match struct {
	Namespaces          []StringMatch         `json:"namespaces,omitempty"`          // 1
	NotNamespaces       []StringMatch         `json:"notNamespaces,omitempty"`       // 2
	ServiceAccounts     []ServiceAccountMatch `json:"serviceAccounts,omitempty"`     // 11
	NotServiceAccounts  []ServiceAccountMatch `json:"notServiceAccounts,omitempty"`  // 12
	Principals          []StringMatch         `json:"principals,omitempty"`          // 3
	NotPrincipals       []StringMatch         `json:"notPrincipals,omitempty"`       // 4
	SourceIPs           []CIDR                `json:"sourceIps,omitempty"`           // 5
	NotSourceIPs        []CIDR                `json:"notSourceIps,omitempty"`        // 6
	DestinationIPs      []CIDR                `json:"destinationIps,omitempty"`      // 7
	NotDestinationIPs   []CIDR                `json:"notDestinationIps,omitempty"`   // 8
	DestinationPorts    []uint32              `json:"destinationPorts,omitempty"`    // 9
	NotDestinationPorts []uint32              `json:"notDestinationPorts,omitempty"` // 10
}

// CIDR is an istio.security.Address: raw IP bytes and a prefix length.
type CIDR struct {
	Address []byte `json:"address,omitempty"` // 1
	Length  uint32 `json:"length,omitempty"`  // 2
}

// ServiceAccountMatch is an istio.security.ServiceAccountMatch.
type ServiceAccountMatch struct {
	Namespace      string `json:"namespace,omitempty"`      // 1
	ServiceAccount string `json:"serviceAccount,omitempty"` // 2
}

// StringMatch is an istio.security.StringMatch: Kind says which member of the oneof
// match_type is set, Value is its string (empty for MatchPresence and MatchNone).
type StringMatch struct {
	Kind  MatchKind
	Value string
}

// MatchKind is the member set in a StringMatch's oneof, numbered as its fields.
type MatchKind int

// The MatchKind values.
const (
	MatchNone     MatchKind = 0 // no member set
	MatchExact    MatchKind = 1
	MatchPrefix   MatchKind = 2
	MatchSuffix   MatchKind = 3
	MatchPresence MatchKind = 4 // google.protobuf.Empty
)

// MarshalJSON writes s as protobuf JSON does: the member set, even when its value is empty.
func (s StringMatch) MarshalJSON() ([]byte, error) {
	switch s.Kind {
	case MatchExact:
		return json.Marshal(map[string]string{"exact": s.Value})
	case MatchPrefix:
		return json.Marshal(map[string]string{"prefix": s.Value})
	case MatchSuffix:
		return json.Marshal(map[string]string{"suffix": s.Value})
	case MatchPresence:
		return []byte(`{"presence":{}}`), nil
	}
	return []byte(`{}`), nil
}

// Scope is istio.security.Scope.
type Scope int32

// The Scope values.
const (
	ScopeGlobal           Scope = 0
	ScopeNamespace        Scope = 1
	ScopeWorkloadSelector Scope = 2
)

var scopeNames = []string{"GLOBAL", "NAMESPACE", "WORKLOAD_SELECTOR"}

// String returns the value's name in the .proto, or its number when it has none.
func (s Scope) String() string { return enumName(scopeNames, int32(s)) }

// Known reports whether s is one of the values above.
func (s Scope) Known() bool { return s >= 0 && int(s) < len(scopeNames) }

// MarshalJSON writes the value's name, or its number when it has none (as protobuf JSON does).
func (s Scope) MarshalJSON() ([]byte, error) { return enumJSON(s.Known(), s.String()) }

// Action is istio.security.Action.
type Action int32

// The Action values.
const (
	ActionAllow Action = 0
	ActionDeny  Action = 1
)

var actionNames = []string{"ALLOW", "DENY"}

// String returns the value's name in the .proto, or its number when it has none.
func (a Action) String() string { return enumName(actionNames, int32(a)) }

// Known reports whether a is one of the values above.
func (a Action) Known() bool { return a >= 0 && int(a) < len(actionNames) }

// MarshalJSON writes the value's name, or its number when it has none.
func (a Action) MarshalJSON() ([]byte, error) { return enumJSON(a.Known(), a.String()) }

func enumJSON(known bool, s string) ([]byte, error) {
	if known {
		return []byte(strconv.Quote(s)), nil
	}
	return []byte(s), nil
}

// DecodeAuthorization decodes an istio.security.Authorization, the body of an xDS
// Authorization resource. Errors wrap ErrMalformed.
func DecodeAuthorization(b []byte) (*Authorization, error) {
	a := &Authorization{}
	if err := a.decode(b); err != nil {
		return nil, malformed(err)
	}
	return a, nil
}

func (a *Authorization) decode(b []byte) error {
	d := decoder{msg: "istio.security.Authorization", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			a.Name, err = d.string("name")
		case 2:
			a.Namespace, err = d.string("namespace")
		case 3:
			err = setEnum(&d, "scope", &a.Scope)
		case 4:
			err = setEnum(&d, "action", &a.Action)
		case 5:
			var r Rule
			err = d.message("rules", r.decode)
			a.Rules = append(a.Rules, r)
		case 6:
			a.DryRun, err = d.bool("dry_run")
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (r *Rule) decode(b []byte) error {
	d := decoder{msg: "istio.security.Rule", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		if d.num == 1 {
			var c Clause
			err = d.message("clauses", c.decode)
			r.Clauses = append(r.Clauses, c)
		} else {
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (c *Clause) decode(b []byte) error {
	d := decoder{msg: "istio.security.Clause", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		if d.num == 2 {
			var m Match
			err = d.message("matches", m.decode)
			c.Matches = append(c.Matches, m)
		} else {
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (m *Match) decode(b []byte) error {
	d := decoder{msg: "istio.security.Match", b: b}
	strs := func(field string, dst *[]StringMatch) error {
		var s StringMatch
		err := d.message(field, s.decode)
		*dst = append(*dst, s)
		return err
	}
	sas := func(field string, dst *[]ServiceAccountMatch) error {
		var s ServiceAccountMatch
		err := d.message(field, s.decode)
		*dst = append(*dst, s)
		return err
	}
	cidrs := func(field string, dst *[]CIDR) error {
		var c CIDR
		err := d.message(field, c.decode)
		*dst = append(*dst, c)
		return err
	}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			err = strs("namespaces", &m.Namespaces)
		case 2:
			err = strs("not_namespaces", &m.NotNamespaces)
		case 11:
			err = sas("service_accounts", &m.ServiceAccounts)
		case 12:
			err = sas("not_service_accounts", &m.NotServiceAccounts)
		case 3:
			err = strs("principals", &m.Principals)
		case 4:
			err = strs("not_principals", &m.NotPrincipals)
		case 5:
			err = cidrs("source_ips", &m.SourceIPs)
		case 6:
			err = cidrs("not_source_ips", &m.NotSourceIPs)
		case 7:
			err = cidrs("destination_ips", &m.DestinationIPs)
		case 8:
			err = cidrs("not_destination_ips", &m.NotDestinationIPs)
		case 9:
			m.DestinationPorts, err = d.appendUint32s("destination_ports", m.DestinationPorts)
		case 10:
			m.NotDestinationPorts, err = d.appendUint32s("not_destination_ports", m.NotDestinationPorts)
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (c *CIDR) decode(b []byte) error {
	d := decoder{msg: "istio.security.Address", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			c.Address, err = d.bytes("address")
		case 2:
			c.Length, err = d.uint32("length")
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (s *ServiceAccountMatch) decode(b []byte) error {
	d := decoder{msg: "istio.security.ServiceAccountMatch", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			s.Namespace, err = d.string("namespace")
		case 2:
			s.ServiceAccount, err = d.string("serviceAccount")
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (s *StringMatch) decode(b []byte) error {
	d := decoder{msg: "istio.security.StringMatch", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1, 2, 3:
			field := [...]string{1: "exact", 2: "prefix", 3: "suffix"}[d.num]
			s.Kind = MatchKind(d.num)
			s.Value, err = d.string(field)
		case 4:
			s.Kind, s.Value = MatchPresence, ""
			err = d.message("presence", func(b []byte) error { return checkEmpty("google.protobuf.Empty", b) })
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}
