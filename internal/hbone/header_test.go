package hbone

import (
	"net/http"
	"testing"
)

// Header and its canonical keys behave as net/http's, which peers (and the tests' x/net/http2
// interop) use.
func TestHeader(t *testing.T) {
	for _, name := range []string{"forwarded", "TRACEPARENT", "x-forwarded-for", "x_y", "bad name", "a--b", "", "ünï"} {
		if got, want := CanonicalHeaderKey(name), http.CanonicalHeaderKey(name); got != want {
			t.Errorf("CanonicalHeaderKey(%q): got %q, want net/http's %q", name, got, want)
		}
	}
	h := Header{}
	h.Add("baggage", "a=1")
	h.Add("Baggage", "b=2")
	h.Set("forwarded", `for="10.0.0.1:1"`)
	if got := h.Get("BAGGAGE"); got != "a=1" {
		t.Errorf("Get: got %q, want the first value a=1", got)
	}
	if got := h.Values("baggage"); len(got) != 2 || got[1] != "b=2" {
		t.Errorf("Values: got %q, want [a=1 b=2]", got)
	}
	hh := http.Header(h)
	if got := hh.Get("Forwarded"); got != `for="10.0.0.1:1"` {
		t.Errorf("as net/http's Header: got %q", got)
	}
	h.Del("FORWARDED")
	if got := h.Get("forwarded"); got != "" || len(h) != 1 {
		t.Errorf("after Del: got %q and %d fields, want none and 1", got, len(h))
	}
	for _, code := range []int{StatusOK, StatusBadRequest, StatusUnauthorized, StatusForbidden, StatusNotFound, 405, 408, 429,
		StatusInternalServerError, 501, StatusBadGateway, StatusServiceUnavailable, StatusGatewayTimeout} {
		if got, want := StatusText(code), http.StatusText(code); got != want {
			t.Errorf("StatusText(%d): got %q, want %q", code, got, want)
		}
	}
	if got := StatusText(599); got != "status 599" {
		t.Errorf("StatusText(599): got %q", got)
	}
}
