package apiwire

import (
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
)

// DeltaRequest is the part of an ambit.discovery.v3.DeltaDiscoveryRequest (api/discovery,
// Envoy's wire format) that ztunnel sends.
type DeltaRequest struct {
	Node                     *Node             // 1
	TypeURL                  string            // 2
	ResourceNamesSubscribe   []string          // 3
	ResourceNamesUnsubscribe []string          // 4
	InitialResourceVersions  map[string]string // 5
	ResponseNonce            string            // 6
	ErrorDetail              *Status           // 7
}

// Node is an ambit.discovery.v3.Node: its id and a metadata Struct of string values.
type Node struct {
	ID       string            // 1
	Metadata map[string]string // 3, a google.protobuf.Struct; nil: no Struct
}

// Status is an ambit.discovery.v3.Status (google.rpc.Status without details).
type Status struct {
	Code    int32  // 1
	Message string // 2
}

// Marshal encodes r, fields in number order, map entries by key, zero fields left out as
// proto3 does.
func (r *DeltaRequest) Marshal() []byte {
	var b []byte
	if n := r.Node; n != nil {
		var nb []byte
		nb = appendString(nb, 1, n.ID)
		if n.Metadata != nil {
			nb = protowire.AppendTag(nb, 3, protowire.BytesType)
			nb = protowire.AppendBytes(nb, AppendStruct(nil, n.Metadata))
		}
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, nb)
	}
	b = appendString(b, 2, r.TypeURL)
	for _, s := range r.ResourceNamesSubscribe {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	for _, s := range r.ResourceNamesUnsubscribe {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	keys := make([]string, 0, len(r.InitialResourceVersions))
	for k := range r.InitialResourceVersions {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, k)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendString(entry, r.InitialResourceVersions[k])
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, entry)
	}
	b = appendString(b, 6, r.ResponseNonce)
	if s := r.ErrorDetail; s != nil {
		var sb []byte
		if s.Code != 0 {
			sb = protowire.AppendTag(sb, 1, protowire.VarintType)
			sb = protowire.AppendVarint(sb, uint64(int64(s.Code)))
		}
		sb = appendString(sb, 2, s.Message)
		b = protowire.AppendTag(b, 7, protowire.BytesType)
		b = protowire.AppendBytes(b, sb)
	}
	return b
}

// appendString appends a singular string field unless it is empty (proto3 leaves it out).
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// DeltaResponse is the part of an ambit.discovery.v3.DeltaDiscoveryResponse that ztunnel
// reads.
type DeltaResponse struct {
	Resources        []Resource // 2
	TypeURL          string     // 4
	Nonce            string     // 5
	RemovedResources []string   // 6
}

// Resource is an ambit.discovery.v3.Resource. Body is its google.protobuf.Any, nil when absent.
type Resource struct {
	Version string   // 1
	Body    *Any     // 2
	Name    string   // 3
	Aliases []string // 4
}

// Any is a google.protobuf.Any: the type of the message Value encodes.
type Any struct {
	TypeURL string // 1
	Value   []byte // 2
}

// DecodeDeltaResponse decodes a DeltaDiscoveryResponse. The resources' bodies are copies, so
// keeping one does not keep b. Errors wrap ErrMalformed.
func DecodeDeltaResponse(b []byte) (*DeltaResponse, error) {
	r := &DeltaResponse{}
	d := decoder{msg: "ambit.discovery.v3.DeltaDiscoveryResponse", b: b}
	for {
		ok, err := d.next()
		if err != nil {
			return nil, malformed(err)
		}
		if !ok {
			return r, nil
		}
		switch d.num {
		case 2:
			var res Resource
			err = d.message("resources", res.decode)
			r.Resources = append(r.Resources, res)
		case 4:
			r.TypeURL, err = d.string("type_url")
		case 5:
			r.Nonce, err = d.string("nonce")
		case 6:
			var name string
			name, err = d.string("removed_resources")
			r.RemovedResources = append(r.RemovedResources, name)
		default:
			err = d.skip()
		}
		if err != nil {
			return nil, malformed(err)
		}
	}
}

func (r *Resource) decode(b []byte) error {
	d := decoder{msg: "ambit.discovery.v3.Resource", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			r.Version, err = d.string("version")
		case 2:
			if r.Body == nil {
				r.Body = &Any{}
			}
			err = d.message("resource", r.Body.decode)
		case 3:
			r.Name, err = d.string("name")
		case 4:
			var a string
			a, err = d.string("aliases")
			r.Aliases = append(r.Aliases, a)
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (a *Any) decode(b []byte) error {
	d := decoder{msg: "google.protobuf.Any", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			a.TypeURL, err = d.string("type_url")
		case 2:
			a.Value, err = d.bytes("value")
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}
