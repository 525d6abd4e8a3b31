package hbone

import (
	"net/textproto"
	"strconv"
)

// Header holds the regular header fields of a CONNECT request, keyed by canonical name
// ("Forwarded", "Traceparent", "Baggage"; see CanonicalHeaderKey). It has the layout of
// net/http's Header, so one converts to the other; hbone's API does not use net/http.
// Fields are sent lower-cased, as HTTP/2 requires.
type Header map[string][]string

// CanonicalHeaderKey returns the canonical form of a header name: the first letter and
// each letter after a hyphen upper case, the rest lower case ("x-forwarded-for" ->
// "X-Forwarded-For"). A name holding a space or another character that is not valid in a
// header name is returned unchanged. It is net/http's canonical form.
func CanonicalHeaderKey(name string) string { return textproto.CanonicalMIMEHeaderKey(name) }

// Get returns the first value of the field name (any case), or "".
func (h Header) Get(name string) string {
	if vs := h[CanonicalHeaderKey(name)]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// Values returns every value of the field name (any case); the slice must not be changed.
func (h Header) Values(name string) []string { return h[CanonicalHeaderKey(name)] }

// Set replaces the values of the field name with value.
func (h Header) Set(name, value string) { h[CanonicalHeaderKey(name)] = []string{value} }

// Add appends value to the values of the field name.
func (h Header) Add(name, value string) {
	k := CanonicalHeaderKey(name)
	h[k] = append(h[k], value)
}

// Del removes the field name.
func (h Header) Del(name string) { delete(h, CanonicalHeaderKey(name)) }

// The statuses an HBONE server answers a CONNECT request with (RFC 9110 section 15).
const (
	StatusOK                  = 200
	StatusBadRequest          = 400
	StatusUnauthorized        = 401
	StatusForbidden           = 403
	StatusNotFound            = 404
	StatusInternalServerError = 500
	StatusBadGateway          = 502
	StatusServiceUnavailable  = 503
	StatusGatewayTimeout      = 504
)

// StatusText returns the reason phrase of the statuses above and a few others a peer
// might send, or "status <code>" for the rest; it is for error messages only.
func StatusText(code int) string {
	switch code {
	case StatusOK:
		return "OK"
	case StatusBadRequest:
		return "Bad Request"
	case StatusUnauthorized:
		return "Unauthorized"
	case StatusForbidden:
		return "Forbidden"
	case StatusNotFound:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 408:
		return "Request Timeout"
	case 429:
		return "Too Many Requests"
	case StatusInternalServerError:
		return "Internal Server Error"
	case 501:
		return "Not Implemented"
	case StatusBadGateway:
		return "Bad Gateway"
	case StatusServiceUnavailable:
		return "Service Unavailable"
	case StatusGatewayTimeout:
		return "Gateway Timeout"
	}
	return "status " + strconv.Itoa(code)
}
