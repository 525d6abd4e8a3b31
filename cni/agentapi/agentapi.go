// Package agentapi is the node-local API between the ambit-cni plugin and the cni-agent:
// JSON over HTTP on a Unix socket. The plugin asks the agent to enrol a pod during CNI ADD
// and to forget it during DEL; the agent decides from the pod's and namespace's labels.
package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// DefaultSocket is where the agent serves this API on the node.
const DefaultSocket = "/var/run/ambit/cni-agent.sock"

// The API's endpoints; each takes a PodRequest by POST and answers a Response.
const (
	PathAdd   = "/v1/cni/add"
	PathDel   = "/v1/cni/del"
	PathCheck = "/v1/cni/check"
)

// PodRequest describes the pod of one CNI call.
type PodRequest struct {
	ContainerID  string       `json:"containerID"`
	Netns        string       `json:"netns"`
	IfName       string       `json:"ifName"`
	PodNamespace string       `json:"podNamespace"`
	PodName      string       `json:"podName"`
	PodUID       string       `json:"podUID,omitempty"`
	IPs          []netip.Addr `json:"ips,omitempty"`
}

// Response is the agent's answer. Error is empty on success; otherwise it is written for the
// user who reads the kubelet's event ("ztunnel not connected on node n1").
type Response struct {
	Enrolled bool   `json:"enrolled"`
	Error    string `json:"error,omitempty"`
}

// ErrUnreachable is wrapped when the agent cannot be reached at all.
var ErrUnreachable = errors.New("cni-agent unreachable")

// Client calls the agent.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent at socket; each call takes at most timeout.
func NewClient(socket string, timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: timeout}}
}

// Call posts req to path and returns the agent's answer; an answer with an Error becomes
// an error with that text.
func (c *Client) Call(ctx context.Context, path string, req PodRequest) (*Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encoding request: %w", err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://cni-agent"+path, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w (is the Ambit cni-agent DaemonSet running on this node?)", ErrUnreachable, c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("reading cni-agent's answer: %w", err)
	}
	var r Response
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("cni-agent answered %s with %q: %w", resp.Status, b, err)
	}
	if r.Error != "" {
		return &r, errors.New(r.Error)
	}
	if resp.StatusCode != http.StatusOK {
		return &r, fmt.Errorf("cni-agent answered %s", resp.Status)
	}
	return &r, nil
}

// Handler serves the API with fn, which answers one request: its error becomes the Response's
// Error (with status 503 so nothing mistakes it for success).
func Handler(fn func(ctx context.Context, path string, req PodRequest) (enrolled bool, err error)) http.Handler {
	mux := http.NewServeMux()
	for _, p := range []string{PathAdd, PathDel, PathCheck} {
		mux.HandleFunc("POST "+p, func(w http.ResponseWriter, r *http.Request) {
			var req PodRequest
			dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
			w.Header().Set("Content-Type", "application/json")
			if err := dec.Decode(&req); err != nil {
				w.WriteHeader(http.StatusBadRequest)
				json.NewEncoder(w).Encode(Response{Error: fmt.Sprintf("decoding request: %v", err)})
				return
			}
			enrolled, err := fn(r.Context(), p, req)
			if err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				json.NewEncoder(w).Encode(Response{Enrolled: enrolled, Error: err.Error()})
				return
			}
			json.NewEncoder(w).Encode(Response{Enrolled: enrolled})
		})
	}
	return mux
}
