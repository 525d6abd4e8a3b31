package prom

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// goMetric is one go_* family read from runtime/metrics: the sum of the samples named in from.
type goMetric struct {
	name, help string
	t          Type
	from       []string
}

// goMetrics are the families client_golang's Go collector writes by default, with its names,
// types and help texts, so dashboards built on them keep working. Each is read from
// runtime/metrics, which needs no stop-the-world (runtime.ReadMemStats does).
var goMetrics = []goMetric{
	{"go_gc_gogc_percent", "Heap size target percentage configured by the user, otherwise 100. This value is set by the GOGC environment variable, and the runtime/debug.SetGCPercent function. Sourced from /gc/gogc:percent.",
		TypeGauge, []string{"/gc/gogc:percent"}},
	{"go_gc_gomemlimit_bytes", "Go runtime memory limit configured by the user, otherwise math.MaxInt64. This value is set by the GOMEMLIMIT environment variable, and the runtime/debug.SetMemoryLimit function. Sourced from /gc/gomemlimit:bytes.",
		TypeGauge, []string{"/gc/gomemlimit:bytes"}},
	{"go_goroutines", "Number of goroutines that currently exist.",
		TypeGauge, []string{"/sched/goroutines:goroutines"}},
	{"go_memstats_alloc_bytes", "Number of bytes allocated in heap and currently in use. Equals to /memory/classes/heap/objects:bytes.",
		TypeGauge, []string{"/memory/classes/heap/objects:bytes"}},
	{"go_memstats_alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already. Equals to /gc/heap/allocs:bytes.",
		TypeCounter, []string{"/gc/heap/allocs:bytes"}},
	{"go_memstats_buck_hash_sys_bytes", "Number of bytes used by the profiling bucket hash table. Equals to /memory/classes/profiling/buckets:bytes.",
		TypeGauge, []string{"/memory/classes/profiling/buckets:bytes"}},
	{"go_memstats_frees_total", "Total number of heap objects frees. Equals to /gc/heap/frees:objects + /gc/heap/tiny/allocs:objects.",
		TypeCounter, []string{"/gc/heap/frees:objects", "/gc/heap/tiny/allocs:objects"}},
	{"go_memstats_gc_sys_bytes", "Number of bytes used for garbage collection system metadata. Equals to /memory/classes/metadata/other:bytes.",
		TypeGauge, []string{"/memory/classes/metadata/other:bytes"}},
	{"go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and currently in use, same as go_memstats_alloc_bytes. Equals to /memory/classes/heap/objects:bytes.",
		TypeGauge, []string{"/memory/classes/heap/objects:bytes"}},
	{"go_memstats_heap_idle_bytes", "Number of heap bytes waiting to be used. Equals to /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.",
		TypeGauge, []string{"/memory/classes/heap/released:bytes", "/memory/classes/heap/free:bytes"}},
	{"go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes",
		TypeGauge, []string{"/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes"}},
	{"go_memstats_heap_objects", "Number of currently allocated objects. Equals to /gc/heap/objects:objects.",
		TypeGauge, []string{"/gc/heap/objects:objects"}},
	{"go_memstats_heap_released_bytes", "Number of heap bytes released to OS. Equals to /memory/classes/heap/released:bytes.",
		TypeGauge, []string{"/memory/classes/heap/released:bytes"}},
	{"go_memstats_heap_sys_bytes", "Number of heap bytes obtained from system. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes + /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.",
		TypeGauge, []string{"/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes", "/memory/classes/heap/released:bytes", "/memory/classes/heap/free:bytes"}},
	{"go_memstats_mallocs_total", "Total number of heap objects allocated, both live and gc-ed. Semantically a counter version for go_memstats_heap_objects gauge. Equals to /gc/heap/allocs:objects + /gc/heap/tiny/allocs:objects.",
		TypeCounter, []string{"/gc/heap/allocs:objects", "/gc/heap/tiny/allocs:objects"}},
	{"go_memstats_mcache_inuse_bytes", "Number of bytes in use by mcache structures. Equals to /memory/classes/metadata/mcache/inuse:bytes.",
		TypeGauge, []string{"/memory/classes/metadata/mcache/inuse:bytes"}},
	{"go_memstats_mcache_sys_bytes", "Number of bytes used for mcache structures obtained from system. Equals to /memory/classes/metadata/mcache/inuse:bytes + /memory/classes/metadata/mcache/free:bytes.",
		TypeGauge, []string{"/memory/classes/metadata/mcache/inuse:bytes", "/memory/classes/metadata/mcache/free:bytes"}},
	{"go_memstats_mspan_inuse_bytes", "Number of bytes in use by mspan structures. Equals to /memory/classes/metadata/mspan/inuse:bytes.",
		TypeGauge, []string{"/memory/classes/metadata/mspan/inuse:bytes"}},
	{"go_memstats_mspan_sys_bytes", "Number of bytes used for mspan structures obtained from system. Equals to /memory/classes/metadata/mspan/inuse:bytes + /memory/classes/metadata/mspan/free:bytes.",
		TypeGauge, []string{"/memory/classes/metadata/mspan/inuse:bytes", "/memory/classes/metadata/mspan/free:bytes"}},
	{"go_memstats_next_gc_bytes", "Number of heap bytes when next garbage collection will take place. Equals to /gc/heap/goal:bytes.",
		TypeGauge, []string{"/gc/heap/goal:bytes"}},
	{"go_memstats_other_sys_bytes", "Number of bytes used for other system allocations. Equals to /memory/classes/other:bytes.",
		TypeGauge, []string{"/memory/classes/other:bytes"}},
	{"go_memstats_stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in non-CGO environments. Equals to /memory/classes/heap/stacks:bytes.",
		TypeGauge, []string{"/memory/classes/heap/stacks:bytes"}},
	{"go_memstats_stack_sys_bytes", "Number of bytes obtained from system for stack allocator. Equals to /memory/classes/heap/stacks:bytes + /memory/classes/os-stacks:bytes.",
		TypeGauge, []string{"/memory/classes/heap/stacks:bytes", "/memory/classes/os-stacks:bytes"}},
	{"go_memstats_sys_bytes", "Number of bytes obtained from system. Equals to /memory/classes/total:byte.",
		TypeGauge, []string{"/memory/classes/total:bytes"}},
	{"go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting, or the number of operating system threads that can execute user-level Go code simultaneously. Sourced from /sched/gomaxprocs:threads.",
		TypeGauge, []string{"/sched/gomaxprocs:threads"}},
}

// gcQuantiles are the quantiles of go_gc_duration_seconds: the minimum, the quartiles and the
// maximum of the recent pauses, what debug.ReadGCStats gives.
var gcQuantiles = []float64{0, 0.25, 0.5, 0.75, 1}

// GoCollector writes the Go runtime's metrics: the families of client_golang's default Go
// collector (go_goroutines, go_threads, go_info, go_gc_duration_seconds, go_gc_*,
// go_memstats_*, go_sched_gomaxprocs_threads). Create it with [NewGoCollector].
type GoCollector struct {
	names []string // the runtime/metrics samples goMetrics read, each once
	index [][]int  // per goMetrics entry, the indexes in names it sums
	info  string   // go_info's label list
}

// NewGoCollector returns the Go runtime's collector.
func NewGoCollector() *GoCollector {
	c := &GoCollector{index: make([][]int, len(goMetrics)), info: FormatLabels([]string{"version"}, []string{runtime.Version()})}
	at := map[string]int{}
	for i, m := range goMetrics {
		for _, n := range m.from {
			j, ok := at[n]
			if !ok {
				j = len(c.names)
				at[n] = j
				c.names = append(c.names, n)
			}
			c.index[i] = append(c.index[i], j)
		}
	}
	return c
}

// Collect reads the runtime's metrics and writes them.
func (c *GoCollector) Collect(e *Encoder) {
	samples := make([]metrics.Sample, len(c.names))
	for i, n := range c.names {
		samples[i].Name = n
	}
	metrics.Read(samples)
	for i, m := range goMetrics {
		var sum uint64
		for _, j := range c.index[i] {
			// A name this Go does not know reads as KindBad; it adds nothing.
			if v := samples[j].Value; v.Kind() == metrics.KindUint64 {
				sum += v.Uint64()
			}
		}
		e.Family(m.name, m.help, m.t)
		e.Sample(m.name, "", float64(sum))
	}

	threads, _ := runtime.ThreadCreateProfile(nil)
	e.Family("go_threads", "Number of OS threads created.", TypeGauge)
	e.Sample("go_threads", "", float64(threads))

	e.Family("go_info", "Information about the Go environment.", TypeGauge)
	e.Sample("go_info", c.info, 1)

	gc := debug.GCStats{PauseQuantiles: make([]time.Duration, len(gcQuantiles))}
	debug.ReadGCStats(&gc)
	e.Family("go_gc_duration_seconds", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.", TypeSummary)
	for i, q := range gcQuantiles {
		e.sample("go_gc_duration_seconds", "", "quantile", q, gc.PauseQuantiles[i].Seconds())
	}
	e.Sample("go_gc_duration_seconds_sum", "", gc.PauseTotal.Seconds())
	e.Sample("go_gc_duration_seconds_count", "", float64(gc.NumGC))

	last := 0.0
	if !gc.LastGC.IsZero() {
		last = float64(gc.LastGC.UnixNano()) / 1e9
	}
	e.Family("go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of last garbage collection.", TypeGauge)
	e.Sample("go_memstats_last_gc_time_seconds", "", last)
}
