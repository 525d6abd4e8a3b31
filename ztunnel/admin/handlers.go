package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/ambit-mesh/ambit/internal/httpserve"
	"github.com/ambit-mesh/ambit/internal/prom"
)

// Dumper provides one section of /config_dump. Dump is called on every request, concurrently
// with ztunnel's work: it must return a snapshot that encoding/json can marshal and that no one
// mutates afterwards.
type Dumper interface {
	Dump() any
}

// DumperFunc adapts a function to [Dumper].
type DumperFunc func() any

// Dump calls f.
func (f DumperFunc) Dump() any { return f() }

// ReadyFunc reports whether ztunnel is ready to serve: nil when it is, otherwise an error
// saying what it waits for (e.g. "xds not synced").
type ReadyFunc func() error

// Sections of /config_dump that ambitctl ztunnel-config reads.
const (
	SectionWorkloads    = "workloads"
	SectionServices     = "services"
	SectionPolicies     = "policies"
	SectionCertificates = "certificates"
)

// Register makes d the provider of /config_dump's section name, replacing any earlier one.
// It may be called while the server runs.
func (s *Server) Register(section string, d Dumper) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dumpers[section] = d
}

// AdminHandler serves /config_dump, /logging and /debug/pprof/.
func (s *Server) AdminHandler() httpserve.Handler {
	var mux httpserve.Mux
	mux.Handle("GET", "/", s.index)
	mux.Handle("GET", "/config_dump", s.configDump)
	for _, m := range []string{"GET", "POST", "PUT"} {
		mux.Handle(m, "/logging", s.logging)
	}
	registerPprof(&mux)
	return mux.Serve
}

// StatsHandler serves the metrics at /stats/prometheus and /metrics.
func (s *Server) StatsHandler() httpserve.Handler {
	var mux httpserve.Mux
	if s.cfg.Metrics != nil {
		mux.Handle("GET", "/stats/prometheus", s.metrics)
		mux.Handle("GET", "/metrics", s.metrics)
	}
	return mux.Serve
}

// ReadyHandler serves /healthz/ready.
func (s *Server) ReadyHandler() httpserve.Handler {
	var mux httpserve.Mux
	mux.Handle("GET", "/healthz/ready", func(w *httpserve.Response, r *httpserve.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.cfg.Ready(); err != nil {
			w.WriteHeader(httpserve.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %s\n", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux.Serve
}

// metrics writes the exposition to a buffer first, so that a scrape gets a whole exposition
// or a 500, and a Content-Length. Every scrape gets the text format, whatever its Accept.
func (s *Server) metrics(w *httpserve.Response, _ *httpserve.Request) {
	var b bytes.Buffer
	if err := s.cfg.Metrics(&b); err != nil {
		httpserve.Error(w, "writing metrics: "+err.Error(), httpserve.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", prom.ContentType)
	w.Write(b.Bytes())
}

func (s *Server) index(w *httpserve.Response, _ *httpserve.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, `ztunnel admin
  /config_dump[?section=NAME]  what this ztunnel knows, as JSON
  /logging[?level=LEVEL]       read or set the log level (debug, info, warn, error)
  /debug/pprof/                Go profiles
`)
}

// configDump writes every section, or only ?section=NAME, as indented JSON.
func (s *Server) configDump(w *httpserve.Response, r *httpserve.Request) {
	s.mu.Lock()
	dumpers := make(map[string]Dumper, len(s.dumpers))
	for k, d := range s.dumpers {
		dumpers[k] = d
	}
	s.mu.Unlock()

	var out any
	if name := r.Query().Get("section"); name != "" {
		d, ok := dumpers[name]
		if !ok {
			names := make([]string, 0, len(dumpers))
			for k := range dumpers {
				names = append(names, k)
			}
			slices.Sort(names)
			httpserve.Error(w, fmt.Sprintf("config_dump: no section %q; sections are %s", name, strings.Join(names, ", ")), httpserve.StatusNotFound)
			return
		}
		out = d.Dump()
	} else {
		all := make(map[string]any, len(dumpers))
		for k, d := range dumpers {
			all[k] = d.Dump()
		}
		out = all
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		httpserve.Error(w, fmt.Sprintf("config_dump: encoding: %v", err), httpserve.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

// logging reports the log level and, given ?level=, changes it first (GET, POST or PUT).
// Changing it is allowed with GET too: the admin server listens on localhost only, and
// `curl host:15000/logging?level=debug` is what operators type.
func (s *Server) logging(w *httpserve.Response, r *httpserve.Request) {
	if v := r.Query().Get("level"); v != "" {
		l, err := parseLevel(v)
		if err != nil {
			httpserve.Error(w, err.Error(), httpserve.StatusBadRequest)
			return
		}
		s.cfg.Level.Set(l)
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"level\": %q}\n", strings.ToLower(s.cfg.Level.Level().String()))
}

// parseLevel accepts slog's level names (debug, info, warn, error, with offsets such as
// "info+2") and "warning".
func parseLevel(v string) (slog.Level, error) {
	if strings.EqualFold(v, "warning") {
		return slog.LevelWarn, nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		return 0, fmt.Errorf("logging: level %q: want debug, info, warn or error", v)
	}
	return l, nil
}
