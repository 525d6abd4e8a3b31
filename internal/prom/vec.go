package prom

import (
	"cmp"
	"encoding/binary"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
)

// Counter is one counter series: a whole number that only goes up (connections, bytes,
// requests). Its methods are one atomic add and safe for concurrent use.
type Counter struct {
	n atomic.Uint64
}

// Inc adds one.
func (c *Counter) Inc() { c.n.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.n.Add(n) }

// Value returns the count.
func (c *Counter) Value() uint64 { return c.n.Load() }

// Histogram is one histogram series with fixed buckets. Observe is safe for concurrent use. A
// scrape concurrent with Observe may see the sample in the buckets and not yet in the sum;
// the buckets and the count always agree.
type Histogram struct {
	upper []float64       // the buckets' upper bounds, ascending, shared by the family
	n     []atomic.Uint64 // samples per bucket (not cumulative); the last is above every bound
	sum   atomic.Uint64   // float64 bits
}

// Observe adds a sample.
func (h *Histogram) Observe(v float64) {
	// The first bound >= v: a bucket counts the samples less than or equal to its bound.
	h.n[sort.SearchFloat64s(h.upper, v)].Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// CounterVec is a counter family whose series are keyed by label values.
type CounterVec struct {
	v vec[Counter]
}

// NewCounterVec returns a counter family. Register it to have it scraped.
func NewCounterVec(name, help string, labelNames []string) *CounterVec {
	return &CounterVec{v: newVec[Counter](name, help, labelNames)}
}

// With returns the series of the label values, given in the order of the family's label
// names, creating it at zero the first time. A lookup takes a read lock and allocates nothing
// when the series exists; callers on a hot path keep the *Counter. Missing values count as "",
// extra ones are ignored.
func (c *CounterVec) With(values ...string) *Counter {
	return c.v.with(values, func(*Counter) {})
}

// Collect writes the family.
func (c *CounterVec) Collect(e *Encoder) {
	e.Family(c.v.name, c.v.help, TypeCounter)
	for _, s := range c.v.sorted() {
		e.Sample(c.v.name, s.labels, float64(s.m.Value()))
	}
}

// HistogramVec is a histogram family whose series are keyed by label values.
type HistogramVec struct {
	v     vec[Histogram]
	upper []float64
	// Names of the sample lines, made once.
	bucket, sum, count string
}

// NewHistogramVec returns a histogram family with the buckets' upper bounds (ascending; the
// +Inf bucket is implied). Register it to have it scraped.
func NewHistogramVec(name, help string, labelNames []string, buckets []float64) *HistogramVec {
	return &HistogramVec{
		v:      newVec[Histogram](name, help, labelNames),
		upper:  slices.Clone(buckets),
		bucket: name + "_bucket", sum: name + "_sum", count: name + "_count",
	}
}

// With returns the series of the label values, as [CounterVec.With] does.
func (h *HistogramVec) With(values ...string) *Histogram {
	return h.v.with(values, func(s *Histogram) {
		s.upper = h.upper
		s.n = make([]atomic.Uint64, len(h.upper)+1)
	})
}

// Collect writes the family: cumulative _bucket lines with le, then _sum and _count.
func (h *HistogramVec) Collect(e *Encoder) {
	e.Family(h.v.name, h.v.help, TypeHistogram)
	for _, s := range h.v.sorted() {
		var total uint64
		for i := range s.m.n {
			total += s.m.n[i].Load()
			le := math.Inf(1)
			if i < len(s.m.upper) {
				le = s.m.upper[i]
			}
			e.sample(h.bucket, s.labels, "le", le, float64(total))
		}
		e.Sample(h.sum, s.labels, math.Float64frombits(s.m.sum.Load()))
		e.Sample(h.count, s.labels, float64(total))
	}
}

// vec is the series of one family, keyed by label values.
type vec[M any] struct {
	name, help string
	names      []string // label names as given to With
	order      []int    // indexes of names, sorted by name: the order labels are written in

	// mu guards series.
	mu     sync.RWMutex
	series map[string]*series[M]
}

// series is one label set's metric.
type series[M any] struct {
	sortKey []string // the values in the order labels are written in
	labels  string   // the label list, escaped
	m       M
}

func newVec[M any](name, help string, labelNames []string) vec[M] {
	order := make([]int, len(labelNames))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(labelNames[a], labelNames[b]) })
	return vec[M]{name: name, help: help, names: slices.Clone(labelNames), order: order,
		series: make(map[string]*series[M])}
}

func (v *vec[M]) with(values []string, init func(*M)) *M {
	// The key is each value prefixed with its length, so no two value lists share one. Built
	// on the stack for the usual sizes; indexing a map with string(key) does not allocate.
	var kb [256]byte
	key := kb[:0]
	for i := range v.names {
		var val string
		if i < len(values) {
			val = values[i]
		}
		key = binary.AppendUvarint(key, uint64(len(val)))
		key = append(key, val...)
	}
	v.mu.RLock()
	s := v.series[string(key)]
	v.mu.RUnlock()
	if s != nil {
		return &s.m
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if s := v.series[string(key)]; s != nil {
		return &s.m
	}
	s = &series[M]{sortKey: make([]string, len(v.names))}
	names := make([]string, len(v.names))
	for i, j := range v.order {
		names[i] = v.names[j]
		if j < len(values) {
			s.sortKey[i] = values[j]
		}
	}
	s.labels = FormatLabels(names, s.sortKey)
	init(&s.m)
	v.series[string(key)] = s
	return &s.m
}

// sorted returns the series sorted by their label values in the order they are written.
func (v *vec[M]) sorted() []*series[M] {
	v.mu.RLock()
	out := make([]*series[M], 0, len(v.series))
	for _, s := range v.series {
		out = append(out, s)
	}
	v.mu.RUnlock()
	slices.SortFunc(out, func(a, b *series[M]) int { return slices.Compare(a.sortKey, b.sortKey) })
	return out
}
