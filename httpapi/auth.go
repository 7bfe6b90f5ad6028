package httpapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"hsmkms/kms"
	"hsmkms/tcsign"
)

// This file authenticates requests: TC3-HMAC-SHA256 and the HmacSHA1 /
// HmacSHA256 "signature v1" of the legacy API and of API 3.0's form shape.
// Every request must be signed by an enabled credential; there is no
// anonymous access.

// Credentials resolves a SecretId. *kms.Service implements it.
type Credentials interface {
	// LookupCredential returns the credential of an enabled SecretId, or an
	// error wrapping kms.ErrCredentialNotFound.
	LookupCredential(ctx context.Context, secretID string) (*kms.Credential, error)
}

// authError is an authentication failure with its code in both protocols.
type authError struct {
	api3    string // API 3.0 code
	legacy  int    // legacy code
	message string
}

func (e *authError) Error() string { return e.api3 + ": " + e.message }

var (
	errAuthMissing    = &authError{"AuthFailure", 4100, "the request is not signed"}
	errAuthMalformed  = &authError{"AuthFailure.InvalidAuthorization", 4100, "the Authorization header is malformed"}
	errAuthExpired    = &authError{"AuthFailure.SignatureExpire", 4500, "the request timestamp is outside the allowed window of 300 seconds"}
	errAuthSecretID   = &authError{"AuthFailure.SecretIdNotFound", 4104, "the SecretId does not exist or is disabled"}
	errAuthSignature  = &authError{"AuthFailure.SignatureFailure", 4100, "the signature does not match"}
	errAuthToken      = &authError{"AuthFailure.TokenFailure", 4105, "temporary credentials (Token) are not supported"}
	errAuthReplay     = &authError{"AuthFailure.SignatureFailure", 4500, "replayed request: this Nonce and Timestamp were already used"}
	errAuthNoncesFull = &authError{"RequestLimitExceeded", 4400, "too many signed requests in the replay window, please retry"}
	errAuthReused     = &authError{"AuthFailure.SignatureFailure", 4100, "this signature was already used with another action (a call with the same body and another action within the same second carries the same signature: call again in the next second, or sign the action with x-tc-action in SignedHeaders)"}
	errAuthNoAction   = &authError{"AuthFailure.InvalidAuthorization", 4100, "this server requires the action to be signed: SignedHeaders must include x-tc-action"}
	errAuthHost       = &authError{"AuthFailure.InvalidAuthorization", 4100, "the request's Host is not one this server answers to"}
)

// SignatureWindow is how far a request's timestamp may be from the server's
// clock, either way.
const SignatureWindow = 300 * time.Second

func (s *Server) now() time.Time { return s.cfg.Clock() }

func (s *Server) checkTimestamp(ts int64) error {
	now := s.now().Unix()
	if ts < now-int64(SignatureWindow/time.Second) || ts > now+int64(SignatureWindow/time.Second) {
		return errAuthExpired
	}
	return nil
}

func (s *Server) lookup(ctx context.Context, secretID string) (*kms.Credential, error) {
	if secretID == "" || len(secretID) > 128 {
		return nil, errAuthSecretID
	}
	infoFrom(ctx).secretID = secretID
	cred, err := s.creds.LookupCredential(ctx, secretID)
	if errors.Is(err, kms.ErrCredentialNotFound) {
		return nil, errAuthSecretID
	}
	if err != nil {
		return nil, err
	}
	return cred, nil
}

// authTC3 verifies a TC3-HMAC-SHA256 request for action (its X-TC-Action)
// and returns its caller.
//
// Real SDKs sign differently against a custom endpoint: the Go SDK signs
// the host with its port and the service "kms"; the Node.js SDK signs the
// host without the port and the service endpoint.split(".")[0] (so "127"
// for 127.0.0.1:PORT), with the URL path as canonical URI. So the signing
// key is derived from the service named in the Credential scope, and the
// host is tried as sent, then without its port; the canonical URI is "/",
// then the real path if it differs. The credential scope's service must be
// one this server accepts (serviceAllowed).
//
// The action is bound to the signature: when x-tc-action is among the
// SignedHeaders it is verified like any signed header (its value lower
// case, as Tencent's documentation signs it, or as sent); when it is not
// (the official SDKs sign only content-type;host), the signature is
// remembered with the action until it expires and refused with any other
// (bindTC3). Config.RequireSignedAction refuses requests that do not sign
// it.
func (s *Server) authTC3(ctx context.Context, r *http.Request, body []byte, action string) (*kms.Principal, error) {
	if !s.hostAllowed(r.Host) {
		return nil, errAuthHost
	}
	authz := hget(r.Header, "Authorization")
	if authz == "" {
		return nil, errAuthMissing
	}
	a, ok := parseTC3Authorization(authz)
	if !ok {
		return nil, errAuthMalformed
	}
	if hget(r.Header, "X-Tc-Token") != "" {
		return nil, errAuthToken
	}
	if !s.serviceAllowed(a.service, r.Host) {
		return nil, &authError{"AuthFailure.InvalidAuthorization", 4100, "the credential scope's service " + strconv.Quote(truncate(a.service, 32)) + " is not accepted by this server (sign for the service kms)"}
	}
	tsRaw := hget(r.Header, "X-Tc-Timestamp")
	ts, err := strconv.ParseInt(tsRaw, 10, 64)
	var canonTS [20]byte
	if err != nil || tsRaw != string(strconv.AppendInt(canonTS[:0], ts, 10)) {
		return nil, &authError{"MissingParameter", 4000, "X-TC-Timestamp is missing or not a UNIX time in seconds"}
	}
	if err := s.checkTimestamp(ts); err != nil {
		return nil, err
	}
	var day [10]byte
	if a.date != string(time.Unix(ts, 0).UTC().AppendFormat(day[:0], "2006-01-02")) {
		return nil, errAuthSignature
	}
	if hget(r.Header, "X-Tc-Content-Sha256") != "" {
		return nil, &authError{"AuthFailure.SignatureFailure", 4100, "unsigned payloads (X-TC-Content-SHA256) are not accepted: the body must be signed"}
	}
	cred, err := s.lookup(ctx, a.secretID)
	if err != nil {
		return nil, err
	}

	// The canonical request, in a pooled buffer: method, URI, query, the
	// signed headers in SignedHeaders order (content-type and host must be
	// among them), SignedHeaders, the body's hash. The host line is left
	// out and filled in per candidate below.
	bp := tc3Bufs.Get().(*[]byte)
	var hasHost, hasCT, hasAction, actionUpper bool
	var actionAt int      // offset of the x-tc-action value in headers
	var head, tail []byte // canonical headers before and after host
	headers := (*bp)[:0]
	defer func() { // keep the buffer as it grew
		*bp = headers[:0]
		tc3Bufs.Put(bp)
	}()
	prev := ""
	for rest := a.signedHeaders; ; {
		n, more, found := strings.Cut(rest, ";")
		if n == "" || (prev != "" && prev >= n) || !isLowerASCIIName(n) {
			return nil, errAuthMalformed
		}
		prev = n
		switch n {
		case "host":
			hasHost = true
			head = headers
		case "x-tc-action":
			hasAction = true
			v := strings.TrimSpace(signedHeader(r.Header, n))
			headers = append(headers, "x-tc-action:"...)
			actionAt = len(headers)
			for i := 0; i < len(v); i++ {
				c := v[i]
				if 'A' <= c && c <= 'Z' {
					c += 'a' - 'A'
					actionUpper = true
				}
				headers = append(headers, c)
			}
			headers = append(headers, '\n')
		case "content-type":
			hasCT = true
			fallthrough
		default:
			headers = append(headers, n...)
			headers = append(headers, ':')
			headers = append(headers, strings.TrimSpace(signedHeader(r.Header, n))...)
			headers = append(headers, '\n')
		}
		if !found {
			break
		}
		rest = more
	}
	if !hasHost || !hasCT {
		return nil, &authError{"AuthFailure.InvalidAuthorization", 4100, "SignedHeaders must include content-type and host"}
	}
	if !hasAction && s.cfg.RequireSignedAction {
		return nil, errAuthNoAction
	}
	tail = headers[len(head):]
	head = head[:len(head):len(head)] // appending below must not overwrite tail
	var payloadHash [2 * sha256.Size]byte
	sum := sha256.Sum256(body)
	hex.Encode(payloadHash[:], sum[:])
	query := ""
	if r.Method == http.MethodGet {
		query = r.URL.RawQuery
	}
	key := s.tc3Keys.SigningKey(cred.SecretKey, a.date, a.service)
	var want [2 * sha256.Size]byte // parseTC3Authorization accepts 64 characters only
	copy(want[:], a.signature)
	canon := headers[len(headers):] // the rest of the pooled buffer
	var sig [2 * sha256.Size]byte
	host0 := strings.ToLower(r.Host)
	// The signed action's value: lower case first (Tencent's
	// documentation), then as sent if that differs. Both have one length,
	// so the second is written over the first in place.
	for ai := 0; ai < 2; ai++ {
		if ai == 1 {
			if !actionUpper {
				break
			}
			copy(headers[actionAt:], strings.TrimSpace(signedHeader(r.Header, "x-tc-action")))
		}
		host := host0
		for hi := 0; hi < 2; hi++ {
			if hi == 1 {
				hn, _, err := net.SplitHostPort(host)
				if err != nil {
					break // no port: one candidate
				}
				host = hn
			}
			for ui := 0; ui < 2; ui++ {
				uri := "/"
				if ui == 1 {
					if r.URL.Path == "" || r.URL.Path == "/" {
						break
					}
					uri = r.URL.Path
				}
				c := append(canon[:0], r.Method...)
				c = append(c, '\n')
				c = append(c, uri...)
				c = append(c, '\n')
				c = append(c, query...)
				c = append(c, '\n')
				c = append(c, head...)
				c = append(c, "host:"...)
				c = append(c, host...)
				c = append(c, '\n')
				c = append(c, tail...)
				c = append(c, '\n')
				c = append(c, a.signedHeaders...)
				c = append(c, '\n')
				c = append(c, payloadHash[:]...)
				canon = c
				tcsign.SignCanonical(&sig, key, tsRaw, a.scope, c)
				if hmac.Equal(sig[:], want[:]) {
					if !hasAction {
						if err := s.bindTC3(ctx, a.signature, action, ts); err != nil {
							return nil, err
						}
					}
					return cred.Principal, nil
				}
			}
		}
	}
	return nil, errAuthSignature
}

// tc3Bufs holds authTC3's buffers (canonical requests: no secrets).
var tc3Bufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// isLowerASCIIName reports whether n is a lower-case header name.
func isLowerASCIIName(n string) bool {
	for i := 0; i < len(n); i++ {
		if c := n[i]; c <= ' ' || c >= 0x7f || ('A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

type tc3Authorization struct {
	secretID, date, service, scope, signedHeaders, signature string
}

// parseTC3Authorization parses
// "TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request, SignedHeaders=a;b, Signature=HEX".
func parseTC3Authorization(h string) (tc3Authorization, bool) {
	var a tc3Authorization
	rest, ok := strings.CutPrefix(h, tcsign.Algorithm+" ")
	if !ok || len(h) > 1024 {
		return a, false
	}
	var cred string
	for rest != "" {
		var part string
		part, rest, _ = strings.Cut(rest, ",")
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return a, false
		}
		switch k {
		case "Credential":
			cred = v
		case "SignedHeaders":
			a.signedHeaders = v
		case "Signature":
			a.signature = v
		default:
			return a, false
		}
	}
	id, scope, ok1 := strings.Cut(cred, "/")
	date, rest2, ok2 := strings.Cut(scope, "/")
	service, term, ok3 := strings.Cut(rest2, "/")
	if !ok1 || !ok2 || !ok3 || id == "" || service == "" || term != "tc3_request" || a.signedHeaders == "" || len(a.signature) != 64 {
		return a, false
	}
	if _, err := time.Parse("2006-01-02", date); err != nil {
		return a, false
	}
	a.secretID, a.date, a.service, a.scope = id, date, service, scope
	return a, true
}

// authV1 verifies a HmacSHA1/HmacSHA256 request whose parameters (common
// and business, raw values) are ps, against path ("/" or the legacy path),
// and returns its caller. A replay inside the signature window is refused:
// the key is (SecretId, Nonce, Timestamp), as Tencent pairs them, so two
// different requests that draw the same small Nonce (qcloudapi-sdk draws
// 0..65535) both pass.
func (s *Server) authV1(ctx context.Context, r *http.Request, path string, ps map[string]string) (*kms.Principal, error) {
	if !s.hostAllowed(r.Host) {
		return nil, errAuthHost
	}
	sig, hasSig := ps["Signature"]
	if !hasSig || sig == "" {
		return nil, errAuthMissing
	}
	if ps["Token"] != "" {
		return nil, errAuthToken
	}
	tsRaw := ps["Timestamp"]
	ts, err := strconv.ParseInt(tsRaw, 10, 64)
	if err != nil {
		return nil, &authError{"MissingParameter", 4000, "Timestamp is missing or not a UNIX time in seconds"}
	}
	if err := s.checkTimestamp(ts); err != nil {
		return nil, err
	}
	nonce := ps["Nonce"]
	if n, err := strconv.ParseUint(nonce, 10, 64); err != nil || n == 0 {
		return nil, &authError{"MissingParameter", 4000, "Nonce is missing or not a positive integer"}
	}
	cred, err := s.lookup(ctx, ps["SecretId"])
	if err != nil {
		return nil, err
	}
	list := make([]tcsign.Param, 0, len(ps))
	for k, v := range ps {
		list = append(list, tcsign.Param{Name: k, Value: v})
	}
	got := tcsign.V1Sign(cred.SecretKey, ps["SignatureMethod"], tcsign.V1StringToSign(r.Method, r.Host, path, list))
	if !hmac.Equal([]byte(got), []byte(sig)) {
		return nil, errAuthSignature
	}
	// Only a correctly signed request consumes its nonce, so nobody can
	// burn another caller's nonces.
	fresh, err := s.nonces.UseNonce(ctx, cred.SecretID+"\x00"+nonce+"\x00"+strconv.FormatInt(ts, 10), time.Unix(ts, 0).Add(SignatureWindow), s.now())
	switch {
	case errors.Is(err, ErrNoncesFull):
		return nil, errAuthNoncesFull
	case err != nil:
		// The shared nonce store is unreachable: refuse rather than
		// risk accepting a replay.
		return nil, fmt.Errorf("%w: nonce store: %w", kms.ErrUnavailable, err)
	case !fresh:
		return nil, errAuthReplay
	}
	return cred.Principal, nil
}
