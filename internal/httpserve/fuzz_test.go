package httpserve

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzReadRequest: any input is either refused with a status or parsed into a request whose
// fields hold what the handlers rely on; never a panic.
func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"GET /healthz/ready HTTP/1.1\r\nHost: 10.0.0.1:15021\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n\r\n",
		"GET /stats/prometheus HTTP/1.1\r\nAccept: text/plain;version=0.0.4;q=1\r\nAccept-Encoding: gzip\r\n\r\n",
		"POST /debug/pprof/symbol HTTP/1.1\r\nContent-Length: 12\r\n\r\n0x1234+0x567",
		"POST /logging?level=debug HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
		"GET http://localhost:15000/config_dump?section=workloads HTTP/1.0\r\n\r\n",
		"\r\nGET / HTTP/1.1\nA:b\n\n",
		"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET /%zz HTTP/1.1\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		const maxHeader, maxBody = 1024, 1 << 10
		rd := bytes.NewReader(in)
		br := bufio.NewReaderSize(rd, maxHeader+512)
		r, err := readRequest(br, maxHeader, maxBody)
		if err != nil {
			var re *requestError
			if errors.As(err, &re) {
				if re.code < 400 || re.code > 599 || re.msg == "" {
					t.Fatalf("refusal %d %q: want a 4xx or 5xx with a reason", re.code, re.msg)
				}
				return
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("error %v: want a refusal or the end of the input", err)
			}
			return
		}
		if !isToken([]byte(r.Method)) || !strings.HasPrefix(r.Path, "/") {
			t.Fatalf("parsed %q %q: want a token method and a path", r.Method, r.Path)
		}
		if r.Proto != "HTTP/1.1" && r.Proto != "HTTP/1.0" {
			t.Fatalf("parsed version %q", r.Proto)
		}
		if r.ContentLength < 0 || r.ContentLength > maxBody {
			t.Fatalf("content length %d outside 0..%d", r.ContentLength, maxBody)
		}
		if consumed := len(in) - rd.Len() - br.Buffered(); consumed > maxHeader {
			t.Fatalf("read %d bytes of header block, limit %d", consumed, maxHeader)
		}
		for k, vs := range r.Header {
			if !isToken([]byte(k)) {
				t.Fatalf("header name %q is not a token", k)
			}
			for _, v := range vs {
				if strings.ContainsAny(v, "\r\n\x00") {
					t.Fatalf("header %s value %q holds a line break or NUL", k, v)
				}
			}
		}
		_ = r.Query()
	})
}
