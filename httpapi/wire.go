package httpapi

import (
	"encoding/base64"
	"net/http"
	"net/url"
)

// Wire helpers shared by both protocols: parameter parsing, header
// lookups, base64 and the truncation of echoed values.

// params is a strictly parsed parameter set: every name appears once.
type params map[string]string

func (p params) get(name string) string { return p[name] }

func (p params) required(name string) (string, error) {
	v := p[name]
	if v == "" {
		return "", legacyErrorf(codeInvalidParameter, "missing parameter: %s", name)
	}
	return v, nil
}

// only refuses any parameter that is neither common nor the action's own.
func (p params) only(lists ...[]string) error {
next:
	for name := range p {
		for _, l := range lists {
			for _, a := range l {
				if a == name {
					continue next
				}
			}
		}
		return legacyErrorf(codeInvalidParameter, "unknown parameter: %q", truncate(name, 64))
	}
	return nil
}

// parseParams parses an application/x-www-form-urlencoded string strictly:
// bad escapes and repeated names are errors.
func parseParams(raw string) (params, error) {
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return nil, legacyErrorf(codeInvalidParameter, "malformed parameters")
	}
	p := make(params, len(vals))
	for k, v := range vals {
		if len(v) != 1 {
			return nil, legacyErrorf(codeInvalidParameter, "parameter %q given %d times", truncate(k, 64), len(v))
		}
		p[k] = v[0]
	}
	return p, nil
}

// decodeBase64 decodes standard, padded base64 strictly.
func decodeBase64(s string) ([]byte, error) {
	return strictBase64.DecodeString(s)
}

// strictBase64 is base64.StdEncoding refusing non-zero padding bits (made
// once: Strict returns a new Encoding on every call).
var strictBase64 = base64.StdEncoding.Strict()

// decodePlaintext decodes the standard base64 plaintext of an Encrypt
// request (as decodeBase64) into a fresh buffer, which the caller clears
// once the service has used it.
func decodePlaintext(s string) ([]byte, error) { return strictBase64.DecodeString(s) }

// truncate shortens a caller-supplied value before it is echoed in a message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// requireString returns the value of a required string parameter, or
// MissingParameter if it is absent or empty.
func requireString(name string, v *string) (string, error) {
	if v == nil || *v == "" {
		return "", apiErrorf("MissingParameter", "the "+name+" parameter is missing")
	}
	return *v, nil
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// hget returns the first value of the header named k, which must be in
// canonical form ("X-Tc-Action"): unlike http.Header.Get it does not
// canonicalise k, which allocates for names such as "X-TC-Action". Both
// HTTP servers store received names canonicalised.
func hget(h http.Header, k string) string {
	if v := h[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// signedHeader returns the value of a header named in TC3's SignedHeaders
// (lower case), without allocating for the names Tencent clients sign.
func signedHeader(h http.Header, lower string) string {
	switch lower {
	case "content-type":
		return hget(h, "Content-Type")
	case "x-tc-action":
		return hget(h, "X-Tc-Action")
	case "x-tc-timestamp":
		return hget(h, "X-Tc-Timestamp")
	case "x-tc-version":
		return hget(h, "X-Tc-Version")
	case "x-tc-region":
		return hget(h, "X-Tc-Region")
	case "x-tc-language":
		return hget(h, "X-Tc-Language")
	case "x-tc-requestclient":
		return hget(h, "X-Tc-Requestclient")
	}
	return h.Get(lower)
}

// Binary reply fields (ciphertext blobs, plaintexts, random bytes) are
// []byte: encoding/json writes a []byte as its standard, padded base64
// straight into the reply, which is the wire form of both protocols,
// without the string copy and the per-byte escaping scan a base64 string
// costs, and a plaintext stays in memory this package can wipe once the
// reply is written (a string cannot be cleared).

// wireBytes returns b for a binary reply field: never nil, because
// encoding/json writes a nil []byte as null and the wire wants "".
func wireBytes(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// wiper is a reply holding secret bytes (a plaintext, a data key, random
// bytes); record clears them once the reply is written.
type wiper interface{ wipe() }

// wipeReply clears the secret bytes of reply, an API 3.0 envelope or a
// legacy or AWS reply, if it holds any.
func wipeReply(reply any) {
	if e, ok := reply.(*api3Envelope); ok {
		reply = e.Response
	}
	if w, ok := reply.(wiper); ok {
		w.wipe()
	}
}
