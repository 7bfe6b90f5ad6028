package main_test

// What someone on the network can do to the real kmsd without a
// credential: stall bodies, open connections, send unsigned or badly
// signed requests, scrape /metrics, hammer /readyz, offer weak TLS suites.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"

	"hsmkms/softhsm"
)

// metricSum scrapes url's /metrics and returns the sum of the samples of
// name whose labels contain every one of labels (e.g. `reason="auth"`),
// and whether there was any.
func metricSum(t *testing.T, url, name string, labels ...string) (float64, bool) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum, found := 0.0, false
	for _, l := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(l, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		match := true
		for _, lb := range labels {
			match = match && strings.Contains(rest, lb)
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q", l)
		}
		sum, found = sum+v, true
	}
	return sum, found
}

// auditLines reads the audit trail of a data directory.
func auditLines(t *testing.T, data string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(data, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("audit line is not JSON: %s", sc.Text())
		}
		lines = append(lines, m)
	}
	return lines
}

// summaries sums the count of the audit summary lines of code (and source,
// if not empty) and returns it with the number of lines of that code
// (summaries or not).
func summaries(lines []map[string]any, code, source string) (count float64, n int) {
	for _, m := range lines {
		if m["code"] != code || (source != "" && m["source"] != source) {
			continue
		}
		n++
		c, _ := m["count"].(float64)
		count += c
	}
	return count, n
}

func startEdgeServer(t *testing.T, extra ...string) (*server, string) {
	t.Helper()
	tok := softhsm.NewTokenNoEnv(t)
	data := t.TempDir()
	env := kmsdEnv(tok, data)
	bootstrap(t, env)
	return startKMSD(t, append(env, extra...)), data
}

// Finding 5: a request takes a concurrency slot only once its body is read
// and its signature verified, so stalled bodies cannot keep a signed
// request out.
func TestStalledBodiesDoNotBlockSignedRequests(t *testing.T) {
	for _, srv := range []string{"nethttp"} {
		t.Run(srv, func(t *testing.T) {
			const slots, stalled = 16, 24
			s, _ := startEdgeServer(t, "KMSD_MAX_CONCURRENT="+strconv.Itoa(slots), "KMSD_READ_TIMEOUT=60s")
			c := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
			key := sdkCreateKey(t, c, "stalled-"+srv)
			host := strings.TrimPrefix(s.url, "http://")
			var conns []net.Conn
			defer func() {
				for _, nc := range conns {
					nc.Close()
				}
			}()
			for i := 0; i < stalled; i++ {
				nc, err := net.Dial("tcp", host)
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, nc)
				head := "POST / HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\nX-TC-Action: Encrypt\r\nX-TC-Version: 2019-01-18\r\nContent-Length: 1000\r\n\r\n{"
				if i%2 == 1 {
					head = "POST /v2/index.php HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nA"
				}
				if _, err := nc.Write([]byte(head)); err != nil {
					t.Fatal(err)
				}
			}
			// Every stalled connection is in (the old edge: every slot taken).
			within(t, 10*time.Second, "stalled connections accepted", func() bool {
				open, _ := metricSum(t, s.url, "kmsd_connections_open")
				inFlight, _ := metricSum(t, s.url, "kmsd_requests_in_flight")
				return open >= stalled || inFlight >= slots
			})
			for i := 0; i < 5; i++ {
				if err := sdkEncrypt(c, key); err != nil {
					t.Fatalf("signed Encrypt with %d stalled bodies: %v", stalled, err)
				}
			}
			// The stalled requests are still there, waiting for their bodies.
			for i, nc := range conns {
				nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				var b [1]byte
				if _, err := nc.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("stalled connection %d: %v, want it still waiting", i, err)
				}
			}
		})
	}
}

// dialFrom connects to host from the loopback address src (127.0.0.0/8
// is all local on Linux), so that one test can be several clients.
func dialFrom(t *testing.T, src, host string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// refused reports whether the server closes nc without answering a
// request sent on it, within a few seconds.
func refused(nc net.Conn, host string) bool {
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	nc.Write([]byte("GET /healthz HTTP/1.1\r\nHost: " + host + "\r\n\r\n"))
	n, err := nc.Read(make([]byte, 64))
	return n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// healthy reports whether a GET /healthz on nc is answered with 200.
func healthy(nc net.Conn, host string) bool {
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write([]byte("GET /healthz HTTP/1.1\r\nHost: " + host + "\r\n\r\n")); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	nc.SetDeadline(time.Time{})
	return resp.StatusCode == http.StatusOK
}

// Finding 5: a cap on connections, in total and per client address;
// connections over it are closed at once, counted and audited.
func TestConnectionLimits(t *testing.T) {
	for _, srv := range []string{"nethttp"} {
		t.Run(srv, func(t *testing.T) {
			s, data := startEdgeServer(t, "KMSD_MAX_CONNECTIONS=6", "KMSD_MAX_CONNECTIONS_PER_ADDRESS=3",
				"KMSD_READ_HEADER_TIMEOUT=60s", "KMSD_IDLE_TIMEOUT=60s", "KMSD_REFUSAL_AUDIT_INTERVAL=100ms")
			host := strings.TrimPrefix(s.url, "http://")
			var first []net.Conn
			for i := 0; i < 3; i++ {
				nc := dialFrom(t, "127.0.0.1", host)
				defer nc.Close()
				first = append(first, nc)
			}
			if !healthy(first[0], host) {
				t.Fatal("a connection within the limits is not served")
			}
			over := dialFrom(t, "127.0.0.1", host)
			defer over.Close()
			if !refused(over, host) {
				t.Fatal("a 4th connection from one address (limit 3) was not closed")
			}
			for i := 0; i < 3; i++ {
				nc := dialFrom(t, "127.0.0.2", host)
				defer nc.Close()
				if !healthy(nc, host) {
					t.Fatalf("connection %d from another address is not served", i)
				}
			}
			over = dialFrom(t, "127.0.0.3", host)
			defer over.Close()
			if !refused(over, host) {
				t.Fatal("a 7th connection (total limit 6) was not closed")
			}
			for _, nc := range first {
				nc.Close()
			}
			// Places are given back when connections close.
			within(t, 10*time.Second, "a connection accepted once others closed", func() bool {
				nc := dialFrom(t, "127.0.0.3", host)
				defer nc.Close()
				return healthy(nc, host)
			})
			if n, _ := metricSum(t, s.url, "kmsd_requests_refused_total", `reason="connections_per_address"`); n < 1 {
				t.Errorf("refusals per address counted: %v", n)
			}
			if n, _ := metricSum(t, s.url, "kmsd_requests_refused_total", `reason="connections"`); n < 1 {
				t.Errorf("refusals over the total counted: %v", n)
			}
			within(t, 10*time.Second, "refused connections in the audit trail", func() bool {
				lines := auditLines(t, data)
				a, _ := summaries(lines, "ConnectionLimitPerAddressExceeded", "127.0.0.1")
				b, _ := summaries(lines, "ConnectionLimitExceeded", "127.0.0.3")
				return a >= 1 && b >= 1
			})
		})
	}
}

// Finding 5: failed authentication is counted and audited, in summary
// lines so that a flood of bad requests cannot fill the disk.
func TestFailedAuthenticationCountedAndAuditedBounded(t *testing.T) {
	s, data := startEdgeServer(t, "KMSD_REFUSAL_AUDIT_INTERVAL=2s", "KMSD_RATE_PER_CREDENTIAL=0.01", "KMSD_BURST_PER_CREDENTIAL=3")
	const bad, unknown = 40, 10
	forger := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, "not-the-admin-secret-key-0000000")
	stranger := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", "AKIDnobody0000000000000000000000000", "whatever-secret-key-000000000000")
	for i := 0; i < bad; i++ {
		if code := sdkCode(sdkEncrypt(forger, "00000000-0000-4000-8000-000000000000")); code != "AuthFailure.SignatureFailure" {
			t.Fatalf("forged signature: %q", code)
		}
	}
	for i := 0; i < unknown; i++ {
		if code := sdkCode(sdkEncrypt(stranger, "00000000-0000-4000-8000-000000000000")); code != "AuthFailure.SecretIdNotFound" {
			t.Fatalf("unknown SecretId: %q", code)
		}
	}
	if n, _ := metricSum(t, s.url, "kmsd_requests_refused_total", `reason="auth"`); n != bad+unknown {
		t.Errorf("kmsd_requests_refused_total{reason=auth} = %v, want %d", n, bad+unknown)
	}
	within(t, 15*time.Second, "failed authentications summarised in the audit trail", func() bool {
		lines := auditLines(t, data)
		a, _ := summaries(lines, "AuthFailure.SignatureFailure", "127.0.0.1")
		b, _ := summaries(lines, "AuthFailure.SecretIdNotFound", "127.0.0.1")
		return a == bad && b == unknown
	})
	lines := auditLines(t, data)
	_, na := summaries(lines, "AuthFailure.SignatureFailure", "")
	_, nb := summaries(lines, "AuthFailure.SecretIdNotFound", "")
	if na > 3 || nb > 3 {
		t.Fatalf("%d and %d audit lines for %d and %d failed authentications: not bounded", na, nb, bad, unknown)
	}
	for _, m := range lines {
		if m["code"] == "AuthFailure.SignatureFailure" && (m["protocol"] != "api3" || m["secretId"] != "") {
			t.Fatalf("summary line %v", m)
		}
	}
	// Signed requests are still audited one line each.
	c := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	key := sdkCreateKey(t, c, "audited-edge")
	if err := sdkEncrypt(c, key); err != nil {
		t.Fatal(err)
	}
	within(t, 10*time.Second, "a signed Encrypt audited", func() bool {
		for _, m := range auditLines(t, data) {
			if m["action"] == "Encrypt" && m["code"] == "0" && m["keyId"] == key && m["count"] == nil {
				return true
			}
		}
		return false
	})
	// Over its rate limit, a verified caller is summarised under its own
	// SecretId (which the forged and unknown ones above are not).
	limited := 0
	for i := 0; i < 5; i++ {
		if sdkCode(sdkEncrypt(c, key)) == "RequestLimitExceeded" {
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("no request over the rate limit")
	}
	if n, _ := metricSum(t, s.url, "kmsd_requests_refused_total", `reason="rate"`); n != float64(limited) {
		t.Errorf("kmsd_requests_refused_total{reason=rate} = %v, want %d", n, limited)
	}
	within(t, 15*time.Second, "rate-limited requests summarised", func() bool {
		sum := 0.0
		for _, m := range auditLines(t, data) {
			if c, ok := m["count"].(float64); ok && m["code"] == "RequestLimitExceeded" && m["secretId"] == adminID {
				sum += c
			}
		}
		return sum == float64(limited)
	})
}

// Finding 6: /metrics, reachable by anyone who can reach the API port,
// names no key.
func TestMetricsNameNoKey(t *testing.T) {
	s, _ := startEdgeServer(t)
	c := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	var keys []string
	for i := 0; i < 3; i++ {
		key := sdkCreateKey(t, c, fmt.Sprintf("secret-project-%d", i))
		if err := sdkEncrypt(c, key); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key)
	}
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, k := range append(keys, adminID, "secret-project") {
		if strings.Contains(string(body), k) {
			t.Fatalf("/metrics names %q", k)
		}
	}
	if _, ok := metricSum(t, s.url, "kmsd_key_version_usage_ratio_max"); !ok {
		t.Fatal("/metrics lacks kmsd_key_version_usage_ratio_max")
	}
	if n, ok := metricSum(t, s.url, "kmsd_key_versions_usage_over", `ratio="0.5"`); !ok || n != 0 {
		t.Fatalf("kmsd_key_versions_usage_over{ratio=0.5} = %v (%v)", n, ok)
	}
}

// Finding 6: /readyz hammered concurrently takes at most one HSM session
// per cache interval (1 s).
func TestReadyzSharesOneCheck(t *testing.T) {
	s, _ := startEdgeServer(t)
	pings := func() float64 {
		n, _ := metricSum(t, s.url, "kmsd_hsm_call_duration_seconds_count", `function="C_GetSessionInfo"`)
		return n
	}
	before := pings()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				resp, err := http.Get(s.url + "/readyz")
				if err != nil {
					errs <- err
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"token":"ok"`) {
					errs <- fmt.Errorf("/readyz: HTTP %d %s", resp.StatusCode, body)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	calls := pings() - before
	if limit := float64(int(elapsed/time.Second) + 2); calls > limit || calls < 1 {
		t.Fatalf("800 /readyz calls in %v took %v HSM sessions (C_GetSessionInfo), want 1..%v", elapsed, calls, limit)
	}
}

// Finding 9: TLS 1.2 with AEAD suites only; TLS 1.3 as Go does.
func TestTLS12AEADOnly(t *testing.T) {
	for _, srv := range []string{"nethttp"} {
		t.Run(srv, func(t *testing.T) {
			dir := t.TempDir()
			ca := newCA(t, "server CA")
			sc, sk := ca.issue(t, "kmsd", true)
			s, _ := startEdgeServer(t,
				"KMSD_TLS_CERT_FILE="+write(t, dir, "server.pem", sc), "KMSD_TLS_KEY_FILE="+write(t, dir, "server.key", sk))
			host := strings.TrimPrefix(s.url, "http://")
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(ca.pem)
			handshake := func(maxVer uint16, suites ...uint16) (uint16, error) {
				d := tls.Dialer{Config: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, MaxVersion: maxVer, CipherSuites: suites}}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				nc, err := d.DialContext(ctx, "tcp", host)
				if err != nil {
					return 0, err
				}
				defer nc.Close()
				return nc.(*tls.Conn).ConnectionState().CipherSuite, nil
			}
			cbc := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}
			if got, err := handshake(tls.VersionTLS12, cbc...); err == nil {
				t.Fatalf("TLS 1.2 with CBC suites only negotiated %s", tls.CipherSuiteName(got))
			}
			for _, suite := range []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256} {
				if got, err := handshake(tls.VersionTLS12, suite); err != nil || got != suite {
					t.Fatalf("TLS 1.2 with %s: %s, %v", tls.CipherSuiteName(suite), tls.CipherSuiteName(got), err)
				}
			}
			if _, err := handshake(tls.VersionTLS13); err != nil {
				t.Fatalf("TLS 1.3: %v", err)
			}
			// HTTP/1.1 only: a client offering h2 does not get it.
			d := tls.Dialer{Config: &tls.Config{RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}}}
			if nc, err := d.Dial("tcp", host); err != nil {
				t.Fatal(err)
			} else {
				proto := nc.(*tls.Conn).ConnectionState().NegotiatedProtocol
				nc.Close()
				if proto == "h2" {
					t.Fatal("ALPN negotiated h2, want HTTP/1.1 only")
				}
			}
			// A real client over TLS 1.2 still works.
			cpf := profile.NewClientProfile()
			cpf.HttpProfile.Endpoint = host
			cpf.HttpProfile.Scheme = "HTTPS"
			cpf.HttpProfile.ReqTimeout = 10
			c, err := tckms.NewClient(common.NewCredential(adminID, adminKey), "ap-guangzhou", cpf)
			if err != nil {
				t.Fatal(err)
			}
			c.WithHttpTransport(&http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MaxVersion: tls.VersionTLS12}})
			if err := sdkEncrypt(c, sdkCreateKey(t, c, "tls12-"+srv)); err != nil {
				t.Fatalf("SDK over TLS 1.2: %v", err)
			}
		})
	}
}
