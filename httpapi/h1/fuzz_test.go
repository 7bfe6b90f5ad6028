package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

var headSeeds = []string{
	"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
	"GET /a/b?c=d&e=%20f HTTP/1.1\r\nHost: example.com:8443\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
	"POST /kms HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\nContent-Length: 17\r\nX-TC-Action: Encrypt\r\nAuthorization: TC3-HMAC-SHA256 Credential=a/b, SignedHeaders=content-type;host, Signature=c\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 005\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:  7 \t\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	"GET / HTTP/1.0\r\n\r\n",
	"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
	"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nConnection: x\r\n\r\n",
	"GET / HTTP/1.1\nHost: h\nX-A: 1\nx-a: 2\n\n",
	"GET http://other.example:81/p?q HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET https://[::1]:443/ HTTP/1.1\r\nHost: [::1]\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
	"CONNECT /rpc HTTP/1.1\r\nHost: h\r\n\r\n",
	"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
	"GET //double/slash HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET /%zz HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET /#frag HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h%25zone\r\n\r\n",
	"GET / HTTP/1.1\r\nHost:\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nPragma: no-cache\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX-!#$%&'*+-.^_`|~: v\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Tab:\tv\t\r\nX-Obs: caf\xc3\xa9 \xff\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
	"GET / HTTP/1.1\r\n Host: h\r\n\r\n",
	"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nExpect: foo\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\n",
	"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
	"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
	"get / HTTP/1.1\r\nHost: h\r\n\r\n",
	"M-SEARCH * HTTP/1.1\r\nHost: h\r\n\r\n",
}

// headerBlock makes, from arbitrary text, a header block as readRequest
// hands it to parseHead: lines ended by LF or CRLF, none of them empty,
// then the empty line.
func headerBlock(s string) string {
	var b strings.Builder
	crlf := true
	for line := range strings.SplitSeq(s, "\n") {
		if line == "" || line == "\r" {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
		crlf = strings.HasSuffix(line, "\r")
	}
	if b.Len() == 0 {
		return ""
	}
	if crlf {
		b.WriteString("\r\n")
	} else {
		b.WriteString("\n")
	}
	return b.String()
}

// FuzzParseHead checks parseHead against net/http's own request parser:
// parseHead may refuse more, but what it accepts it must read as net/http
// does.
func FuzzParseHead(f *testing.F) {
	for _, s := range headSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		text := headerBlock(s)
		if text == "" {
			return
		}
		var got http.Request
		h, err := parseHead(text, &got)
		if err != nil {
			var pe *protocolError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *protocolError", err)
			}
			switch pe.status {
			case http.StatusBadRequest, http.StatusExpectationFailed, http.StatusNotImplemented, http.StatusHTTPVersionNotSupported:
			default:
				t.Fatalf("refused with status %d", pe.status)
			}
			return
		}
		want, err := http.ReadRequest(bufio.NewReader(strings.NewReader(text)))
		if err != nil {
			t.Fatalf("parseHead accepts what net/http refuses (%v):\n%q", err, text)
		}

		// What net/http's server does after ReadRequest, which parseHead
		// does at once: Host lives in req.Host only.
		delete(want.Header, "Host")
		// ReadRequest adds "Cache-Control: no-cache" to "Pragma: no-cache"
		// (for HTTP/1.0 caches); parseHead leaves the header as sent.
		if _, ok := got.Header["Cache-Control"]; !ok {
			if p := want.Header["Pragma"]; len(p) > 0 && p[0] == "no-cache" {
				delete(want.Header, "Cache-Control")
			}
		}
		// ReadRequest keeps one of several equal Content-Length lines;
		// parseHead keeps them all (they were checked to be equal).
		if cl := got.Header["Content-Length"]; len(cl) > 1 {
			got.Header["Content-Length"] = cl[:1]
		}

		for _, c := range []struct {
			what      string
			got, want any
		}{
			{"Method", got.Method, want.Method},
			{"RequestURI", got.RequestURI, want.RequestURI},
			{"URL", got.URL.String(), want.URL.String()},
			{"URL fields", *got.URL, *want.URL},
			{"Proto", got.Proto, want.Proto},
			{"ProtoMajor", got.ProtoMajor, want.ProtoMajor},
			{"ProtoMinor", got.ProtoMinor, want.ProtoMinor},
			{"Host", got.Host, want.Host},
			{"ContentLength", got.ContentLength, want.ContentLength},
			{"TransferEncoding", got.TransferEncoding, want.TransferEncoding},
			{"Close", got.Close, want.Close},
			{"Header", map[string][]string(got.Header), map[string][]string(want.Header)},
			{"chunked", h.chunked, got.ContentLength == -1},
		} {
			if !reflect.DeepEqual(c.got, c.want) {
				t.Errorf("%s: parseHead %#v, net/http %#v\n%q", c.what, c.got, c.want, text)
			}
		}
		for _, k := range []string{"Host", "Transfer-Encoding"} {
			if _, ok := got.Header[k]; ok {
				t.Errorf("%s left in the header map", k)
			}
		}
	})
}

// fuzzHandler reads the body and answers, naming the method in X-Method;
// some paths stream, flush or panic.
func fuzzHandler(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Method", r.Method)
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	switch {
	case strings.Contains(r.URL.Path, "panic"):
		panic("fuzz")
	case strings.Contains(r.URL.Path, "stream"):
		w.Write(bytes.Repeat([]byte("s"), maxBuffered+1))
	case strings.Contains(r.URL.Path, "flush"):
		io.WriteString(w, "a")
		w.(http.Flusher).Flush()
		io.WriteString(w, "b")
	}
	fmt.Fprintf(w, "%s %s %d", r.Method, r.URL, n)
}

// FuzzServeConn feeds arbitrary bytes to a server: it must answer with
// well-formed HTTP/1.1 responses, or close, and never hang or crash.
func FuzzServeConn(f *testing.F) {
	for _, s := range headSeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcHEAD /3 HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
		"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi",
		"GET /stream HTTP/1.1\r\nHost: h\r\n\r\nGET /flush HTTP/1.0\r\n\r\n",
		"GET /flush HTTP/1.1\r\nHost: h\r\n\r\nHEAD /stream HTTP/1.1\r\nHost: h\r\n\r\nGET /panic HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nshort",
		"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX: " + strings.Repeat("x", 5000) + "\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	srv := &Server{
		Handler:        http.HandlerFunc(fuzzHandler),
		ReadTimeout:    5 * time.Second,
		WriteTimeout:   5 * time.Second,
		MaxHeaderBytes: 4096,
		ErrorLog:       slog.New(slog.DiscardHandler),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			f.Errorf("Shutdown: %v", err)
		}
		<-served
	})
	addr := ln.Addr().String()

	f.Fuzz(func(t *testing.T, in []byte) {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			nc.Write(in) // fails if the server closes first
			nc.(*net.TCPConn).CloseWrite()
		}()
		out, readErr := io.ReadAll(nc)
		nc.Close()
		<-wrote
		if ne, ok := readErr.(net.Error); ok && ne.Timeout() {
			t.Fatalf("server neither answered nor closed; got %q", out)
		}
		// A reset (the server closed with input unread) may cut the last
		// response short; anything before it must still parse.
		for pos := 0; pos < len(out); {
			n, err := parseResponse(out[pos:])
			if err != nil {
				if readErr != nil {
					return
				}
				t.Fatalf("malformed response at %d (%v) in %q", pos, err, out)
			}
			pos += n
		}
	})
}

// parseResponse parses the response at the start of b, framed as the answer
// to the method named in its X-Method header (GET if none), and returns its
// length.
func parseResponse(b []byte) (int, error) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		return 0, errors.New("no end of header")
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b[:end+4])), nil)
	if err != nil {
		return 0, err
	}
	method := resp.Header.Get("X-Method")
	rest := bytes.NewReader(b)
	br := bufio.NewReader(rest)
	if resp, err = http.ReadResponse(br, &http.Request{Method: method}); err != nil {
		return 0, err
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, err
	}
	if resp.Proto != "HTTP/1.1" {
		return 0, fmt.Errorf("response proto %q", resp.Proto)
	}
	n := len(b) - rest.Len() - br.Buffered()
	if resp.Close && n < len(b) {
		return 0, fmt.Errorf("%d bytes after a Connection: close response", len(b)-n)
	}
	return n, nil
}
