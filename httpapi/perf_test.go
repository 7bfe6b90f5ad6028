package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	"github.com/google/uuid"
)

// Tests of the allocation-lean paths of the request hot path. They assert
// results and allocation counts, never timings.

// FuzzDecodeJSONParamsMatchesReference checks that decodeJSONParams
// (jsontext) decodes every body exactly as the encoding/json decoder it
// replaced: same request, same error. The one difference is deliberate:
// text after the object that is not a JSON value (`{} x`) was accepted by
// the reference and is refused now, like any other data after the object.
func FuzzDecodeJSONParamsMatchesReference(f *testing.F) {
	for _, s := range []string{``, ` `, `{}`, `{"KeyId":"k","Plaintext":"aGk="}`, `{"KeyId":1}`, `{"KeyId":"a","KeyId":"b"}`,
		`{"keyid":"k"}`, `{"KeyId":null}`, `[]`, `{"KeyId":"k"} {}`, `{"KeyId":"k"} x`, `{"KeyId":""}`,
		`{"KeyId":"k","EncryptionContext":"{\"app\":\"bench\",\"t\":\"\\\/\b\f\n\r\t\"}"}`, `{"KeyId":"\u0041"}`,
		"{\"KeyId\":\"\xff\"}", "{\"KeyId\":\"é\"}", "\f{}", `{"KeyId":"k",}`, `{"KeyId" : "k" , "Plaintext":null }`,
		`{"Tags":[{"TagKey":"a"}]}`, `{"Tags":[{"tagkey":"a"}]}`, `{"Type":18446744073709551616}`, `{"Type":1,"Type":1}`,
		`{"\u004beyId":"k"}`, `{"KeyId":"\ud800"}`, `{"Nope":{"x":[1,2]}}`, `{"Nope":[}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, mk := range []func() any{func() any { return new(encryptRequest) }, func() any { return new(decryptRequest) }, func() any { return new(createKeyRequest) }} {
			got, want := mk(), mk()
			err := decodeJSONParams([]byte(body), got)
			werr := decodeJSONParamsReference([]byte(body), want)
			if werr == nil && err != nil && err.Error() == "InvalidParameter: data after the JSON object" {
				continue // the deliberate difference
			}
			if fmt.Sprint(err) != fmt.Sprint(werr) {
				t.Fatalf("%q: error %v, reference %v", body, err, werr)
			}
			if err == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("%q: decoded %+v, reference %+v", body, got, want)
			}
		}
	})
}

func TestDecodeJSONParamsAllocs(t *testing.T) {
	body := []byte(`{"KeyId":"0f5a7a4e-4a3e-4e0a-9d5c-1f2e3d4c5b6a","Plaintext":"aGVsbG8gd29ybGQ=","EncryptionContext":"{\"app\":\"bench\",\"tenant\":\"t1\"}"}`)
	var req encryptRequest
	if err := decodeJSONParams(body, &req); err != nil || req.KeyId == nil || *req.EncryptionContext != `{"app":"bench","tenant":"t1"}` {
		t.Fatalf("%v %+v", err, req)
	}
	// The request, the three values and their pointers, and the unescaped
	// EncryptionContext's buffer; names are looked up without a copy and
	// the jsontext decoder is pooled (54 allocations with encoding/json's
	// Token stream).
	if raceEnabled {
		t.Log("allocations are counted by make test's run without -race")
		return
	}
	if n := testing.AllocsPerRun(100, func() {
		var req encryptRequest
		_ = decodeJSONParams(body, &req)
	}); n > 8 {
		t.Fatalf("decodeJSONParams: %.0f allocations, want at most 8", n)
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

// decodeJSONParamsReference is the decoder of JSON parameters before
// jsontext: encoding/json's Token stream. FuzzDecodeJSONParamsMatchesReference
// holds decodeJSONParams to it.
func decodeJSONParamsReference(body []byte, dst any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return paramErrorf("InvalidParameter", "the request body must be a JSON object")
	}
	v := reflect.ValueOf(dst).Elem()
	fields := fieldsOf(v.Type())
	seen := make(map[string]bool, 4)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return paramErrorf("InvalidParameter", "malformed JSON body")
		}
		name := tok.(string)
		if seen[name] {
			return paramErrorf("InvalidParameter", "parameter %s is given twice", truncate(name, 64))
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return paramErrorf("InvalidParameter", "malformed JSON body")
		}
		fi, ok := fields[name]
		if !ok {
			return paramErrorf("UnknownParameter", "the parameter %s is not recognized", truncate(name, 64))
		}
		if bytes.Equal(raw, []byte("null")) {
			continue
		}
		if err := json.Unmarshal(raw, v.FieldByIndex(fi.index).Addr().Interface()); err != nil {
			return paramErrorf("InvalidParameter", "parameter %s has the wrong type (want %s)", name, typeName(fi.typ))
		}
	}
	if _, err := dec.Token(); err != nil {
		return paramErrorf("InvalidParameter", "malformed JSON body")
	}
	if _, err := dec.Token(); err == nil {
		return paramErrorf("InvalidParameter", "data after the JSON object")
	}
	return nil
}

var benchEncryptBody = []byte(`{"KeyId":"0f5a7a4e-4a3e-4e0a-9d5c-1f2e3d4c5b6a","Plaintext":"aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=","EncryptionContext":"{\"app\":\"bench\",\"tenant\":\"t1\"}"}`)

// BenchmarkDecodeJSONParams decodes an Encrypt body with jsontext
// (decodeJSONParams) and with encoding/json's Token stream (the reference),
// side by side (BENCHMARKS.md).
func BenchmarkDecodeJSONParams(b *testing.B) {
	for _, d := range []struct {
		name   string
		decode func([]byte, any) error
	}{{"jsontext", decodeJSONParams}, {"encoding-json", decodeJSONParamsReference}} {
		b.Run(d.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var r encryptRequest
				if err := d.decode(benchEncryptBody, &r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
