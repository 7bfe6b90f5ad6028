package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// A lean HTTP/1.1 keep-alive client: one TCP connection per worker, requests
// written as pre-built bytes, responses parsed just enough to find their end
// and to check success. It keeps the load generator's CPU per request small
// on a machine it shares with the server.

// conn is one keep-alive connection.
type conn struct {
	addr string
	c    net.Conn
	r    *bufio.Reader
	body []byte
}

func dial(addr string) (*conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &conn{addr: addr, c: c, r: bufio.NewReaderSize(c, 16<<10), body: make([]byte, 0, 4096)}, nil
}

func (c *conn) close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

// roundTrip writes req and reads one response; it returns the status and
// the body (valid until the next call).
func (c *conn) roundTrip(req []byte) (int, []byte, error) {
	if c.c == nil {
		nc, err := dial(c.addr)
		if err != nil {
			return 0, nil, err
		}
		*c = *nc
	}
	if _, err := c.c.Write(req); err != nil {
		c.close()
		return 0, nil, err
	}
	status, body, err := c.readResponse()
	if err != nil {
		c.close()
	}
	return status, body, err
}

var errBadResponse = errors.New("malformed HTTP response")

func (c *conn) readResponse() (int, []byte, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, nil, err
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, nil, errBadResponse
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, errBadResponse
	}
	clen, chunked, closeConn := -1, false, false
	for {
		h, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, nil, err
		}
		if len(h) <= 2 {
			break
		}
		switch {
		case hasPrefixFold(h, "content-length:"):
			n, err := strconv.Atoi(string(bytes.TrimSpace(h[len("content-length:"):])))
			if err != nil {
				return 0, nil, errBadResponse
			}
			clen = n
		case hasPrefixFold(h, "transfer-encoding:"):
			chunked = bytes.Contains(bytes.ToLower(h), []byte("chunked"))
		case hasPrefixFold(h, "connection:"):
			closeConn = bytes.Contains(bytes.ToLower(h), []byte("close"))
		}
	}
	c.body = c.body[:0]
	switch {
	case chunked:
		for {
			l, err := c.r.ReadSlice('\n')
			if err != nil {
				return 0, nil, err
			}
			s := string(bytes.TrimSpace(l))
			if i := bytes.IndexByte(l, ';'); i >= 0 {
				s = string(bytes.TrimSpace(l[:i]))
			}
			n, err := strconv.ParseInt(s, 16, 32)
			if err != nil {
				return 0, nil, errBadResponse
			}
			if n == 0 {
				// trailers until an empty line
				for {
					t, err := c.r.ReadSlice('\n')
					if err != nil {
						return 0, nil, err
					}
					if len(t) <= 2 {
						break
					}
				}
				break
			}
			start := len(c.body)
			c.body = append(c.body, make([]byte, n)...)
			if _, err := io.ReadFull(c.r, c.body[start:]); err != nil {
				return 0, nil, err
			}
			if _, err := c.r.Discard(2); err != nil {
				return 0, nil, err
			}
		}
	case clen >= 0:
		if cap(c.body) < clen {
			c.body = make([]byte, clen)
		}
		c.body = c.body[:clen]
		if _, err := io.ReadFull(c.r, c.body); err != nil {
			return 0, nil, err
		}
	default:
		return 0, nil, errBadResponse
	}
	if closeConn {
		c.close()
	}
	return status, c.body, nil
}

func hasPrefixFold(b []byte, p string) bool {
	if len(b) < len(p) {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != p[i] {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// Latency histogram: log-linear buckets of microseconds with 64 sub-buckets
// per power of two (< 1.6% error), exact below 128 µs.

const histBuckets = 64 * 48

type hist [histBuckets]uint64

func bucketOf(us uint64) int {
	if us < 128 {
		return int(us)
	}
	e := bits.Len64(us) - 7
	i := e*64 + int(us>>e)
	if i >= histBuckets {
		return histBuckets - 1
	}
	return i
}

func bucketValue(i int) uint64 {
	if i < 128 {
		return uint64(i)
	}
	e := i/64 - 1
	m := uint64(i - e*64)
	return m << e
}

func (h *hist) add(d time.Duration) { h[bucketOf(uint64(d.Microseconds()))]++ }

func (h *hist) merge(o *hist) {
	for i := range h {
		h[i] += o[i]
	}
}

func (h *hist) count() uint64 {
	var n uint64
	for _, c := range h {
		n += c
	}
	return n
}

// quantile returns the q-quantile (0..1) as a duration.
func (h *hist) quantile(q float64) time.Duration {
	n := h.count()
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n-1)) + 1
	var acc uint64
	for i, c := range h {
		acc += c
		if acc >= rank {
			return time.Duration(bucketValue(i)) * time.Microsecond
		}
	}
	return 0
}

// ---------------------------------------------------------------------------
// Closed-loop drive.

// source yields the bytes of the next request of worker w, and checks a
// response body for success.
type source interface {
	next(w int, i uint64) []byte
	ok(body []byte) bool
}

// cellResult is what one closed-loop run measured within its window.
type cellResult struct {
	reqs, errs uint64
	elapsed    time.Duration
	hist       hist
	firstErr   string
}

// drive runs conc workers against addr, each with its own keep-alive
// connection, for warm+d; only requests completed inside the last d are
// counted. snap is called at the start and the end of the counted window.
func drive(addr string, conc int, src func(w int) source, warm, d time.Duration, snap func(start bool)) cellResult {
	var recording, stop atomic.Bool
	type wres struct {
		reqs, errs uint64
		h          hist
		firstErr   string
	}
	res := make([]*wres, conc)
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		res[w] = &wres{}
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := res[w]
			s := src(w)
			c := &conn{addr: addr}
			defer c.close()
			for i := uint64(0); !stop.Load(); i++ {
				req := s.next(w, i)
				t0 := time.Now()
				status, body, err := c.roundTrip(req)
				el := time.Since(t0)
				if !recording.Load() {
					continue
				}
				r.reqs++
				r.h.add(el)
				if err != nil || status != 200 || !s.ok(body) {
					r.errs++
					if r.firstErr == "" {
						if err != nil {
							r.firstErr = err.Error()
						} else {
							r.firstErr = fmt.Sprintf("HTTP %d: %.300s", status, body)
						}
					}
				}
			}
		}(w)
	}
	time.Sleep(warm)
	snap(true)
	recording.Store(true)
	t0 := time.Now()
	time.Sleep(d)
	recording.Store(false)
	el := time.Since(t0)
	snap(false)
	stop.Store(true)
	wg.Wait()
	out := cellResult{elapsed: el}
	for _, r := range res {
		out.reqs += r.reqs
		out.errs += r.errs
		out.hist.merge(&r.h)
		if out.firstErr == "" {
			out.firstErr = r.firstErr
		}
	}
	return out
}
