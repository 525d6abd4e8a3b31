package datapath

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/internal/netns"
)

// profileZtunnels takes a CPU profile of every ztunnel over a run of load against v (through
// their admin port 15000, which listens on localhost inside the ztunnel pod, so it is reached
// from the pod's network namespace), writes each to dir with name in its file name and returns
// the top of each for the log. It runs after the measured passes, so the profiling costs
// nothing in the figures. load must last longer than seconds.
func profileZtunnels(ctx context.Context, v *variant, dir, name string, seconds int, load func(context.Context) error) (string, error) {
	type result struct {
		node, top string
		err       error
	}
	results := make(chan result, len(v.proxies))
	for _, zt := range v.proxies {
		go func() {
			base := filepath.Join(dir, "ztunnel-"+zt.Spec.NodeName+"-"+name)
			path := base + ".pprof"
			err := fetchAdmin(ctx, zt, fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), path)
			var top, mem string
			if err == nil {
				top, err = pprofTop(ctx, path)
			}
			if err == nil {
				mem, err = memory(ctx, zt, base+".heap")
			}
			results <- result{zt.Spec.NodeName, fmt.Sprintf("ztunnel on %s, %s (%s):\n%s\n%s", zt.Spec.NodeName, name, path, top, mem), err}
		}()
	}
	if err := load(ctx); err != nil {
		return "", err
	}
	var tops []string
	for range v.proxies {
		r := <-results
		if r.err != nil {
			return "", fmt.Errorf("profiling the ztunnel on %s: %w", r.node, r.err)
		}
		tops = append(tops, r.top)
	}
	return strings.Join(tops, "\n"), nil
}

// memory fetches the ztunnel's heap profile at the end of the max-rate run into path and
// returns where its memory is, as the Go runtime counts it.
func memory(ctx context.Context, zt *corev1.Pod, path string) (string, error) {
	if err := fetchAdmin(ctx, zt, "/debug/pprof/heap?debug=1", path); err != nil {
		return "", err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	// The text profile ends with runtime.MemStats, one "# Name = value" line each.
	var lines []string
	for _, line := range strings.Split(string(data), "\n") {
		for _, f := range []string{"Sys", "HeapSys", "HeapInuse", "HeapIdle", "HeapReleased", "Stack", "MSpan", "GCSys", "OtherSys", "NextGC"} {
			if strings.HasPrefix(line, "# "+f+" = ") {
				lines = append(lines, strings.TrimPrefix(line, "# "))
			}
		}
	}
	pids, err := podPIDs(string(zt.UID))
	if err != nil {
		return "", err
	}
	var resident []string
	for _, pid := range pids {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return "", err
		}
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "Rss") {
				resident = append(resident, strings.Join(strings.Fields(line), " "))
			}
		}
	}
	return fmt.Sprintf("resident: %s\nGo memory at the end of the run (bytes): %s", strings.Join(resident, ", "), strings.Join(lines, ", ")), nil
}

// fetchAdmin writes what the admin endpoint of the ztunnel in pod zt serves at path (e.g. a
// CPU profile) to file.
func fetchAdmin(ctx context.Context, zt *corev1.Pod, path, file string) error {
	pids, err := podPIDs(string(zt.UID))
	if err != nil {
		return err
	}
	ns, err := netns.Open(fmt.Sprintf("/proc/%d/ns/net", pids[0]))
	if err != nil {
		return err
	}
	defer ns.Close()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return ns.DialContext(ctx, network, addr)
	}}}
	defer client.CloseIdleConnections()
	url := "http://127.0.0.1:15000" + path
	req, err := newRequest(ctx, url)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("getting %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("getting %s: %s: %s", url, resp.Status, body)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", file, err)
	}
	return f.Close()
}

// pprofTop is the 25 functions with the most CPU time in the profile at path, cumulative
// time first, as `go tool pprof -top` prints them.
func pprofTop(ctx context.Context, path string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=25", path).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof -top %s: %w: %s", path, err, out)
	}
	return string(out), nil
}
