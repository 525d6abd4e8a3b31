package prom

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
)

// userHZ is the unit of the CPU times in /proc (USER_HZ). It is 100 on every Linux
// architecture Go runs on; reading it from sysconf would need cgo.
const userHZ = 100

// ProcessCollector writes the process's own metrics from /proc, the families of
// client_golang's process collector on Linux: process_cpu_seconds_total,
// process_resident_memory_bytes, process_virtual_memory_bytes,
// process_virtual_memory_max_bytes, process_open_fds, process_max_fds,
// process_start_time_seconds, process_network_receive_bytes_total and
// process_network_transmit_bytes_total. A family whose file cannot be read is left out of
// that scrape instead of failing it. Create it with [NewProcessCollector].
type ProcessCollector struct {
	proc string // the process's /proc directory

	// start is the process's start time in Unix seconds (float64 bits), 0 until read: it
	// never changes, and reading it costs /proc/stat, whose size grows with the CPUs.
	start atomic.Uint64
}

// NewProcessCollector returns the collector of the calling process.
func NewProcessCollector() *ProcessCollector { return &ProcessCollector{proc: "/proc/self"} }

// errFormat is returned for a /proc file that does not read as expected.
var errFormat = errors.New("unexpected format")

// Collect reads /proc and writes the process's metrics.
func (c *ProcessCollector) Collect(e *Encoder) {
	if st, err := readStat(c.proc + "/stat"); err == nil {
		e.Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", TypeCounter)
		e.Sample("process_cpu_seconds_total", "", float64(st.utime+st.stime)/userHZ)
		e.Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", TypeGauge)
		e.Sample("process_virtual_memory_bytes", "", float64(st.vsize))
		e.Family("process_resident_memory_bytes", "Resident memory size in bytes.", TypeGauge)
		e.Sample("process_resident_memory_bytes", "", float64(st.rss*uint64(os.Getpagesize())))
		if start := c.startTime(st); start != 0 {
			e.Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", TypeGauge)
			e.Sample("process_start_time_seconds", "", start)
		}
	}
	if n, err := countDir(c.proc + "/fd"); err == nil {
		e.Family("process_open_fds", "Number of open file descriptors.", TypeGauge)
		e.Sample("process_open_fds", "", float64(n))
	}
	if fds, as, err := readLimits(c.proc + "/limits"); err == nil {
		e.Family("process_max_fds", "Maximum number of open file descriptors.", TypeGauge)
		e.Sample("process_max_fds", "", fds)
		e.Family("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", TypeGauge)
		e.Sample("process_virtual_memory_max_bytes", "", as)
	}
	if rx, tx, err := readNetDev(c.proc + "/net/dev"); err == nil {
		e.Family("process_network_receive_bytes_total", "Number of bytes received by the process over the network.", TypeCounter)
		e.Sample("process_network_receive_bytes_total", "", float64(rx))
		e.Family("process_network_transmit_bytes_total", "Number of bytes sent by the process over the network.", TypeCounter)
		e.Sample("process_network_transmit_bytes_total", "", float64(tx))
	}
}

// startTime returns the process's start time in Unix seconds, or 0 if /proc/stat cannot tell
// the boot time.
func (c *ProcessCollector) startTime(st procStat) float64 {
	if v := c.start.Load(); v != 0 {
		return math.Float64frombits(v)
	}
	boot, err := bootTime("/proc/stat")
	if err != nil {
		return 0
	}
	start := float64(boot) + float64(st.starttime)/userHZ
	c.start.Store(math.Float64bits(start))
	return start
}

// procStat holds the fields of /proc/<pid>/stat the collector reads.
type procStat struct {
	utime, stime, starttime, vsize, rss uint64
}

// readStat reads /proc/<pid>/stat (proc(5)).
func readStat(path string) (procStat, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return procStat{}, err
	}
	// The command name, field 2, is in parentheses and may hold spaces and parentheses; the
	// fields after the last ')' start with field 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errFormat
	}
	f := strings.Fields(string(b[i+1:]))
	field := func(n int) uint64 {
		if n-3 >= len(f) {
			err = errFormat
			return 0
		}
		v, perr := strconv.ParseUint(f[n-3], 10, 64)
		if perr != nil {
			err = perr
		}
		return v
	}
	st := procStat{utime: field(14), stime: field(15), starttime: field(22), vsize: field(23), rss: field(24)}
	return st, err
}

// bootTime reads the btime line of /proc/stat: the boot time in Unix seconds.
func bootTime(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "btime "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errFormat
}

// countDir counts the entries of a directory without holding all their names at once.
func countDir(path string) (int, error) {
	d, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(1024)
		n += len(names)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// readLimits reads the soft limits on open files and on the address space from
// /proc/<pid>/limits; "unlimited" reads as the largest uint64.
func readLimits(path string) (fds, addressSpace float64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	found := 0
	for line := range strings.Lines(string(b)) {
		var dst *float64
		var rest string
		if v, ok := strings.CutPrefix(line, "Max open files"); ok {
			dst, rest = &fds, v
		} else if v, ok := strings.CutPrefix(line, "Max address space"); ok {
			dst, rest = &addressSpace, v
		} else {
			continue
		}
		f := strings.Fields(rest) // soft, hard, units
		if len(f) == 0 {
			return 0, 0, errFormat
		}
		if f[0] == "unlimited" {
			*dst = math.MaxUint64
		} else {
			v, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				return 0, 0, err
			}
			*dst = float64(v)
		}
		found++
	}
	if found != 2 {
		return 0, 0, errFormat
	}
	return fds, addressSpace, nil
}

// readNetDev sums the bytes received and sent over every interface of the process's network
// namespace, from /proc/<pid>/net/dev.
func readNetDev(path string) (rx, tx uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		// Two header lines, then "iface: rx_bytes rx_packets ... (8 receive fields) tx_bytes ...".
		_, counters, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(counters)
		if len(f) < 9 {
			return 0, 0, errFormat
		}
		r, err1 := strconv.ParseUint(f[0], 10, 64)
		t, err2 := strconv.ParseUint(f[8], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return 0, 0, err
		}
		rx += r
		tx += t
	}
	return rx, tx, nil
}
