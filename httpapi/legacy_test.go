package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"hsmkms/kms"
	"hsmkms/tcsign"
)

// fakeKMS is a narrow stand-in for the domain: each test sets the error
// the domain returns, to check the wire mapping. The real service is tested
// end to end in cmd/kmsd.
type fakeKMS struct {
	CredentialAdmin // not exercised here: credential actions are tested end to end
	KeyAdmin        // likewise: key lifecycle actions are tested end to end
	TagAdmin        // likewise: tags (tagsvc_test.go, cmd/kmsd/tags_test.go)
	err             error
	lastEnc         kms.EncryptInput
	lastPlain       []byte // the plaintext buffer Decrypt returned last
}

const (
	testSecretID  = "AKIDtest0000000000000000000000000000"
	testSecretKey = "testsecretkey0000000000000000000"
)

func (f *fakeKMS) LookupCredential(_ context.Context, id string) (*kms.Credential, error) {
	if id != testSecretID {
		return nil, kms.ErrCredentialNotFound
	}
	return &kms.Credential{SecretID: id, SecretKey: testSecretKey, Principal: &kms.Principal{SecretID: id, Policy: kms.AdminPolicy()}}, nil
}

var nonceSeq atomic.Uint64

// signLegacy adds the common parameters and a HmacSHA256 signature for
// host and method.
func signLegacy(method, host string, v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = vs
	}
	out.Set("SecretId", testSecretID)
	out.Set("Timestamp", strconv.FormatInt(time.Now().Unix(), 10))
	out.Set("Nonce", strconv.FormatUint(nonceSeq.Add(1), 10))
	out.Set("SignatureMethod", "HmacSHA256")
	var ps []tcsign.Param
	for k, vs := range out {
		ps = append(ps, tcsign.Param{Name: k, Value: vs[0]})
	}
	out.Set("Signature", tcsign.V1Sign(testSecretKey, "HmacSHA256", tcsign.V1StringToSign(method, host, LegacyPath, ps)))
	return out
}

func (f *fakeKMS) CreateKey(_ context.Context, in kms.CreateKeyInput) (kms.KeyMetadata, error) {
	if f.err != nil {
		return kms.KeyMetadata{}, f.err
	}
	return kms.KeyMetadata{KeyID: "9999aed0-4956-11e9-bc70-5254005e86b4", Alias: in.Alias, KeyUsage: kms.DefaultKeyUsage,
		KeyState: kms.StateEnabled, CreateTime: time.Unix(1700000000, 0)}, nil
}

func (f *fakeKMS) Encrypt(_ context.Context, in kms.EncryptInput) (kms.EncryptResult, error) {
	f.lastEnc = in
	f.lastEnc.Plaintext = bytes.Clone(in.Plaintext) // the caller reuses the buffer (kms.EncryptInput)
	if f.err != nil {
		return kms.EncryptResult{}, f.err
	}
	return kms.EncryptResult{KeyID: in.KeyID, Ciphertext: []byte("blob")}, nil
}

func (f *fakeKMS) Decrypt(_ context.Context, in kms.DecryptInput) (kms.DecryptResult, error) {
	if f.err != nil {
		return kms.DecryptResult{}, f.err
	}
	f.lastPlain = []byte("hello")
	return kms.DecryptResult{KeyID: "k", Plaintext: f.lastPlain}, nil
}

type reply struct {
	Code           *int   `json:"code"`
	Message        string `json:"message"`
	RequestID      string `json:"requestId"`
	CiphertextBlob string `json:"ciphertextBlob"`
	Plaintext      string `json:"plaintext"`
	KeyMetadata    *struct {
		KeyUsage   string `json:"keyUsage"`
		DeleteTime *int64 `json:"deleteTime"`
	} `json:"keyMetadata"`
}

func do(t *testing.T, s *Server, method, target, body, ctype string) (reply, *httptest.ResponseRecorder) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	var r reply
	if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
		t.Fatalf("reply is not JSON: %q", rec.Body.String())
	}
	return r, rec
}

func TestLegacyErrorMapping(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		code   int
		prefix string
	}{
		{"context", fmt.Errorf("x: %w", kms.ErrInvalidContext), 4540, "(10640)"},
		{"too long", kms.ErrPlaintextTooLong, 4560, "(10660)"},
		{"empty", kms.ErrPlaintextEmpty, 4560, "(10660)"},
		{"key id", kms.ErrInvalidKeyID, 4000, "invalid keyId"},
		{"ciphertext", kms.ErrInvalidCiphertext, 4000, "invalid ciphertextBlob"},
		{"not found", kms.ErrKeyNotFound, 5000, "key does not exist"},
		{"disabled", kms.ErrKeyDisabled, 5100, "key is disabled"},
		{"decrypt", kms.ErrDecrypt, 5100, "decryption failed"},
		{"busy", fmt.Errorf("%w: %w", kms.ErrBusy, context.DeadlineExceeded), 6200, "service temporarily unavailable"},
		{"unavailable", kms.ErrUnavailable, 6200, "service temporarily unavailable"},
		{"internal", errors.New("CKR_GENERAL_ERROR /secret/path"), 6000, "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(&fakeKMS{err: tt.err}, Config{Logger: discardLogger()})
			q := signLegacy("GET", "example.com", url.Values{"Action": {"Encrypt"}, "keyId": {"k"}, "plaintext": {"aGVsbG8="}})
			r, rec := do(t, s, http.MethodGet, LegacyPath+"?"+q.Encode(), "", "")
			if rec.Code != http.StatusOK {
				t.Fatalf("HTTP %d, want 200", rec.Code)
			}
			if r.Code == nil || *r.Code != tt.code || !strings.HasPrefix(r.Message, tt.prefix) {
				t.Fatalf("got code %v message %q, want %d %q...", r.Code, r.Message, tt.code, tt.prefix)
			}
			if strings.Contains(r.Message, "CKR_") || strings.Contains(r.Message, "/secret") {
				t.Fatalf("internal detail leaked: %q", r.Message)
			}
			if r.RequestID == "" || rec.Header().Get(RequestIDHeader) != r.RequestID {
				t.Fatalf("requestId %q, header %q", r.RequestID, rec.Header().Get(RequestIDHeader))
			}
		})
	}
}

func TestLegacyRequestParsing(t *testing.T) {
	tests := []struct {
		name, method, query, body, ctype string
		code                             int
		unsigned                         bool
	}{
		{"get ok", "GET", "Action=Encrypt&keyId=k&plaintext=aGVsbG8%3D&Region=gz&RequestClient=SDK_Python_1.0", "", "", 0, false},
		{"post form ok", "POST", "", "Action=Encrypt&keyId=k&plaintext=aGVsbG8%3D", "application/x-www-form-urlencoded", 0, false},
		{"post without content type", "POST", "", "Action=Decrypt&ciphertextBlob=abc", "", 0, false},
		{"post with odd content type", "POST", "", "Action=Decrypt&ciphertextBlob=abc", "text/plain", 0, false},
		{"post ignores query", "POST", "Action=Encrypt", "", "", 4100, true},
		{"unsigned", "GET", "Action=Encrypt&keyId=k&plaintext=aGVsbG8%3D", "", "", 4100, true},
		{"missing action", "GET", "keyId=k", "", "", 4000, false},
		{"unknown action", "GET", "Action=Frobnicate", "", "", 6100, false},
		{"unknown parameter", "GET", "Action=Encrypt&keyId=k&plaintext=aGVsbG8%3D&extra=1", "", "", 4000, false},
		{"duplicate parameter", "GET", "Action=Encrypt&keyId=k&keyId=j&plaintext=aGVsbG8%3D", "", "", 4000, true},
		{"bad escape", "GET", "Action=Encrypt&keyId=%zz", "", "", 4000, true},
		{"missing keyId", "GET", "Action=Encrypt&plaintext=aGVsbG8%3D", "", "", 4000, false},
		{"missing plaintext", "GET", "Action=Encrypt&keyId=k", "", "", 4000, false},
		{"plaintext not base64", "GET", "Action=Encrypt&keyId=k&plaintext=%21%21", "", "", 4590, false},
		{"plaintext unpadded", "GET", "Action=Encrypt&keyId=k&plaintext=aGVsbG8", "", "", 4590, false},
		{"missing blob", "GET", "Action=Decrypt", "", "", 4000, false},
		{"create ok", "GET", "Action=CreateKey&alias=a1&keyUsage=ENCRYPT%2FDECRYPT&type=1", "", "", 0, false},
		{"create missing alias", "GET", "Action=CreateKey", "", "", 4000, false},
		{"create quantum type", "GET", "Action=CreateKey&alias=a1&type=2", "", "", 4000, false},
		{"body too large", "POST", "", "Action=Decrypt&ciphertextBlob=" + strings.Repeat("A", 70<<10), "", 4000, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(&fakeKMS{}, Config{Logger: discardLogger()})
			query, body := tt.query, tt.body
			if !tt.unsigned {
				if tt.method == "GET" {
					v, _ := url.ParseQuery(query)
					query = signLegacy("GET", "example.com", v).Encode()
				} else {
					v, _ := url.ParseQuery(body)
					body = signLegacy("POST", "example.com", v).Encode()
				}
			}
			target := LegacyPath
			if query != "" {
				target += "?" + query
			}
			r, rec := do(t, s, tt.method, target, body, tt.ctype)
			if rec.Code != http.StatusOK || r.Code == nil || *r.Code != tt.code {
				t.Fatalf("HTTP %d code %v (%q), want 200 code %d", rec.Code, r.Code, r.Message, tt.code)
			}
			if tt.code == 0 && r.Message != "" {
				t.Fatalf("message %q on success, want empty", r.Message)
			}
		})
	}
}

func TestLegacyPlaintextReachesDomainDecoded(t *testing.T) {
	f := &fakeKMS{}
	s := New(f, Config{Logger: discardLogger()})
	v := signLegacy("POST", "example.com", url.Values{"Action": {"Encrypt"}, "keyId": {"k"}, "plaintext": {"aGk+Pz8/"}, "encryptionContext": {`{"a":"b c"}`}})
	r, _ := do(t, s, http.MethodPost, LegacyPath, v.Encode(), "")
	if *r.Code != 0 || r.CiphertextBlob != "YmxvYg==" {
		t.Fatalf("reply %+v", r)
	}
	if string(f.lastEnc.Plaintext) != "hi>???" || f.lastEnc.EncryptionContext != `{"a":"b c"}` {
		t.Fatalf("domain got %q / %q", f.lastEnc.Plaintext, f.lastEnc.EncryptionContext)
	}
}

func TestLegacyCreateKeyShape(t *testing.T) {
	s := New(&fakeKMS{}, Config{Logger: discardLogger()})
	q := signLegacy("GET", "example.com", url.Values{"Action": {"CreateKey"}, "alias": {"a1"}})
	r, _ := do(t, s, http.MethodGet, LegacyPath+"?"+q.Encode(), "", "")
	if r.KeyMetadata == nil || r.KeyMetadata.KeyUsage != "ENCRYPT/DECRYPT" || r.KeyMetadata.DeleteTime == nil {
		t.Fatalf("keyMetadata %+v: want legacy usage spelling and deleteTime present", r.KeyMetadata)
	}
}

func TestUnknownPathIsJSON(t *testing.T) {
	s := New(&fakeKMS{}, Config{Logger: discardLogger()})
	_, rec := do(t, s, http.MethodGet, "/nope", "", "")
	if rec.Code != http.StatusNotFound {
		t.Fatalf("HTTP %d", rec.Code)
	}
}

func FuzzParseParams(f *testing.F) {
	for _, s := range []string{"", "a=b", "Action=Encrypt&keyId=k", "a=1&a=2", "%zz", "a=%2", "&&=&", "a+b=c+d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := parseParams(raw)
		if err != nil {
			var le *legacyError
			if !errors.As(err, &le) || le.code != codeInvalidParameter {
				t.Fatalf("error %v is not a 4000 legacy error", err)
			}
			return
		}
		vals, _ := url.ParseQuery(raw)
		if len(vals) != len(p) {
			t.Fatalf("%d params from %d names", len(p), len(vals))
		}
		for k, v := range p {
			if vals.Get(k) != v {
				t.Fatalf("param %q = %q, want %q", k, v, vals.Get(k))
			}
		}
	})
}
