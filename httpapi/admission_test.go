package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hsmkms/audit"
)

// memSink is an AuditSink keeping the events it is given.
type memSink struct {
	mu     sync.Mutex
	events []audit.Event
}

func (m *memSink) Write(_ context.Context, e audit.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events = append(m.events, e)
	return nil
}

func (m *memSink) snapshot() []audit.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]audit.Event(nil), m.events...)
}

func TestRefusalLogSummarisesAndBounds(t *testing.T) {
	sink := &memSink{}
	r := &refusalLog{sink: sink, interval: time.Hour} // flushed by close below
	t0 := time.Unix(1795881600, 0)
	for i := 0; i < 1000; i++ {
		r.add("api3", "AuthFailure.SignatureFailure", "10.0.0.1:40000", "", t0.Add(time.Duration(i)*time.Millisecond))
	}
	for i := 0; i < 2*maxRefusalSources; i++ {
		r.add("legacy", "4100", fmt.Sprintf("10.1.%d.%d:1234", i/256, i%256), "", t0)
	}
	r.add("tcp", "ConnectionLimitExceeded", "[2001:db8::1]:443", "", t0)
	r.close()
	r.add("api3", "AuthFailure", "10.0.0.9:1", "", t0) // after close: dropped
	ev := sink.snapshot()
	counts := map[string]uint64{}
	for _, e := range ev {
		if e.Count == 0 || e.Action != "(refused)" || e.RequestID != "" || e.SecretID != "" {
			t.Fatalf("not a summary line: %+v", e)
		}
		counts[e.Protocol+" "+e.Code+" "+e.Source] += e.Count
	}
	if counts["api3 AuthFailure.SignatureFailure 10.0.0.1"] != 1000 {
		t.Fatalf("one source's 1000 refusals: %v", counts["api3 AuthFailure.SignatureFailure 10.0.0.1"])
	}
	if counts["tcp ConnectionLimitExceeded 2001:db8::1"] != 0 || counts["tcp ConnectionLimitExceeded *"] != 1 {
		t.Fatalf("the address past the bound is summed under *: %v", counts)
	}
	var legacy uint64
	for k, n := range counts {
		if len(k) > 11 && k[:11] == "legacy 4100" {
			legacy += n
		}
	}
	if legacy != 2*maxRefusalSources || counts["legacy 4100 *"] != uint64(maxRefusalSources)+1 {
		t.Fatalf("legacy refusals %d, under *: %d", legacy, counts["legacy 4100 *"])
	}
	// 1 + maxRefusalSources-1 named legacy sources + the legacy * + the tcp *.
	if len(ev) != 1+(maxRefusalSources-1)+1+1 {
		t.Fatalf("%d lines", len(ev))
	}
}

func TestRefusalLogFlushesPerInterval(t *testing.T) {
	sink := &memSink{}
	r := &refusalLog{sink: sink, interval: 20 * time.Millisecond}
	r.add("api3", "AuthFailure", "127.0.0.1:1", "", time.Now())
	r.add("api3", "AuthFailure", "127.0.0.1:2", "", time.Now())
	deadline := time.Now().Add(5 * time.Second)
	for len(sink.snapshot()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no summary line after the interval")
		}
		time.Sleep(time.Millisecond)
	}
	if ev := sink.snapshot(); len(ev) != 1 || ev[0].Count != 2 || ev[0].Source != "127.0.0.1" {
		t.Fatalf("%+v", ev)
	}
	r.close()
}

// TestListenerLimits checks the connection limits on a real TCP listener.
func TestListenerLimits(t *testing.T) {
	s := New(nil, Config{MaxConnections: 3, MaxConnectionsPerAddress: 2, Logger: discardLogger()})
	var refusals sync.Map
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := s.Listener(raw).(*limitListener)
	ln.refuse = func(reason string, _ net.Addr) {
		n, _ := refusals.LoadOrStore(reason, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	closedByServer := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err != nil && !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err)
	}
	a1, a2 := dial("127.0.0.1"), dial("127.0.0.1")
	s1, s2 := <-accepted, <-accepted
	_, _ = a1, a2
	if !closedByServer(dial("127.0.0.1")) {
		t.Fatal("third connection from one address kept (limit 2)")
	}
	dial("127.0.0.2")
	<-accepted
	if !closedByServer(dial("127.0.0.3")) {
		t.Fatal("fourth connection kept (total limit 3)")
	}
	if s.connsOpen.Load() != 3 {
		t.Fatalf("open %d", s.connsOpen.Load())
	}
	s1.Close()
	s1.Close() // twice: counted once
	s2.Close()
	dial("127.0.0.1")
	<-accepted
	dial("127.0.0.1")
	<-accepted
	if s.connsOpen.Load() != 3 {
		t.Fatalf("open %d after closing two and accepting two", s.connsOpen.Load())
	}
	for reason, want := range map[string]int64{refusedConnsPerSource: 1, refusedConnections: 1} {
		n, _ := refusals.Load(reason)
		if n == nil || n.(*atomic.Int64).Load() != want {
			t.Fatalf("%s refusals: %v", reason, n)
		}
	}
}

func TestRemoteIP(t *testing.T) {
	for _, tt := range []struct{ addr, want string }{
		{"192.0.2.7:443", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:443", "192.0.2.7"},
		{"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:443", "2001:db8:1:2::"},
		{"[2001:db8:1:2::1]:1", "2001:db8:1:2::"},
		{"[fe80::1%eth0]:1", "fe80::"},
		{"[::1]:1", "::"},
	} {
		a, err := net.ResolveTCPAddr("tcp", tt.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := remoteIP(a).String(); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.addr, got, tt.want)
		}
	}
	if remoteIP(&net.UnixAddr{Name: "/x"}).IsValid() {
		t.Error("a unix address has an IP")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestReadyCacheSharesOneRun(t *testing.T) {
	var rc readyCache
	var runs atomic.Int32
	release := make(chan struct{})
	run := func() readyResult {
		runs.Add(1)
		<-release
		return readyResult{status: http.StatusOK, body: map[string]string{"status": "ready"}}
	}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, err := rc.get(context.Background(), time.Hour, run); err != nil || r.status != http.StatusOK {
				t.Errorf("%v %v", r, err)
			}
		}()
	}
	for runs.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// A waiter whose context ends gives up; the run goes on.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := rc.get(ctx, time.Hour, run); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	close(release)
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Fatalf("%d runs for 50 concurrent calls", n)
	}
	if _, err := rc.get(context.Background(), time.Hour, run); err != nil || runs.Load() != 1 {
		t.Fatalf("cached result: %v, %d runs", err, runs.Load())
	}
	if _, err := rc.get(context.Background(), time.Nanosecond, run); err != nil || runs.Load() != 2 {
		t.Fatalf("expired result: %v, %d runs", err, runs.Load())
	}
}
