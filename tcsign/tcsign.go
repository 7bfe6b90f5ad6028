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
	return Algorithm + "\n" + timestamp + "\n" + scope + "\n" + SHA256Hex([]byte(canonicalRequest))
}

// SigningKey derives the TC3 signing key for a date (YYYY-MM-DD) and a
// service name.
func SigningKey(secretKey, date, service string) []byte {
	kDate := hmacSHA256([]byte("TC3"+secretKey), date)
	kService := hmacSHA256(kDate, service)
	return hmacSHA256(kService, "tc3_request")
}

// Sign returns the lowercase hex TC3 signature of stringToSign.
func Sign(signingKey []byte, stringToSign string) string {
	return hex.EncodeToString(hmacSHA256(signingKey, stringToSign))
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
	var h func() hash.Hash = sha1.New
	if signatureMethod == "HmacSHA256" {
		h = sha256.New
	}
	m := hmac.New(h, []byte(secretKey))
	m.Write([]byte(stringToSign))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// SignTC3 returns the Authorization header value of a TC3 request with the
// SDKs' usual signed headers "content-type;host": the helper used by
// kmsctl and the load generator. date is the UTC date of timestamp.
func SignTC3(secretID, secretKey, service, method, host, contentType, query string, timestamp int64, body []byte) string {
	date := timeDate(timestamp)
	c := Canonical{
		Method:        method,
		URI:           "/",
		Query:         query,
		Headers:       []string{"content-type:" + contentType, "host:" + host},
		SignedHeaders: "content-type;host",
		PayloadHash:   SHA256Hex(body),
	}
	scope := date + "/" + service + "/tc3_request"
	sig := Sign(SigningKey(secretKey, date, service), StringToSign(strconv.FormatInt(timestamp, 10), scope, c.String()))
	return Algorithm + " Credential=" + secretID + "/" + scope + ", SignedHeaders=content-type;host, Signature=" + sig
}

func timeDate(ts int64) string { return time.Unix(ts, 0).UTC().Format("2006-01-02") }
