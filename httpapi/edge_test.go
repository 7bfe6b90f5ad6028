package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"hsmkms/kms"
	"hsmkms/tcsign"
)

// Unit tests of the edge against a fake domain (fakeKMS): every failure
// case of TC3, of signature v1 (HmacSHA1 and HmacSHA256, API 3.0's form
// shape and the legacy API) and every row of the error table.

// api3Reply is an API 3.0 reply.
type api3Reply struct {
	Response struct {
		Error *struct {
			Code, Message string
		}
		RequestId string
	}
}

// serve sends req to s and decodes the reply into out; the reply must be
// HTTP 200 JSON with a request id matching its header.
func serve(t *testing.T, s *Server, req *http.Request, out any) {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("HTTP %d, want 200: %s", rec.Code, rec.Body.String())
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type %q", ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
		t.Fatalf("reply is not JSON: %q", rec.Body.String())
	}
	if !strings.Contains(rec.Body.String(), rec.Header().Get(RequestIDHeader)) || rec.Header().Get(RequestIDHeader) == "" {
		t.Fatalf("request id header %q not in the reply %s", rec.Header().Get(RequestIDHeader), rec.Body.String())
	}
}

// tc3Request returns a signed TC3 POST of action with body; edit changes
// the request after it is signed.
func tc3Request(action, body string, edit func(*http.Request)) *http.Request {
	c := &tc3Call{action: action, body: body}
	auth := c.sign()
	req := httptest.NewRequest(http.MethodPost, "http://"+c.host+"/", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", action)
	req.Header.Set("X-TC-Version", API3Version)
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(c.ts, 10))
	req.Header.Set("Authorization", auth)
	if edit != nil {
		edit(req)
	}
	return req
}

// signV1 signs v (common parameters added) with method sm for a request
// to host and path.
func signV1(httpMethod, host, path, sm string, v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = vs
	}
	set := func(k, val string) {
		if _, ok := v[k]; !ok {
			out.Set(k, val)
		}
	}
	set("SecretId", testSecretID)
	set("Timestamp", strconv.FormatInt(time.Now().Unix(), 10))
	set("Nonce", strconv.FormatUint(nonceSeq.Add(1), 10))
	set("SignatureMethod", sm)
	var ps []tcsign.Param
	for k, vs := range out {
		ps = append(ps, tcsign.Param{Name: k, Value: vs[0]})
	}
	out.Set("Signature", tcsign.V1Sign(testSecretKey, out.Get("SignatureMethod"), tcsign.V1StringToSign(httpMethod, host, path, ps)))
	return out
}

func TestTC3Failures(t *testing.T) {
	old := strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)
	tests := []struct {
		name, action, body string
		edit               func(*http.Request)
		code               string
	}{
		{"success", "Encrypt", encBody, nil, ""},
		{"no signature", "Encrypt", encBody, func(r *http.Request) { r.Header.Del("Authorization") }, "AuthFailure"},
		{"malformed Authorization", "Encrypt", encBody, func(r *http.Request) { r.Header.Set("Authorization", tcsign.Algorithm+" Credential=x") }, "AuthFailure.InvalidAuthorization"},
		{"wrong signature", "Encrypt", encBody, func(r *http.Request) {
			a := r.Header.Get("Authorization")
			r.Header.Set("Authorization", a[:len(a)-4]+"0000")
		}, "AuthFailure.SignatureFailure"},
		{"body changed", "Encrypt", encBody, func(r *http.Request) {
			b := `{"KeyId":"other","Plaintext":"aGVsbG8="}`
			r.Body, r.ContentLength = ioNopCloser(b), int64(len(b))
		}, "AuthFailure.SignatureFailure"},
		{"expired", "Encrypt", encBody, func(r *http.Request) { r.Header.Set("X-TC-Timestamp", old) }, "AuthFailure.SignatureExpire"},
		{"no timestamp", "Encrypt", encBody, func(r *http.Request) { r.Header.Del("X-TC-Timestamp") }, "MissingParameter"},
		{"token", "Encrypt", encBody, func(r *http.Request) { r.Header.Set("X-TC-Token", "t") }, "AuthFailure.TokenFailure"},
		{"unsigned payload", "Encrypt", encBody, func(r *http.Request) { r.Header.Set("X-TC-Content-SHA256", "UNSIGNED-PAYLOAD") }, "AuthFailure.SignatureFailure"},
		{"unknown SecretId", "Encrypt", encBody, func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), testSecretID, "AKIDnobody", 1))
		}, "AuthFailure.SecretIdNotFound"},
		{"not JSON", "Encrypt", encBody, func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") }, "InvalidParameter"},
		{"no version", "Encrypt", encBody, func(r *http.Request) { r.Header.Del("X-TC-Version") }, "MissingParameter"},
		{"wrong version", "Encrypt", encBody, func(r *http.Request) { r.Header.Set("X-TC-Version", "2017-03-12") }, "NoSuchVersion"},
		{"unknown action", "Nope", encBody, nil, "InvalidAction"},
		{"malformed JSON", "Encrypt", `{"KeyId":`, nil, "InvalidParameter"},
		{"not an object", "Encrypt", `[]`, nil, "InvalidParameter"},
		{"unknown parameter", "Encrypt", `{"KeyId":"k","Plaintext":"aGVsbG8=","Nope":1}`, nil, "UnknownParameter"},
		{"case-folded name", "Encrypt", `{"keyid":"k","Plaintext":"aGVsbG8="}`, nil, "UnknownParameter"},
		{"duplicate parameter", "Encrypt", `{"KeyId":"k","KeyId":"k","Plaintext":"aGVsbG8="}`, nil, "InvalidParameter"},
		{"wrong type", "Encrypt", `{"KeyId":1,"Plaintext":"aGVsbG8="}`, nil, "InvalidParameter"},
		{"data after the object", "Encrypt", encBody + ` {}`, nil, "InvalidParameter"},
		{"missing parameter", "Encrypt", `{"KeyId":"k"}`, nil, "MissingParameter"},
		{"plaintext not base64", "Encrypt", `{"KeyId":"k","Plaintext":"!!"}`, nil, "InvalidParameterValue.InvalidPlaintext"},
		{"body too large", "Encrypt", `{"KeyId":"k","Plaintext":"` + strings.Repeat("A", 2000) + `"}`, nil, "InvalidParameter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(&fakeKMS{}, Config{Logger: discardLogger(), MaxBodyBytes: 1024})
			var r api3Reply
			serve(t, s, tc3Request(tt.action, tt.body, tt.edit), &r)
			got := ""
			if r.Response.Error != nil {
				got = r.Response.Error.Code
			}
			if got != tt.code {
				t.Fatalf("code %q, want %q (%+v)", got, tt.code, r.Response.Error)
			}
		})
	}
}

func ioNopCloser(s string) *nopCloser { return &nopCloser{strings.NewReader(s)} }

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }

// Signature v1 failures, for both methods, in API 3.0's form shape (code)
// and in the legacy API (legacy code).
func TestV1Failures(t *testing.T) {
	old := strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)
	tests := []struct {
		name   string
		params url.Values // business and overriding common parameters
		after  func(url.Values)
		code   string // API 3.0 form shape
		legacy int
	}{
		{"success", nil, nil, "", 0},
		{"no signature", nil, func(v url.Values) { v.Del("Signature") }, "AuthFailure", 4100},
		{"wrong signature", nil, func(v url.Values) { v.Set("Signature", "AAAA") }, "AuthFailure.SignatureFailure", 4100},
		{"parameter changed", nil, func(v url.Values) { v.Set("Nonce", "424242") }, "AuthFailure.SignatureFailure", 4100},
		{"expired", url.Values{"Timestamp": {old}}, nil, "AuthFailure.SignatureExpire", 4500},
		{"bad timestamp", url.Values{"Timestamp": {"x"}}, nil, "MissingParameter", 4000},
		{"bad nonce", url.Values{"Nonce": {"-1"}}, nil, "MissingParameter", 4000},
		{"unknown SecretId", url.Values{"SecretId": {"AKIDnobody"}}, nil, "AuthFailure.SecretIdNotFound", 4104},
		{"token", url.Values{"Token": {"t"}}, nil, "AuthFailure.TokenFailure", 4105},
		{"repeated parameter", nil, func(v url.Values) { v.Add("keyId", "k2") }, "InvalidParameter", 4000},
	}
	for _, sm := range []string{"HmacSHA1", "HmacSHA256"} {
		for _, tt := range tests {
			t.Run(sm+"/"+tt.name, func(t *testing.T) {
				s := New(&fakeKMS{}, Config{Logger: discardLogger()})
				biz := url.Values{"keyId": {"k"}, "plaintext": {"aGVsbG8="}}
				for k, v := range tt.params {
					biz[k] = v
				}
				// Legacy.
				lv := url.Values{"Action": {"Encrypt"}}
				for k, v := range biz {
					lv[k] = v
				}
				lv = signV1(http.MethodPost, "example.com", LegacyPath, sm, lv)
				if tt.after != nil {
					tt.after(lv)
				}
				req := httptest.NewRequest(http.MethodPost, "http://example.com"+LegacyPath, strings.NewReader(lv.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				var lr reply
				serve(t, s, req, &lr)
				if lr.Code == nil || *lr.Code != tt.legacy {
					t.Fatalf("legacy code %v (%s), want %d", lr.Code, lr.Message, tt.legacy)
				}
				// API 3.0, form shape.
				av := url.Values{"Action": {"Encrypt"}, "Version": {API3Version}}
				for k, v := range biz {
					if k == "keyId" || k == "plaintext" {
						k = strings.ToUpper(k[:1]) + k[1:]
						if k == "Keyid" {
							k = "KeyId"
						}
					}
					av[k] = v
				}
				if tt.name == "repeated parameter" {
					tt.after = func(v url.Values) { v.Add("KeyId", "k2") }
				}
				av = signV1(http.MethodPost, "example.com", "/", sm, av)
				if tt.after != nil {
					tt.after(av)
				}
				req = httptest.NewRequest(http.MethodPost, "http://example.com/", strings.NewReader(av.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				var ar api3Reply
				serve(t, s, req, &ar)
				got := ""
				if ar.Response.Error != nil {
					got = ar.Response.Error.Code
				}
				if got != tt.code {
					t.Fatalf("API 3.0 code %q, want %q (%+v)", got, tt.code, ar.Response.Error)
				}
			})
		}
	}
}

// The legacy API's own failures: action and parameter checks.
func TestLegacyFailures(t *testing.T) {
	tests := []struct {
		name string
		v    url.Values
		code int
	}{
		{"no action", url.Values{"keyId": {"k"}}, 4000},
		{"unknown action", url.Values{"Action": {"Nope"}}, 6100},
		{"API 3.0 name", url.Values{"Action": {"ListKeys"}}, 6100},
		{"unknown parameter", url.Values{"Action": {"Encrypt"}, "keyId": {"k"}, "plaintext": {"aGVsbG8="}, "KeyId": {"k"}}, 4000},
		{"missing keyId", url.Values{"Action": {"Encrypt"}, "plaintext": {"aGVsbG8="}}, 4000},
		{"plaintext not base64", url.Values{"Action": {"Encrypt"}, "keyId": {"k"}, "plaintext": {"!!"}}, 4590},
		{"create without alias", url.Values{"Action": {"CreateKey"}}, 4000},
		{"create with type 2", url.Values{"Action": {"CreateKey"}, "alias": {"a"}, "type": {"2"}}, 4000},
		{"decrypt", url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {"blob"}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(&fakeKMS{}, Config{Logger: discardLogger()})
			q := signV1(http.MethodGet, "example.com", LegacyPath, "HmacSHA256", tt.v)
			var r reply
			serve(t, s, httptest.NewRequest(http.MethodGet, "http://example.com"+LegacyPath+"?"+q.Encode(), nil), &r)
			if r.Code == nil || *r.Code != tt.code {
				t.Fatalf("code %v (%s), want %d", r.Code, r.Message, tt.code)
			}
		})
	}
}

// capture is a slog handler that keeps the records it is given.
type capture struct{ recs []slog.Record }

func (c *capture) Enabled(context.Context, slog.Level) bool { return true }
func (c *capture) Handle(_ context.Context, r slog.Record) error {
	c.recs = append(c.recs, r)
	return nil
}
func (c *capture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *capture) WithGroup(string) slog.Handler      { return c }

// Every row of the error table, through both protocols: the domain error
// (wrapped, as the domain returns it) becomes the row's codes and
// messages, with HTTP 200; errors that are not the caller's are logged
// with the request id and answered without detail. The expected codes are
// written out here, not read from the table.
func TestErrorTableRows(t *testing.T) {
	want := map[error]struct {
		code   string
		legacy int
		logged slog.Level // 0: not logged
	}{
		kms.ErrUsageLimit:                               {"LimitExceeded", 5100, slog.LevelError},
		kms.ErrInvalidKeyID:                             {"InvalidParameterValue.InvalidKeyId", 4000, 0},
		kms.ErrInvalidPendingWindow:                     {"InvalidParameter.InvalidPendingWindowInDays", 4000, 0},
		kms.ErrInvalidRotateDays:                        {"InvalidParameterValue", 4000, 0},
		kms.ErrInvalidNumberOfBytes:                     {"InvalidParameter", 4000, 0},
		kms.ErrInvalidKeySpec:                           {"InvalidParameter", 4000, 0},
		kms.ErrTooManyKeys:                              {"InvalidParameterValue", 4000, 0},
		kms.ErrDuplicateKeyID:                           {"InvalidParameterValue.DuplicatedKeyId", 4000, 0},
		kms.ErrKeyArchived:                              {"ResourceUnavailable.CmkArchived", 5100, 0},
		kms.ErrKeyShouldBeDisabled:                      {"ResourceUnavailable.CmkShouldBeDisabled", 5100, 0},
		kms.ErrKeyNotPendingDelete:                      {"ResourceUnavailable.CmkNotPendingDelete", 5100, 0},
		kms.ErrPlaintextTooLong:                         {"InvalidParameterValue.InvalidPlaintext", 4560, 0},
		kms.ErrPlaintextEmpty:                           {"InvalidParameterValue.InvalidPlaintext", 4560, 0},
		kms.ErrInvalidContext:                           {"InvalidParameterValue", 4540, 0},
		kms.ErrInvalidCiphertext:                        {"InvalidParameterValue.InvalidCiphertext", 4000, 0},
		kms.ErrInvalidAlias:                             {"InvalidParameterValue.InvalidAlias", 4000, 0},
		kms.ErrInvalidKeyUsage:                          {"InvalidParameterValue.InvalidKeyUsage", 4000, 0},
		kms.ErrUnsupported:                              {"UnsupportedOperation", 4000, 0},
		kms.ErrRotateNotSupported:                       {"UnsupportedOperation.RotateNotSupported", 5100, 0},
		kms.ErrInvalidAlgorithm:                         {"InvalidParameterValue", 4000, 0},
		kms.ErrInvalidMessage:                           {"InvalidParameterValue", 4000, 0},
		kms.ErrAsymDecrypt:                              {"FailedOperation.DecryptError", 5100, 0},
		kms.ErrInvalidDesc:                              {"InvalidParameterValue", 4000, 0},
		kms.ErrAliasExists:                              {"InvalidParameterValue.AliasAlreadyExists", 5100, 0},
		kms.ErrKeyHasAlias:                              {"UnsupportedOperation", 5100, 0},
		kms.ErrSelfChange:                               {"UnauthorizedOperation", 4102, 0},
		kms.ErrExceedsCaller:                            {"UnauthorizedOperation", 4102, 0},
		kms.ErrUnauthorized:                             {"UnauthorizedOperation", 4102, 0},
		kms.ErrCredentialNotFound:                       {"ResourceNotFound", 5000, 0},
		kms.ErrCredentialExists:                         {"ResourceInUse", 5100, 0},
		kms.ErrInvalidCredential:                        {"InvalidParameterValue", 4000, 0},
		kms.ErrInvalidPolicy:                            {"InvalidParameterValue", 4000, 0},
		kms.ErrKeyStateNotSupported:                     {"ResourceUnavailable.CmkStateNotSupport", 5100, 0},
		kms.ErrKeyNotFound:                              {"ResourceUnavailable.CmkNotFound", 5000, 0},
		kms.ErrKeyDisabled:                              {"ResourceUnavailable.CmkDisabled", 5100, 0},
		kms.ErrLimitExceeded:                            {"LimitExceeded.CmkLimitExceeded", 5100, 0},
		kms.ErrDecrypt:                                  {"FailedOperation.DecryptError", 5100, 0},
		kms.ErrBusy:                                     {"RequestLimitExceeded", 6200, slog.LevelWarn},
		context.DeadlineExceeded:                        {"RequestLimitExceeded", 6200, slog.LevelWarn},
		kms.ErrUnavailable:                              {"UnsupportedOperation.ServiceTemporaryUnavailable", 6200, slog.LevelWarn},
		errors.New("CKR_GENERAL_ERROR at /secret/path"): {"InternalError", 6000, slog.LevelError},

		kms.ErrInvalidType:             {"InvalidParameterValue.InvalidType", 4000, 0},
		kms.ErrNotExternalKey:          {"UnsupportedOperation.NotExternalCmk", 5100, 0},
		kms.ErrExternalCannotRotate:    {"UnsupportedOperation.ExternalCmkCanNotRotate", 5100, 0},
		kms.ErrRotateNotSupported:      {"UnsupportedOperation.RotateNotSupported", 5100, 0},
		kms.ErrInvalidWrapping:         {"InvalidParameter", 4000, 0},
		kms.ErrWrappingUnsupported:     {"UnsupportedOperation", 5100, 0},
		kms.ErrImportTokenExpired:      {"ResourceUnavailable.TokenExpired", 5100, 0},
		kms.ErrImportTokenInvalid:      {"InvalidParameter", 4000, 0},
		kms.ErrDecryptMaterial:         {"InvalidParameter.DecryptMaterialError", 4000, 0},
		kms.ErrMaterialNotMatch:        {"InvalidParameterValue.MaterialNotMatch", 4000, 0},
		kms.ErrInvalidValidTo:          {"InvalidParameter", 4000, 0},
		kms.ErrTooManyImportParameters: {"LimitExceeded", 5100, 0},
	}
	covered := 0
	for _, row := range errorTable {
		for _, e := range row.errs {
			if _, ok := want[e]; !ok {
				t.Errorf("error table row %s: %v has no expectation here", row.code, e)
			}
			covered++
		}
	}
	if covered+1 != len(want) {
		t.Errorf("the table has %d errors, the test expects %d", covered, len(want)-1)
	}
	for domainErr, w := range want {
		t.Run(w.code+"/"+domainErr.Error(), func(t *testing.T) {
			logs := &capture{}
			err := fmt.Errorf("op: %w", domainErr)
			if domainErrorRow(domainErr).message == "" {
				err = domainErr // answered with its own text: the domain returns it as is
			}
			s := New(&fakeKMS{err: err}, Config{Logger: slog.New(logs)})
			var r api3Reply
			serve(t, s, tc3Request("Encrypt", encBody, nil), &r)
			if r.Response.Error == nil || r.Response.Error.Code != w.code {
				t.Fatalf("API 3.0: %+v, want %s", r.Response.Error, w.code)
			}
			msg := r.Response.Error.Message
			var lr reply
			q := signV1(http.MethodGet, "example.com", LegacyPath, "HmacSHA1", url.Values{"Action": {"Encrypt"}, "keyId": {"k"}, "plaintext": {"aGVsbG8="}})
			serve(t, s, httptest.NewRequest(http.MethodGet, "http://example.com"+LegacyPath+"?"+q.Encode(), nil), &lr)
			if lr.Code == nil || *lr.Code != w.legacy {
				t.Fatalf("legacy: %v %q, want %d", lr.Code, lr.Message, w.legacy)
			}
			for _, m := range []string{msg, lr.Message} {
				if m == "" || strings.Contains(m, "CKR_") || strings.Contains(m, "/secret") || strings.Contains(m, "op:") {
					t.Fatalf("message %q: empty or leaks detail", m)
				}
			}
			if w.code == "InternalError" && (!strings.Contains(msg, r.Response.RequestId) || !strings.Contains(lr.Message, lr.RequestID)) {
				t.Fatalf("internal error messages %q / %q do not name the request id", msg, lr.Message)
			}
			if w.logged == 0 {
				if len(logs.recs) != 0 {
					t.Fatalf("a caller's error was logged: %v", logs.recs[0].Message)
				}
				return
			}
			if len(logs.recs) != 2 {
				t.Fatalf("%d log records, want one per request", len(logs.recs))
			}
			for _, rec := range logs.recs {
				var rid string
				rec.Attrs(func(a slog.Attr) bool {
					if a.Key == "requestId" {
						rid = a.Value.String()
					}
					return true
				})
				if rec.Level != w.logged || rid == "" {
					t.Fatalf("logged at %v with request id %q, want %v", rec.Level, rid, w.logged)
				}
			}
		})
	}
}
