package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"hsmkms/kms"
)

// awsTestRegion is the region the AWS API tests' servers serve.
const awsTestRegion = "eu-central-1"

func awsTestServer(k KMS, cfg Config) *Server {
	cfg.AWS.Regions = []string{awsTestRegion}
	if cfg.Logger == nil {
		cfg.Logger = discardLogger()
	}
	return New(k, cfg)
}

// awsRequest returns an AWS API request for action, signed by the AWS SDK
// for Go v2's v4 signer at at, after edit changed it.
func awsTestRequest(t testing.TB, action, body string, at time.Time, edit func(*http.Request)) *http.Request {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "http://example.com/", strings.NewReader(body))
	req.Header.Set("Content-Type", awsContentType)
	req.Header.Set("X-Amz-Target", awsTargetPrefix+action)
	if edit != nil {
		edit(req)
	}
	sum := sha256.Sum256([]byte(body))
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: testSecretID, SecretAccessKey: testSecretKey},
		req, hex.EncodeToString(sum[:]), "kms", awsTestRegion, at); err != nil {
		t.Fatal(err)
	}
	return req
}

// awsReply serves req and returns the HTTP status and the error answer.
func awsReply(t testing.TB, s *Server, req *http.Request) (int, awsErrorBody, *httptest.ResponseRecorder) {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); ct != awsContentType {
		t.Fatalf("Content-Type %q, want %s", ct, awsContentType)
	}
	if rec.Header().Get("X-Amzn-RequestId") == "" {
		t.Fatalf("no x-amzn-RequestId")
	}
	var e awsErrorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
		t.Fatalf("reply is not JSON: %q", rec.Body.String())
	}
	return rec.Code, e, rec
}

const awsEncBody = `{"KeyId":"11111111-2222-3333-4444-555555555555","Plaintext":"aGVsbG8=","EncryptionContext":{"a":"b"},"GrantTokens":["t"]}`

// Every row of the error table through the AWS API: its __type and HTTP
// status, written out here rather than read from the table.
func TestAWSErrorTableRows(t *testing.T) {
	want := map[error]struct {
		typ    string
		status int
	}{
		kms.ErrUsageLimit:                               {"LimitExceededException", 400},
		kms.ErrInvalidKeyID:                             {"NotFoundException", 400},
		kms.ErrInvalidPendingWindow:                     {"ValidationException", 400},
		kms.ErrInvalidRotateDays:                        {"ValidationException", 400},
		kms.ErrInvalidNumberOfBytes:                     {"ValidationException", 400},
		kms.ErrInvalidKeySpec:                           {"ValidationException", 400},
		kms.ErrTooManyKeys:                              {"ValidationException", 400},
		kms.ErrDuplicateKeyID:                           {"ValidationException", 400},
		kms.ErrKeyArchived:                              {"KMSInvalidStateException", 400},
		kms.ErrKeyShouldBeDisabled:                      {"KMSInvalidStateException", 400},
		kms.ErrKeyNotPendingDelete:                      {"KMSInvalidStateException", 400},
		kms.ErrPlaintextTooLong:                         {"ValidationException", 400},
		kms.ErrPlaintextEmpty:                           {"ValidationException", 400},
		kms.ErrInvalidContext:                           {"ValidationException", 400},
		kms.ErrInvalidCiphertext:                        {"InvalidCiphertextException", 400},
		kms.ErrInvalidAlias:                             {"InvalidAliasNameException", 400},
		kms.ErrInvalidKeyUsage:                          {"InvalidKeyUsageException", 400},
		kms.ErrUnsupported:                              {"UnsupportedOperationException", 400},
		kms.ErrRotateNotSupported:                       {"UnsupportedOperationException", 400},
		kms.ErrInvalidAlgorithm:                         {"ValidationException", 400},
		kms.ErrInvalidMessage:                           {"ValidationException", 400},
		kms.ErrInvalidType:                              {"ValidationException", 400},
		kms.ErrNotExternalKey:                           {"UnsupportedOperationException", 400},
		kms.ErrExternalCannotRotate:                     {"UnsupportedOperationException", 400},
		kms.ErrInvalidWrapping:                          {"ValidationException", 400},
		kms.ErrWrappingUnsupported:                      {"UnsupportedOperationException", 400},
		kms.ErrImportTokenExpired:                       {"ExpiredImportTokenException", 400},
		kms.ErrImportTokenInvalid:                       {"InvalidImportTokenException", 400},
		kms.ErrDecryptMaterial:                          {"InvalidCiphertextException", 400},
		kms.ErrMaterialNotMatch:                         {"IncorrectKeyMaterialException", 400},
		kms.ErrInvalidValidTo:                           {"ValidationException", 400},
		kms.ErrTooManyImportParameters:                  {"LimitExceededException", 400},
		kms.ErrAsymDecrypt:                              {"InvalidCiphertextException", 400},
		kms.ErrInvalidDesc:                              {"ValidationException", 400},
		kms.ErrKeyHasAlias:                              {"LimitExceededException", 400},
		kms.ErrAliasExists:                              {"AlreadyExistsException", 400},
		kms.ErrSelfChange:                               {"AccessDeniedException", 400},
		kms.ErrExceedsCaller:                            {"AccessDeniedException", 400},
		kms.ErrUnauthorized:                             {"AccessDeniedException", 400},
		kms.ErrCredentialNotFound:                       {"NotFoundException", 400},
		kms.ErrCredentialExists:                         {"AlreadyExistsException", 400},
		kms.ErrInvalidCredential:                        {"ValidationException", 400},
		kms.ErrInvalidPolicy:                            {"ValidationException", 400},
		kms.ErrKeyStateNotSupported:                     {"KMSInvalidStateException", 400},
		kms.ErrKeyNotFound:                              {"NotFoundException", 400},
		kms.ErrKeyDisabled:                              {"DisabledException", 400},
		kms.ErrLimitExceeded:                            {"LimitExceededException", 400},
		kms.ErrDecrypt:                                  {"InvalidCiphertextException", 400},
		kms.ErrBusy:                                     {"ThrottlingException", 400},
		context.DeadlineExceeded:                        {"ThrottlingException", 400},
		kms.ErrUnavailable:                              {"DependencyTimeoutException", 503},
		errors.New("CKR_GENERAL_ERROR at /secret/path"): {"KMSInternalException", 500},
	}
	covered := 0
	for _, row := range errorTable {
		for _, e := range row.errs {
			if _, ok := want[e]; !ok {
				t.Errorf("error table row %s: %v has no AWS expectation here", row.aws, e)
			}
			covered++
		}
	}
	if covered+1 != len(want) {
		t.Errorf("the table has %d errors, the test expects %d", covered, len(want)-1)
	}
	now := time.Now()
	for domainErr, w := range want {
		t.Run(w.typ+"/"+domainErr.Error(), func(t *testing.T) {
			f := &fakeKMS{err: fmt.Errorf("op: %w", domainErr)}
			s := awsTestServer(f, Config{Clock: func() time.Time { return now }})
			st, e, rec := awsReply(t, s, awsTestRequest(t, "Encrypt", awsEncBody, now, nil))
			if st != w.status || e.Type != w.typ || e.Message == "" {
				t.Fatalf("HTTP %d %+v, want %d %s", st, e, w.status, w.typ)
			}
			if strings.Contains(e.Message, "CKR_") || strings.Contains(e.Message, "/secret") {
				t.Fatalf("message %q leaks detail", e.Message)
			}
			if w.typ == "KMSInternalException" && !strings.Contains(e.Message, rec.Header().Get("X-Amzn-RequestId")) {
				t.Fatalf("internal error message %q does not name the request id", e.Message)
			}
		})
	}
}

// The context and the plaintext reach the domain as the Tencent protocols
// pass them: the context as its JSON object, the plaintext decoded.
func TestAWSEncryptReachesDomain(t *testing.T) {
	now := time.Now()
	f := &fakeKMS{}
	s := awsTestServer(f, Config{Clock: func() time.Time { return now }})
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, awsTestRequest(t, "Encrypt", awsEncBody, now, nil))
	if rec.Code != 200 {
		t.Fatalf("HTTP %d: %s", rec.Code, rec.Body.String())
	}
	if f.lastEnc.EncryptionContext != `{"a":"b"}` || f.lastEnc.KeyID != "11111111-2222-3333-4444-555555555555" {
		t.Fatalf("the domain got %+v", f.lastEnc)
	}
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || !strings.HasPrefix(out["KeyId"].(string), "arn:aws:kms:"+awsTestRegion+":"+DefaultAWSAccountID+":key/") {
		t.Fatalf("reply %s", rec.Body.String())
	}
}

// The verifier rebuilds the canonical request from SignedHeaders as the
// AWS SDK's signer builds it, whatever the signed headers' shapes; any
// change to a signed header after signing is refused.
func TestSigV4MatchesSDKSigner(t *testing.T) {
	now := time.Now()
	s := awsTestServer(&fakeKMS{}, Config{Clock: func() time.Time { return now }})
	edits := map[string]func(*http.Request){
		"plain": nil,
		"spaces and several values": func(r *http.Request) {
			r.Header.Set("X-Custom", "  a   b  ")
			r.Header.Add("X-Custom", "c")
			r.Header.Set("User-Agent", "not signed")
		},
		"content type with parameters": func(r *http.Request) { r.Header.Set("Content-Type", awsContentType+"; charset=utf-8") },
	}
	for name, edit := range edits {
		t.Run(name, func(t *testing.T) {
			req := awsTestRequest(t, "Encrypt", awsEncBody, now, edit)
			if st, e, _ := awsReply(t, s, req); st != 200 {
				t.Fatalf("HTTP %d %+v", st, e)
			}
			signed := strings.Split(strings.SplitN(strings.SplitN(req.Header.Get("Authorization"), "SignedHeaders=", 2)[1], ",", 2)[0], ";")
			for _, h := range signed {
				if h == "host" || h == "content-length" {
					continue
				}
				req := awsTestRequest(t, "Encrypt", awsEncBody, now, edit)
				req.Header.Set(h, req.Header.Get(h)+"x")
				if st, e, _ := awsReply(t, s, req); st == 200 || (e.Type != "InvalidSignatureException" && e.Type != "IncompleteSignatureException" && e.Type != "UnknownOperationException" && e.Type != "SerializationException") {
					t.Fatalf("%s changed after signing: HTTP %d %+v", h, st, e)
				}
			}
			req = awsTestRequest(t, "Encrypt", awsEncBody, now, edit)
			req.Host = "example.org"
			if st, e, _ := awsReply(t, s, req); st != 400 || e.Type != "InvalidSignatureException" {
				t.Fatalf("host changed after signing: HTTP %d %+v", st, e)
			}
		})
	}
}

// The SDKs sign the host without a default port: a Host sent with :443
// or :80 still verifies; another port does not.
func TestSigV4DefaultPort(t *testing.T) {
	now := time.Now()
	s := awsTestServer(&fakeKMS{}, Config{Clock: func() time.Time { return now }})
	for port, ok := range map[string]bool{":443": true, ":80": true, ":8443": false} {
		req := awsTestRequest(t, "Encrypt", awsEncBody, now, nil)
		req.Host = "example.com" + port
		if st, e, _ := awsReply(t, s, req); (st == 200) != ok {
			t.Fatalf("Host example.com%s: HTTP %d %+v", port, st, e)
		}
	}
}

// A second X-Amz-Target (or X-Amz-Date) is refused, even when signed:
// the action served is the one verified.
func TestSigV4OneTarget(t *testing.T) {
	now := time.Now()
	s := awsTestServer(&fakeKMS{}, Config{Clock: func() time.Time { return now }})
	for _, h := range []string{"X-Amz-Target", "X-Amz-Date"} {
		req := awsTestRequest(t, "Encrypt", awsEncBody, now, func(r *http.Request) {
			r.Header.Add("X-Amz-Target", awsTargetPrefix+"Decrypt")
		})
		if h == "X-Amz-Date" {
			req = awsTestRequest(t, "Encrypt", awsEncBody, now, nil)
			req.Header.Add(h, req.Header.Get(h))
		}
		if st, e, _ := awsReply(t, s, req); st != 400 || e.Type != "IncompleteSignatureException" {
			t.Fatalf("two %s: HTTP %d %+v", h, st, e)
		}
	}
}

// A request re-sent as is within the window is served again (as AWS
// does): its signature binds its action and its body, so it can only
// repeat itself.
func TestSigV4ReplayRepeatsOnly(t *testing.T) {
	now := time.Now()
	s := awsTestServer(&fakeKMS{}, Config{Clock: func() time.Time { return now }})
	signed := awsTestRequest(t, "Encrypt", awsEncBody, now, nil)
	for i := 0; i < 2; i++ {
		r := httptest.NewRequest(http.MethodPost, "http://example.com/", strings.NewReader(awsEncBody))
		r.Header = signed.Header.Clone()
		if st, e, _ := awsReply(t, s, r); st != 200 {
			t.Fatalf("send %d: HTTP %d %+v", i, st, e)
		}
	}
}

// Without regions the AWS API is off, and says so.
func TestAWSDisabled(t *testing.T) {
	now := time.Now()
	s := New(&fakeKMS{}, Config{Logger: discardLogger(), Clock: func() time.Time { return now }})
	st, e, _ := awsReply(t, s, awsTestRequest(t, "Encrypt", awsEncBody, now, nil))
	if st != 400 || e.Type != "UnrecognizedClientException" || !strings.Contains(e.Message, "not enabled") {
		t.Fatalf("HTTP %d %+v", st, e)
	}
}

func TestParseSigV4Authorization(t *testing.T) {
	good := "AWS4-HMAC-SHA256 Credential=AKID/20260102/eu-central-1/kms/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature=" + strings.Repeat("ab", 32)
	a, ok := parseSigV4Authorization(good)
	if !ok || a.accessKey != "AKID" || a.date != "20260102" || a.region != "eu-central-1" || a.service != "kms" || a.scope != "20260102/eu-central-1/kms/aws4_request" {
		t.Fatalf("%+v %v", a, ok)
	}
	for _, bad := range []string{
		"", "AWS4-HMAC-SHA256", strings.Replace(good, "AWS4", "AWS5", 1),
		strings.Replace(good, "aws4_request", "tc3_request", 1),
		strings.Replace(good, "20260102", "20261302", 1),
		strings.Replace(good, "20260102", "2026010", 1),
		strings.Replace(good, "Signature=ab", "Signature=AB", 1),
		strings.Replace(good, "Signature=ab", "Signature=a", 1),
		good + ", Signature=" + strings.Repeat("ab", 32),
		strings.Replace(good, "Credential=AKID/", "Credential=/", 1),
		strings.Replace(good, "/eu-central-1/", "//", 1),
		strings.Replace(good, ", SignedHeaders=", ", Other=", 1),
		strings.Replace(good, "kms/aws4_request", "kms/extra/aws4_request", 1),
	} {
		if _, ok := parseSigV4Authorization(bad); ok {
			t.Errorf("accepted %q", bad)
		}
	}
}

// FuzzSigV4Verifier: whatever replaces a valid request's Authorization
// header, X-Amz-Date or body, the verifier does not crash and accepts
// nothing it did not sign; the parser's results are always well formed.
func FuzzSigV4Verifier(f *testing.F) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	valid := awsTestRequest(f, "GenerateRandom", `{"NumberOfBytes":8}`, now, nil)
	f.Add(valid.Header.Get("Authorization"), valid.Header.Get("X-Amz-Date"), `{"NumberOfBytes":8}`)
	f.Add("AWS4-HMAC-SHA256 Credential=a/20260102/eu-central-1/kms/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature="+strings.Repeat("0", 64), "20260102T030405Z", "{}")
	f.Add("AWS4-HMAC-SHA256 SignedHeaders=;;, Credential=,Signature=", "", "")
	s := awsTestServer(&fakeKMS{}, Config{Clock: func() time.Time { return now }})
	f.Fuzz(func(t *testing.T, authz, date, body string) {
		if a, ok := parseSigV4Authorization(authz); ok {
			if a.accessKey == "" || len(a.date) != 8 || a.region == "" || a.service == "" || len(a.signature) != 64 || a.signedHeaders == "" {
				t.Fatalf("parsed into %+v", a)
			}
		}
		req := awsTestRequest(t, "GenerateRandom", `{"NumberOfBytes":8}`, now, nil)
		same := authz == req.Header.Get("Authorization") && date == req.Header.Get("X-Amz-Date") && body == `{"NumberOfBytes":8}`
		req.Header.Set("Authorization", authz)
		req.Header.Set("X-Amz-Date", date)
		_, _, err := s.authSigV4(context.Background(), req, []byte(body))
		if err == nil && !same {
			t.Fatalf("accepted Authorization %q, X-Amz-Date %q, body %q", authz, date, body)
		}
	})
}

// BenchmarkAWSEncrypt is BenchmarkTC3Encrypt for the AWS KMS API: signed
// Encrypt requests (SigV4, signed by the AWS SDK's signer beforehand, each
// with its own body) through the whole HTTP edge with a fake domain.
func BenchmarkAWSEncrypt(b *testing.B) {
	now := time.Now()
	s := awsTestServer(&fakeKMS{}, Config{Clock: func() time.Time { return now }})
	const host = "kms.example:8080"
	type signed struct{ body, auth, date string }
	pool := make([]signed, 1<<14)
	for i := range pool {
		body := `{"KeyId":"9999aed0-4956-11e9-bc70-5254005e86b4","Plaintext":"` + base64.StdEncoding.EncodeToString([]byte("plaintext "+strconv.Itoa(i))) + `"}`
		req := awsTestRequest(b, "Encrypt", body, now, func(r *http.Request) { r.Host = host })
		pool[i] = signed{body, req.Header.Get("Authorization"), req.Header.Get("X-Amz-Date")}
	}
	h := s.Handler()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	defer func() { b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op") }()
	for i := 0; i < b.N; i++ {
		p := pool[i%len(pool)]
		req := httptest.NewRequest(http.MethodPost, "http://"+host+"/", strings.NewReader(p.body))
		req.Header.Set("Content-Type", awsContentType)
		req.Header.Set("X-Amz-Target", "TrentService.Encrypt")
		req.Header.Set("X-Amz-Date", p.date)
		req.Header.Set("Authorization", p.auth)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("%d %s", rec.Code, rec.Body.String())
		}
	}
}
