package httpapi

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"hsmkms/tcsign"
)

// BenchmarkTC3Encrypt serves signed TC3 API 3.0 Encrypt requests (the hot
// path) through the whole HTTP edge with a fake domain: what the edge costs
// per request, signature check and replay bookkeeping included. Each request
// has its own body, hence its own signature, as real traffic does; a pool
// of pre-signed requests is cycled so that signing is not measured.
func BenchmarkTC3Encrypt(b *testing.B) {
	now := time.Now()
	s := New(&fakeKMS{}, Config{Logger: discardLogger(), Clock: func() time.Time { return now }})
	const host = "kms.example:8080"
	type signed struct{ body, auth string }
	pool := make([]signed, 1<<18)
	ts := now.Unix()
	for i := range pool {
		body := `{"KeyId":"9999aed0-4956-11e9-bc70-5254005e86b4","Plaintext":"` + base64.StdEncoding.EncodeToString([]byte("plaintext "+strconv.Itoa(i))) + `"}`
		pool[i] = signed{body, tcsign.SignTC3(testSecretID, testSecretKey, "kms", http.MethodPost, host, "application/json", "", ts, []byte(body))}
	}
	tsRaw := strconv.FormatInt(ts, 10)
	h := s.Handler()
	b.ReportAllocs()
	b.ResetTimer()
	// CPU time of the process per request, besides wall time: on a shared
	// machine it is what other processes disturb least.
	cpu0 := processCPU()
	defer func() { b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op") }()
	for i := 0; i < b.N; i++ {
		p := pool[i%len(pool)]
		req := httptest.NewRequest(http.MethodPost, "http://"+host+"/", strings.NewReader(p.body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-TC-Action", "Encrypt")
		req.Header.Set("X-TC-Version", "2019-01-18")
		req.Header.Set("X-TC-Timestamp", tsRaw)
		req.Header.Set("Authorization", p.auth)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), `"Error"`) {
			b.Fatalf("%d %s", rec.Code, rec.Body.String())
		}
	}
}

// BenchmarkBindTC3 is the part of BenchmarkTC3Encrypt this binding adds to
// a TC3 request whose action is not signed: remembering its signature with
// its action (a fresh signature per request, as real traffic has).
func BenchmarkBindTC3(b *testing.B) {
	// Steady traffic of 2,000 requests a second, each signed one second
	// before it arrives, so that minutes of expiry open and close.
	const rate = 2000
	start := time.Now().Unix()
	var now time.Time
	s := New(&fakeKMS{}, Config{Logger: discardLogger(), Clock: func() time.Time { return now }})
	sigs := make([]string, 1<<20)
	for i := range sigs {
		sigs[i] = tcsign.SHA256Hex([]byte(strconv.Itoa(i)))
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	defer func() { b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op") }()
	for i := 0; i < b.N; i++ {
		sec := start + int64(i/rate)
		now = time.Unix(sec, 0)
		// The signature stands for (request i); the table of 2^20 is
		// reused once per 2^20 requests, beyond the 300 s window.
		if err := s.bindTC3(ctx, sigs[i%len(sigs)], "Encrypt", sec-1); err != nil {
			b.Fatal(err)
		}
	}
}

// processCPU returns the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
