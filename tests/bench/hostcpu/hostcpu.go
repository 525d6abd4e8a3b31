// Package hostcpu reads the machine's CPU totals from /proc/stat, so that a benchmark can say
// how busy the machine was during a measurement and how much of its time the hypervisor took
// (steal): a pass with a few percent of steal is slower on every path.
package hostcpu

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Totals are /proc/stat's cpu line summed over all cores, in jiffies.
type Totals struct {
	All, Idle, Steal uint64 // idle includes iowait
}

// Read returns the machine's totals so far.
func Read() (Totals, error) {
	var t Totals
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return t, fmt.Errorf("/proc/stat: first line %q; want the cpu totals", line)
	}
	for i, s := range f[1:] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return t, fmt.Errorf("/proc/stat: %q: %w", s, err)
		}
		t.All += n
		switch i {
		case 3, 4: // idle, iowait
			t.Idle += n
		case 7:
			t.Steal = n
		}
	}
	return t, nil
}

// Busy is the share of the machine's time between a and b that was not idle.
func Busy(a, b Totals) float64 {
	if b.All <= a.All {
		return 0
	}
	return 1 - float64(b.Idle-a.Idle)/float64(b.All-a.All)
}

// Steal is the share of the machine's time between a and b that the hypervisor took.
func Steal(a, b Totals) float64 {
	if b.All <= a.All {
		return 0
	}
	return float64(b.Steal-a.Steal) / float64(b.All-a.All)
}
