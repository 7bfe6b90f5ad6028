package httpapi

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// Fuzz targets for the request parsers of the HTTP edge. Each must never
// panic and must either accept its input or refuse it with the documented
// error type.

func FuzzDecodeJSONParams(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"KeyId":"k","Plaintext":"aGk="}`, `{"KeyId":1}`, `{"KeyId":"a","KeyId":"b"}`,
		`{"keyid":"k"}`, `{"KeyId":null}`, `[]`, `{"KeyId":"k"} {}`, `{"Tags":[{"TagKey":"a"}]}`, `{"Type":18446744073709551616}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var req createKeyRequest
		err := decodeJSONParams([]byte(body), &req)
		if err != nil {
			if _, ok := isParamError(err); !ok {
				t.Fatalf("error %v is not a parameter error", err)
			}
			return
		}
		var enc encryptRequest
		_ = decodeJSONParams([]byte(body), &enc)
	})
}

func FuzzDecodeFormParams(f *testing.F) {
	for _, s := range []string{"", "Alias=a", "Tags.0.TagKey=k&Tags.0.TagValue=v", "Tags.1.TagKey=k", "Tags=x&Tags.0.TagKey=k", "Type=x", "Type=1", "a..b=1", "Tags.00.TagKey=k"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := parseParams(raw)
		if err != nil {
			return
		}
		var req createKeyRequest
		if err := decodeFormParams(p, &req); err != nil {
			if _, ok := isParamError(err); !ok {
				t.Fatalf("error %v is not a parameter error", err)
			}
		}
	})
}

func FuzzParseTC3Authorization(f *testing.F) {
	for _, s := range []string{
		"TC3-HMAC-SHA256 Credential=AKID/2019-02-25/kms/tc3_request, SignedHeaders=content-type;host, Signature=" + strings.Repeat("a", 64),
		"TC3-HMAC-SHA256 Credential=/2019-02-25/kms/tc3_request, SignedHeaders=host, Signature=x",
		"TC3-HMAC-SHA256 ", "Basic abc", "TC3-HMAC-SHA256 Credential=a/b/c/d/e",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		a, ok := parseTC3Authorization(h)
		if !ok {
			return
		}
		if a.secretID == "" || a.service == "" || len(a.signature) != 64 || a.scope != a.date+"/"+a.service+"/tc3_request" {
			t.Fatalf("accepted an incomplete Authorization: %+v", a)
		}
	})
}

func TestParseParamsErrorsAreLegacy4000(t *testing.T) {
	_, err := parseParams("%zz")
	var le *legacyError
	if !errors.As(err, &le) || le.code != codeInvalidParameter {
		t.Fatalf("%v", err)
	}
	if _, err := url.ParseQuery("%zz"); err == nil {
		t.Fatal("url.ParseQuery accepted a bad escape")
	}
}
