package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"hash/maphash"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hsmkms/tcsign"
)

// tc3Call is one TC3 POST to a test server.
type tc3Call struct {
	host    string // default kms.example:8080
	service string // credential scope; default kms
	action  string // X-TC-Action sent
	// signed, when not empty, is the x-tc-action value signed (the
	// action is then in SignedHeaders).
	signed string
	body   string
	ts     int64
	auth   string // when set, sent instead of a fresh signature
}

func (c *tc3Call) sign() string {
	if c.host == "" {
		c.host = "kms.example:8080"
	}
	if c.service == "" {
		c.service = "kms"
	}
	if c.ts == 0 {
		c.ts = time.Now().Unix()
	}
	if c.auth != "" {
		return c.auth
	}
	cr := tcsign.Canonical{Method: http.MethodPost, URI: "/", Headers: []string{"content-type:application/json", "host:" + strings.ToLower(c.host)},
		SignedHeaders: "content-type;host", PayloadHash: tcsign.SHA256Hex([]byte(c.body))}
	if c.signed != "" {
		cr.Headers = append(cr.Headers, "x-tc-action:"+c.signed)
		cr.SignedHeaders += ";x-tc-action"
	}
	date := time.Unix(c.ts, 0).UTC().Format("2006-01-02")
	scope := date + "/" + c.service + "/tc3_request"
	sig := tcsign.Sign(tcsign.SigningKey(testSecretKey, date, c.service), tcsign.StringToSign(strconv.FormatInt(c.ts, 10), scope, cr.String()))
	c.auth = tcsign.Algorithm + " Credential=" + testSecretID + "/" + scope + ", SignedHeaders=" + cr.SignedHeaders + ", Signature=" + sig
	return c.auth
}

// send sends c and returns the API 3.0 error code ("" on success).
func (c *tc3Call) send(t *testing.T, s *Server) string {
	t.Helper()
	auth := c.sign()
	req := httptest.NewRequest(http.MethodPost, "http://"+c.host+"/", strings.NewReader(c.body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", c.action)
	req.Header.Set("X-TC-Version", API3Version)
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(c.ts, 10))
	req.Header.Set("Authorization", auth)
	return api3Code(t, s, req)
}

func api3Code(t *testing.T, s *Server, req *http.Request) string {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	var env struct {
		Response struct {
			Error *struct{ Code, Message string }
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil {
		t.Fatalf("reply is not JSON: %q", rec.Body.String())
	}
	if env.Response.Error == nil {
		return ""
	}
	return env.Response.Error.Code
}

const encBody = `{"KeyId":"k","Plaintext":"aGVsbG8="}`

func TestTC3SignedAction(t *testing.T) {
	s := New(&fakeKMS{}, Config{Logger: discardLogger()})
	for _, tc := range []struct {
		name   string
		call   tc3Call
		want   string
		resend string // the same signature re-sent with this action
		again  string // and its code
	}{
		{"lower-case value, as Tencent documents", tc3Call{action: "Encrypt", signed: "encrypt", body: encBody}, "", "Decrypt", "AuthFailure.SignatureFailure"},
		{"value as sent", tc3Call{action: "Encrypt", signed: "Encrypt", body: encBody}, "", "encrypt", "AuthFailure.SignatureFailure"},
		{"signed for another action", tc3Call{action: "Encrypt", signed: "decrypt", body: encBody}, "AuthFailure.SignatureFailure", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.call.send(t, s); got != tc.want {
				t.Fatalf("code %q, want %q", got, tc.want)
			}
			// The same signed request again is fine (signed action: the
			// signature is not even remembered).
			if got := tc.call.send(t, s); got != tc.want {
				t.Fatalf("re-sent: code %q, want %q", got, tc.want)
			}
			if tc.resend != "" {
				c := tc.call
				c.action = tc.resend
				if got := c.send(t, s); got != tc.again {
					t.Fatalf("re-sent as %s: code %q, want %q", tc.resend, got, tc.again)
				}
			}
		})
	}
	// The helper kmsctl uses signs the action.
	ts := time.Now().Unix()
	auth := tcsign.SignTC3Action(testSecretID, testSecretKey, "kms", http.MethodPost, "kms.example:8080", "application/json", "", "Encrypt", ts, []byte(encBody))
	if !strings.Contains(auth, "SignedHeaders=content-type;host;x-tc-action,") {
		t.Fatalf("SignTC3Action: %s", auth)
	}
	if got := (&tc3Call{action: "Encrypt", auth: auth, body: encBody, ts: ts}).send(t, s); got != "" {
		t.Fatalf("SignTC3Action: %q", got)
	}
	if got := (&tc3Call{action: "Decrypt", auth: auth, body: encBody, ts: ts}).send(t, s); got != "AuthFailure.SignatureFailure" {
		t.Fatalf("SignTC3Action re-sent as Decrypt: %q", got)
	}
}

func TestTC3RequireSignedAction(t *testing.T) {
	s := New(&fakeKMS{}, Config{Logger: discardLogger(), RequireSignedAction: true})
	if got := (&tc3Call{action: "Encrypt", body: encBody}).send(t, s); got != "AuthFailure.InvalidAuthorization" {
		t.Fatalf("unsigned action: %q", got)
	}
	if got := (&tc3Call{action: "Encrypt", signed: "encrypt", body: encBody}).send(t, s); got != "" {
		t.Fatalf("signed action: %q", got)
	}
}

func TestTC3UnsignedActionBound(t *testing.T) {
	s := New(&fakeKMS{}, Config{Logger: discardLogger()})
	c := tc3Call{action: "Encrypt", body: encBody}
	if got := c.send(t, s); got != "" {
		t.Fatal(got)
	}
	// Re-sent unchanged (an SDK retry, or two identical calls within one
	// second): served.
	if got := c.send(t, s); got != "" {
		t.Fatalf("same action: %q", got)
	}
	for _, other := range []string{"Decrypt", "CreateKey", "GenerateRandom"} {
		f := c
		f.action = other
		if got := f.send(t, s); got != "AuthFailure.SignatureFailure" {
			t.Fatalf("re-sent as %s: %q", other, got)
		}
	}
	// A signature bound to a write may be presented with a read of
	// metadata (tools send DisableKey then DescribeKey with one body within
	// one second), which leaves the binding as it was; one bound to such a
	// read is refused with a write, and with a read of secrets.
	w := tc3Call{action: "DeleteImportedKeyMaterial", body: `{"KeyId":"11111111-1111-4111-8111-111111111111"}`}
	if got := w.send(t, s); got != "" {
		t.Fatalf("DeleteImportedKeyMaterial: %q", got)
	}
	for _, read := range []string{"GetPublicKey"} {
		r := w
		r.action = read
		if got := r.send(t, s); got != "" {
			t.Fatalf("DeleteImportedKeyMaterial's signature with %s: %q", read, got)
		}
	}
	if got := w.send(t, s); got != "" {
		t.Fatalf("DeleteImportedKeyMaterial again: %q", got)
	}
	e := w
	e.action = "EnableKey"
	if got := e.send(t, s); got != "AuthFailure.SignatureFailure" {
		t.Fatalf("DeleteImportedKeyMaterial's signature with EnableKey: %q", got)
	}
	r := tc3Call{action: "GetPublicKey", body: `{"KeyId":"22222222-2222-4222-8222-222222222222"}`}
	if got := r.send(t, s); got != "" {
		t.Fatalf("GetPublicKey: %q", got)
	}
	for _, other := range []string{"DisableKey", "ScheduleKeyDeletion", "GenerateDataKey"} {
		f := r
		f.action = other
		if got := f.send(t, s); got != "AuthFailure.SignatureFailure" {
			t.Fatalf("GetPublicKey's signature with %s: %q", other, got)
		}
	}
	// An unknown action is refused as such, and does not take the
	// signature.
	d := tc3Call{action: "NoSuchAction", body: `{"KeyId":"k"}`}
	if got := d.send(t, s); got != "InvalidAction" {
		t.Fatalf("unknown action: %q", got)
	}
	d.action = "CreateKey"
	d.body = `{"Alias":"a"}`
	d.auth = ""
	if got := d.send(t, s); got != "" {
		t.Fatalf("CreateKey: %q", got)
	}
	// A signature that fails verification takes nothing either.
	bad := tc3Call{action: "Encrypt", body: `{"KeyId":"k","Plaintext":"eA=="}`}
	good := bad.sign()
	bad.auth = good[:len(good)-1] + "0"
	if bad.auth == good { // the signature ended in 0: change it to 1 instead
		bad.auth = good[:len(good)-1] + "1"
	}
	if got := bad.send(t, s); got != "AuthFailure.SignatureFailure" {
		t.Fatalf("bad signature: %q", got)
	}
}

func TestServiceAndHostPinned(t *testing.T) {
	def := New(&fakeKMS{}, Config{Logger: discardLogger()})
	pinned := New(&fakeKMS{}, Config{Logger: discardLogger(), TC3Services: []string{"kms", "kmsd"}, AllowedHosts: []string{"KMS.example", "kmsd.corp"}})
	for _, tc := range []struct {
		name          string
		s             *Server
		host, service string
		want          string
	}{
		{"kms", def, "kms.example:8080", "kms", ""},
		{"captured from Tencent Cloud (cvm)", def, "cvm.tencentcloudapi.com", "cvm", "AuthFailure.InvalidAuthorization"},
		{"cvm scope on our host", def, "kms.example:8080", "cvm", "AuthFailure.InvalidAuthorization"},
		{"Node SDK on an IP endpoint", def, "127.0.0.1:8080", "127", ""},
		{"Node SDK on a dotless endpoint", def, "localhost:8080", "localhost:8080", ""},
		{"Node SDK on a named endpoint, not listed", def, "kmsd.corp:8443", "kmsd", "AuthFailure.InvalidAuthorization"},
		{"listed service", pinned, "kmsd.corp:8443", "kmsd", ""},
		{"listed host, any case", pinned, "kms.EXAMPLE:8080", "kms", ""},
		{"host not listed", pinned, "kms.tencentcloudapi.com", "kms", "AuthFailure.InvalidAuthorization"},
		{"service not listed", pinned, "127.0.0.1:8080", "127", "AuthFailure.InvalidAuthorization"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := `{"KeyId":"k","Plaintext":"` + base64.StdEncoding.EncodeToString([]byte(tc.name)) + `"}`
			if got := (&tc3Call{host: tc.host, service: tc.service, action: "Encrypt", body: body}).send(t, tc.s); got != tc.want {
				t.Fatalf("code %q, want %q", got, tc.want)
			}
		})
	}
	// The host list applies to signature v1 too.
	v := signLegacy(http.MethodPost, "kms.tencentcloudapi.com", url.Values{"Action": {"Encrypt"}, "keyId": {"k"}, "plaintext": {"aGVsbG8="}})
	req := httptest.NewRequest(http.MethodPost, "http://kms.tencentcloudapi.com"+LegacyPath, strings.NewReader(v.Encode()))
	rec := httptest.NewRecorder()
	pinned.Handler().ServeHTTP(rec, req)
	if !strings.Contains(rec.Body.String(), `"code":4100`) {
		t.Fatalf("legacy request for another host: %s", rec.Body.String())
	}
}

// TestV1Replay: signature v1 requests, legacy and API 3.0 alike, are
// refused when replayed, keyed (SecretId, Nonce, Timestamp).
func TestV1Replay(t *testing.T) {
	now := time.Now()
	s := New(&fakeKMS{}, Config{Logger: discardLogger(), Clock: func() time.Time { return now }})
	host := "kms.example:8080"
	sign := func(path string, v url.Values, nonce string, ts int64) url.Values {
		v.Set("SecretId", testSecretID)
		v.Set("Nonce", nonce)
		v.Set("Timestamp", strconv.FormatInt(ts, 10))
		v.Set("SignatureMethod", "HmacSHA256")
		var ps []tcsign.Param
		for k, vs := range v {
			ps = append(ps, tcsign.Param{Name: k, Value: vs[0]})
		}
		v.Set("Signature", tcsign.V1Sign(testSecretKey, "HmacSHA256", tcsign.V1StringToSign(http.MethodPost, host, path, ps)))
		return v
	}
	post := func(path string, v url.Values) string {
		req := httptest.NewRequest(http.MethodPost, "http://"+host+path, strings.NewReader(v.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		return rec.Body.String()
	}
	t.Run("legacy", func(t *testing.T) {
		a := sign(LegacyPath, url.Values{"Action": {"Encrypt"}, "keyId": {"k"}, "plaintext": {"aGVsbG8="}}, "4242", now.Unix())
		b := sign(LegacyPath, url.Values{"Action": {"Encrypt"}, "keyId": {"k"}, "plaintext": {"aGVsbG8="}}, "4242", now.Unix()-1)
		for i, v := range []url.Values{a, b} {
			if got := post(LegacyPath, v); !strings.Contains(got, `"code":0`) {
				t.Fatalf("request %d (same Nonce, its own Timestamp): %s", i, got)
			}
		}
		if got := post(LegacyPath, a); !strings.Contains(got, `"code":4500`) {
			t.Fatalf("exact replay: %s", got)
		}
	})
	t.Run("API 3.0 HmacSHA256", func(t *testing.T) {
		v := sign("/", url.Values{"Action": {"Encrypt"}, "Version": {API3Version}, "KeyId": {"k"}, "Plaintext": {"aGVsbG8="}}, "4343", now.Unix())
		if got := post("/", v); strings.Contains(got, `"Error"`) {
			t.Fatalf("first: %s", got)
		}
		if got := post("/", v); !strings.Contains(got, `"Code":"AuthFailure.SignatureFailure"`) {
			t.Fatalf("exact replay: %s", got)
		}
		// GET too.
		g := sign("/", url.Values{"Action": {"Encrypt"}, "Version": {API3Version}, "KeyId": {"k"}, "Plaintext": {"aGVsbG8="}}, "4444", now.Unix())
		delete(g, "Signature")
		var ps []tcsign.Param
		for k, vs := range g {
			ps = append(ps, tcsign.Param{Name: k, Value: vs[0]})
		}
		g.Set("Signature", tcsign.V1Sign(testSecretKey, "HmacSHA256", tcsign.V1StringToSign(http.MethodGet, host, "/", ps)))
		for i, want := range []string{"", "AuthFailure.SignatureFailure"} {
			req := httptest.NewRequest(http.MethodGet, "http://"+host+"/?"+g.Encode(), nil)
			if got := api3Code(t, s, req); got != want {
				t.Fatalf("GET %d: %q, want %q", i, got, want)
			}
		}
	})
}

// fakeLedger is an in-memory SignatureLedger shared by test servers.
type fakeLedger struct {
	mu    sync.Mutex
	rows  []SignatureUse // position i+1
	owner []int          // node of each row
	by    map[string]int // signature -> index
	blind bool           // SignaturesSince returns nothing new
	down  bool           // ClaimSignature fails
}

type nodeLedger struct {
	l    *fakeLedger
	node int
}

func (n nodeLedger) add(u SignatureUse) (string, bool) {
	if i, ok := n.l.by[u.Signature]; ok {
		return n.l.rows[i].Action, false
	}
	n.l.by[u.Signature] = len(n.l.rows)
	n.l.rows = append(n.l.rows, u)
	n.l.owner = append(n.l.owner, n.node)
	return u.Action, true
}

func (n nodeLedger) PublishSignatures(_ context.Context, uses []SignatureUse) ([]SignatureUse, error) {
	n.l.mu.Lock()
	defer n.l.mu.Unlock()
	var out []SignatureUse
	for _, u := range uses {
		if got, _ := n.add(u); got != u.Action {
			out = append(out, SignatureUse{Signature: u.Signature, Action: got})
		}
	}
	return out, nil
}

func (n nodeLedger) ClaimSignature(_ context.Context, u SignatureUse) (string, error) {
	n.l.mu.Lock()
	defer n.l.mu.Unlock()
	if n.l.down {
		return "", errors.New("ledger unreachable")
	}
	got, _ := n.add(u)
	return got, nil
}

func (n nodeLedger) SignaturesSince(_ context.Context, cursor int64, limit int) ([]SignatureUse, int64, error) {
	n.l.mu.Lock()
	defer n.l.mu.Unlock()
	if cursor < 0 || n.l.blind {
		return nil, max(cursor, int64(len(n.l.rows))), nil
	}
	var out []SignatureUse
	next := cursor
	for i := int(cursor); i < len(n.l.rows) && len(out) < limit; i++ {
		next = int64(i + 1)
		if n.l.owner[i] != n.node {
			out = append(out, n.l.rows[i])
		}
	}
	return out, next, nil
}

func (l *fakeLedger) published(sig string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.by[sig]
	return ok
}

// TestSignatureLedger: two nodes sharing a ledger. A signature accepted
// for a state-changing action on one is refused with another action on the
// other (claimed synchronously); one accepted for Encrypt (published in the
// background) is refused with another action on the other node once
// published and read, and a state-changing action re-using it is refused
// at once, as it waits out the publication.
func TestSignatureLedger(t *testing.T) {
	l := &fakeLedger{by: map[string]int{}}
	node := func(i int) *Server {
		s := New(&fakeKMS{}, Config{Logger: discardLogger(), Signatures: nodeLedger{l, i}, SignatureSync: 20 * time.Millisecond})
		t.Cleanup(s.Close)
		return s
	}
	a, b := node(1), node(2)

	create := tc3Call{action: "CreateKey", body: `{"Alias":"x"}`}
	if got := create.send(t, a); got != "" {
		t.Fatal(got)
	}
	if !l.published(signatureOf(create.auth)) {
		t.Fatal("CreateKey's signature is not in the ledger once served")
	}
	f := create
	f.action = "DisableKey" // state-changing: claimed in the ledger
	if got := f.send(t, b); got != "AuthFailure.SignatureFailure" {
		t.Fatalf("CreateKey's signature as DisableKey on the other node: %q", got)
	}
	if got := create.send(t, b); got != "" {
		t.Fatalf("the same request on the other node: %q", got)
	}

	// Encrypt on A: published within an interval; a CreateKey re-using it
	// on B waits two intervals, then finds it.
	enc := tc3Call{action: "Encrypt", body: `{"KeyId":"k2","Plaintext":"aGVsbG8="}`}
	if got := enc.send(t, a); got != "" {
		t.Fatal(got)
	}
	fc := enc
	fc.action = "CreateKey"
	if got := fc.send(t, b); got != "AuthFailure.SignatureFailure" {
		t.Fatalf("Encrypt's signature as CreateKey on the other node: %q", got)
	}
	// Decrypt re-using another Encrypt's signature on B: refused once B
	// has read the ledger (before that, it is the residual window).
	enc2 := tc3Call{action: "Encrypt", body: encBody}
	if got := enc2.send(t, a); got != "" {
		t.Fatal(got)
	}
	sig := signatureOf(enc2.auth)
	deadline := time.Now().Add(5 * time.Second)
	for !b.sigSeen(sig) {
		if time.Now().After(deadline) {
			t.Fatal("B never read A's signature")
		}
		time.Sleep(5 * time.Millisecond)
	}
	fd := enc2
	fd.action = "Decrypt"
	if got := fd.send(t, b); got != "AuthFailure.SignatureFailure" {
		t.Fatalf("Encrypt's signature as Decrypt on the other node: %q", got)
	}
}

func signatureOf(auth string) string {
	_, sig, _ := strings.Cut(auth, "Signature=")
	return sig
}

// sigSeen reports whether the node remembers signature sig.
func (s *Server) sigSeen(sig string) bool {
	c := s.sigs
	k := nonceKey{maphash.String(c.seed1, sig), maphash.String(c.seed2, sig)}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.slots {
		if _, ok := m[k]; ok {
			return true
		}
	}
	return false
}

// TestSignatureLedgerDetectsDoubleUse: inside the residual window (B has
// not read A's signatures yet), B accepts A's signature with another
// action that changes nothing; when B publishes it, the double use is
// logged as an error.
func TestSignatureLedgerDetectsDoubleUse(t *testing.T) {
	l := &fakeLedger{by: map[string]int{}, blind: true}
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	node := func(i int) *Server {
		s := New(&fakeKMS{}, Config{Logger: logger, Signatures: nodeLedger{l, i}, SignatureSync: 10 * time.Millisecond})
		t.Cleanup(s.Close)
		return s
	}
	a, b := node(1), node(2)
	c := tc3Call{action: "Decrypt", body: `{"CiphertextBlob":"blob"}`}
	if got := c.send(t, a); got != "" {
		t.Fatal(got)
	}
	for !l.published(signatureOf(c.auth)) {
		time.Sleep(5 * time.Millisecond)
	}
	f := c
	f.action = "Encrypt"
	// Accepted by B, which is blind to A's uses (then refused as
	// UnknownParameter: the body is Decrypt's).
	if got := f.send(t, b); got != "UnknownParameter" {
		t.Fatalf("B: %q", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "accepted with two actions on two nodes") {
		if time.Now().After(deadline) {
			t.Fatalf("no error logged:\n%s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "here=Encrypt other=Decrypt") {
		t.Fatalf("the log does not name both actions:\n%s", logs.String())
	}
	// Neither is a read of metadata only: an error, not a warning.
	if !strings.Contains(logs.String(), "level=ERROR") || !a.metadataRead("DescribeKey") || a.metadataRead("Decrypt") || a.metadataRead("DisableKey") {
		t.Fatalf("the double use of two cryptographic actions is not an error:\n%s", logs.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSignatureClaimRetried: a state-changing action whose claim failed
// (ledger unreachable) claims again when re-sent, rather than pass on this
// node's memory of its first attempt.
func TestSignatureClaimRetried(t *testing.T) {
	l := &fakeLedger{by: map[string]int{}, blind: true}
	node := func(i int) *Server {
		s := New(&fakeKMS{}, Config{Logger: discardLogger(), Signatures: nodeLedger{l, i}, SignatureSync: 10 * time.Millisecond})
		t.Cleanup(s.Close)
		return s
	}
	a, b := node(1), node(2)
	c := tc3Call{action: "Encrypt", body: `{"Alias":"x"}`}
	c.send(t, a) // accepted (then UnknownParameter: the body is CreateKey's)
	for !l.published(signatureOf(c.auth)) {
		time.Sleep(5 * time.Millisecond)
	}
	f := c
	f.action = "CreateKey"
	l.mu.Lock()
	l.down = true
	l.mu.Unlock()
	if got := f.send(t, b); got != "UnsupportedOperation.ServiceTemporaryUnavailable" {
		t.Fatalf("ledger down: %q", got)
	}
	l.mu.Lock()
	l.down = false
	l.mu.Unlock()
	if got := f.send(t, b); got != "AuthFailure.SignatureFailure" {
		t.Fatalf("ledger back: %q", got)
	}
}
