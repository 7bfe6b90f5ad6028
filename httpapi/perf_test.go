package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"hsmkms/kms"
)

// Tests of the allocation-lean paths of the request hot path. They assert
// results and allocation counts, never timings.

// FuzzDecodeJSONParamsFast checks that the fast path of decodeJSONParams,
// whenever it accepts a body, decodes it exactly as the reference
// implementation does.
func FuzzDecodeJSONParamsFast(f *testing.F) {
	for _, s := range []string{``, ` `, `{}`, `{"KeyId":"k","Plaintext":"aGk="}`, `{"KeyId":1}`, `{"KeyId":"a","KeyId":"b"}`,
		`{"keyid":"k"}`, `{"KeyId":null}`, `[]`, `{"KeyId":"k"} {}`, `{"KeyId":"k"} x`, `{"KeyId":""}`,
		`{"KeyId":"k","EncryptionContext":"{\"app\":\"bench\",\"t\":\"\\\/\b\f\n\r\t\"}"}`, `{"KeyId":"\u0041"}`,
		"{\"KeyId\":\"\xff\"}", "{\"KeyId\":\"é\"}", "\f{}", `{"KeyId":"k",}`, `{"KeyId" : "k" , "Plaintext":null }`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, mk := range []func() any{func() any { return new(encryptRequest) }, func() any { return new(decryptRequest) }, func() any { return new(createKeyRequest) }} {
			fast := mk()
			if !decodeJSONFast([]byte(body), fast) {
				if !reflect.DeepEqual(fast, mk()) {
					t.Fatalf("%q: the fast path refused the body but changed the request: %+v", body, fast)
				}
				continue
			}
			ref := mk()
			if err := decodeJSONParamsSlow([]byte(body), ref); err != nil {
				t.Fatalf("%q: fast path accepted, reference refused: %v", body, err)
			}
			if !reflect.DeepEqual(fast, ref) {
				t.Fatalf("%q: fast %+v, reference %+v", body, fast, ref)
			}
		}
	})
}

func TestDecodeJSONParamsFastAllocs(t *testing.T) {
	body := []byte(`{"KeyId":"0f5a7a4e-4a3e-4e0a-9d5c-1f2e3d4c5b6a","Plaintext":"aGVsbG8gd29ybGQ=","EncryptionContext":"{\"app\":\"bench\",\"tenant\":\"t1\"}"}`)
	var req encryptRequest
	if err := decodeJSONParams(body, &req); err != nil || req.KeyId == nil || *req.EncryptionContext != `{"app":"bench","tenant":"t1"}` {
		t.Fatalf("%v %+v", err, req)
	}
	// The request, the three string pointers, and the unescaped
	// EncryptionContext (two: its buffer and the string); the other strings
	// share the body's bytes (8 when they were copied).
	if n := testing.AllocsPerRun(100, func() {
		var req encryptRequest
		_ = decodeJSONParams(body, &req)
	}); n > 6 {
		t.Fatalf("decodeJSONParams: %.0f allocations, want at most 6", n)
	}
}

func TestAppendReplyMatchesEncoder(t *testing.T) {
	odd := "a<b>&\"\\\x01é\u2028\xff"
	replies := []any{
		api3Envelope{Response: &encryptResponse{CiphertextBlob: "Y2lwaGVy", KeyID: "k", responseBase: responseBase{RequestID: "r"}}},
		api3Envelope{Response: &encryptResponse{CiphertextBlob: odd, KeyID: odd, responseBase: responseBase{RequestID: odd}}},
		api3Envelope{Response: &decryptResponse{KeyID: "k", Plaintext: "cGxhaW4=", responseBase: responseBase{RequestID: "r"}}},
		api3Envelope{Response: &decryptResponse{KeyID: odd, Plaintext: odd}},
		legacyEncryptReply{legacyReply: legacyReply{Code: 0, RequestID: "r"}, KeyID: "k", CiphertextBlob: "c"},
		legacyEncryptReply{legacyReply: legacyReply{Code: -4560, Message: odd, RequestID: odd}, KeyID: odd, CiphertextBlob: odd},
		legacyDecryptReply{legacyReply: legacyReply{Code: 0, RequestID: "r"}, KeyID: "k", Plaintext: "p"},
	}
	for _, r := range replies {
		var want bytes.Buffer
		if err := json.NewEncoder(&want).Encode(r); err != nil {
			t.Fatal(err)
		}
		got, ok := appendReply(nil, r)
		if !ok || string(got) != want.String() {
			t.Errorf("appendReply(%+v) = %q, %v; want %q", r, got, ok, want.String())
		}
	}
	if _, ok := appendReply(nil, legacyReply{}); ok {
		t.Fatal("appendReply took a type it does not encode")
	}
	buf := make([]byte, 0, 512)
	r := replies[0]
	if n := testing.AllocsPerRun(100, func() { buf, _ = appendReply(buf[:0], r) }); n != 0 {
		t.Fatalf("appendReply: %.0f allocations", n)
	}
}

func TestWordScans(t *testing.T) {
	plain := func(s string) bool {
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				return false
			}
		}
		return true
	}
	ascii := func(s string) bool {
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x20 || c >= 0x80 {
				return false
			}
		}
		return true
	}
	base := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
	for c := 0; c < 256; c++ {
		for pos := 0; pos < 20; pos++ {
			s := []byte(base[:20])
			s[pos] = byte(c)
			if got, want := jsonPlain(string(s)), plain(string(s)); got != want {
				t.Fatalf("jsonPlain(%q) = %v", s, got)
			}
			if got, want := asciiNoControl(s), ascii(string(s)); got != want {
				t.Fatalf("asciiNoControl(%q) = %v", s, got)
			}
		}
	}
}

// decodePlaintext decodes exactly as decodeBase64, into buffers that are
// cleared when released and reused without allocating.
func TestDecodePlaintextAllocs(t *testing.T) {
	for _, in := range []string{"", "aGVsbG8=", "aGVsbG8", "aGVsbG9=", "aGVs\nbG8=", "!!!!", strings.Repeat("QUJD", 3000)} {
		want, werr := decodeBase64(in)
		got, buf, err := decodePlaintext(in)
		if (err != nil) != (werr != nil) || werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("%q: got %q %v, want %q %v", in, got, err, want, werr)
		}
		if err != nil {
			continue
		}
		releasePlaintext(got, buf)
		if len(got) > 0 && !bytes.Equal(got, make([]byte, len(got))) {
			t.Fatalf("%q: the buffer was not cleared on release", in)
		}
	}
	in := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 1024))
	if n := testing.AllocsPerRun(100, func() {
		pt, buf, err := decodePlaintext(in)
		if err != nil || len(pt) != 1024 {
			t.Fatal(err)
		}
		releasePlaintext(pt, buf)
	}); n > 0 {
		t.Fatalf("decodePlaintext: %.0f allocations, want 0", n)
	}
}

func TestNewRequestIDAllocs(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := newRequestID()
		u, err := uuid.Parse(id)
		if err != nil || u.Version() != 4 || u.Variant() != uuid.RFC4122 || u.String() != id {
			t.Fatalf("%q: %v version %d variant %v", id, err, u.Version(), u.Variant())
		}
		if seen[id] {
			t.Fatalf("%q twice", id)
		}
		seen[id] = true
	}
	if raceEnabled {
		t.Log("allocations are counted by make test's run without -race")
		return
	}
	if n := testing.AllocsPerRun(100, func() { _ = newRequestID() }); n > 1 {
		t.Fatalf("newRequestID: %.0f allocations, want 1", n)
	}
}

// A context carrying a reqInfo keeps the cancellation, deadline and values
// of the one below, for itself and for contexts derived from it.
func TestWithInfo(t *testing.T) {
	type otherKey struct{}
	base, cancel := context.WithTimeout(context.WithValue(context.Background(), otherKey{}, "v"), time.Hour)
	i := &reqInfo{requestID: "r"}
	ctx := withInfo(base, i, 2*time.Hour)
	child, cancelChild := context.WithCancel(kms.WithPrincipal(ctx, &kms.Principal{}))
	defer cancelChild()
	if infoFrom(child) != i || child.Value(otherKey{}) != "v" {
		t.Fatal("values lost")
	}
	if d, ok := child.Deadline(); !ok || time.Until(d) < 59*time.Minute {
		t.Fatal("deadline lost")
	}
	cancel()
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("cancellation of the request context did not reach a derived context")
	}
	if !errors.Is(child.Err(), context.Canceled) {
		t.Fatal(child.Err())
	}
	if n := testing.AllocsPerRun(100, func() { _ = withInfo(base, i, time.Minute) }); n != 0 {
		t.Fatalf("withInfo: %.0f allocations, want 0", n)
	}
}
