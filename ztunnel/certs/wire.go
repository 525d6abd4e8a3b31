package certs

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ambit-mesh/ambit/internal/apiwire"
)

// createCertificateMethod is Istio's CA method (api/ca's IstioCertificateService).
const createCertificateMethod = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

// The CA's two messages are encoded here by hand rather than with api/ca's generated types:
// that package also holds the generated gRPC service istiod-lite serves, which links grpc-go
// into whatever imports it (issue #4). Field numbers are api/ca/ca.proto's; the tests compare
// the bytes with the generated types'.
const (
	reqCSR              = 1 // IstioCertificateRequest.csr, string
	reqValidityDuration = 3 // IstioCertificateRequest.validity_duration, int64
	reqMetadata         = 4 // IstioCertificateRequest.metadata, google.protobuf.Struct
	respCertChain       = 1 // IstioCertificateResponse.cert_chain, repeated string
)

// marshalRequest encodes an IstioCertificateRequest whose metadata Struct holds md's strings
// (no Struct when md is nil). Zero fields are left out, as proto3 does.
func marshalRequest(csr string, validitySeconds int64, md map[string]string) []byte {
	var b []byte
	if csr != "" {
		b = protowire.AppendTag(b, reqCSR, protowire.BytesType)
		b = protowire.AppendString(b, csr)
	}
	if validitySeconds != 0 {
		b = protowire.AppendTag(b, reqValidityDuration, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(validitySeconds))
	}
	if md != nil {
		b = protowire.AppendTag(b, reqMetadata, protowire.BytesType)
		b = protowire.AppendBytes(b, apiwire.AppendStruct(nil, md))
	}
	return b
}

var errMalformed = errors.New("malformed IstioCertificateResponse")

// unmarshalResponse decodes an IstioCertificateResponse's cert_chain; other fields are skipped.
// It accepts what the generated decoder accepts (FuzzResponse checks).
func unmarshalResponse(b []byte) ([]string, error) {
	var chain []string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("%w: %w", errMalformed, protowire.ParseError(n))
		}
		if !num.IsValid() {
			return nil, fmt.Errorf("%w: field number %d", errMalformed, num)
		}
		b = b[n:]
		if num == respCertChain && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, fmt.Errorf("%w: cert_chain[%d]: %w", errMalformed, len(chain), protowire.ParseError(n))
			}
			if !utf8.Valid(v) {
				return nil, fmt.Errorf("%w: cert_chain[%d] is not UTF-8", errMalformed, len(chain))
			}
			chain = append(chain, string(v))
			b = b[n:]
			continue
		}
		// Anything else, cert_chain with another wire type included, is an unknown field, as
		// for the generated decoder.
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil, fmt.Errorf("%w: field %d: %w", errMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return chain, nil
}
