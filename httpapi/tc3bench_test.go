package httpapi

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
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
