package admin

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestReadiness(t *testing.T) {
	r := NewReadiness("xds synced", "zds connected", "certificates")
	s := New(Config{Ready: r.Err})
	steps := []struct {
		name       string
		do         func()
		wantStatus int
		wantBody   string
	}{
		{"nothing yet", func() {}, 503, "not ready: waiting for xds synced, zds connected, certificates\n"},
		{"unknown condition ignored", func() { r.Set("bogus"); r.Unset("bogus") }, 503, "not ready: waiting for xds synced, zds connected, certificates\n"},
		{"zds", func() { r.Set("zds connected") }, 503, "not ready: waiting for xds synced, certificates\n"},
		{"xds", func() { r.Set("xds synced") }, 503, "not ready: waiting for certificates\n"},
		{"all", func() { r.Set("certificates") }, 200, "ready\n"},
		{"set twice", func() { r.Set("certificates") }, 200, "ready\n"},
		{"zds lost", func() { r.Unset("zds connected"); r.Unset("zds connected") }, 503, "not ready: waiting for zds connected\n"},
		{"xds lost keeps order", func() { r.Unset("xds synced") }, 503, "not ready: waiting for xds synced, zds connected\n"},
	}
	for _, st := range steps {
		st.do()
		rec := httptest.NewRecorder()
		s.ReadyHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz/ready", nil))
		if rec.Code != st.wantStatus || rec.Body.String() != st.wantBody {
			t.Errorf("%s: got %d %q, want %d %q", st.name, rec.Code, rec.Body.String(), st.wantStatus, st.wantBody)
		}
	}
}
