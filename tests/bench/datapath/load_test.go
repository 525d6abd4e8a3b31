package datapath

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// The load, as DESIGN.md section 12 fixes it.
const (
	connections = 16
	payloadSize = 1024 // bytes each way: fortio POSTs it and the echo server sends it back
	fixedQPS    = 1000
	runTime     = 10 * time.Second
	iperfTime   = 10 * time.Second // single-stream passes swung by a tenth at 5 s
	// iperfRuns single-stream runs per pass; the pass reports their median. One run of a
	// variant differed from the next by up to 1.4x (both ztunnels and both iperf3 ends share
	// the 2 CPUs, and where the scheduler puts them decides), so that 5-pass medians of
	// the same code gave Ambit/nginx ratios of 1.18x and 1.43x.
	iperfRuns = 3
)

// fortioResult is the part of `fortio load -json` the benchmark reads.
type fortioResult struct {
	ActualQPS         float64
	ActualDuration    time.Duration // nanoseconds in the JSON
	RetCodes          map[string]int
	DurationHistogram struct {
		Count       int
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
	Sizes       struct{ Avg float64 }
	SocketCount int
}

// percentile returns the p-th percentile of the request durations, in milliseconds.
func (r *fortioResult) percentile(p float64) (float64, error) {
	for _, q := range r.DurationHistogram.Percentiles {
		if q.Percentile == p {
			return q.Value * 1000, nil
		}
	}
	return 0, fmt.Errorf("fortio result has no percentile %v", p)
}

// runFortio runs fortio's client in the client pod of ns against url at qps (0: as fast as
// it goes) and checks that every request got a 200 with the echoed payload over the 16
// connections.
func runFortio(ctx context.Context, ns, url string, qps int) (*fortioResult, error) {
	stdout, stderr, err := c.Exec(ctx, ns, "client", "fortio", "/usr/local/bin/fortio", "load", "-quiet",
		"-qps", strconv.Itoa(qps), "-c", strconv.Itoa(connections), "-t", runTime.String(),
		"-payload-size", strconv.Itoa(payloadSize), "-p", "50,90,99", "-json", "-", url)
	if err != nil {
		return nil, fmt.Errorf("fortio load -qps %d %s in %s: %w; stderr:\n%s", qps, url, ns, err, stderr)
	}
	var r fortioResult
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		return nil, fmt.Errorf("fortio load -qps %d %s: decoding its JSON: %w; stderr:\n%s", qps, url, err, stderr)
	}
	total := r.DurationHistogram.Count
	if total == 0 || r.RetCodes["200"] != total {
		return nil, fmt.Errorf("fortio load -qps %d %s: answers %v of %d requests; want all 200; stderr:\n%s", qps, url, r.RetCodes, total, stderr)
	}
	// An echo answer carries the payload plus the headers.
	if r.Sizes.Avg < payloadSize {
		return nil, fmt.Errorf("fortio load -qps %d %s: answers of %.0f bytes on average; want the %d-byte payload echoed", qps, url, r.Sizes.Avg, payloadSize)
	}
	if r.SocketCount != connections {
		return nil, fmt.Errorf("fortio load -qps %d %s: %d connections; want %d kept alive", qps, url, r.SocketCount, connections)
	}
	return &r, nil
}

// runIperf runs one iperf3 TCP stream from the client pod of ns to host:port and returns
// what the receiver got, in Gbit/s.
func runIperf(ctx context.Context, ns, host string, port int) (float64, error) {
	stdout, stderr, err := c.Exec(ctx, ns, "client", "iperf3", "/usr/bin/iperf3", "-c", host, "-p", strconv.Itoa(port),
		"-t", strconv.Itoa(int(iperfTime/time.Second)), "-J")
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal([]byte(stdout), &r); jerr != nil {
		if err != nil {
			return 0, fmt.Errorf("iperf3 -c %s -p %d in %s: %w; stderr:\n%s", host, port, ns, err, stderr)
		}
		return 0, fmt.Errorf("iperf3 -c %s -p %d in %s: decoding its JSON: %w; stderr:\n%s", host, port, ns, jerr, stderr)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3 -c %s -p %d in %s: %s; stderr:\n%s", host, port, ns, r.Error, stderr)
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 -c %s -p %d in %s: %w; stderr:\n%s", host, port, ns, err, stderr)
	}
	if r.End.SumReceived.Bytes == 0 {
		return 0, fmt.Errorf("iperf3 -c %s -p %d in %s: the receiver got nothing", host, port, ns)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}
