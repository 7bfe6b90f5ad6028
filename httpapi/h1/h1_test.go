package h1_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"hsmkms/httpapi/h1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ---- helpers ----

type testServer struct {
	*h1.Server
	addr    string
	serveCh chan error
	once    sync.Once
	err     error
}

// startServer serves h on a fresh 127.0.0.1 listener; configure may set
// the server's fields. The server is closed, and its connections waited
// for, when the test ends.
func startServer(t *testing.T, h http.Handler, configure ...func(*h1.Server)) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &h1.Server{Handler: h, ErrorLog: slog.New(slog.DiscardHandler)}
	for _, f := range configure {
		f(srv)
	}
	ts := &testServer{Server: srv, addr: ln.Addr().String(), serveCh: make(chan error, 1)}
	go func() { ts.serveCh <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("cleanup: Shutdown: %v", err)
		}
		if err := ts.serveErr(); !errors.Is(err, h1.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

// serveErr waits for Serve to return and reports its error.
func (ts *testServer) serveErr() error {
	ts.once.Do(func() {
		select {
		case ts.err = <-ts.serveCh:
		case <-time.After(10 * time.Second):
			ts.err = errors.New("Serve did not return within 10s")
		}
	})
	return ts.err
}

// syncBuffer is a bytes.Buffer safe for the server's logger and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// take returns the contents and empties the buffer.
func (b *syncBuffer) take() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.b.String()
	b.b.Reset()
	return s
}

// rawConn is a client connection speaking raw bytes.
type rawConn struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *rawConn) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawConn) read(method string) *rawResponse {
	c.t.Helper()
	r, err := readRawResponse(c.br, method)
	if err != nil {
		c.t.Fatalf("reading response: %v", err)
	}
	return r
}

// expectClosed checks that the server closed the connection: reading gives
// EOF (or a reset) and no further bytes.
func (c *rawConn) expectClosed() {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c.br)
	if len(rest) > 0 {
		c.t.Errorf("unexpected bytes before close: %q", rest)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		c.t.Errorf("connection still open after 5s")
	}
}

// expectOpen checks that the connection still serves a request: the
// response (of any status) to one more GET can be read.
func (c *rawConn) expectOpen(proto string) {
	c.t.Helper()
	req := "GET /still-open HTTP/1.1\r\nHost: h\r\n\r\n"
	if proto == "HTTP/1.0" {
		req = "GET /still-open HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
	}
	c.send(req)
	c.read("GET")
}

// rawResponse is a response as read off the wire: head is the status line
// and header exactly as sent, Response its parse (Body unused) and payload
// the body, de-chunked.
type rawResponse struct {
	head string
	*http.Response
	payload []byte
}

// readRawResponse reads one response from br, framing its body the way
// RFC 9112 says a client must for a request with method.
func readRawResponse(br *bufio.Reader, method string) (*rawResponse, error) {
	var head strings.Builder
	for {
		line, err := br.ReadString('\n')
		head.WriteString(line)
		if err != nil {
			return nil, fmt.Errorf("reading head %q: %w", head.String(), err)
		}
		if !strings.HasSuffix(line, "\r\n") {
			return nil, fmt.Errorf("head line without CRLF: %q", line)
		}
		if line == "\r\n" {
			break
		}
		if head.Len() > 64<<10 {
			return nil, errors.New("response head too long")
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(head.String())), &http.Request{Method: method})
	if err != nil {
		return nil, fmt.Errorf("parsing head %q: %w", head.String(), err)
	}
	r := &rawResponse{head: head.String(), Response: resp}
	switch {
	case method == http.MethodHead || resp.StatusCode/100 == 1 ||
		resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified:
	case len(resp.TransferEncoding) > 0:
		if r.payload, err = io.ReadAll(httputil.NewChunkedReader(br)); err != nil {
			return nil, fmt.Errorf("chunked body after %q: %w", head.String(), err)
		}
		for { // the trailer
			line, err := br.ReadString('\n')
			if err != nil {
				return nil, fmt.Errorf("trailer: %w", err)
			}
			if line == "\r\n" {
				break
			}
		}
	case resp.ContentLength >= 0:
		r.payload = make([]byte, resp.ContentLength)
		if _, err := io.ReadFull(br, r.payload); err != nil {
			return nil, fmt.Errorf("body after %q: %w", head.String(), err)
		}
	default:
		if r.payload, err = io.ReadAll(br); err != nil {
			return nil, fmt.Errorf("close-delimited body: %w", err)
		}
	}
	return r, nil
}

// headerLines returns the values of the header lines named name in the raw
// head (case-insensitively), as sent.
func (r *rawResponse) headerLines(name string) []string {
	var vals []string
	for _, line := range strings.Split(strings.TrimSuffix(r.head, "\r\n\r\n"), "\r\n")[1:] {
		k, v, _ := strings.Cut(line, ":")
		if strings.EqualFold(k, name) {
			vals = append(vals, strings.TrimSpace(v))
		}
	}
	return vals
}

// echo answers with a description of the request, its body read fully.
func echo(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "%s %s %s host=%s len=%d te=%v close=%v body=%q",
		r.Method, r.RequestURI, r.Proto, r.Host, r.ContentLength, r.TransferEncoding, r.Close, b)
}

// path answers with the request's path, without reading its body.
func path(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) }

func newClient(t *testing.T, tlsConfig *tls.Config) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: tlsConfig}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// ---- requests ----

func TestServe(t *testing.T) {
	tests := []struct {
		name     string
		req      string
		wantBody string
		wantConn string // the response's Connection header
		closed   bool   // the server closes after the response
	}{{
		name:     "GET",
		req:      "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\n\r\n",
		wantBody: `GET /a?b=c HTTP/1.1 host=example.com len=0 te=[] close=false body=""`,
	}, {
		name:     "POST with Content-Length",
		req:      "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
		wantBody: `POST /p HTTP/1.1 host=h len=5 te=[] close=false body="hello"`,
	}, {
		name:     "bare LF line ends",
		req:      "POST /lf HTTP/1.1\nHost: h\nContent-Length: 2\n\nhi",
		wantBody: `POST /lf HTTP/1.1 host=h len=2 te=[] close=false body="hi"`,
	}, {
		name:     "absolute-form target wins over Host",
		req:      "GET http://other.example/x HTTP/1.1\r\nHost: h\r\n\r\n",
		wantBody: `GET http://other.example/x HTTP/1.1 host=other.example len=0 te=[] close=false body=""`,
	}, {
		name:     "HTTP/1.0 without keep-alive",
		req:      "GET /old HTTP/1.0\r\n\r\n",
		wantBody: `GET /old HTTP/1.0 host= len=0 te=[] close=true body=""`,
		wantConn: "close",
		closed:   true,
	}, {
		name:     "HTTP/1.0 with keep-alive",
		req:      "GET /old HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
		wantBody: `GET /old HTTP/1.0 host= len=0 te=[] close=false body=""`,
		wantConn: "keep-alive",
	}, {
		name:     "HTTP/1.1 Connection: close",
		req:      "GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n",
		wantBody: `GET / HTTP/1.1 host=h len=0 te=[] close=true body=""`,
		wantConn: "close",
		closed:   true,
	}, {
		name: "chunked with extension and trailer",
		req: "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"5;name=\"value\"\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n",
		wantBody: `POST /c HTTP/1.1 host=h len=-1 te=[chunked] close=false body="hello, world"`,
	}, {
		name:     "chunked, coding name in upper case",
		req:      "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		wantBody: `POST /c HTTP/1.1 host=h len=-1 te=[chunked] close=false body="abc"`,
	}, {
		name:     "duplicate equal Content-Length",
		req:      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
		wantBody: `POST / HTTP/1.1 host=h len=3 te=[] close=false body="abc"`,
	}}
	ts := startServer(t, http.HandlerFunc(echo))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, ts.addr)
			c.send(tt.req)
			r := c.read("GET")
			if r.StatusCode != http.StatusOK || string(r.payload) != tt.wantBody {
				t.Fatalf("got %d %q, want 200 %q", r.StatusCode, r.payload, tt.wantBody)
			}
			if !strings.HasPrefix(r.head, "HTTP/1.1 200 OK\r\n") {
				t.Errorf("status line: %q", r.head)
			}
			if got := r.headerLines("Content-Length"); len(got) != 1 || got[0] != strconv.Itoa(len(tt.wantBody)) {
				t.Errorf("Content-Length lines %q, want [%d]", got, len(tt.wantBody))
			}
			if got := strings.Join(r.headerLines("Connection"), ","); got != tt.wantConn {
				t.Errorf("Connection: %q, want %q", got, tt.wantConn)
			}
			if tt.closed {
				c.expectClosed()
			} else if strings.Contains(tt.req, " HTTP/1.0\r\n") {
				c.expectOpen("HTTP/1.0")
			} else {
				c.expectOpen("HTTP/1.1")
			}
		})
	}
}

func TestKeepAliveAndPipelining(t *testing.T) {
	ts := startServer(t, http.HandlerFunc(echo))

	t.Run("sequential", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		for i := range 3 {
			c.send(fmt.Sprintf("POST /%d HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n%d", i, i))
			want := fmt.Sprintf(`POST /%d HTTP/1.1 host=h len=1 te=[] close=false body="%d"`, i, i)
			if r := c.read("POST"); string(r.payload) != want {
				t.Fatalf("request %d: got %q, want %q", i, r.payload, want)
			}
		}
	})

	t.Run("pipelined in one write", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.send("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n" +
			"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc" +
			"POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n" +
			"HEAD /4 HTTP/1.1\r\nHost: h\r\n\r\n" +
			"GET /5 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
		want := []string{
			`GET /1 HTTP/1.1 host=h len=0 te=[] close=false body=""`,
			`POST /2 HTTP/1.1 host=h len=3 te=[] close=false body="abc"`,
			`POST /3 HTTP/1.1 host=h len=-1 te=[chunked] close=false body="xy"`,
			``, // HEAD
			`GET /5 HTTP/1.1 host=h len=0 te=[] close=true body=""`,
		}
		for i, w := range want {
			method := "GET"
			if i == 3 {
				method = "HEAD"
			}
			if r := c.read(method); string(r.payload) != w {
				t.Errorf("response %d: got %q, want %q", i+1, r.payload, w)
			}
		}
		c.expectClosed()
	})
}

func TestRefusals(t *testing.T) {
	const host = "Host: h\r\n"
	tests := []struct {
		name   string
		req    string
		status int
	}{
		{"obs-fold", "GET / HTTP/1.1\r\n" + host + "X-A: a\r\n b\r\n\r\n", 400},
		{"obs-fold with tab", "GET / HTTP/1.1\r\n" + host + "X-A: a\r\n\tb\r\n\r\n", 400},
		{"folded first header line", "GET / HTTP/1.1\r\n " + host + "\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400},
		{"space in name", "GET / HTTP/1.1\r\n" + host + "X A: b\r\n\r\n", 400},
		{"no colon", "GET / HTTP/1.1\r\n" + host + "X-A\r\n\r\n", 400},
		{"empty name", "GET / HTTP/1.1\r\n" + host + ": v\r\n\r\n", 400},
		{"bare CR in header line", "GET / HTTP/1.1\r\n" + host + "X-A: a\rb\r\n\r\n", 400},
		{"bare CR in request line", "GET /\r HTTP/1.1\r\n" + host + "\r\n", 400},
		{"CR before CRLF", "GET / HTTP/1.1\r\n" + host + "X-A: a\r\r\n\r\n", 400},
		{"control char in value", "GET / HTTP/1.1\r\n" + host + "X-A: a\x01b\r\n\r\n", 400},
		{"NUL in value", "GET / HTTP/1.1\r\n" + host + "X-A: a\x00b\r\n\r\n", 400},
		{"DEL in value", "GET / HTTP/1.1\r\n" + host + "X-A: a\x7fb\r\n\r\n", 400},
		{"missing Host in HTTP/1.1", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400},
		{"two Host headers", "GET / HTTP/1.1\r\n" + host + "Host: h\r\n\r\n", 400},
		{"invalid Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"conflicting Content-Length", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400},
		{"Content-Length with sign", "POST / HTTP/1.1\r\n" + host + "Content-Length: +5\r\n\r\nhello", 400},
		{"negative Content-Length", "POST / HTTP/1.1\r\n" + host + "Content-Length: -1\r\n\r\n", 400},
		{"Content-Length with inner space", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5 5\r\n\r\nhello", 400},
		{"Content-Length list", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5, 5\r\n\r\nhello", 400},
		{"empty Content-Length", "POST / HTTP/1.1\r\n" + host + "Content-Length:\r\n\r\n", 400},
		{"hex Content-Length", "POST / HTTP/1.1\r\n" + host + "Content-Length: 0x5\r\n\r\nhello", 400},
		{"Content-Length and Transfer-Encoding", "POST / HTTP/1.1\r\n" + host + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400},
		{"Transfer-Encoding in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"Transfer-Encoding gzip", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip\r\n\r\n", 501},
		{"Transfer-Encoding gzip, chunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"two Transfer-Encoding lines", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501},
		{"HTTP/2.0", "GET / HTTP/2.0\r\n" + host + "\r\n", 505},
		{"HTTP/1.2", "GET / HTTP/1.2\r\n" + host + "\r\n", 505},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505},
		{"Expect: foo", "POST / HTTP/1.1\r\n" + host + "Content-Length: 1\r\nExpect: foo\r\n\r\nx", 417},
		{"header too large", "GET / HTTP/1.1\r\n" + host + "X-Big: " + strings.Repeat("a", 2000) + "\r\n\r\n", 431},
		{"request line too large", "GET /" + strings.Repeat("a", 5000) + " HTTP/1.1\r\n" + host + "\r\n", 431},
		{"garbage request line", "HELLO\r\n\r\n", 400},
		{"binary request line", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400},
		{"no protocol", "GET /\r\n" + host + "\r\n", 400},
		{"lower-case protocol", "GET / http/1.1\r\n" + host + "\r\n", 400},
		{"double space", "GET  / HTTP/1.1\r\n" + host + "\r\n", 400},
		{"trailing space", "GET / HTTP/1.1 \r\n" + host + "\r\n", 400},
		{"invalid method", "G(T / HTTP/1.1\r\n" + host + "\r\n", 400},
		{"invalid target", "GET /a\x7fb HTTP/1.1\r\n" + host + "\r\n", 400},
		{"relative target", "GET a/b HTTP/1.1\r\n" + host + "\r\n", 400},
	}
	var served atomic.Int32
	ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		echo(w, r)
	}), func(s *h1.Server) { s.MaxHeaderBytes = 1024 })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := served.Load()
			c := dialRaw(t, ts.addr)
			c.send(tt.req)
			r := c.read("GET")
			if r.StatusCode != tt.status {
				t.Errorf("status %d (%q), want %d", r.StatusCode, r.payload, tt.status)
			}
			if !r.Close || strings.Join(r.headerLines("Connection"), ",") != "close" {
				t.Errorf("response lacks Connection: close: %q", r.head)
			}
			c.expectClosed()
			if n := served.Load() - before; n != 0 {
				t.Errorf("handler ran %d times", n)
			}
		})
	}
}

func TestExpectContinue(t *testing.T) {
	const head = "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"

	t.Run("handler reads the body", func(t *testing.T) {
		started, proceed := make(chan struct{}), make(chan struct{})
		ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/upload" {
				close(started)
				<-proceed
			}
			echo(w, r)
		}))
		c := dialRaw(t, ts.addr)
		c.send(head)
		<-started
		// Nothing may come before the handler reads the body.
		_ = c.nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if b, err := c.br.ReadByte(); err == nil {
			t.Fatalf("got byte %q before the handler read the body", b)
		}
		_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		close(proceed)
		r := c.read("POST")
		if r.head != "HTTP/1.1 100 Continue\r\n\r\n" {
			t.Fatalf("interim response %q, want exactly HTTP/1.1 100 Continue", r.head)
		}
		c.send("hello")
		r = c.read("POST")
		want := `POST /upload HTTP/1.1 host=h len=5 te=[] close=false body="hello"`
		if r.StatusCode != 200 || string(r.payload) != want {
			t.Fatalf("got %d %q, want 200 %q", r.StatusCode, r.payload, want)
		}
		c.expectOpen("HTTP/1.1")
	})

	for _, wrap := range []bool{false, true} {
		t.Run(fmt.Sprintf("handler does not read the body, body wrapped %v", wrap), func(t *testing.T) {
			ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if wrap {
					r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
				}
				http.Error(w, "no", http.StatusUnauthorized)
			}))
			c := dialRaw(t, ts.addr)
			c.send(head)
			r := c.read("POST")
			if r.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401 (and no 100 Continue)", r.StatusCode)
			}
			if !r.Close {
				t.Errorf("response lacks Connection: close: %q", r.head)
			}
			c.expectClosed()
		})
	}

	t.Run("chunked body", func(t *testing.T) {
		ts := startServer(t, http.HandlerFunc(echo))
		c := dialRaw(t, ts.addr)
		c.send("POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-Continue\r\n\r\n")
		if r := c.read("POST"); r.StatusCode != http.StatusContinue {
			t.Fatalf("status %d, want 100", r.StatusCode)
		}
		c.send("3\r\nabc\r\n0\r\n\r\n")
		want := `POST /c HTTP/1.1 host=h len=-1 te=[chunked] close=false body="abc"`
		if r := c.read("POST"); string(r.payload) != want {
			t.Fatalf("got %q, want %q", r.payload, want)
		}
	})

	t.Run("handler reads after streaming the response", func(t *testing.T) {
		// The final response's header is out: a 100 Continue now would be
		// written into its body.
		ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
		}))
		c := dialRaw(t, ts.addr)
		c.send(head)
		var got bytes.Buffer
		br := bufio.NewReader(io.TeeReader(c.nc, &got))
		line, err := br.ReadString('\n')
		if err != nil || line != "HTTP/1.1 200 OK\r\n" {
			t.Fatalf("first line %q, %v; want the final response", line, err)
		}
		c.send("hello")
		r, err := readRawResponse(bufio.NewReader(io.MultiReader(strings.NewReader(line), br)), "POST")
		if err != nil {
			t.Fatalf("%v; read %q", err, got.String())
		}
		if string(r.payload) != "hello" {
			t.Fatalf("body %q, want %q", r.payload, "hello")
		}
		if strings.Contains(got.String(), "100 Continue") {
			t.Errorf("100 Continue sent after the final response: %q", got.String())
		}
	})

	t.Run("HTTP/1.0 gets no 100 Continue", func(t *testing.T) {
		ts := startServer(t, http.HandlerFunc(echo))
		c := dialRaw(t, ts.addr)
		c.send("POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi")
		r := c.read("POST")
		if r.StatusCode != 200 || !strings.HasSuffix(string(r.payload), `body="hi"`) {
			t.Fatalf("got %d %q", r.StatusCode, r.payload)
		}
	})
}

// ---- responses ----

func TestResponses(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 200<<10/16) // 200 KiB
	exactly64K := bytes.Repeat([]byte("x"), 64<<10)
	var handlerErrs syncBuffer // what handlers found wrong on their side

	tests := []struct {
		name      string
		req       string
		method    string
		handler   http.HandlerFunc
		check     func(t *testing.T, r *rawResponse)
		truncated bool // the body ends early, at the close
		closed    bool
	}{{
		name: "64 KiB buffered with Content-Length",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Write(exactly64K[:100])
			w.Write(exactly64K[100:])
		},
		check: func(t *testing.T, r *rawResponse) {
			wantLength(t, r, len(exactly64K))
			if !bytes.Equal(r.payload, exactly64K) {
				t.Errorf("body differs (%d bytes)", len(r.payload))
			}
		},
	}, {
		name: "200 KiB streamed chunked",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(big[:1000])
			w.Write(big[1000:])
		},
		check: func(t *testing.T, r *rawResponse) {
			if got := r.headerLines("Transfer-Encoding"); len(got) != 1 || got[0] != "chunked" {
				t.Errorf("Transfer-Encoding %q, want chunked", got)
			}
			if got := r.headerLines("Content-Length"); got != nil {
				t.Errorf("Content-Length %q with chunked", got)
			}
			if !bytes.Equal(r.payload, big) {
				t.Errorf("body differs (%d bytes)", len(r.payload))
			}
		},
	}, {
		name: "streamed with the handler's Content-Length",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
			for b := big; len(b) > 0; b = b[min(len(b), 30000):] {
				w.Write(b[:min(len(b), 30000)])
			}
		},
		check: func(t *testing.T, r *rawResponse) {
			wantLength(t, r, len(big))
			if got := r.headerLines("Transfer-Encoding"); got != nil {
				t.Errorf("Transfer-Encoding %q with a Content-Length", got)
			}
			if !bytes.Equal(r.payload, big) {
				t.Errorf("body differs (%d bytes)", len(r.payload))
			}
		},
	}, {
		name: "streamed body shorter than its Content-Length",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(big)+1))
			w.Write(big)
		},
		truncated: true, // the client is left waiting for a byte: only the close ends it
		closed:    true,
	}, {
		name: "streamed body longer than its Content-Length",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
			w.Write(big)
			if n, err := w.Write([]byte("x")); n != 0 || !errors.Is(err, http.ErrContentLength) {
				fmt.Fprintf(&handlerErrs, "write beyond Content-Length: %d, %v", n, err)
			}
		},
		check: func(t *testing.T, r *rawResponse) {
			if !bytes.Equal(r.payload, big) {
				t.Errorf("body differs (%d bytes)", len(r.payload))
			}
		},
		closed: true,
	}, {
		name: "Flush streams a small body",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "part1,")
			w.(http.Flusher).Flush()
			io.WriteString(w, "part2")
		},
		check: func(t *testing.T, r *rawResponse) {
			if len(r.TransferEncoding) != 1 || string(r.payload) != "part1,part2" {
				t.Errorf("TE %q body %q", r.TransferEncoding, r.payload)
			}
		},
	}, {
		name:   "streamed to HTTP/1.0: close-delimited",
		req:    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		method: "GET",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Write(big)
		},
		check: func(t *testing.T, r *rawResponse) {
			if r.headerLines("Content-Length") != nil || r.headerLines("Transfer-Encoding") != nil || !r.Close {
				t.Errorf("head %q, want close-delimited", r.head)
			}
			if !bytes.Equal(r.payload, big) {
				t.Errorf("body differs (%d bytes)", len(r.payload))
			}
		},
		closed: true,
	}, {
		name:    "HEAD",
		method:  "HEAD",
		handler: func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html>hello</html>") },
		check: func(t *testing.T, r *rawResponse) {
			wantLength(t, r, len("<html>hello</html>"))
			if got := r.Header.Get("Content-Type"); got != "text/html; charset=utf-8" {
				t.Errorf("Content-Type %q, want what GET would get", got)
			}
		},
	}, {
		name:   "HEAD with the handler's Content-Length",
		method: "HEAD",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "12345")
		},
		check: func(t *testing.T, r *rawResponse) { wantLength(t, r, 12345) },
	}, {
		name:    "HEAD with a large body written",
		method:  "HEAD",
		handler: func(w http.ResponseWriter, r *http.Request) { w.Write(big) },
		check: func(t *testing.T, r *rawResponse) {
			if r.StatusCode != 200 {
				t.Errorf("status %d", r.StatusCode)
			}
		},
	}, {
		name:    "HEAD with Flush",
		method:  "HEAD",
		handler: func(w http.ResponseWriter, r *http.Request) { w.(http.Flusher).Flush() },
		check:   func(t *testing.T, r *rawResponse) {},
	}, {
		name: "204 has no body and no Content-Length",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "5")
			w.WriteHeader(http.StatusNoContent)
			if _, err := w.Write([]byte("hello")); !errors.Is(err, http.ErrBodyNotAllowed) {
				fmt.Fprintf(&handlerErrs, "Write to a 204: %v", err)
			}
		},
		check: func(t *testing.T, r *rawResponse) {
			if r.StatusCode != http.StatusNoContent {
				t.Errorf("status %d", r.StatusCode)
			}
			if r.headerLines("Content-Length") != nil || r.headerLines("Transfer-Encoding") != nil {
				t.Errorf("framing header on a 204: %q", r.head)
			}
		},
	}, {
		name: "304 has no body",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNotModified)
			w.(http.Flusher).Flush()
		},
		check: func(t *testing.T, r *rawResponse) {
			if r.StatusCode != http.StatusNotModified || r.headerLines("Transfer-Encoding") != nil {
				t.Errorf("head %q", r.head)
			}
		},
	}, {
		name: "CR and LF in header values do not split the response",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Evil", "a\r\nSet-Cookie: pwned=1\r\n\r\n<script>")
			w.Header()["X-Evil-Lf"] = []string{"b\nX-Injected: 1"}
			w.Header()["Bad Name\r\nX-Injected"] = []string{"2"}
			io.WriteString(w, "body")
		},
		check: func(t *testing.T, r *rawResponse) {
			if r.headerLines("Set-Cookie") != nil || r.headerLines("X-Injected") != nil {
				t.Errorf("header injected: %q", r.head)
			}
			if got := r.Header.Get("X-Evil"); got != "a  Set-Cookie: pwned=1    <script>" {
				t.Errorf("X-Evil %q", got)
			}
			if got := r.Header.Get("X-Evil-Lf"); got != "b X-Injected: 1" {
				t.Errorf("X-Evil-Lf %q", got)
			}
			if string(r.payload) != "body" {
				t.Errorf("body %q", r.payload)
			}
		},
	}, {
		name:    "Content-Type sniffed",
		handler: func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<!DOCTYPE html><p>hi") },
		check: func(t *testing.T, r *rawResponse) {
			if got := r.Header.Get("Content-Type"); got != "text/html; charset=utf-8" {
				t.Errorf("Content-Type %q", got)
			}
		},
	}, {
		name: "Content-Type sniffed when streaming",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Write(append([]byte("<!DOCTYPE html>"), big...))
		},
		check: func(t *testing.T, r *rawResponse) {
			if got := r.Header.Get("Content-Type"); got != "text/html; charset=utf-8" {
				t.Errorf("Content-Type %q", got)
			}
		},
	}, {
		name: "handler's Content-Type kept, even empty",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Type"] = nil
			io.WriteString(w, "<html>")
		},
		check: func(t *testing.T, r *rawResponse) {
			if got := r.headerLines("Content-Type"); got != nil {
				t.Errorf("Content-Type %q, want none", got)
			}
		},
	}, {
		name:    "no body: Content-Length 0 and no Content-Type",
		handler: func(w http.ResponseWriter, r *http.Request) {},
		check: func(t *testing.T, r *rawResponse) {
			wantLength(t, r, 0)
			if got := r.headerLines("Content-Type"); got != nil {
				t.Errorf("Content-Type %q on an empty body", got)
			}
		},
	}, {
		name:    "Date",
		handler: func(w http.ResponseWriter, r *http.Request) {},
		check: func(t *testing.T, r *rawResponse) {
			d, err := http.ParseTime(r.Header.Get("Date"))
			if err != nil || time.Since(d).Abs() > time.Minute {
				t.Errorf("Date %q: %v", r.Header.Get("Date"), err)
			}
		},
	}, {
		name: "handler's Date kept",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Date", "Mon, 02 Jan 2006 15:04:05 GMT")
		},
		check: func(t *testing.T, r *rawResponse) {
			if got := r.headerLines("Date"); len(got) != 1 || got[0] != "Mon, 02 Jan 2006 15:04:05 GMT" {
				t.Errorf("Date lines %q", got)
			}
		},
	}, {
		name: "handler's framing headers replaced",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Transfer-Encoding", "gzip")
			w.Header().Set("Content-Length", "999")
			w.Header().Set("Connection", "upgrade")
			io.WriteString(w, "abc")
		},
		check: func(t *testing.T, r *rawResponse) {
			wantLength(t, r, 3)
			if r.headerLines("Transfer-Encoding") != nil || r.headerLines("Connection") != nil {
				t.Errorf("head %q", r.head)
			}
		},
	}, {
		name: "handler sets Connection: close",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		},
		check: func(t *testing.T, r *rawResponse) {
			if got := r.headerLines("Connection"); len(got) != 1 || got[0] != "close" {
				t.Errorf("Connection lines %q", got)
			}
			if string(r.payload) != "bye" {
				t.Errorf("body %q", r.payload)
			}
		},
		closed: true,
	}, {
		name: "status and header as set",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("X-Multi", "1")
			w.Header().Add("X-Multi", "2")
			w.WriteHeader(http.StatusTeapot)
			w.WriteHeader(http.StatusInternalServerError) // ignored
			io.WriteString(w, "tea")
		},
		check: func(t *testing.T, r *rawResponse) {
			if !strings.HasPrefix(r.head, "HTTP/1.1 418 I'm a teapot\r\n") {
				t.Errorf("status line %q", r.head)
			}
			if got := r.headerLines("X-Multi"); strings.Join(got, ",") != "1,2" {
				t.Errorf("X-Multi lines %q", got)
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, tt.handler)
			c := dialRaw(t, ts.addr)
			method := tt.method
			if method == "" {
				method = "GET"
			}
			req := tt.req
			if req == "" {
				req = method + " / HTTP/1.1\r\nHost: h\r\n\r\n"
			}
			c.send(req)
			if tt.truncated {
				if _, err := readRawResponse(c.br, method); !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("reading a truncated response: %v, want ErrUnexpectedEOF", err)
				}
				return
			}
			r := c.read(method)
			tt.check(t, r)
			if e := handlerErrs.take(); e != "" {
				t.Errorf("handler: %s", e)
			}
			if tt.closed {
				c.expectClosed()
			} else {
				c.expectOpen("HTTP/1.1")
			}
		})
	}
}

func wantLength(t *testing.T, r *rawResponse, n int) {
	t.Helper()
	if got := r.headerLines("Content-Length"); len(got) != 1 || got[0] != strconv.Itoa(n) {
		t.Errorf("Content-Length lines %q, want [%d]", got, n)
	}
}

func TestNetHTTPClient(t *testing.T) {
	big := bytes.Repeat([]byte("abcdefghijklmnopqrstuvwxyz012345"), 200<<10/32)
	ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Write(big)
		case "/echo":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			w.Header().Set("X-Length", strconv.Itoa(len(b)))
			w.Write(b)
		}
	}))
	client := newClient(t, nil)
	var reused []bool
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) }}
	ctx := httptrace.WithClientTrace(context.Background(), trace)

	for i := range 2 {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ts.addr+"/big", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(b, big) {
			t.Fatalf("GET /big #%d: %d bytes, %v", i, len(b), err)
		}
		if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
			t.Errorf("TransferEncoding %q", resp.TransferEncoding)
		}
	}
	for _, n := range []int{0, 1, 100 << 10} {
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+ts.addr+"/echo", bytes.NewReader(big[:n]))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(b, big[:n]) || resp.Header.Get("X-Length") != strconv.Itoa(n) {
			t.Fatalf("POST %d bytes: got %d bytes, X-Length %q, %v", n, len(b), resp.Header.Get("X-Length"), err)
		}
	}
	// A chunked request body (unknown length).
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+ts.addr+"/echo", io.MultiReader(bytes.NewReader(big[:5000])))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(b, big[:5000]) {
		t.Fatalf("chunked POST: got %d bytes", len(b))
	}
	if len(reused) != 6 || reused[0] || !reused[1] || !reused[5] {
		t.Errorf("connection reuse %v, want one connection for all", reused)
	}
}

// ---- handler panics ----

func TestHandlerPanic(t *testing.T) {
	var logs syncBuffer
	ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			io.WriteString(w, "partial")
			panic("boom in handler")
		case "/abort":
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "ok")
	}), func(s *h1.Server) { s.ErrorLog = slog.New(slog.NewTextHandler(&logs, nil)) })

	tests := []struct {
		path    string
		wantLog bool
	}{{"/panic", true}, {"/abort", false}}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			other := dialRaw(t, ts.addr) // a connection open during the panic
			other.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
			other.read("GET")

			c := dialRaw(t, ts.addr)
			c.send("GET " + tt.path + " HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
			c.expectClosed() // no response at all, not even for the pipelined request

			other.expectOpen("HTTP/1.1")
			dialRaw(t, ts.addr).expectOpen("HTTP/1.1")

			log := logs.take()
			if got := strings.Contains(log, "panic serving request"); got != tt.wantLog {
				t.Errorf("panic logged: %v, want %v; log:\n%s", got, tt.wantLog, log)
			}
			if tt.wantLog && (!strings.Contains(log, "boom in handler") || !strings.Contains(log, "h1_test.TestHandlerPanic")) {
				t.Errorf("log lacks the panic value or stack:\n%s", log)
			}
		})
	}
}

// ---- timeouts ----

func TestTimeouts(t *testing.T) {
	const d = 200 * time.Millisecond
	tests := []struct {
		name      string
		configure func(*h1.Server)
		run       func(t *testing.T, c *rawConn)
	}{{
		name:      "ReadHeaderTimeout closes a stalled header",
		configure: func(s *h1.Server) { s.ReadHeaderTimeout = d },
		run: func(t *testing.T, c *rawConn) {
			c.send("GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")
			c.expectClosed()
		},
	}, {
		name:      "ReadTimeout, as header timeout, closes a stalled header",
		configure: func(s *h1.Server) { s.ReadTimeout = d },
		run: func(t *testing.T, c *rawConn) {
			c.send("GET / HTTP/1.1\r\n")
			c.expectClosed()
		},
	}, {
		name:      "ReadHeaderTimeout closes a connection that sends nothing",
		configure: func(s *h1.Server) { s.ReadHeaderTimeout = d },
		run: func(t *testing.T, c *rawConn) {
			c.expectClosed()
		},
	}, {
		name:      "IdleTimeout closes an idle keep-alive connection",
		configure: func(s *h1.Server) { s.IdleTimeout = d },
		run: func(t *testing.T, c *rawConn) {
			c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
			if r := c.read("GET"); r.StatusCode != 200 || r.Close {
				t.Fatalf("status %d close %v", r.StatusCode, r.Close)
			}
			c.expectClosed()
		},
	}, {
		name:      "ReadTimeout bounds a stalled body",
		configure: func(s *h1.Server) { s.ReadTimeout = d },
		run: func(t *testing.T, c *rawConn) {
			c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
			r := c.read("POST")
			if r.StatusCode != http.StatusBadRequest || !strings.Contains(string(r.payload), "timeout") {
				t.Fatalf("got %d %q, want the handler's read to time out", r.StatusCode, r.payload)
			}
			c.expectClosed()
		},
	}, {
		name:      "ReadHeaderTimeout does not bound the body",
		configure: func(s *h1.Server) { s.ReadHeaderTimeout = d },
		run: func(t *testing.T, c *rawConn) {
			c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab")
			time.Sleep(2 * d) // a body slower than the header timeout, no ReadTimeout
			c.send("cde")
			r := c.read("POST")
			if r.StatusCode != 200 || !strings.HasSuffix(string(r.payload), `body="abcde"`) {
				t.Fatalf("got %d %q", r.StatusCode, r.payload)
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, http.HandlerFunc(echo), tt.configure)
			tt.run(t, dialRaw(t, ts.addr))
		})
	}
}

// ---- Shutdown ----

func TestShutdown(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			close(started)
			<-release
		}
		io.WriteString(w, r.URL.Path)
	}))

	idle := dialRaw(t, ts.addr)
	idle.send("GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
	idle.read("GET")
	busy := dialRaw(t, ts.addr)
	busy.send("GET /block HTTP/1.1\r\nHost: h\r\n\r\n")
	<-started

	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdown <- ts.Shutdown(ctx)
	}()

	idle.expectClosed()
	if err := ts.serveErr(); !errors.Is(err, h1.ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	if nc, err := net.Dial("tcp", ts.addr); err == nil {
		nc.Close()
		t.Errorf("listener still accepts after Shutdown")
	}
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned %v with a request in progress", err)
	default:
	}

	close(release)
	r := busy.read("GET")
	if string(r.payload) != "/block" || !r.Close {
		t.Errorf("in-flight response %q, head %q; want its body and Connection: close", r.payload, r.head)
	}
	busy.expectClosed()
	select {
	case err := <-shutdown:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last request")
	}
}

func TestShutdownContextExpires(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
	}))
	c := dialRaw(t, ts.addr)
	c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	<-started

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	c.expectClosed()
	if err := ts.serveErr(); !errors.Is(err, h1.ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
}

func TestServeAfterShutdown(t *testing.T) {
	srv := &h1.Server{Handler: http.HandlerFunc(echo)}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(ln); !errors.Is(err, h1.ErrServerClosed) {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
	if _, err := ln.Accept(); err == nil {
		t.Errorf("Serve left the listener open")
	}
}

func TestNoGoroutinesAfterShutdown(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	cert, roots := selfSigned(t)
	started, release := make(chan struct{}), make(chan struct{})
	for _, tlsConfig := range []*tls.Config{nil, {Certificates: []tls.Certificate{cert}}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &h1.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/block" {
					started <- struct{}{}
					<-release
				}
				echo(w, r)
			}),
			TLSConfig:         tlsConfig,
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.New(slog.DiscardHandler),
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()

		client := newClient(t, &tls.Config{RootCAs: roots})
		scheme := "http"
		if tlsConfig != nil {
			scheme = "https"
		}
		resp, err := client.Get(scheme + "://" + ln.Addr().String() + "/") // stays idle in the client's pool
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		var inflight sync.WaitGroup
		inflight.Go(func() {
			resp, err := client.Get(scheme + "://" + ln.Addr().String() + "/block")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
		<-started
		silent, err := net.Dial("tcp", ln.Addr().String()) // sends nothing, not even a TLS hello
		if err != nil {
			t.Fatal(err)
		}
		partial, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(partial, "GET / HTTP/1.1\r\n")

		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		shutdown := make(chan struct{})
		go func() {
			srv.Shutdown(ctx) // times out on the connections that never finish a request
			close(shutdown)
		}()
		release <- struct{}{}
		<-shutdown
		cancel()
		if err := <-served; !errors.Is(err, h1.ErrServerClosed) {
			t.Errorf("Serve = %v", err)
		}
		inflight.Wait()
		silent.Close()
		partial.Close()
		client.Transport.(*http.Transport).CloseIdleConnections()
	}
	goleak.VerifyNone(t, leaks)
}

// ---- TLS ----

func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "h1 test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, roots
}

func TestTLS(t *testing.T) {
	cert, roots := selfSigned(t)
	ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || !r.TLS.HandshakeComplete {
			http.Error(w, "no TLS state", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%s %s %s", r.Proto, tls.VersionName(r.TLS.Version), r.TLS.NegotiatedProtocol)
	}), func(s *h1.Server) {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		s.ReadHeaderTimeout = 5 * time.Second
	})
	client := newClient(t, &tls.Config{RootCAs: roots})
	for range 2 {
		resp, err := client.Get("https://" + ts.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "HTTP/1.1 TLS 1.3 " || resp.TLS == nil {
			t.Fatalf("got %d %q", resp.StatusCode, b)
		}
	}

	// A client that only speaks plain HTTP gets no answer.
	c := dialRaw(t, ts.addr)
	c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	c.expectClosed()
}

func TestTLSShutdownDuringHandshake(t *testing.T) {
	cert, _ := selfSigned(t)
	ts := startServer(t, http.HandlerFunc(echo), func(s *h1.Server) {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	c := dialRaw(t, ts.addr) // never says hello
	// Give Serve a moment to accept it; the outcome below holds either way.
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := ts.Shutdown(ctx)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v", err)
	}
	c.expectClosed()
}

// ---- draining unread request bodies ----

func TestDrain(t *testing.T) {
	const second = "GET /second HTTP/1.1\r\nHost: h\r\n\r\n"
	// smuggled is a request hidden in a body: it must never be served.
	const smuggled = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
	tests := []struct {
		name    string
		handler http.HandlerFunc
		req     string
		closed  bool
	}{{
		name:    "small Content-Length body left unread",
		handler: path,
		req:     fmt.Sprintf("POST /first HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled),
	}, {
		name:    "small chunked body left unread",
		handler: path,
		req:     fmt.Sprintf("POST /first HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled),
	}, {
		name: "body half read",
		handler: func(w http.ResponseWriter, r *http.Request) {
			io.ReadFull(r.Body, make([]byte, 5))
			path(w, r)
		},
		req: fmt.Sprintf("POST /first HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled),
	}, {
		name: "body replaced by the handler and left unread",
		handler: func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
			path(w, r)
		},
		req: fmt.Sprintf("POST /first HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled),
	}, {
		name: "body replaced and read partly by the handler",
		handler: func(w http.ResponseWriter, r *http.Request) {
			r.Body = io.NopCloser(io.LimitReader(r.Body, 3))
			io.ReadAll(r.Body)
			path(w, r)
		},
		req: fmt.Sprintf("POST /first HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, tt.handler)
			c := dialRaw(t, ts.addr)
			c.send(tt.req + second)
			for _, want := range []string{"/first", "/second"} {
				if r := c.read("GET"); string(r.payload) != want {
					t.Fatalf("got %q, want %q", r.payload, want)
				}
			}
		})
	}
}

func TestDrainLimit(t *testing.T) {
	tests := []struct {
		name      string
		head      string
		body      func(n int) string
		n         int
		closed    bool
		announced bool // the response says Connection: close
	}{
		{"Content-Length under the limit", "Content-Length: %d\r\n", plain, 200 << 10, false, false},
		{"Content-Length over the limit", "Content-Length: %d\r\n", plain, 300 << 10, true, true},
		{"chunked under the limit", "Transfer-Encoding: chunked\r\n", chunked, 200 << 10, false, false},
		// The length of a chunked body is only known by reading it.
		{"chunked over the limit", "Transfer-Encoding: chunked\r\n", chunked, 300 << 10, true, false},
	}
	ts := startServer(t, http.HandlerFunc(path))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, ts.addr)
			head := "POST /upload HTTP/1.1\r\nHost: h\r\n" + strings.ReplaceAll(tt.head, "%d", strconv.Itoa(tt.n)) + "\r\n"
			go io.WriteString(c.nc, head+tt.body(tt.n)) // may fail once the server closes
			r := c.read("POST")
			if r.StatusCode != 200 || string(r.payload) != "/upload" {
				t.Fatalf("got %d %q", r.StatusCode, r.payload)
			}
			if r.Close != tt.announced {
				t.Errorf("Connection: close %v, want %v: %q", r.Close, tt.announced, r.head)
			}
			if tt.closed {
				c.expectClosed()
			} else {
				c.expectOpen("HTTP/1.1")
			}
		})
	}
}

func plain(n int) string { return strings.Repeat("a", n) }

func chunked(n int) string {
	var b strings.Builder
	for n > 0 {
		k := min(n, 8000)
		fmt.Fprintf(&b, "%x\r\n%s\r\n", k, strings.Repeat("a", k))
		n -= k
	}
	return b.String() + "0\r\n\r\n"
}
