package httpapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"hsmkms/kms"
)

// This file verifies AWS Signature Version 4 (the AWS KMS API, aws.go), as
// AWS servers do: the canonical request is rebuilt from what the request
// names in SignedHeaders, and signed with the key derived from the
// credential's SecretKey (the access key id is the SecretId).
//
// Checks, in order: the Host is one this server answers to; an
// Authorization header in the AWS4-HMAC-SHA256 shape; no
// X-Amz-Security-Token (temporary credentials do not exist here); the
// credential scope names the service kms, a region of Config.AWS.Regions
// and the day of X-Amz-Date; X-Amz-Date within SignatureWindow of the
// server's clock; SignedHeaders sorted, lower case, and including host,
// x-amz-date and x-amz-target (so a captured request cannot be re-sent as
// another action: the action is signed, and a replay within the window
// can only repeat the same action on the same body, as with AWS); an
// X-Amz-Content-Sha256, when sent, equal to the body's hash; the access
// key id an enabled credential; and the signature.

// awsAlgorithm is the only SigV4 algorithm accepted.
const awsAlgorithm = "AWS4-HMAC-SHA256"

// awsDateFormat is X-Amz-Date's format.
const awsDateFormat = "20060102T150405Z"

// The authentication errors of the AWS API, as AWS answers them.
var (
	errAWSMissing     = awsAuthErr("MissingAuthenticationTokenException", "Missing Authentication Token")
	errAWSMalformed   = awsAuthErr("IncompleteSignatureException", "the Authorization header is not a well-formed AWS4-HMAC-SHA256 authorization (Credential=<access key id>/<date>/<region>/kms/aws4_request, SignedHeaders=..., Signature=<64 hex digits>)")
	errAWSToken       = awsAuthErr("UnrecognizedClientException", "temporary credentials (X-Amz-Security-Token) are not supported: sign with an access key id (SecretId) and its secret access key (SecretKey)")
	errAWSUnknownKey  = awsAuthErr("UnrecognizedClientException", "The security token included in the request is invalid.")
	errAWSSignature   = awsAuthErr("InvalidSignatureException", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")
	errAWSNoTarget    = awsAuthErr("InvalidSignatureException", "SignedHeaders must include host, x-amz-date and x-amz-target")
	errAWSDate        = awsAuthErr("IncompleteSignatureException", "X-Amz-Date is missing or not in the form 20060102T150405Z")
	errAWSScopeDate   = awsAuthErr("InvalidSignatureException", "the credential scope's date is not X-Amz-Date's day")
	errAWSPayload     = awsAuthErr("InvalidSignatureException", "X-Amz-Content-Sha256 is not the SHA-256 of the body (unsigned payloads are not accepted)")
	errAWSQuery       = awsAuthErr("IncompleteSignatureException", "the AWS KMS API takes no query string")
	errAWSDisabled    = awsAuthErr("UnrecognizedClientException", "the AWS KMS API is not enabled on this server (aws.regions in its configuration)")
	errAWSHost        = awsAuthErr("InvalidSignatureException", "the request's Host is not one this server answers to")
	errAWSBadService  = awsAuthErr("InvalidSignatureException", "Credential should be scoped to correct service: 'kms'.")
	awsScopeMalformed = "Credential should be scoped to a valid region"
)

// awsAuthErr is an authentication failure of the AWS API.
func awsAuthErr(typ, msg string) *awsError { return &awsError{typ: typ, message: msg, auth: true} }

// sigV4Authorization is a parsed Authorization header.
type sigV4Authorization struct {
	accessKey, date, region, service, scope, signedHeaders, signature string
}

// parseSigV4Authorization parses
// "AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=HEX".
// The three parts may come in any order, each once; the signature must be
// 64 lower-case hex digits and the date a valid YYYYMMDD.
func parseSigV4Authorization(h string) (sigV4Authorization, bool) {
	var a sigV4Authorization
	rest, ok := strings.CutPrefix(h, awsAlgorithm+" ")
	if !ok || len(h) > 2048 {
		return a, false
	}
	var cred string
	var seen [3]bool
	for rest != "" {
		var part string
		part, rest, _ = strings.Cut(rest, ",")
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return a, false
		}
		var i int
		switch k {
		case "Credential":
			i, cred = 0, v
		case "SignedHeaders":
			i, a.signedHeaders = 1, v
		case "Signature":
			i, a.signature = 2, v
		default:
			return a, false
		}
		if seen[i] {
			return a, false
		}
		seen[i] = true
	}
	id, scope, ok1 := strings.Cut(cred, "/")
	parts := strings.Split(scope, "/")
	if !ok1 || id == "" || len(parts) != 4 || parts[3] != "aws4_request" || parts[1] == "" || parts[2] == "" || a.signedHeaders == "" || len(a.signature) != 64 {
		return a, false
	}
	for i := 0; i < len(a.signature); i++ {
		if _, ok := unhex(a.signature[i]); !ok {
			return a, false
		}
	}
	if len(parts[0]) != 8 {
		return a, false
	}
	if _, err := time.Parse("20060102", parts[0]); err != nil {
		return a, false
	}
	a.accessKey, a.date, a.region, a.service, a.scope = id, parts[0], parts[1], parts[2], scope
	return a, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// authSigV4 verifies the SigV4 signature of r, whose body is body, and
// returns its caller and the region it was signed for.
func (s *Server) authSigV4(ctx context.Context, r *http.Request, body []byte) (*kms.Principal, string, error) {
	if len(s.awsRegions) == 0 {
		return nil, "", errAWSDisabled
	}
	if !s.hostAllowed(r.Host) {
		return nil, "", errAWSHost
	}
	authz := hget(r.Header, "Authorization")
	if authz == "" {
		return nil, "", errAWSMissing
	}
	a, ok := parseSigV4Authorization(authz)
	if !ok {
		return nil, "", errAWSMalformed
	}
	if _, ok := r.Header["X-Amz-Security-Token"]; ok {
		return nil, "", errAWSToken
	}
	if a.service != "kms" {
		return nil, "", errAWSBadService
	}
	if !s.awsRegions[a.region] {
		return nil, "", awsAuthErr("InvalidSignatureException", awsScopeMalformed+", not '"+truncate(a.region, 32)+"' (this server's regions: "+strings.Join(s.cfg.AWS.Regions, ", ")+").")
	}
	if r.URL.RawQuery != "" {
		return nil, "", errAWSQuery
	}
	if len(r.Header["X-Amz-Date"]) > 1 || len(r.Header["X-Amz-Target"]) > 1 || len(r.Header["Authorization"]) > 1 {
		return nil, "", errAWSMalformed // one value each: what is verified is what is served
	}
	amzDate := hget(r.Header, "X-Amz-Date")
	t, err := time.Parse(awsDateFormat, amzDate)
	if err != nil {
		return nil, "", errAWSDate
	}
	if now := s.now(); t.Before(now.Add(-SignatureWindow)) || t.After(now.Add(SignatureWindow)) {
		return nil, "", awsAuthErr("InvalidSignatureException", "Signature expired: "+amzDate+" is now outside the allowed window of 5 minutes of the server's time ("+now.UTC().Format(awsDateFormat)+")")
	}
	if a.date != amzDate[:8] {
		return nil, "", errAWSScopeDate
	}
	var payloadHash [2 * sha256.Size]byte
	sum := sha256.Sum256(body)
	hex.Encode(payloadHash[:], sum[:])
	if v, ok := r.Header["X-Amz-Content-Sha256"]; ok && (len(v) != 1 || v[0] != string(payloadHash[:])) {
		return nil, "", errAWSPayload
	}

	bp := tc3Bufs.Get().(*[]byte)
	c := (*bp)[:0]
	defer func() {
		*bp = c[:0]
		tc3Bufs.Put(bp)
	}()
	c = append(c, r.Method...)
	c = append(c, "\n/\n\n"...) // canonical URI "/" (the only path served) and an empty query
	var hasHost, hasDate, hasTarget bool
	hostAt := 0 // offset of the host's value in c
	prev := ""
	for rest := a.signedHeaders; ; {
		n, more, found := strings.Cut(rest, ";")
		if n == "" || (prev != "" && prev >= n) || !isLowerASCIIName(n) {
			return nil, "", errAWSMalformed
		}
		prev = n
		c = append(c, n...)
		c = append(c, ':')
		switch n {
		case "host":
			hasHost = true
			hostAt = len(c)
			c = append(c, r.Host...)
		case "x-amz-date":
			hasDate = true
			c = appendCanonicalValues(c, r.Header["X-Amz-Date"])
		case "x-amz-target":
			hasTarget = true
			c = appendCanonicalValues(c, r.Header["X-Amz-Target"])
		case "content-type":
			c = appendCanonicalValues(c, r.Header["Content-Type"])
		case "content-length":
			if v, ok := r.Header["Content-Length"]; ok {
				c = appendCanonicalValues(c, v)
			} else if r.ContentLength >= 0 {
				c = strconv.AppendInt(c, r.ContentLength, 10)
			}
		default:
			c = appendCanonicalValues(c, r.Header[http.CanonicalHeaderKey(n)])
		}
		c = append(c, '\n')
		if !found {
			break
		}
		rest = more
	}
	if !hasHost || !hasDate || !hasTarget {
		return nil, "", errAWSNoTarget
	}
	c = append(c, '\n')
	c = append(c, a.signedHeaders...)
	c = append(c, '\n')
	c = append(c, payloadHash[:]...)

	cred, err := s.lookup(ctx, a.accessKey)
	if err != nil {
		if err == errAuthSecretID {
			return nil, "", errAWSUnknownKey
		}
		return nil, "", err
	}
	var sig, want [2 * sha256.Size]byte
	copy(want[:], a.signature) // parseSigV4Authorization accepts 64 characters only
	s.awsKeys.sign(&sig, cred.SecretKey, a.date, a.region, amzDate, a.scope, c)
	if hmac.Equal(sig[:], want[:]) {
		return cred.Principal, a.region, nil
	}
	// The SDKs sign the host without a default port (:443 for https, :80
	// for http); a client or proxy may still send it in Host.
	if hn, port, err := net.SplitHostPort(r.Host); err == nil && (port == "443" || port == "80") {
		tail := string(c[hostAt+len(r.Host):])
		c = append(append(c[:hostAt], hn...), tail...)
		s.awsKeys.sign(&sig, cred.SecretKey, a.date, a.region, amzDate, a.scope, c)
		if hmac.Equal(sig[:], want[:]) {
			return cred.Principal, a.region, nil
		}
	}
	return nil, "", errAWSSignature
}

// appendCanonicalValues appends a header's values as SigV4 canonicalises
// them: each trimmed, runs of spaces collapsed to one, joined with ",".
func appendCanonicalValues(dst []byte, vs []string) []byte {
	for i, v := range vs {
		if i > 0 {
			dst = append(dst, ',')
		}
		v = strings.TrimSpace(v)
		space := false
		for j := 0; j < len(v); j++ {
			ch := v[j]
			if ch == ' ' {
				if space {
					continue
				}
				space = true
			} else {
				space = false
			}
			dst = append(dst, ch)
		}
	}
	return dst
}

// awsKeyCache remembers SigV4 signing keys by (SecretKey, date, region),
// each with a pool of its keyed HMAC states, so that a verifier derives a
// key once a day rather than per request. It holds at most
// maxAWSKeys keys and forgets them all when full. Safe for concurrent use.
type awsKeyCache struct {
	mu sync.RWMutex
	m  map[awsKeyID]*awsKey
}

const maxAWSKeys = 4096

type awsKeyID struct{ secretKey, date, region string }

type awsKey struct {
	macs sync.Pool // of hash.Hash keyed with the signing key
}

// awsSigningKey derives the SigV4 signing key of the service kms.
func awsSigningKey(secretKey, date, region string) []byte {
	k := hmacSum([]byte("AWS4"+secretKey), date)
	k = hmacSum(k, region)
	k = hmacSum(k, "kms")
	return hmacSum(k, "aws4_request")
}

func hmacSum(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// sign writes to sig the hex SigV4 signature of the canonical request
// canonical, sent at amzDate with the credential scope scope.
func (c *awsKeyCache) sign(sig *[2 * sha256.Size]byte, secretKey, date, region, amzDate, scope string, canonical []byte) {
	id := awsKeyID{secretKey, date, region}
	c.mu.RLock()
	k := c.m[id]
	c.mu.RUnlock()
	if k == nil {
		key := awsSigningKey(secretKey, date, region)
		k = &awsKey{}
		k.macs.New = func() any { return hmac.New(sha256.New, key) }
		c.mu.Lock()
		if c.m == nil || len(c.m) >= maxAWSKeys {
			c.m = make(map[awsKeyID]*awsKey)
		}
		if old := c.m[id]; old != nil {
			k = old
		} else {
			c.m[id] = k
		}
		c.mu.Unlock()
	}
	mac := k.macs.Get().(hash.Hash)
	mac.Reset()
	var sts [256]byte
	b := append(sts[:0], awsAlgorithm...)
	b = append(b, '\n')
	b = append(b, amzDate...)
	b = append(b, '\n')
	b = append(b, scope...)
	b = append(b, '\n')
	sum := sha256.Sum256(canonical)
	b = hex.AppendEncode(b, sum[:])
	mac.Write(b)
	var out [sha256.Size]byte
	hex.Encode(sig[:], mac.Sum(out[:0]))
	k.macs.Put(mac)
}

// awsRegionSet returns the set of regions (nil when there are none).
func awsRegionSet(regions []string) map[string]bool {
	if len(regions) == 0 {
		return nil
	}
	m := make(map[string]bool, len(regions))
	for _, r := range slices.Compact(slices.Sorted(slices.Values(regions))) {
		m[r] = true
	}
	return m
}
