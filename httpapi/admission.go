package httpapi

import (
	"errors"
	"net"
	"sort"
	"sync"
	"time"

	"hsmkms/audit"
)

// This file holds admission: what a request must get past before the
// domain serves it, and how refusals are recorded.
//
// Order, cheapest and least trusting first: the connection limits (see
// connlimit.go) when the connection is accepted; the server's read
// deadlines while the header and the body (at most MaxBodyBytes) are read;
// authentication and the credential's rate limit; then a concurrency slot
// (MaxConcurrent), held only while the domain serves the request. A caller
// that cannot sign therefore never holds a slot, and a stalled body holds a
// connection (bounded per client address) but no slot.
//
// Refused requests (not authenticated, rate limited, over the concurrency
// cap) and refused connections are counted in kmsd_requests_refused_total
// by reason, and recorded in the audit trail as summary lines: one line per
// (protocol, code, client address, SecretId if verified) per
// RefusalAuditInterval, with the number of refusals, so that a flood cannot
// fill the disk (see refusalLog). Authenticated requests keep one audit
// line each.

// errConcurrency refuses an authenticated request over MaxConcurrent.
var errConcurrency = &authError{"RequestLimitExceeded", 4400, "too many requests in progress, please retry"}

// Reasons of kmsd_requests_refused_total.
const (
	refusedConcurrency    = "concurrency"
	refusedRate           = "rate" // counted by rateLimit (auth.go)
	refusedAuth           = "auth"
	refusedConnections    = "connections"
	refusedConnsPerSource = "connections_per_address"
)

// acquire takes a concurrency slot for an authenticated request, or
// reports that none is free (the refusal is counted). A successful acquire
// must be paired with release.
func (s *Server) acquire() bool {
	select {
	case s.slots <- struct{}{}:
		if s.metrics != nil {
			s.metrics.inFlight.Inc()
		}
		return true
	default:
		s.countRefusal(refusedConcurrency)
		return false
	}
}

// release returns the slot acquire took.
func (s *Server) release() {
	<-s.slots
	if s.metrics != nil {
		s.metrics.inFlight.Dec()
	}
}

// admit ends admission for an authenticated request: it takes a
// concurrency slot and marks the request as served (audited line by line).
// On success the caller defers s.release(); on error it serves nothing.
func (s *Server) admit(info *reqInfo) error {
	if !s.acquire() {
		return errConcurrency
	}
	info.served = true
	return nil
}

func (s *Server) countRefusal(reason string) {
	if s.metrics != nil {
		s.metrics.refused.WithLabelValues(reason).Inc()
	}
}

// noteRefused counts a request refused before it was served under the
// reason its error names: failed authentication; rate and concurrency
// refusals are counted where they happen. Those come after the signature
// was verified (RequestLimitExceeded: rate limit, replay cache full,
// concurrency), so their SecretId is the caller's own and is kept in the
// audit summary (info.verified); an unverified one is not, as anyone can
// send any SecretId.
func (s *Server) noteRefused(info *reqInfo, err error) {
	if info.served {
		return
	}
	var aw *awsError
	if errors.As(err, &aw) && aw.auth {
		s.countRefusal(refusedAuth)
		return
	}
	var ae *authError
	if errors.As(err, &ae) {
		if ae.api3 == errRateLimited.api3 {
			info.verified = true
		} else {
			s.countRefusal(refusedAuth)
		}
	}
}

// refusalLog aggregates refusals into audit summary lines: per interval,
// one line per (protocol, code, client address, verified SecretId) with a
// count, at most
// maxRefusalSources distinct addresses per interval (the rest are summed
// under the address "*"). The lines of an interval are written when it
// ends, by a timer armed by its first refusal (no goroutine while there
// are none). Safe for concurrent use.
type refusalLog struct {
	sink     AuditSink
	interval time.Duration
	onError  func(error)

	mu      sync.Mutex
	pending map[refusalKey]*refusalCount
	sources map[string]struct{}
	timer   *time.Timer
	closed  bool
}

type refusalKey struct{ protocol, code, source, secretID string }

type refusalCount struct {
	first time.Time
	n     uint64
}

// maxRefusalSources bounds the client addresses summarised one by one per
// interval: at most that many lines per code and interval, plus one.
const maxRefusalSources = 256

// add records one refusal of protocol ("api3", "legacy" or "tcp" for a
// connection) with code from the client address remote (host:port or
// host); secretID is the caller's verified SecretId, or "".
func (r *refusalLog) add(protocol, code, remote, secretID string, at time.Time) {
	if r == nil {
		return
	}
	src := remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		src = h
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	if r.pending == nil {
		r.pending = map[refusalKey]*refusalCount{}
		r.sources = map[string]struct{}{}
	}
	if _, ok := r.sources[src]; !ok {
		if len(r.sources) >= maxRefusalSources {
			src = "*"
		}
		r.sources[src] = struct{}{}
	}
	k := refusalKey{protocol, code, src, secretID}
	c := r.pending[k]
	if c == nil {
		c = &refusalCount{first: at}
		r.pending[k] = c
	}
	c.n++
	if r.timer == nil {
		r.timer = time.AfterFunc(r.interval, r.flush)
	}
}

// flush writes the summary lines of the refusals recorded so far.
func (r *refusalLog) flush() {
	r.mu.Lock()
	p := r.pending
	r.pending, r.sources, r.timer = nil, nil, nil
	r.mu.Unlock()
	keys := make([]refusalKey, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := p[keys[i]], p[keys[j]]
		if !a.first.Equal(b.first) {
			return a.first.Before(b.first)
		}
		return keys[i].source < keys[j].source
	})
	for _, k := range keys {
		c := p[k]
		ev := audit.Event{Time: c.first, SecretID: k.secretID, Source: k.source, Protocol: k.protocol, Action: "(refused)", Code: k.code, Count: c.n}
		if err := recordAudit(r.sink, ev); err != nil && r.onError != nil {
			r.onError(err)
		}
	}
}

// close writes what is pending and stops recording.
func (r *refusalLog) close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	if r.timer != nil {
		r.timer.Stop()
	}
	r.mu.Unlock()
	r.flush()
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
}

// refuseConn counts and records a connection refused by the connection
// limits.
func (s *Server) refuseConn(reason string, remote net.Addr) {
	s.countRefusal(reason)
	code := "ConnectionLimitExceeded"
	if reason == refusedConnsPerSource {
		code = "ConnectionLimitPerAddressExceeded"
	}
	addr := ""
	if remote != nil {
		addr = remote.String()
	}
	s.refusals.add("tcp", code, addr, "", time.Now())
}
