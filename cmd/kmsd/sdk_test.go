package main_test

// Official Tencent Cloud clients against the real kmsd: the Go SDK
// (tencentcloud/kms v1.3.152) with each of its three signature methods, and
// negative authentication tests that tamper with signed requests.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tcerr "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/errors"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"

	"hsmkms/softhsm"
	"hsmkms/tcsign"
)

func sdkClient(t *testing.T, s *server, signMethod, reqMethod, id, key string) *tckms.Client {
	t.Helper()
	cpf := profile.NewClientProfile()
	cpf.HttpProfile.Endpoint = strings.TrimPrefix(s.url, "http://")
	cpf.HttpProfile.Scheme = "HTTP"
	cpf.HttpProfile.ReqTimeout = 10
	cpf.HttpProfile.ReqMethod = reqMethod
	cpf.SignMethod = signMethod
	c, err := tckms.NewClient(common.NewCredential(id, key), "ap-guangzhou", cpf)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sdkCode(err error) string {
	var e *tcerr.TencentCloudSDKError
	if errors.As(err, &e) {
		return e.Code
	}
	if err != nil {
		return "not an SDK error: " + err.Error()
	}
	return ""
}

// TestOfficialGoSDK runs the official SDK against kmsd (net/http). The
// deprecated listen.http_server setting is given and must be ignored with
// one warning.
func TestOfficialGoSDK(t *testing.T) {
	tok := softhsm.NewTokenNoEnv(t)
	env := append(kmsdEnv(tok, t.TempDir()), "KMSD_HTTP_SERVER=h1")
	bootstrap(t, env)
	s := startKMSD(t, env)
	if want := `"http_server":"net/http"`; !strings.Contains(s.stderr.String(), want) {
		t.Fatalf("kmsd's start-up line does not say %s:\n%s", want, s.stderr.String())
	}
	if n := strings.Count(s.stderr.String(), "is deprecated and ignored"); n != 1 {
		t.Fatalf("deprecation of listen.http_server logged %d times, want once:\n%s", n, s.stderr.String())
	}
	testOfficialGoSDK(t, s)
}

func testOfficialGoSDK(t *testing.T, s *server) {
	for _, tc := range []struct{ sign, method string }{
		{"TC3-HMAC-SHA256", "POST"},
		{"TC3-HMAC-SHA256", "GET"},
		{"HmacSHA256", "POST"},
		{"HmacSHA1", "POST"},
		{"HmacSHA1", "GET"},
	} {
		t.Run(tc.sign+"/"+tc.method, func(t *testing.T) {
			c := sdkClient(t, s, tc.sign, tc.method, adminID, adminKey)
			ck := tckms.NewCreateKeyRequest()
			ck.Alias = common.StringPtr("sdk-" + strings.ReplaceAll(tc.sign+tc.method, "-", ""))
			ck.Description = common.StringPtr("made by the official Go SDK")
			created, err := c.CreateKey(ck)
			if err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
			r := created.Response
			if r.KeyId == nil || *r.KeyState != "Enabled" || *r.KeyUsage != "ENCRYPT_DECRYPT" || *r.CreateTime == 0 || *r.RequestId == "" {
				t.Fatalf("CreateKey response %s", created.ToJsonString())
			}

			pt := []byte(secret("the SDK's plaintext: +/= ü"))
			enc := tckms.NewEncryptRequest()
			enc.KeyId = r.KeyId
			enc.Plaintext = common.StringPtr(base64.StdEncoding.EncodeToString(pt))
			enc.EncryptionContext = common.StringPtr(`{"app":"billing","env":"prod"}`)
			er, err := c.Encrypt(enc)
			if err != nil {
				t.Fatalf("Encrypt: %v", err)
			}
			if *er.Response.KeyId != *r.KeyId || *er.Response.CiphertextBlob == "" {
				t.Fatalf("Encrypt response %s", er.ToJsonString())
			}

			dec := tckms.NewDecryptRequest()
			dec.CiphertextBlob = er.Response.CiphertextBlob
			dec.EncryptionContext = common.StringPtr(`{"env":"prod","app":"billing"}`)
			dr, err := c.Decrypt(dec)
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			got, _ := base64.StdEncoding.DecodeString(*dr.Response.Plaintext)
			if !bytes.Equal(got, pt) || *dr.Response.KeyId != *r.KeyId {
				t.Fatalf("Decrypt response %s", dr.ToJsonString())
			}

			// Domain errors come back as the SDK's typed errors.
			dec.EncryptionContext = common.StringPtr(`{"app":"other"}`)
			if _, err := c.Decrypt(dec); sdkCode(err) != "FailedOperation.DecryptError" {
				t.Fatalf("Decrypt with another context: %v", err)
			}
			enc.KeyId = common.StringPtr("00000000-0000-4000-8000-000000000000")
			if _, err := c.Encrypt(enc); sdkCode(err) != "ResourceUnavailable.CmkNotFound" {
				t.Fatalf("Encrypt under an unknown key: %v", err)
			}
			enc.KeyId = common.StringPtr("not-a-key-id")
			if _, err := c.Encrypt(enc); sdkCode(err) != "InvalidParameterValue.InvalidKeyId" {
				t.Fatalf("Encrypt with a malformed key id: %v", err)
			}
			enc.KeyId = r.KeyId
			enc.Plaintext = common.StringPtr(base64.StdEncoding.EncodeToString(make([]byte, 4097)))
			if _, err := c.Encrypt(enc); sdkCode(err) != "InvalidParameterValue.InvalidPlaintext" {
				t.Fatalf("Encrypt of 4097 bytes: %v", err)
			}
			dec.CiphertextBlob = common.StringPtr("AAAA")
			if _, err := c.Decrypt(dec); sdkCode(err) != "InvalidParameterValue.InvalidCiphertext" {
				t.Fatalf("Decrypt of a malformed blob: %v", err)
			}
			ck.Alias = common.StringPtr("bad alias")
			if _, err := c.CreateKey(ck); sdkCode(err) != "InvalidParameterValue.InvalidAlias" {
				t.Fatalf("CreateKey with a bad alias: %v", err)
			}
		})
	}
}

// apiReply is an API 3.0 reply.
type apiReply struct {
	Response struct {
		Error *struct {
			Code    string `json:"Code"`
			Message string `json:"Message"`
		} `json:"Error"`
		RequestId      string `json:"RequestId"`
		KeyId          string `json:"KeyId"`
		CiphertextBlob string `json:"CiphertextBlob"`
		Plaintext      string `json:"Plaintext"`
		SecretId       string `json:"SecretId"`
		SecretKey      string `json:"SecretKey"`
	} `json:"Response"`
}

func (r apiReply) code() string {
	if r.Response.Error == nil {
		return ""
	}
	return r.Response.Error.Code
}

// tc3Request builds a TC3 POST signed as kmsctl signs it, the action
// included (SignedHeaders content-type;host;x-tc-action); mutate runs after
// signing.
type tc3Request struct {
	action, version string
	body            string
	id, key         string
	ts              int64
	mutate          func(r *http.Request)
}

func (s *server) tc3(t *testing.T, q tc3Request) apiReply {
	t.Helper()
	if q.version == "" {
		q.version = "2019-01-18"
	}
	if q.id == "" {
		q.id, q.key = adminID, adminKey
	}
	if q.ts == 0 {
		q.ts = time.Now().Unix()
	}
	host := strings.TrimPrefix(s.url, "http://")
	req, err := http.NewRequest(http.MethodPost, s.url+"/", strings.NewReader(q.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", q.action)
	req.Header.Set("X-TC-Version", q.version)
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(q.ts, 10))
	req.Header.Set("Authorization", tcsign.SignTC3Action(q.id, q.key, "kms", http.MethodPost, host, "application/json", "", q.action, q.ts, []byte(q.body)))
	if q.mutate != nil {
		q.mutate(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d: %s", resp.StatusCode, raw)
	}
	var r apiReply
	if err := json.Unmarshal(raw, &r); err != nil || r.Response.RequestId == "" {
		t.Fatalf("reply is not a Tencent envelope: %s", raw)
	}
	return r
}

func TestAuthenticationFailures(t *testing.T) {
	s, _, data := newServer(t)
	key := s.createKey("auth-target")

	// A restricted credential: Encrypt and Decrypt on key only.
	policy := fmt.Sprintf(`{"version":"2.0","statement":[{"effect":"allow","action":["kms:Encrypt","kms:Decrypt"],"resource":["%s"]}]}`, key)
	made := s.tc3(t, tc3Request{action: "CreateCredential", body: mustJSON(map[string]string{"Name": "app", "Policy": policy})})
	if made.code() != "" {
		t.Fatalf("CreateCredential: %s", made.code())
	}
	appID, appKey := made.Response.SecretId, secret(made.Response.SecretKey)
	// A credential that gets disabled.
	off := s.tc3(t, tc3Request{action: "CreateCredential", body: mustJSON(map[string]string{"Name": "off", "Policy": policy})})
	if r := s.tc3(t, tc3Request{action: "DisableCredential", body: mustJSON(map[string]string{"SecretId": off.Response.SecretId})}); r.code() != "" {
		t.Fatalf("DisableCredential: %s", r.code())
	}

	now := time.Now().Unix()
	create := func(alias string) string { return mustJSON(map[string]string{"Alias": alias}) }
	tests := []struct {
		name  string
		q     tc3Request
		code  string
		alias string // a CreateKey that must not have happened
	}{
		{"expired timestamp", tc3Request{action: "CreateKey", body: create("n1"), ts: now - 400}, "AuthFailure.SignatureExpire", "n1"},
		{"timestamp in the future", tc3Request{action: "CreateKey", body: create("n2"), ts: now + 400}, "AuthFailure.SignatureExpire", "n2"},
		{"wrong SecretKey", tc3Request{action: "CreateKey", body: create("n3"), id: adminID, key: "wrong" + adminKey}, "AuthFailure.SignatureFailure", "n3"},
		{"unknown SecretId", tc3Request{action: "CreateKey", body: create("n4"), id: "AKIDunknown000000000000000000000000", key: adminKey}, "AuthFailure.SecretIdNotFound", "n4"},
		{"body changed after signing", tc3Request{action: "CreateKey", body: create("n5"), mutate: func(r *http.Request) {
			b := create("n5x")
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader(b)), int64(len(b))
		}}, "AuthFailure.SignatureFailure", "n5x"},
		{"signed header changed", tc3Request{action: "CreateKey", body: create("n6"), mutate: func(r *http.Request) {
			r.Header.Set("Content-Type", "application/json; charset=utf-8")
		}}, "AuthFailure.SignatureFailure", "n6"},
		{"host changed", tc3Request{action: "CreateKey", body: create("n7"), mutate: func(r *http.Request) { r.Host = "evil.example:1" }}, "AuthFailure.SignatureFailure", "n7"},
		{"missing Authorization", tc3Request{action: "CreateKey", body: create("n8"), mutate: func(r *http.Request) { r.Header.Del("Authorization") }}, "AuthFailure", "n8"},
		{"malformed Authorization", tc3Request{action: "CreateKey", body: create("n9"), mutate: func(r *http.Request) { r.Header.Set("Authorization", "TC3-HMAC-SHA256 nonsense") }}, "AuthFailure.InvalidAuthorization", "n9"},
		{"temporary credential", tc3Request{action: "CreateKey", body: create("n10"), mutate: func(r *http.Request) { r.Header.Set("X-TC-Token", "tok") }}, "AuthFailure.TokenFailure", "n10"},
		{"wrong Version", tc3Request{action: "CreateKey", body: create("n11"), version: "2017-03-12"}, "NoSuchVersion", "n11"},
		{"unknown action", tc3Request{action: "CreateKeys", body: create("n12")}, "InvalidAction", "n12"},
		{"unknown parameter", tc3Request{action: "CreateKey", body: `{"Alias":"n13","Colour":"red"}`}, "UnknownParameter", "n13"},
		{"wrongly typed parameter", tc3Request{action: "CreateKey", body: `{"Alias":"n14","Type":"one"}`}, "InvalidParameter", "n14"},
		{"no permission for CreateKey", tc3Request{action: "CreateKey", body: create("n15"), id: appID, key: appKey}, "UnauthorizedOperation", "n15"},
		{"disabled credential", tc3Request{action: "CreateKey", body: create("n16"), id: off.Response.SecretId, key: off.Response.SecretKey}, "AuthFailure.SecretIdNotFound", "n16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := s.tc3(t, tt.q); r.code() != tt.code {
				t.Fatalf("code %q (%+v), want %q", r.code(), r.Response.Error, tt.code)
			}
			// Nothing changed: the alias is still free.
			if r := s.tc3(t, tc3Request{action: "CreateKey", body: create(tt.alias)}); r.code() != "" {
				t.Fatalf("state changed: alias %s taken (%s)", tt.alias, r.code())
			}
		})
	}

	t.Run("per-key permission", func(t *testing.T) {
		other := s.createKey("auth-other")
		pt := base64.StdEncoding.EncodeToString([]byte("x"))
		if r := s.tc3(t, tc3Request{action: "Encrypt", body: mustJSON(map[string]string{"KeyId": key, "Plaintext": pt}), id: appID, key: appKey}); r.code() != "" {
			t.Fatalf("allowed key: %s", r.code())
		}
		r := s.tc3(t, tc3Request{action: "Encrypt", body: mustJSON(map[string]string{"KeyId": other, "Plaintext": pt}), id: appID, key: appKey})
		if r.code() != "UnauthorizedOperation" {
			t.Fatalf("other key: %q", r.code())
		}
		// A blob of the other key cannot be decrypted by app either.
		blob := s.tc3(t, tc3Request{action: "Encrypt", body: mustJSON(map[string]string{"KeyId": other, "Plaintext": pt})}).Response.CiphertextBlob
		if r := s.tc3(t, tc3Request{action: "Decrypt", body: mustJSON(map[string]string{"CiphertextBlob": blob}), id: appID, key: appKey}); r.code() != "UnauthorizedOperation" || r.Response.Plaintext != "" {
			t.Fatalf("decrypt of another key's blob: %q", r.code())
		}
		// Legacy: 4102.
		v := s.signLegacy(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {other}, "plaintext": {pt}}, appID, appKey)
		if r := s.send(http.MethodPost, v); r.Code != 4102 {
			t.Fatalf("legacy not permitted: %d %q", r.Code, r.Message)
		}
	})

	t.Run("legacy", func(t *testing.T) {
		v := s.signLegacy(http.MethodPost, url.Values{"Action": {"CreateKey"}, "alias": {"legacy-replay"}}, adminID, adminKey)
		if r := s.send(http.MethodPost, v); r.Code != 0 {
			t.Fatalf("first: %d %q", r.Code, r.Message)
		}
		if r := s.send(http.MethodPost, v); r.Code != 4500 {
			t.Fatalf("replayed nonce: %d %q, want 4500", r.Code, r.Message)
		}
		for _, tc := range []struct {
			name string
			v    url.Values
			code int
		}{
			{"bad signature", s.signLegacy(http.MethodPost, url.Values{"Action": {"CreateKey"}, "alias": {"l1"}}, adminID, "wrong"+adminKey), 4100},
			{"unknown SecretId", s.signLegacy(http.MethodPost, url.Values{"Action": {"CreateKey"}, "alias": {"l2"}}, "AKIDunknown000000000000000000000000", adminKey), 4104},
			{"parameter changed after signing", func() url.Values {
				v := s.signLegacy(http.MethodPost, url.Values{"Action": {"CreateKey"}, "alias": {"l3"}}, adminID, adminKey)
				v.Set("alias", "l3x")
				return v
			}(), 4100},
			{"expired", func() url.Values {
				v := url.Values{"Action": {"CreateKey"}, "alias": {"l4"}, "SecretId": {adminID}, "Nonce": {"77"}, "Timestamp": {strconv.FormatInt(now-400, 10)}}
				var ps []tcsign.Param
				for k, vs := range v {
					ps = append(ps, tcsign.Param{Name: k, Value: vs[0]})
				}
				v.Set("Signature", tcsign.V1Sign(adminKey, "", tcsign.V1StringToSign("POST", strings.TrimPrefix(s.url, "http://"), "/v2/index.php", ps)))
				return v
			}(), 4500},
			{"unsigned", url.Values{"Action": {"CreateKey"}, "alias": {"l5"}}, 4100},
		} {
			if r := s.send(http.MethodPost, tc.v); r.Code != tc.code {
				t.Errorf("%s: %d %q, want %d", tc.name, r.Code, r.Message, tc.code)
			}
		}
		for _, alias := range []string{"l1", "l2", "l3", "l3x", "l4", "l5"} {
			if r := s.call(http.MethodPost, url.Values{"Action": {"CreateKey"}, "alias": {alias}}); r.Code != 0 {
				t.Errorf("state changed: alias %s: %d %q", alias, r.Code, r.Message)
			}
		}
	})

	// The store file holds no SecretKey in clear.
	s.stop()
	for _, name := range []string{"kms.db", "kms.db-wal"} {
		b, err := os.ReadFile(filepath.Join(data, name))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		for _, secret := range []string{adminKey, appKey, off.Response.SecretKey} {
			if bytes.Contains(b, []byte(secret)) {
				t.Fatalf("%s holds a SecretKey in clear", name)
			}
		}
	}
	db, _ := os.ReadFile(filepath.Join(data, "kms.db"))
	if !bytes.Contains(db, []byte(appID)) {
		t.Fatal("the store does not hold the credentials at all: the check above proves nothing")
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
