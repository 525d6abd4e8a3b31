package proxy

import (
	"io"
	"log/slog"
	"net"
	"runtime"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ambit-mesh/ambit/internal/gopool"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// countRecord counts what the relay reports while the connection is open.
type countRecord struct{ req, resp atomic.Int64 }

func (r *countRecord) AddRequest(n int64)  { r.req.Add(n) }
func (r *countRecord) AddResponse(n int64) { r.resp.Add(n) }
func (r *countRecord) Close(Outcome)       {}

// pipeConn is a net.Conn that is not a *net.TCPConn, so the relay takes its buffered path
// (as for HBONE streams).
type pipeConn struct{ net.Conn }

// Bytes show while the connection is still open, on the kernel splice path (TCP to TCP) and
// on the buffered one, and each direction is counted as its own.
func TestRelayCountsWhileOpen(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		client, clientSide := testutil.TCPPair(t)
		serverSide, server := testutil.TCPPair(t)
		var a net.Conn = clientSide
		if buffered {
			a = pipeConn{clientSide}
		}
		rec := &countRecord{}
		done := make(chan struct{})
		go func() {
			defer close(done)
			relay(testWorkers, a, serverSide, rec)
		}()
		client.Write([]byte(strings.Repeat("q", 3<<20+5)))
		if _, err := io.ReadFull(server, make([]byte, 3<<20+5)); err != nil {
			t.Fatal(err)
		}
		server.Write([]byte("answer"))
		if _, err := io.ReadFull(client, make([]byte, 6)); err != nil {
			t.Fatal(err)
		}
		// The splice path counts every spliceChunk and at the end: 3 MiB show before the close.
		min := int64(3 << 20)
		if buffered {
			min = 3<<20 + 5
		}
		testutil.WaitFor(t, 5*time.Second, "the bytes counted while the connection is open", func() bool {
			return rec.req.Load() >= min && (!buffered || rec.resp.Load() == 6)
		})
		client.Close()
		server.Close()
		<-done
		if rec.req.Load() != 3<<20+5 || rec.resp.Load() != 6 {
			t.Errorf("buffered %v: counted %d request and %d response bytes; want %d and 6", buffered, rec.req.Load(), rec.resp.Load(), 3<<20+5)
		}
	}
}

// Request bytes are what the connection received and responses what it sent, as Istio names
// them; counted once, live or at the close.
func TestMetricsRecorderDirections(t *testing.T) {
	m := metrics.New()
	r := NewMetricsRecorder(m, slog.New(slog.DiscardHandler))
	rec := r.Open(&Conn{Direction: Inbound})
	rec.AddRequest(100)
	rec.AddResponse(7)
	rec.Close(Outcome{Sent: 150, Received: 7})
	got := map[string]float64{}
	for _, mf := range testutil.ScrapeMetrics(t, m.WriteText) {
		for _, mm := range mf.GetMetric() {
			got[mf.GetName()] += counter(mm)
		}
	}
	if got["istio_tcp_received_bytes_total"] != 150 || got["istio_tcp_sent_bytes_total"] != 7 {
		t.Errorf("received %v, sent %v; want 150 (request) and 7 (response)", got["istio_tcp_received_bytes_total"], got["istio_tcp_sent_bytes_total"])
	}
}

func counter(m *dto.Metric) float64 { return m.GetCounter().GetValue() }

// BenchmarkIdleRelayMemory reports the heap and stack an open, idle relayed connection holds
// (both directions, on the buffered path that HBONE streams take towards ztunnel), after one
// small exchange each way. Run: go test -run '^$' -bench IdleRelayMemory ./ztunnel/proxy
func BenchmarkIdleRelayMemory(b *testing.B) {
	const conns = 200
	for range b.N {
		b.StopTimer()
		before := heldBytes()
		var ends []net.Conn
		var wg sync.WaitGroup
		for range conns {
			client, clientSide := testutil.TCPPair(b)
			serverSide, server := testutil.TCPPair(b)
			wg.Add(1)
			go func() {
				defer wg.Done()
				relay(testWorkers, pipeConn{clientSide}, pipeConn{serverSide}, nopRecord{})
			}()
			client.Write([]byte("q"))
			server.Write([]byte("a"))
			io.ReadFull(server, make([]byte, 1))
			io.ReadFull(client, make([]byte, 1))
			ends = append(ends, client, server)
		}
		held := heldBytes() - before
		b.ReportMetric(float64(held)/conns, "B/conn")
		for _, c := range ends {
			c.Close()
		}
		wg.Wait()
		b.StartTimer()
	}
}

// heldBytes is the live heap plus goroutine stacks, after two collections (the second empties
// what sync.Pools kept through the first).
func heldBytes() int64 {
	runtime.GC()
	runtime.GC()
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	rtmetrics.Read(s)
	return int64(s[0].Value.Uint64() + s[1].Value.Uint64())
}

// testWorkers runs the relays of this package's tests.
var testWorkers = gopool.New(idleWorkers, idleWorkerTime)
