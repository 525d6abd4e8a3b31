package httpserve

import (
	"fmt"
	"slices"
	"strings"
)

// Mux routes requests to handlers by method and path. A path ending in "/*" matches every
// path under it ("/debug/pprof/*" matches "/debug/pprof/heap", not "/debug/pprof/"); any
// other path matches itself only. An exact path wins over a prefix, and a longer prefix over
// a shorter one. A route for GET also answers HEAD. A path that no route matches gets 404; a
// path whose routes are all for other methods gets 405 with an Allow field. The zero value
// is empty and ready; add every route before serving.
type Mux struct {
	routes []route
}

type route struct {
	method, path string
	prefix       bool
	h            Handler
}

// Handle routes method (e.g. "GET") and path to h.
func (m *Mux) Handle(method, path string, h Handler) {
	r := route{method: method, path: path, h: h}
	if p, ok := strings.CutSuffix(path, "*"); ok {
		r.path, r.prefix = p, true
	}
	m.routes = append(m.routes, r)
}

// Serve answers r with the handler of its route; it is a [Handler].
func (m *Mux) Serve(w *Response, r *Request) {
	var match []route // the routes of the best-matching path, any method
	for _, rt := range m.routes {
		switch {
		case !rt.prefix && rt.path == r.Path:
			if len(match) > 0 && match[0].prefix {
				match = match[:0]
			}
			match = append(match, rt)
		case rt.prefix && len(r.Path) > len(rt.path) && strings.HasPrefix(r.Path, rt.path):
			if len(match) > 0 && (!match[0].prefix || len(match[0].path) > len(rt.path)) {
				continue
			}
			if len(match) > 0 && len(match[0].path) < len(rt.path) {
				match = match[:0]
			}
			match = append(match, rt)
		}
	}
	if len(match) == 0 {
		Error(w, fmt.Sprintf("%s: no such endpoint", r.Path), StatusNotFound)
		return
	}
	var allow []string
	for _, rt := range match {
		if rt.method == r.Method || (rt.method == "GET" && r.Method == "HEAD") {
			rt.h(w, r)
			return
		}
		allow = append(allow, rt.method)
		if rt.method == "GET" {
			allow = append(allow, "HEAD")
		}
	}
	slices.Sort(allow)
	allow = slices.Compact(allow)
	w.Header().Set("Allow", strings.Join(allow, ", "))
	Error(w, fmt.Sprintf("%s: method %s not allowed; use %s", r.Path, r.Method, strings.Join(allow, " or ")), StatusMethodNotAllowed)
}
