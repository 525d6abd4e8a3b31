package admin

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
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
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.index)
	mux.HandleFunc("GET /config_dump", s.configDump)
	mux.HandleFunc("/logging", s.logging)
	registerPprof(mux)
	return mux
}

// StatsHandler serves the metrics handler at /stats/prometheus and /metrics.
func (s *Server) StatsHandler() http.Handler {
	mux := http.NewServeMux()
	h := s.cfg.Metrics
	if h == nil {
		h = http.NotFoundHandler()
	}
	mux.Handle("/stats/prometheus", h)
	mux.Handle("/metrics", h)
	return mux
}

// ReadyHandler serves /healthz/ready.
func (s *Server) ReadyHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.cfg.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %s\n", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

func (s *Server) index(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, `ztunnel admin
  /config_dump[?section=NAME]  what this ztunnel knows, as JSON
  /logging[?level=LEVEL]       read or set the log level (debug, info, warn, error)
  /debug/pprof/                Go profiles
`)
}

// configDump writes every section, or only ?section=NAME, as indented JSON.
func (s *Server) configDump(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	dumpers := make(map[string]Dumper, len(s.dumpers))
	for k, d := range s.dumpers {
		dumpers[k] = d
	}
	s.mu.Unlock()

	var out any
	if name := r.URL.Query().Get("section"); name != "" {
		d, ok := dumpers[name]
		if !ok {
			names := make([]string, 0, len(dumpers))
			for k := range dumpers {
				names = append(names, k)
			}
			slices.Sort(names)
			http.Error(w, fmt.Sprintf("config_dump: no section %q; sections are %s", name, strings.Join(names, ", ")), http.StatusNotFound)
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
		http.Error(w, fmt.Sprintf("config_dump: encoding: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

// logging reports the log level and, given ?level=, changes it first. Changing it is allowed
// with GET too: the admin server listens on localhost only, and `curl host:15000/logging?level=debug`
// is what operators type.
func (s *Server) logging(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodPost, http.MethodPut:
	default:
		w.Header().Set("Allow", "GET, POST, PUT")
		http.Error(w, "logging: method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if v := r.URL.Query().Get("level"); v != "" {
		l, err := parseLevel(v)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
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
