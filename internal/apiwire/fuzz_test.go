package apiwire_test

import (
	"testing"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/api/workload"
)

// FuzzDecodeAddress compares DecodeAddress with the generated decoder: where both accept the
// input they must agree on every field apiwire reads. (apiwire refuses more: a field it reads
// with the wrong wire type is an error, which protobuf keeps as an unknown field.)
func FuzzDecodeAddress(f *testing.F) {
	for _, a := range []*workload.Address{
		{Type: &workload.Address_Workload{Workload: fullWorkload()}},
		{Type: &workload.Address_Service{Service: fullService()}},
		{},
	} {
		f.Add(marshal(f, a))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		compareAddress(t, b, false)
	})
}

// FuzzDecodeAuthorization does the same for DecodeAuthorization.
func FuzzDecodeAuthorization(f *testing.F) {
	for _, a := range []*security.Authorization{fullAuthorization(), {}} {
		f.Add(marshal(f, a))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		compareAuthorization(t, b, false)
	})
}
