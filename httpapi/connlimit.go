package httpapi

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Listener wraps ln, the API's TCP listener, with the connection limits of
// the Config: at most MaxConnections open at once and MaxConnectionsPerAddress
// from one client IP address (IPv6: one /64). A connection over a limit is closed as soon
// as it is accepted (before any TLS handshake or byte of HTTP), counted in
// kmsd_requests_refused_total (reason connections or
// connections_per_address) and summarised in the audit trail. It works
// under any server that serves a net.Listener (net/http with or without
// TLS, which wraps this listener).
//
// Why not golang.org/x/net/netutil.LimitListener: over its limit it stops
// calling Accept, so further connections wait in the kernel's backlog,
// unanswered and uncounted, and a legitimate client queues behind the
// flood; it has no per-address limit either. Here a refused connection is
// closed at once and the client sees it.
func (s *Server) Listener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, total: s.cfg.MaxConnections, perAddr: s.cfg.MaxConnectionsPerAddress,
		byAddr: map[netip.Addr]int{}, open: &s.connsOpen, refuse: s.refuseConn}
}

// limitListener enforces the connection limits; see Server.Listener.
// Its Accept may be called from one goroutine at a time (as servers do);
// the connections it returns may be closed from any goroutine.
type limitListener struct {
	net.Listener
	total, perAddr int // < 0: no limit

	mu     sync.Mutex
	count  int
	byAddr map[netip.Addr]int
	open   *atomic.Int64 // mirrors count for the metrics
	refuse func(reason string, remote net.Addr)
}

// Accept returns the next connection within the limits, closing (and
// reporting) those over them. It returns the wrapped listener's errors.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c.RemoteAddr())
		reason := ""
		l.mu.Lock()
		switch {
		case l.total >= 0 && l.count >= l.total:
			reason = refusedConnections
		case l.perAddr >= 0 && l.byAddr[ip] >= l.perAddr:
			reason = refusedConnsPerSource
		default:
			l.count++
			l.byAddr[ip]++
			l.open.Store(int64(l.count))
		}
		l.mu.Unlock()
		if reason != "" {
			_ = c.Close()
			l.refuse(reason, c.RemoteAddr())
			continue
		}
		return &limitedConn{Conn: c, l: l, ip: ip}, nil
	}
}

func (l *limitListener) done(ip netip.Addr) {
	l.mu.Lock()
	l.count--
	if n := l.byAddr[ip] - 1; n > 0 {
		l.byAddr[ip] = n
	} else {
		delete(l.byAddr, ip)
	}
	l.open.Store(int64(l.count))
	l.mu.Unlock()
}

// remoteIP is the client address a connection is counted under: its IPv4
// address, or the /64 prefix of its IPv6 address (one host or site
// usually holds a whole /64, so counting single IPv6 addresses would let
// it open 2^64 times the limit); the zero Addr for a non-IP connection
// (all of those share one count).
func remoteIP(a net.Addr) netip.Addr {
	t, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	ip := t.AddrPort().Addr().Unmap()
	if ip.Is6() {
		ip = netip.PrefixFrom(ip.WithZone(""), 64).Masked().Addr()
	}
	return ip
}

// limitedConn gives its place back when closed (once, however many times
// Close is called).
type limitedConn struct {
	net.Conn
	l      *limitListener
	ip     netip.Addr
	closed atomic.Bool
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.l.done(c.ip)
	}
	return err
}

// CloseWrite half-closes the connection when the wrapped one can (servers
// use it to end a connection gracefully).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
