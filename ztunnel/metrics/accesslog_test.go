package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"
)

func TestLogAccess(t *testing.T) {
	tests := []struct {
		name      string
		rec       Record
		wantLevel string
		want      map[string]any
		wantNot   []string
	}{
		{
			name: "allowed inbound over hbone",
			rec: Record{
				Direction: "inbound",
				Src:       netip.MustParseAddrPort("10.244.1.5:41000"),
				Dst:       netip.MustParseAddrPort("10.244.2.7:9080"),
				HBONE:     netip.MustParseAddrPort("10.244.2.7:15008"),
				Labels:    fullLabels,
				Decision:  "allow",
				Sent:      1200, Received: 300,
				Duration: 1500 * time.Millisecond,
			},
			wantLevel: "INFO",
			want: map[string]any{
				"msg": "connection complete", "direction": "inbound",
				"src.addr": "10.244.1.5:41000", "src.workload": "productpage-v1", "src.namespace": "default",
				"src.identity": "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
				"dst.addr":     "10.244.2.7:9080", "dst.hbone_addr": "10.244.2.7:15008",
				"dst.service": "reviews.default.svc.cluster.local", "dst.workload": "reviews-v2", "dst.namespace": "default",
				"dst.identity": "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
				"security":     "mutual_tls", "policy": "allow",
				"bytes_sent": float64(1200), "bytes_recv": float64(300), "duration": float64(1500 * time.Millisecond),
			},
			wantNot: []string{"error"},
		},
		{
			name:      "denied",
			rec:       Record{Direction: "inbound", Decision: "deny", Err: errors.New("policy rejected the connection")},
			wantLevel: "WARN",
			want:      map[string]any{"policy": "deny", "error": "policy rejected the connection", "bytes_sent": float64(0)},
			wantNot:   []string{"src.addr", "dst.hbone_addr", "src.workload"},
		},
		{
			name:      "failed upstream",
			rec:       Record{Direction: "outbound", Dst: netip.MustParseAddrPort("10.96.0.10:80"), Err: errors.New("connection refused")},
			wantLevel: "WARN",
			want:      map[string]any{"dst.addr": "10.96.0.10:80", "error": "connection refused"},
			wantNot:   []string{"policy"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			LogAccess(context.Background(), slog.New(slog.NewJSONHandler(&buf, nil)), tt.rec)
			var got map[string]any
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatalf("log line %q: %v", buf.String(), err)
			}
			if got["level"] != tt.wantLevel {
				t.Errorf("level: got %v, want %v", got["level"], tt.wantLevel)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s: got %v, want %v", k, got[k], v)
				}
			}
			for _, k := range tt.wantNot {
				if _, ok := got[k]; ok {
					t.Errorf("%s: got %v, want absent", k, got[k])
				}
			}
		})
	}
	LogAccess(context.Background(), nil, Record{}) // a nil logger discards
}

func TestConnRecord(t *testing.T) {
	m := New()
	c := m.Open(fullLabels)
	c.AddSent(5)
	c.AddReceived(6)
	c.Close()
	r := c.Record()
	if r.Labels != fullLabels || r.Sent != 5 || r.Received != 6 || r.Duration != c.Duration() {
		t.Errorf("Record: got %+v, want labels, 5 sent, 6 received, duration %v", r, c.Duration())
	}
}
