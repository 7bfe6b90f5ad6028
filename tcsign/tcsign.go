// Package tcsign implements the request signatures of Tencent Cloud APIs as
// pure functions: TC3-HMAC-SHA256 (API 3.0) and HmacSHA1/HmacSHA256
// ("signature v1", used by the legacy API and by API 3.0's form shape). The
// server's verifier (httpapi), kmsctl and the benchmark load generator share
// it. Verification policy (time windows, nonces, credentials) is the
// caller's.
package tcsign

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"hash"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Algorithm names the API 3.0 signature scheme.
const Algorithm = "TC3-HMAC-SHA256"

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// SHA256Hex returns the lowercase hex SHA-256 of b.
func SHA256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Canonical is the input of a TC3 canonical request.
type Canonical struct {
	Method        string // upper case
	URI           string // "/" for API 3.0
	Query         string // raw query for GET, "" for POST
	Headers       []string
	SignedHeaders string // e.g. "content-type;host"
	PayloadHash   string // lowercase hex SHA-256 of the body
}

// String renders the TC3 canonical request. Headers holds the
// already-formatted "name:value" lines, in SignedHeaders order.
func (c Canonical) String() string {
	var b strings.Builder
	b.Grow(256)
	b.WriteString(c.Method)
	b.WriteByte('\n')
	b.WriteString(c.URI)
	b.WriteByte('\n')
	b.WriteString(c.Query)
	b.WriteByte('\n')
	for _, h := range c.Headers {
		b.WriteString(h)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(c.SignedHeaders)
	b.WriteByte('\n')
	b.WriteString(c.PayloadHash)
	return b.String()
}

// StringToSign renders the TC3 string to sign.
func StringToSign(timestamp, scope, canonicalRequest string) string {
	sum := sha256.Sum256([]byte(canonicalRequest))
	var h [2 * sha256.Size]byte
	hex.Encode(h[:], sum[:])
	return Algorithm + "\n" + timestamp + "\n" + scope + "\n" + string(h[:])
}

// SigningKey derives the TC3 signing key for a date (YYYY-MM-DD) and a
// service name.
func SigningKey(secretKey, date, service string) []byte {
	kDate := hmacSHA256([]byte("TC3"+secretKey), date)
	kService := hmacSHA256(kDate, service)
	return hmacSHA256(kService, "tc3_request")
}

// Sign returns the lowercase hex TC3 signature of stringToSign.
//
// The keyed HMAC states of recent keys are pooled (at most MaxEntries keys
// per hash), here and in V1Sign, so a verifier signing many requests with
// one key does not rebuild the HMAC per request.
func Sign(signingKey []byte, stringToSign string) string {
	var sum [sha256.Size]byte
	var h [2 * sha256.Size]byte
	hex.Encode(h[:], pooledHMAC(&hmacSHA256s, sha256.New, signingKey, stringToSign, sum[:0]))
	return string(h[:])
}

// SignCanonical writes to sig the lowercase hex TC3 signature of the
// canonical request canonical (rendered as Canonical.String renders it)
// sent at timestamp (decimal UNIX seconds) with the credential scope
// scope (DATE/SERVICE/tc3_request), under signingKey: the same as
// Sign(signingKey, StringToSign(timestamp, scope, string(canonical))),
// without allocating once the key's HMAC state is pooled. Safe for
// concurrent use.
func SignCanonical(sig *[2 * sha256.Size]byte, signingKey []byte, timestamp, scope string, canonical []byte) {
	sc := signScratches.Get().(*signScratch)
	defer signScratches.Put(sc)
	b := sc.sts[:0]
	b = append(b, Algorithm...)
	b = append(b, '\n')
	b = append(b, timestamp...)
	b = append(b, '\n')
	b = append(b, scope...)
	b = append(b, '\n')
	sum := sha256.Sum256(canonical)
	b = hex.AppendEncode(b, sum[:])
	hex.Encode(sig[:], pooledHMAC(&hmacSHA256s, sha256.New, signingKey, b, sc.mac[:0]))
}

// signScratch is SignCanonical's scratch space (it escapes through the
// hash.Hash interface, so it is pooled rather than on the stack).
type signScratch struct {
	sts [256]byte
	mac [sha256.Size]byte
}

var signScratches = sync.Pool{New: func() any { return new(signScratch) }}

// hmacTable pools keyed HMAC states of one hash by key.
type hmacTable struct {
	mu sync.RWMutex
	m  map[string]*sync.Pool
}

var hmacSHA256s, hmacSHA1s hmacTable

// pooledHMAC appends HMAC(key, msg) to dst, with a pooled keyed state of
// t when there is one. t holds at most MaxEntries keys and is emptied when
// full.
func pooledHMAC[S string | []byte](t *hmacTable, h func() hash.Hash, key []byte, msg S, dst []byte) []byte {
	t.mu.RLock()
	p := t.m[string(key)]
	t.mu.RUnlock()
	if p == nil {
		t.mu.Lock()
		if len(t.m) >= MaxEntries {
			t.m = nil
		}
		if t.m == nil {
			t.m = make(map[string]*sync.Pool)
		}
		if p = t.m[string(key)]; p == nil {
			p = &sync.Pool{}
			t.m[string(key)] = p
		}
		t.mu.Unlock()
	}
	m, _ := p.Get().(hash.Hash)
	if m == nil {
		m = hmac.New(h, key)
	}
	m.Write([]byte(msg))
	dst = m.Sum(dst)
	m.Reset()
	p.Put(m)
	return dst
}

// KeyCache remembers derived TC3 signing keys, so that a verifier derives
// the key of a (SecretKey, date, service) once rather than per request
// (three HMACs). It holds at most MaxEntries keys and forgets them all
// when full. The zero value is ready to use; it is safe for concurrent use.
type KeyCache struct {
	mu sync.RWMutex
	m  map[keyCacheKey][]byte
}

// MaxEntries bounds a KeyCache.
const MaxEntries = 4096

type keyCacheKey struct{ secretKey, date, service string }

// SigningKey returns SigningKey(secretKey, date, service), from the cache
// when it is there. The returned slice is shared: callers must not modify
// it.
func (c *KeyCache) SigningKey(secretKey, date, service string) []byte {
	k := keyCacheKey{secretKey, date, service}
	c.mu.RLock()
	key, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return key
	}
	key = SigningKey(secretKey, date, service)
	c.mu.Lock()
	if c.m == nil || len(c.m) >= MaxEntries {
		c.m = make(map[keyCacheKey][]byte)
	}
	c.m[k] = key
	c.mu.Unlock()
	return key
}

// Param is one parameter of a HmacSHA1/HmacSHA256 ("signature v1")
// request, with its raw (decoded) value.
type Param struct{ Name, Value string }

// V1StringToSign renders METHOD + host + path + "?" + the parameters
// (without Signature) sorted by name, as "name=value" joined with "&", raw
// values, "_" in names replaced by "." — the legacy and API 3.0 v1 rule.
func V1StringToSign(method, host, path string, ps []Param) string {
	sorted := make([]Param, 0, len(ps))
	for _, p := range ps {
		if p.Name == "Signature" {
			continue
		}
		sorted = append(sorted, Param{Name: strings.ReplaceAll(p.Name, "_", "."), Value: p.Value})
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var b strings.Builder
	b.WriteString(method)
	b.WriteString(host)
	b.WriteString(path)
	b.WriteByte('?')
	for i, p := range sorted {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.Name)
		b.WriteByte('=')
		b.WriteString(p.Value)
	}
	return b.String()
}

// V1Sign returns the base64 HMAC of stringToSign: SHA-256 when method is
// exactly "HmacSHA256", SHA-1 otherwise (as Tencent specifies).
func V1Sign(secretKey, signatureMethod, stringToSign string) string {
	var sum [sha256.Size]byte
	var mac []byte
	if signatureMethod == "HmacSHA256" {
		mac = pooledHMAC(&hmacSHA256s, sha256.New, []byte(secretKey), stringToSign, sum[:0])
	} else {
		mac = pooledHMAC(&hmacSHA1s, sha1.New, []byte(secretKey), stringToSign, sum[:0])
	}
	return base64.StdEncoding.EncodeToString(mac)
}

// SignTC3 returns the Authorization header value of a TC3 request with the
// SDKs' usual signed headers "content-type;host": the helper used by
// kmsctl and the load generator. date is the UTC date of timestamp.
//
// Such a signature does not cover the action (X-TC-Action): prefer
// SignTC3Action.
func SignTC3(secretID, secretKey, service, method, host, contentType, query string, timestamp int64, body []byte) string {
	return signTC3(secretID, secretKey, service, method, host, contentType, query, "", timestamp, body)
}

// SignTC3Action is SignTC3 with the action signed too: the signed headers
// are "content-type;host;x-tc-action", the action's value in lower case as
// Tencent's documentation signs it. The request must carry the header
// X-TC-Action: action. A signature made so cannot be re-used with another
// action.
func SignTC3Action(secretID, secretKey, service, method, host, contentType, query, action string, timestamp int64, body []byte) string {
	return signTC3(secretID, secretKey, service, method, host, contentType, query, action, timestamp, body)
}

func signTC3(secretID, secretKey, service, method, host, contentType, query, action string, timestamp int64, body []byte) string {
	date := timeDate(timestamp)
	c := Canonical{
		Method:        method,
		URI:           "/",
		Query:         query,
		Headers:       []string{"content-type:" + contentType, "host:" + host},
		SignedHeaders: "content-type;host",
		PayloadHash:   SHA256Hex(body),
	}
	if action != "" {
		c.Headers = append(c.Headers, "x-tc-action:"+strings.ToLower(action))
		c.SignedHeaders += ";x-tc-action"
	}
	scope := date + "/" + service + "/tc3_request"
	sig := Sign(SigningKey(secretKey, date, service), StringToSign(strconv.FormatInt(timestamp, 10), scope, c.String()))
	return Algorithm + " Credential=" + secretID + "/" + scope + ", SignedHeaders=" + c.SignedHeaders + ", Signature=" + sig
}

func timeDate(ts int64) string { return time.Unix(ts, 0).UTC().Format("2006-01-02") }
