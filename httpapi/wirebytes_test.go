package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestBinaryReplyFieldsAreBase64 holds the []byte reply fields to the wire
// form they replaced: encoding/json writes wireBytes(b) exactly as it wrote
// the string base64.StdEncoding.EncodeToString(b), for every length from
// empty (and nil) to past a ciphertext blob's, and with omitempty alike.
func TestBinaryReplyFieldsAreBase64(t *testing.T) {
	type bin struct {
		B []byte `json:"B"`
		O []byte `json:"O,omitempty"`
	}
	type str struct {
		B string `json:"B"`
		O string `json:"O,omitempty"`
	}
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(b []byte) {
		t.Helper()
		got, err := json.Marshal(bin{wireBytes(b), wireBytes(b)})
		if err != nil {
			t.Fatal(err)
		}
		s := base64.StdEncoding.EncodeToString(b)
		want, _ := json.Marshal(str{s, s})
		if !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: %s, want %s", len(b), got, want)
		}
	}
	check(nil)
	for n := 0; n <= 4200; n += 1 + n/16 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		check(b)
	}
}

// TestDecryptPlaintextWipedAfterReply checks that a decrypted plaintext is
// in the reply and that its buffer holds zeros once the reply is written,
// through the API 3.0, legacy and AWS routes (a base64 string of it, as
// replies carried before, could not be cleared).
func TestDecryptPlaintextWipedAfterReply(t *testing.T) {
	blob := base64.StdEncoding.EncodeToString(make([]byte, 60))
	requests := map[string]func() *http.Request{
		"api3": func() *http.Request {
			return tc3Request("Decrypt", `{"CiphertextBlob":"`+blob+`"}`, nil)
		},
		"legacy": func() *http.Request {
			v := signLegacy("POST", "example.com", url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {blob}})
			req := httptest.NewRequest(http.MethodPost, "http://example.com"+LegacyPath, strings.NewReader(v.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return req
		},
		"aws": func() *http.Request {
			return awsTestRequest(t, "Decrypt", `{"CiphertextBlob":"`+blob+`"}`, time.Now(), nil)
		},
	}
	for name, mk := range requests {
		t.Run(name, func(t *testing.T) {
			f := &fakeKMS{}
			s := awsTestServer(f, Config{})
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, mk())
			if !bytes.Contains(rec.Body.Bytes(), []byte(`"aGVsbG8="`)) {
				t.Fatalf("HTTP %d: the reply has no plaintext: %s", rec.Code, rec.Body.String())
			}
			if f.lastPlain == nil || !bytes.Equal(f.lastPlain, make([]byte, len(f.lastPlain))) {
				t.Fatalf("the plaintext buffer is %q after the reply, want zeros", f.lastPlain)
			}
		})
	}
}

// BenchmarkBinaryReply encodes an Encrypt reply with a 1 KiB plaintext's
// ciphertext blob, side by side: the blob as a []byte field (encoding/json
// writes its base64 into the reply) and as the base64 string replies
// carried before (base64 into a new string, then escaped byte by byte).
func BenchmarkBinaryReply(b *testing.B) {
	env := make([]byte, 1024+34)
	for i := range env {
		env[i] = byte(i * 7)
	}
	type stringReply struct {
		CiphertextBlob string `json:"CiphertextBlob"`
		KeyID          string `json:"KeyId"`
		responseBase
	}
	const keyID, rid = "9999aed0-4956-11e9-bc70-5254005e86b4", "6b1a2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	for _, c := range []struct {
		name  string
		reply func() any
	}{
		{"bytes", func() any {
			return &encryptResponse{CiphertextBlob: wireBytes(env), KeyID: keyID, responseBase: responseBase{RequestID: rid}}
		}},
		{"base64-string", func() any {
			return &stringReply{CiphertextBlob: base64.StdEncoding.EncodeToString(env), KeyID: keyID, responseBase: responseBase{RequestID: rid}}
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				if err := enc.Encode(api3Envelope{Response: c.reply()}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
