package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"hsmkms/httpapi"
	"hsmkms/tcsign"
)

// The bench's administrator credential, imported into every bench token.
const (
	secretID  = "AKIDbenchadmin0000000000000000000000"
	secretKey = "benchAdminSecretKey0000000000000"
)

// tc3Request returns the raw bytes of a TC3-signed API 3.0 POST.
func tc3Request(host, action string, body []byte, ts int64) []byte {
	auth := tcsign.SignTC3(secretID, secretKey, "kms", "POST", host, "application/json", "", ts, body)
	var b bytes.Buffer
	b.Grow(len(body) + 512)
	fmt.Fprintf(&b, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"+
		"X-TC-Action: %s\r\nX-TC-Version: %s\r\nX-TC-Timestamp: %d\r\nAuthorization: %s\r\n\r\n",
		host, len(body), action, httpapi.API3Version, ts, auth)
	b.Write(body)
	return b.Bytes()
}

// call sends one TC3 request with net/http (set-up only, not timed) and
// returns the decoded "Response" object.
func call(host, action string, params any) (map[string]any, error) {
	body, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	req, _ := http.NewRequest("POST", "http://"+host+"/", bytes.NewReader(body))
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", action)
	req.Header.Set("X-TC-Version", httpapi.API3Version)
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("Authorization", tcsign.SignTC3(secretID, secretKey, "kms", "POST", host, "application/json", "", ts, body))
	resp, err := setupClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var env struct{ Response map[string]any }
	if err := json.Unmarshal(raw, &env); err != nil || env.Response == nil {
		return nil, fmt.Errorf("%s: HTTP %d: %.300s", action, resp.StatusCode, raw)
	}
	return env.Response, nil
}

var setupClient = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// apiError returns the Error.Code of an API 3.0 response, or "".
func apiError(resp map[string]any) (code, msg string) {
	e, ok := resp["Error"].(map[string]any)
	if !ok {
		return "", ""
	}
	code, _ = e["Code"].(string)
	msg, _ = e["Message"].(string)
	return code, msg
}

func mustOK(resp map[string]any, err error) (map[string]any, error) {
	if err != nil {
		return nil, err
	}
	if code, msg := apiError(resp); code != "" {
		return nil, fmt.Errorf("%s: %s", code, msg)
	}
	return resp, nil
}

func createKey(host, alias string) (string, error) {
	r, err := mustOK(call(host, "CreateKey", map[string]string{"Alias": alias, "Description": "bench"}))
	if err != nil {
		return "", err
	}
	id, _ := r["KeyId"].(string)
	return id, nil
}

func randomB64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// benchContext is the encryption context of every bench request: the
// envelope binds it as AAD, as a real client's would.
const benchContext = `{"app":"bench","tenant":"t1"}`

// ---------------------------------------------------------------------------
// Pre-signed TC3 pools. TC3 has no nonce, so a signed request may be sent
// again until its timestamp leaves the server's 300 s window; the pool is
// re-signed every minute. The server verifies every signature in full.

type tc3Pool struct {
	host, action string
	bodies       [][]byte
	request      func(host, action string, body []byte, ts int64) []byte // tc3Request, awsRequest
	reqs         atomic.Pointer[[][]byte]
	stopOnce     sync.Once
	stopc        chan struct{}
}

func newTC3Pool(host, action string, bodies [][]byte) *tc3Pool {
	return newSignedPool(host, action, bodies, tc3Request)
}

// newSignedPool is a pool of requests made by request.
func newSignedPool(host, action string, bodies [][]byte, request func(host, action string, body []byte, ts int64) []byte) *tc3Pool {
	p := &tc3Pool{host: host, action: action, bodies: bodies, request: request, stopc: make(chan struct{})}
	p.sign()
	go func() {
		t := time.NewTicker(60 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.sign()
			case <-p.stopc:
				return
			}
		}
	}()
	return p
}

func (p *tc3Pool) sign() {
	ts := time.Now().Unix()
	rs := make([][]byte, len(p.bodies))
	for i, b := range p.bodies {
		rs[i] = p.request(p.host, p.action, b, ts)
	}
	p.reqs.Store(&rs)
}

func (p *tc3Pool) close() { p.stopOnce.Do(func() { close(p.stopc) }) }

// poolSource picks requests from a pool, round robin per worker (random
// when random is set).
type poolSource struct {
	p      *tc3Pool
	random bool
	seed   uint64
}

func (s *poolSource) next(w int, i uint64) []byte {
	rs := *s.p.reqs.Load()
	if s.random {
		// xorshift: cheap, per worker
		s.seed ^= s.seed << 13
		s.seed ^= s.seed >> 7
		s.seed ^= s.seed << 17
		return rs[s.seed%uint64(len(rs))]
	}
	return rs[(uint64(w)*7919+i)%uint64(len(rs))]
}

func (s *poolSource) ok(body []byte) bool { return !bytes.Contains(body, []byte(`"Error"`)) }

// ---------------------------------------------------------------------------
// Legacy Encrypt: every request needs a fresh Nonce, so it is signed per
// request (HmacSHA256 through tcsign.V1Sign). The string to sign is built
// from precomputed parts around Nonce and Timestamp.

var legacyNonce atomic.Uint64

type legacySource struct {
	host            string
	pre, mid, post  string // string-to-sign parts
	bodyMid, bodyPT string // form-body parts
	buf             []byte
}

func newLegacySource(host, keyID, ptB64 string) *legacySource {
	// Parameters sorted by name (byte order): Action, Nonce, SecretId,
	// SignatureMethod, Timestamp, encryptionContext, keyId, plaintext.
	return &legacySource{
		host:    host,
		pre:     "POST" + host + httpapi.LegacyPath + "?Action=Encrypt&Nonce=",
		mid:     "&SecretId=" + secretID + "&SignatureMethod=HmacSHA256&Timestamp=",
		post:    "&encryptionContext=" + benchContext + "&keyId=" + keyID + "&plaintext=" + ptB64,
		bodyMid: "&SecretId=" + secretID + "&SignatureMethod=HmacSHA256&Timestamp=",
		bodyPT:  "&encryptionContext=" + url.QueryEscape(benchContext) + "&keyId=" + keyID + "&plaintext=" + url.QueryEscape(ptB64),
	}
}

// stringToSign checks the precomputed parts against tcsign's own rule.
func (s *legacySource) check(keyID, ptB64 string) error {
	n, ts := "123", "456"
	got := s.pre + n + s.mid + ts + s.post
	want := tcsign.V1StringToSign("POST", s.host, httpapi.LegacyPath, []tcsign.Param{
		{Name: "Action", Value: "Encrypt"}, {Name: "keyId", Value: keyID}, {Name: "plaintext", Value: ptB64},
		{Name: "encryptionContext", Value: benchContext}, {Name: "SecretId", Value: secretID},
		{Name: "Timestamp", Value: ts}, {Name: "Nonce", Value: n}, {Name: "SignatureMethod", Value: "HmacSHA256"},
	})
	if got != want {
		return fmt.Errorf("legacy string to sign:\n got %q\nwant %q", got, want)
	}
	return nil
}

func (s *legacySource) next(w int, i uint64) []byte {
	n := strconv.FormatUint(legacyNonce.Add(1), 10)
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	sig := tcsign.V1Sign(secretKey, "HmacSHA256", s.pre+n+s.mid+ts+s.post)
	body := "Action=Encrypt&Nonce=" + n + s.bodyMid + ts + s.bodyPT + "&Signature=" + url.QueryEscape(sig)
	b := s.buf[:0]
	b = append(b, "POST "+httpapi.LegacyPath+" HTTP/1.1\r\nHost: "...)
	b = append(b, s.host...)
	b = append(b, "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	s.buf = b
	return b
}

func (s *legacySource) ok(body []byte) bool { return bytes.Contains(body, []byte(`"code":0,`)) }

// mixSource round-robins over several sources (the soak).
type mixSource struct{ srcs []source }

func (m *mixSource) pick(i uint64) source { return m.srcs[i%uint64(len(m.srcs))] }
func (m *mixSource) next(w int, i uint64) []byte {
	return m.pick(i).next(w, i)
}

// ok is checked against the source of the last next call.
type lastSource struct {
	mixSource
	last source
}

func (m *lastSource) next(w int, i uint64) []byte {
	m.last = m.pick(i)
	return m.last.next(w, i)
}
func (m *lastSource) ok(body []byte) bool { return m.last.ok(body) }
