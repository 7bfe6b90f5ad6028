// Package h1 serves HTTP/1.1 to an http.Handler (kmsd's Echo instance)
// with less work per request than net/http's server: it exists because,
// for small KMS requests, net/http's per-request costs (a header map of
// freshly canonicalised names, a background-read goroutine, five deadline
// changes, a buffered writer and a context per request) were the largest
// share of kmsd's CPU left that was neither the HSM nor the socket.
//
// What it serves: HTTP/1.0 and HTTP/1.1 over plain TCP or TLS (ALPN is not
// offered, so TLS clients speak HTTP/1.1; there is no HTTP/2), keep-alive
// and pipelined requests, Content-Length and chunked request bodies,
// "Expect: 100-continue". Request parsing is strict: anything ambiguous
// (obs-folded or malformed header lines, a bad or conflicting
// Content-Length, Content-Length together with Transfer-Encoding, a
// transfer coding other than chunked, a missing or repeated Host in
// HTTP/1.1, control characters) is refused with 400, 431, 417, 501 or 505
// and the connection closed, never guessed at. Responses are buffered up to
// 64 KiB and sent with one write and a Content-Length; larger ones are
// streamed chunked.
//
// Request contexts are not cancelled when the client goes away (net/http
// detects that with a read goroutine per request); handlers are bounded by
// their own timeouts instead.
package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Server serves HTTP/1.x on the connections of a listener. Set the fields
// before Serve; they must not change afterwards. Its methods are safe for
// concurrent use.
type Server struct {
	// Handler serves every request. It must not retain the request, its
	// body or the ResponseWriter after it returns.
	Handler http.Handler
	// TLSConfig, when set, makes every connection TLS (handshake bounded
	// by ReadHeaderTimeout).
	TLSConfig *tls.Config
	// ReadHeaderTimeout bounds the time from a request's first byte to the
	// end of its header; 0 means ReadTimeout.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds the time from a request's first byte to the end
	// of its body; 0 means no limit.
	ReadTimeout time.Duration
	// WriteTimeout bounds the time from the end of a request's header to
	// the end of its response; 0 means no limit.
	WriteTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a keep-alive
	// connection; 0 means ReadTimeout.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the request line and header; 0 means 16 KiB.
	MaxHeaderBytes int
	// ErrorLog receives handler panics (level Error) and TLS handshake
	// errors (level Debug: scanners make many); nil means slog.Default().
	ErrorLog *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	shutting  atomic.Bool
	done      chan struct{} // closed by Shutdown/Close
	doneOnce  sync.Once
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = http.ErrServerClosed

const (
	defaultMaxHeaderBytes = 16 << 10
	// maxBuffered is the largest response sent with a Content-Length from
	// one buffer; larger responses are streamed chunked.
	maxBuffered = 64 << 10
	// maxDrain is the most unread request body discarded to keep a
	// connection; with more left the connection is closed instead.
	maxDrain = 256 << 10
)

func (s *Server) logger() *slog.Logger {
	if s.ErrorLog != nil {
		return s.ErrorLog
	}
	return slog.Default()
}

func (s *Server) init() {
	s.mu.Lock()
	if s.done == nil {
		s.done = make(chan struct{})
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[*conn]struct{}{}
	}
	s.mu.Unlock()
}

// Serve accepts connections on ln and serves each on its own goroutine
// until ln fails or Shutdown/Close is called; then it returns
// ErrServerClosed (or the accept error). Serve closes ln.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.shutting.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				return ErrServerClosed
			}
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("http: accept error; retrying", "err", err, "delay", backoff)
				select {
				case <-time.After(backoff):
				case <-s.done:
					return ErrServerClosed
				}
				continue
			}
			return err
		}
		backoff = 0
		c := s.newConn(nc)
		if c == nil {
			nc.Close()
			return ErrServerClosed
		}
		go c.serve()
	}
}

// Shutdown stops accepting, closes idle connections, lets requests in
// progress finish (their responses carry "Connection: close") and waits for
// every connection to end or ctx to be done; then it closes what is left
// and returns ctx's error, if any.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.stop()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if s.nudgeIdle() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.init()
	s.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.raw.Close()
	}
	return nil
}

func (s *Server) stop() {
	s.shutting.Store(true)
	s.doneOnce.Do(func() { close(s.done) })
	s.mu.Lock()
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
}

// nudgeIdle wakes the connections waiting for a request so that they see
// the shutdown, and returns how many connections are left.
func (s *Server) nudgeIdle() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.idle.Load() {
			_ = c.raw.SetReadDeadline(aLongTimeAgo)
		}
	}
	return len(s.conns)
}

var aLongTimeAgo = time.Unix(1, 0)

func (s *Server) newConn(nc net.Conn) *conn {
	c := &conn{srv: s, nc: nc, raw: nc}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting.Load() {
		return nil
	}
	s.conns[c] = struct{}{}
	return c
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// conn is one client connection; its fields are used by its own goroutine
// only, except idle and raw (Shutdown, Close).
type conn struct {
	srv  *Server
	nc   net.Conn // raw, or the TLS connection over it
	raw  net.Conn // as accepted; never changes, so Close may use it at any time
	br   *bufio.Reader
	idle atomic.Bool

	tmpl *http.Request // per-connection fields of every request (context, TLS, addresses)
	hdr  []byte        // request header scratch
	out  []byte        // response scratch
	keys []string      // response header names, sorted
	resp response
	rdl  time.Time // read deadline set (zero: none)
	wdl  time.Time // write deadline set (zero: none)

	// Per-request objects, reused: a handler may not retain them.
	req   http.Request
	url   url.URL
	hmap  http.Header
	vals  []string
	rbody body
}

var bufioReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

func (c *conn) serve() {
	s := c.srv
	// Request contexts derive from Background: a cancellable connection
	// context would make every per-request timeout register with it.
	ctx := context.Background()
	defer func() {
		c.nc.Close()
		s.forget(c)
		if c.br != nil {
			c.br.Reset(nil)
			bufioReaders.Put(c.br)
		}
	}()
	hdrTimeout := s.ReadHeaderTimeout
	if hdrTimeout <= 0 {
		hdrTimeout = s.ReadTimeout
	}
	idleTimeout := s.IdleTimeout
	if idleTimeout <= 0 {
		idleTimeout = s.ReadTimeout
	}
	tmpl := &http.Request{RemoteAddr: c.nc.RemoteAddr().String()}
	if s.TLSConfig != nil {
		tc := tls.Server(c.nc, s.TLSConfig)
		c.nc = tc
		if hdrTimeout > 0 {
			_ = tc.SetDeadline(time.Now().Add(hdrTimeout))
		}
		if err := tc.HandshakeContext(ctx); err != nil {
			s.logger().Debug("http: TLS handshake error", "remote", tmpl.RemoteAddr, "err", err)
			return
		}
		_ = tc.SetDeadline(time.Time{})
		st := tc.ConnectionState()
		tmpl.TLS = &st
	}
	c.tmpl = tmpl.WithContext(ctx)
	c.br = bufioReaders.Get().(*bufio.Reader)
	c.br.Reset(c.nc)
	// The wait for a connection's first request is bounded like its
	// header (as in net/http): a client that connects and sends nothing
	// must not hold the connection forever when there is no IdleTimeout.
	wait := idleTimeout
	if hdrTimeout > 0 {
		wait = hdrTimeout
	}
	for {
		if c.br.Buffered() == 0 {
			c.idle.Store(true)
			if s.shutting.Load() {
				return
			}
			c.setReadDeadline(wait)
			if _, err := c.br.Peek(1); err != nil {
				return
			}
			c.idle.Store(false)
		}
		wait = idleTimeout
		t0 := time.Now()
		// A header already buffered whole is read without a system call:
		// no deadline to set (the common case, one segment per request).
		if !c.headerBuffered() {
			c.setReadDeadline(hdrTimeout)
		}
		req, err := c.readRequest()
		if err != nil {
			c.refuse(err)
			return
		}
		// A body still to come is bounded by ReadTimeout, or not at all:
		// the header's deadline must not cut it short.
		if req.ContentLength < 0 || req.ContentLength > int64(c.br.Buffered()) {
			if s.ReadTimeout > 0 {
				c.rdl = t0.Add(s.ReadTimeout)
				_ = c.nc.SetReadDeadline(c.rdl)
			} else {
				c.setReadDeadline(0)
			}
		}
		if s.WriteTimeout > 0 {
			if now := time.Now(); !nearDeadline(c.wdl, now.Add(s.WriteTimeout), s.WriteTimeout) {
				c.wdl = now.Add(s.WriteTimeout)
				_ = c.nc.SetWriteDeadline(c.wdl)
			}
		}
		if !c.serveOne(req) {
			return
		}
	}
}

// setReadDeadline makes the read deadline now+d (none when d is 0). A
// deadline already set up to 1 % of d (at least 10 ms) earlier is kept:
// re-arming the runtime's timer for every request of a busy connection
// costs more than the slightly shorter wait.
func (c *conn) setReadDeadline(d time.Duration) {
	var want time.Time
	if d > 0 {
		want = time.Now().Add(d)
		if nearDeadline(c.rdl, want, d) {
			return
		}
	} else if c.rdl.IsZero() {
		return
	}
	c.rdl = want
	_ = c.nc.SetReadDeadline(want)
}

// nearDeadline reports whether the deadline set is at most 1 % of d (at
// least 10 ms) before want, and not after it.
func nearDeadline(set, want time.Time, d time.Duration) bool {
	if set.IsZero() || set.After(want) {
		return false
	}
	return want.Sub(set) <= max(d/100, 10*time.Millisecond)
}

// headerBuffered reports whether the reader holds a whole request header.
func (c *conn) headerBuffered() bool {
	b, _ := c.br.Peek(c.br.Buffered())
	return bytes.Contains(b, crlfcrlf) || bytes.Contains(b, lflf)
}

var crlfcrlf, lflf = []byte("\r\n\r\n"), []byte("\n\n")

// serveOne runs the handler for req and finishes its response; it reports
// whether the connection can serve another request.
func (c *conn) serveOne(req *http.Request) (keep bool) {
	w := &c.resp
	w.reset(c, req)
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				buf := make([]byte, 16<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.srv.logger().Error("http: panic serving request", "remote", req.RemoteAddr, "panic", fmt.Sprint(v), "stack", string(buf))
			}
			keep = false
		}
		w.req = nil
	}()
	c.srv.Handler.ServeHTTP(w, req)
	if err := w.finish(); err != nil {
		return false
	}
	if w.closeAfter || c.srv.shutting.Load() {
		if b := w.body; b != nil && !b.done() && b.err == nil {
			// Input is still coming: close gently, or the reset could
			// destroy the response in flight.
			c.linger()
		}
		return false
	}
	// The rest of the body, if the handler left some: read it off the
	// connection (a bounded amount) to reach the next request.
	// The handler may have replaced req.Body (http.MaxBytesReader does):
	// drain the body the server made, or the next "request" would be read
	// from the middle of this one's body.
	if b := w.body; b != nil && !b.done() {
		if !b.drain(maxDrain) {
			return false
		}
	}
	return true
}

// refuse answers a request that could not be read, if it is worth an
// answer, before the connection is closed.
func (c *conn) refuse(err error) {
	var pe *protocolError
	if !errors.As(err, &pe) {
		return // I/O error, timeout or EOF: nothing to say
	}
	msg := pe.text
	b := fmt.Appendf(c.out[:0], "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		pe.status, http.StatusText(pe.status), len(msg), msg)
	if c.srv.WriteTimeout > 0 {
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.srv.WriteTimeout))
	} else {
		_ = c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	}
	if _, err := c.nc.Write(b); err != nil {
		return
	}
	c.linger()
}

// linger prepares a close with unread input: closing at once would reset
// the connection and could destroy the answer in flight. It stops sending,
// then reads what the client still sends (at most 256 KiB, for at most
// 500 ms), as net/http does.
func (c *conn) linger() {
	if tc, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
		_ = c.nc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, _ = io.Copy(io.Discard, io.LimitReader(c.br, 256<<10))
	}
}
