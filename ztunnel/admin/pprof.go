package admin

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ambit-mesh/ambit/internal/httpserve"
)

// The /debug/pprof/ endpoints, written on runtime/pprof and runtime/trace. They serve what
// net/http/pprof serves at the same paths, in the same formats, so `go tool pprof` and
// `go tool trace` read them, but not its delta profiles (?seconds= on a named profile), which
// need the profile parser (internal/profile) in the binary; nor its HTML index. ztunnel's resident
// memory is mostly its own binary, so what it links is worth keeping small.

// Defaults and bounds of ?seconds=.
const (
	defaultCPUProfileSeconds = 30
	defaultTraceSeconds      = 1
	maxProfileSeconds        = 24 * 60 * 60
)

// profileHelp describes the named runtime profiles in the index; a profile registered with
// pprof.NewProfile is listed without one.
var profileHelp = map[string]string{
	"allocs":       "sampled allocations since start, by allocating stack",
	"block":        "where goroutines blocked on synchronization (runtime.SetBlockProfileRate)",
	"goroutine":    "the stacks of all goroutines; ?debug=2 prints them as a panic does",
	"heap":         "sampled live heap objects, by allocating stack; ?gc=1 collects garbage first",
	"mutex":        "holders of contended mutexes (runtime.SetMutexProfileFraction)",
	"threadcreate": "the stacks that created OS threads",
}

func registerPprof(mux *httpserve.Mux) {
	mux.Handle("GET", "/debug/pprof/", pprofIndex)
	mux.Handle("GET", "/debug/pprof/cmdline", pprofCmdline)
	mux.Handle("GET", "/debug/pprof/profile", recording("profile", "CPU profile", defaultCPUProfileSeconds, pprof.StartCPUProfile, pprof.StopCPUProfile))
	mux.Handle("GET", "/debug/pprof/trace", recording("trace", "trace", defaultTraceSeconds, trace.Start, trace.Stop))
	mux.Handle("GET", "/debug/pprof/symbol", pprofSymbol)
	mux.Handle("POST", "/debug/pprof/symbol", pprofSymbol)
	mux.Handle("GET", "/debug/pprof/*", pprofNamed)
}

// pprofIndex lists the profiles as plain text.
func pprofIndex(w *httpserve.Response, _ *httpserve.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, "Go profiles of this process. Read them with go tool pprof http://<admin>/debug/pprof/<name>.\n\n")
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprint(tw, "name\tcount\twhat\n")
	for _, p := range pprof.Profiles() {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", p.Name(), p.Count(), profileHelp[p.Name()])
	}
	fmt.Fprintf(tw, "profile?seconds=N\t\tCPU profile over N seconds (default %d)\n", defaultCPUProfileSeconds)
	fmt.Fprintf(tw, "trace?seconds=N\t\texecution trace over N seconds (default %d), for go tool trace\n", defaultTraceSeconds)
	fmt.Fprint(tw, "cmdline\t\tthe command line, arguments separated by NUL bytes\n")
	fmt.Fprint(tw, "symbol\t\tfunction names of program counters (POST 0x<pc>+0x<pc>...)\n")
	tw.Flush()
	fmt.Fprint(w, "\nA named profile is protobuf by default; ?debug=1 prints it as text.\n")
}

// pprofCmdline writes the command line as net/http/pprof does: arguments separated by NUL.
func pprofCmdline(w *httpserve.Response, _ *httpserve.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, strings.Join(os.Args, "\x00"))
}

// recording serves a recording (what: "CPU profile", "trace") taken over ?seconds= (default
// def), or until the client leaves: name is the endpoint, start and stop begin and end the
// recording into a writer. Only one recording of a kind runs at a time; another gets 409.
func recording(name, what string, def int, start func(io.Writer) error, stop func()) httpserve.Handler {
	return func(w *httpserve.Response, r *httpserve.Request) {
		d, err := seconds(r, def)
		if err != nil {
			httpserve.Error(w, name+": "+err.Error(), httpserve.StatusBadRequest)
			return
		}
		binaryHeaders(w, name)
		if err := start(w); err != nil {
			pprofError(w, fmt.Sprintf("%s: %v; another %s is being taken, try again when it ends", name, err, what), httpserve.StatusConflict)
			return
		}
		wait(r, d)
		stop()
	}
}

// pprofNamed writes one of the runtime/pprof profiles: protobuf, or text with ?debug=N > 0.
func pprofNamed(w *httpserve.Response, r *httpserve.Request) {
	name := strings.TrimPrefix(r.Path, "/debug/pprof/")
	p := pprof.Lookup(name)
	if p == nil {
		var names []string
		for _, p := range pprof.Profiles() {
			names = append(names, p.Name())
		}
		httpserve.Error(w, fmt.Sprintf("pprof: no profile %q; profiles are %s, and profile, trace, cmdline, symbol",
			name, strings.Join(names, ", ")), httpserve.StatusNotFound)
		return
	}
	q := r.Query()
	if v := q.Get("seconds"); v != "" {
		httpserve.Error(w, fmt.Sprintf("pprof: %s?seconds=%s: delta profiles are not served; fetch %s twice and compare with go tool pprof -diff_base",
			name, v, name), httpserve.StatusBadRequest)
		return
	}
	debug, err := intParam(q.Get("debug"), "debug", "0 (protobuf) or a number above 0 (text)")
	if err != nil {
		httpserve.Error(w, "pprof: "+err.Error(), httpserve.StatusBadRequest)
		return
	}
	gc, err := intParam(q.Get("gc"), "gc", "0 or 1")
	if err != nil {
		httpserve.Error(w, "pprof: "+err.Error(), httpserve.StatusBadRequest)
		return
	}
	if name == "heap" && gc > 0 {
		runtime.GC()
	}
	if debug > 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		binaryHeaders(w, name)
	}
	// An error here is the client's connection failing; there is no one left to tell.
	_ = p.WriteTo(w, debug)
}

// pprofSymbol maps program counters to function names, for pprof's remote symbolization: the
// addresses come '+'-separated in the POST body or the GET query. "num_symbols: 1" tells the
// client that symbols are available.
func pprofSymbol(w *httpserve.Response, r *httpserve.Request) {
	in := r.RawQuery
	if r.Method == "POST" {
		// The server caps request bodies (1 MiB by default).
		b, err := io.ReadAll(r.Body)
		if err != nil {
			httpserve.Error(w, fmt.Sprintf("symbol: reading the request: %v", err), httpserve.StatusBadRequest)
			return
		}
		in = string(b)
	}
	var out bytes.Buffer
	out.WriteString("num_symbols: 1\n")
	for _, word := range strings.FieldsFunc(in, func(c rune) bool { return c == '+' || c == '\n' || c == ' ' }) {
		pc, err := strconv.ParseUint(word, 0, 64)
		if err != nil {
			httpserve.Error(w, fmt.Sprintf("symbol: address %q: want a program counter such as 0x4a3b2c", word), httpserve.StatusBadRequest)
			return
		}
		if f := runtime.FuncForPC(uintptr(pc)); f != nil {
			fmt.Fprintf(&out, "%#x %s\n", pc, f.Name())
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write(out.Bytes())
}

// seconds reads ?seconds=, a positive number of seconds (fractions allowed), or def.
func seconds(r *httpserve.Request, def int) (time.Duration, error) {
	v := r.Query().Get("seconds")
	if v == "" {
		return time.Duration(def) * time.Second, nil
	}
	s, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(s) || s <= 0 || s > maxProfileSeconds {
		return 0, fmt.Errorf("seconds %q: want a number of seconds above 0 and at most %d, e.g. seconds=%d", v, maxProfileSeconds, def)
	}
	return time.Duration(s * float64(time.Second)), nil
}

// intParam parses a non-negative integer query parameter; "" is 0.
func intParam(v, name, want string) (int, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s %q: want %s", name, v, want)
	}
	return n, nil
}

// binaryHeaders marks the response as a file to save, as net/http/pprof does.
func binaryHeaders(w *httpserve.Response, name string) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name))
}

// pprofError answers with an error after binaryHeaders, which must not stay on a text answer.
func pprofError(w *httpserve.Response, msg string, code int) {
	w.Header().Del("Content-Disposition")
	httpserve.Error(w, msg, code)
}

// wait returns after d, or earlier when the client has gone.
func wait(r *httpserve.Request, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}
