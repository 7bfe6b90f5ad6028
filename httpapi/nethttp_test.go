package httpapi

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The edge served by net/http, as kmsd serves it: s.Handler() on
// s.Listener.

// serveNetHTTP serves s on a loopback listener with net/http and returns
// its address.
func serveNetHTTP(t *testing.T, s *Server) string {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second}
	go srv.Serve(s.Listener(raw))
	t.Cleanup(func() { srv.Close() })
	return raw.Addr().String()
}

// roundTrip writes raw to a new connection and returns the answer's
// status and body ("" when the connection is closed without one).
func roundTrip(t *testing.T, addr, raw string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Chunked bodies with malformed trailers fail to read in net/http, so the
// request is refused as unreadable (legacy 4000) before its signature is
// looked at (h1 accepted a bare CR and a NUL); with a
// well-formed trailer the body is read and the unsigned request is refused
// by authentication (4100).
func TestChunkedTrailers(t *testing.T) {
	addr := serveNetHTTP(t, New(&fakeKMS{}, Config{Logger: discardLogger()}))
	head := "POST " + LegacyPath + " HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
	body := "6\r\nAction\r\n0\r\n"
	for _, tt := range []struct {
		name, trailer string
		ok            bool
	}{
		{"well-formed", "X-Trailer: v\r\n\r\n", true},
		{"none", "\r\n", true},
		{"bare CR", "X-Trailer: a\rb\r\n\r\n", false},
		{"NUL", "X-Trailer: a\x00b\r\n\r\n", false},
		// RFC 9112 lets a recipient replace obs-fold with a space, as
		// net/http's textproto does; the edge reads no trailer anyway.
		{"folded", "X-Trailer: a\r\n b\r\n\r\n", true},
		{"no colon", "X-Trailer\r\n\r\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, reply := roundTrip(t, addr, head+body+tt.trailer)
			want := `"code":4000,"message":"cannot read request body"`
			if tt.ok {
				want = `"code":4100,`
			}
			if status != http.StatusOK || !strings.Contains(reply, want) {
				t.Fatalf("HTTP %d %s, want 200 with %s", status, reply, want)
			}
		})
	}
}

// The connection cap holds through net/http: connections over it are
// closed at once, and a slot freed by a closed connection is taken again.
func TestConnectionCapThroughNetHTTP(t *testing.T) {
	s := New(&fakeKMS{}, Config{Logger: discardLogger(), MaxConnections: 2, MaxConnectionsPerAddress: -1})
	addr := serveNetHTTP(t, s)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	healthy := func(c net.Conn) bool {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return false
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	a, b := dial(), dial()
	if !healthy(a) || !healthy(b) {
		t.Fatal("connections under the cap not served")
	}
	if healthy(dial()) {
		t.Fatal("a third connection was served (cap 2)")
	}
	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for s.connsOpen.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open after one closed", s.connsOpen.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if !healthy(dial()) {
		t.Fatal("a connection under the cap again was not served")
	}
}
