// Package prom is a small Prometheus exposition: counters and histograms keyed by label values,
// the Go runtime's and the process's own metrics, and a registry that writes them in the text
// format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/).
//
// It exists so that a component whose resident memory is mostly its binary's pages (ztunnel,
// issue #4) need not link github.com/prometheus/client_golang, which brings a protobuf model,
// procfs and content negotiation: 0.6 MB of ztunnel's binary. It does only what Ambit's
// components report: integer counters, fixed-bucket histograms, gauges read at scrape. There
// are no gauges to set, no summaries of one's own, no exemplars, no OpenMetrics and no
// protobuf exposition; every scrape gets the text format, which every Prometheus accepts.
//
// A family's samples are written sorted by label values, its labels sorted by name, and the
// families sorted by name, so two scrapes of the same state give the same bytes.
package prom

import (
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// ContentType is the media type of the text format the registry writes. escaping=underscores
// says how names outside the legacy character set would be escaped; Ambit's names all are in
// it, and client_golang sends the same value.
const ContentType = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"

// Type is a metric family's type, as the # TYPE line says it.
type Type string

// The family types of the text format that this package writes.
const (
	TypeCounter   Type = "counter"
	TypeGauge     Type = "gauge"
	TypeHistogram Type = "histogram"
	TypeSummary   Type = "summary"
)

// A Collector writes its metric families when the registry is scraped. Each family name must
// be written by one collector only, once per scrape.
type Collector interface {
	Collect(e *Encoder)
}

// Registry is the set of collectors one scrape writes. The zero value is empty and ready.
type Registry struct {
	// mu guards collectors.
	mu         sync.Mutex
	collectors []Collector
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{} }

// Register adds collectors to the registry. Their family names must differ from those of the
// collectors already registered; the registry does not check it (a duplicate makes the
// exposition unparseable, which a test that parses it finds).
func (r *Registry) Register(cs ...Collector) {
	r.mu.Lock()
	r.collectors = append(r.collectors, cs...)
	r.mu.Unlock()
}

// WriteText writes every registered collector's families to w in the text format; an HTTP
// handler serves it with the media type ContentType, whatever format the scraper asks for.
// The package has no handler of its own, so that it does not link net/http (ztunnel serves
// its metrics with internal/httpserve).
func (r *Registry) WriteText(w io.Writer) error {
	r.mu.Lock()
	cs := slices.Clone(r.collectors)
	r.mu.Unlock()
	var e Encoder
	for _, c := range cs {
		c.Collect(&e)
	}
	e.end()
	slices.SortStableFunc(e.fams, func(a, b span) int { return strings.Compare(a.name, b.name) })
	for _, f := range e.fams {
		if _, err := w.Write(e.buf[f.start:f.end]); err != nil {
			return err
		}
	}
	return nil
}

// Encoder writes metric families in the text format. Collectors get one from the registry; a
// family is its Family call and the Sample calls that follow it.
type Encoder struct {
	buf  []byte
	fams []span
	open bool
}

// span is one family's bytes in Encoder.buf.
type span struct {
	name       string
	start, end int
}

// Family starts a family: its # HELP and # TYPE lines. The samples that follow, up to the
// next Family, belong to it.
func (e *Encoder) Family(name, help string, t Type) {
	e.end()
	e.fams = append(e.fams, span{name: name, start: len(e.buf)})
	e.open = true
	e.buf = append(e.buf, "# HELP "...)
	e.buf = append(e.buf, name...)
	e.buf = append(e.buf, ' ')
	e.buf = appendHelp(e.buf, help)
	e.buf = append(e.buf, "\n# TYPE "...)
	e.buf = append(e.buf, name...)
	e.buf = append(e.buf, ' ')
	e.buf = append(e.buf, t...)
	e.buf = append(e.buf, '\n')
}

// end closes the open family, if any.
func (e *Encoder) end() {
	if e.open {
		e.fams[len(e.fams)-1].end = len(e.buf)
		e.open = false
	}
}

// Sample writes one sample line: name{labels} value. labels is a label list made by
// [FormatLabels], or "" for none.
func (e *Encoder) Sample(name, labels string, v float64) {
	e.sample(name, labels, "", 0, v)
}

// sample writes one sample line with, when extra is not "", one more label whose value is the
// number x (le of a histogram bucket, quantile of a summary).
func (e *Encoder) sample(name, labels, extra string, x, v float64) {
	e.buf = append(e.buf, name...)
	if labels != "" || extra != "" {
		e.buf = append(e.buf, '{')
		e.buf = append(e.buf, labels...)
		if extra != "" {
			if labels != "" {
				e.buf = append(e.buf, ',')
			}
			e.buf = append(e.buf, extra...)
			e.buf = append(e.buf, `="`...)
			e.buf = appendFloat(e.buf, x)
			e.buf = append(e.buf, '"')
		}
		e.buf = append(e.buf, '}')
	}
	e.buf = append(e.buf, ' ')
	e.buf = appendFloat(e.buf, v)
	e.buf = append(e.buf, '\n')
}

// FormatLabels returns the label list name1="value1",name2="value2" of a sample, in the order
// given, with the values escaped. Label names must be valid Prometheus label names; values
// beyond the names are left out, names without a value get "".
func FormatLabels(names, values []string) string {
	var b []byte
	for i, n := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, n...)
		b = append(b, `="`...)
		if i < len(values) {
			b = appendLabelValue(b, values[i])
		}
		b = append(b, '"')
	}
	return string(b)
}

// appendLabelValue escapes a label value: backslash, double quote and line feed.
func appendLabelValue(b []byte, v string) []byte {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendHelp escapes a help text: backslash and line feed (a double quote stays as is).
func appendHelp(b []byte, h string) []byte {
	for i := 0; i < len(h); i++ {
		switch c := h[i]; c {
		case '\\':
			b = append(b, `\\`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendFloat writes v as the text format writes numbers: Go's shortest representation, and
// +Inf, -Inf, NaN.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case math.IsNaN(v):
		return append(b, "NaN"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}
