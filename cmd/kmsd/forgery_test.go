package main_test

// What someone who captured a signed request can still do with it: the
// official Go SDK's requests are captured on the wire (a recording
// transport) and re-sent, changed, with plain net/http.

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"

	"hsmkms/softhsm"
	"hsmkms/tcsign"
)

// recorder is an http.RoundTripper that keeps a copy of the last request
// it sent.
type recorder struct {
	mu     sync.Mutex
	url    string
	header http.Header
	body   []byte
}

func (c *recorder) RoundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	c.mu.Lock()
	c.url, c.header, c.body = r.URL.String(), r.Header.Clone(), body
	c.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

// resend sends the captured request again to base (the same server when
// empty), after change edits its headers, and returns the reply.
func (c *recorder) resend(t *testing.T, base string, change func(h http.Header)) apiReply {
	t.Helper()
	c.mu.Lock()
	target, h, body := c.url, c.header.Clone(), bytes.Clone(c.body)
	c.mu.Unlock()
	if base != "" {
		u, _ := url.Parse(target)
		b, _ := url.Parse(base)
		u.Host = b.Host
		target = u.String()
	}
	req, err := http.NewRequest(http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	if base != "" {
		// The signature covers the Host the SDK signed.
		u, _ := url.Parse(c.url)
		req.Host = u.Host
	}
	if change != nil {
		change(req.Header)
	}
	return doAPI(t, req)
}

func doAPI(t *testing.T, req *http.Request) apiReply {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r apiReply
	if err := json.Unmarshal(raw, &r); err != nil || r.Response.RequestId == "" {
		t.Fatalf("HTTP %d, not a Tencent envelope: %s", resp.StatusCode, raw)
	}
	return r
}

// recordedSDK is the official SDK (TC3) of the administrator, recorded.
func recordedSDK(t *testing.T, s *server, signMethod string) (*tckms.Client, *common.Client, *recorder) {
	rec := &recorder{}
	c := sdkClient(t, s, signMethod, "POST", adminID, adminKey)
	c.WithHttpTransport(rec)
	cpf := profile.NewClientProfile()
	cpf.HttpProfile.Endpoint = strings.TrimPrefix(s.url, "http://")
	cpf.HttpProfile.Scheme = "HTTP"
	cpf.SignMethod = signMethod
	cc := common.NewCommonClient(common.NewCredential(adminID, adminKey), "ap-guangzhou", cpf).WithHttpTransport(rec)
	return c, cc, rec
}

// sdkCall calls an hsmkms action the SDK has no method for (credentials).
func sdkCall(t *testing.T, cc *common.Client, action string, params map[string]any) error {
	t.Helper()
	req := tchttp.NewCommonRequest("kms", "2019-01-18", action)
	if err := req.SetActionParameters(params); err != nil {
		t.Fatal(err)
	}
	return cc.Send(req, tchttp.NewCommonResponse())
}

func keyState(t *testing.T, c *tckms.Client, keyID string) string {
	t.Helper()
	req := tckms.NewDescribeKeyRequest()
	req.KeyId = common.StringPtr(keyID)
	resp, err := c.DescribeKey(req)
	if err != nil {
		t.Fatal(err)
	}
	return *resp.Response.KeyMetadata.KeyState
}

func setAction(a string) func(http.Header) { return func(h http.Header) { h.Set("X-TC-Action", a) } }

// TestCapturedTC3RequestKeepsItsAction: an administrator's signed request,
// captured, cannot be re-sent with another X-TC-Action (which the official
// SDKs do not sign) inside the signature window.
func TestCapturedTC3RequestKeepsItsAction(t *testing.T) {
	s, _, _ := newServer(t)
	sdk, cc, rec := recordedSDK(t, s, "TC3-HMAC-SHA256")
	keyID := s.createKey("forgery-target")

	if st := keyState(t, sdk, keyID); st != "Enabled" {
		t.Fatalf("state %s", st)
	}
	if !strings.Contains(rec.header.Get("Authorization"), "SignedHeaders=content-type;host,") {
		t.Fatalf("the SDK signed more than content-type;host: %s", rec.header.Get("Authorization"))
	}
	// DescribeKey {"KeyId":K} re-sent as DisableKey.
	if r := rec.resend(t, "", setAction("DisableKey")); r.code() != "AuthFailure.SignatureFailure" {
		t.Errorf("DescribeKey re-sent as DisableKey: %q", r.code())
	}
	if st := keyState(t, sdk, keyID); st != "Enabled" {
		t.Errorf("the forged DisableKey disabled the key: %s", st)
	}
	// Re-sent unchanged: served (the SDKs re-send a signed request as it
	// is when they retry, and two identical calls in one second carry one
	// signature).
	if r := rec.resend(t, "", nil); r.code() != "" {
		t.Errorf("re-sent unchanged: %q", r.code())
	}

	// DisableCredential re-sent as EnableCredential.
	made := s.tc3(t, tc3Request{action: "CreateCredential", body: mustJSON(map[string]string{"Name": "victim",
		"Policy": `{"version":"2.0","statement":[{"effect":"allow","action":["kms:Encrypt"],"resource":["*"]}]}`})})
	if made.code() != "" {
		t.Fatal(made.code())
	}
	victimID, victimKey := made.Response.SecretId, secret(made.Response.SecretKey)
	if err := sdkCall(t, cc, "DisableCredential", map[string]any{"SecretId": victimID}); err != nil {
		t.Fatal(err)
	}
	if r := rec.resend(t, "", setAction("EnableCredential")); r.code() != "AuthFailure.SignatureFailure" {
		t.Errorf("DisableCredential re-sent as EnableCredential: %q", r.code())
	}
	enc := tckms.NewEncryptRequest()
	enc.KeyId, enc.Plaintext = common.StringPtr(keyID), common.StringPtr(b64("x"))
	if _, err := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", victimID, victimKey).Encrypt(enc); sdkCode(err) != "AuthFailure.SecretIdNotFound" {
		t.Fatalf("the disabled credential works again: %v", err)
	}
}

// TestSignedActionRequired: with require_signed_action, the official SDKs'
// requests (which cannot sign x-tc-action) are refused and kmsctl's (which
// sign it) are served; a signed action cannot be changed.
func TestSignedActionRequired(t *testing.T) {
	tok := newTokenEnv(t)
	s := startKMSD(t, append(tok, "KMSD_REQUIRE_SIGNED_ACTION=true"))
	sdk := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	if _, err := sdk.ListKeys(tckms.NewListKeysRequest()); sdkCode(err) != "AuthFailure.InvalidAuthorization" {
		t.Fatalf("SDK request without a signed action: %v", err)
	}
	cmd := exec.Command(filepath.Join(binDir, "kmsctl"), "-endpoint", s.url, "create-key", "-alias", "signed")
	cmd.Env = append(os.Environ(), "TENCENTCLOUD_SECRET_ID="+adminID, "TENCENTCLOUD_SECRET_KEY="+adminKey)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "keyId") {
		t.Fatalf("kmsctl create-key: %v\n%s", err, out)
	}
	// A request with a signed action, re-sent as another action.
	host := strings.TrimPrefix(s.url, "http://")
	body := `{"Alias":"signed-2"}`
	ts := time.Now().Unix()
	send := func(action string) apiReply {
		req, _ := http.NewRequest(http.MethodPost, s.url+"/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-TC-Action", action)
		req.Header.Set("X-TC-Version", "2019-01-18")
		req.Header.Set("X-TC-Timestamp", strconv.FormatInt(ts, 10))
		req.Header.Set("Authorization", tcsign.SignTC3Action(adminID, adminKey, "kms", http.MethodPost, host, "application/json", "", "CreateKey", ts, []byte(body)))
		return doAPI(t, req)
	}
	if r := send("UpdateAlias"); r.code() != "AuthFailure.SignatureFailure" {
		t.Fatalf("signed CreateKey sent as UpdateAlias: %q", r.code())
	}
	if r := send("CreateKey"); r.code() != "" {
		t.Fatalf("signed CreateKey: %q", r.code())
	}
}

// newTokenEnv is a fresh token and data directory with the administrator
// imported.
func newTokenEnv(t *testing.T) []string {
	env := kmsdEnv(softhsm.NewTokenNoEnv(t), t.TempDir())
	bootstrap(t, env)
	return env
}

// TestSignatureV1Replays: API 3.0 with HmacSHA256 (form POST, as the SDK
// sends it) refuses an exact replay; the legacy API keys its replay check
// on (SecretId, Nonce, Timestamp), so two requests that draw one Nonce
// both pass while a replay is refused.
func TestSignatureV1Replays(t *testing.T) {
	s, _, _ := newServer(t)
	sdk, _, rec := recordedSDK(t, s, "HmacSHA256")
	if _, err := sdk.ListKeys(tckms.NewListKeysRequest()); err != nil {
		t.Fatal(err)
	}
	if ct := rec.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		t.Fatalf("the SDK did not send a v1 form: %q", ct)
	}
	if r := rec.resend(t, "", nil); r.code() != "AuthFailure.SignatureFailure" {
		t.Errorf("API 3.0 HmacSHA256 replay: %q", r.code())
	}

	key := s.createKey("nonce")
	host := strings.TrimPrefix(s.url, "http://")
	legacy := func(ts int64) url.Values {
		v := url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("n")}, "SecretId": {adminID},
			"Nonce": {"31337"}, "Timestamp": {strconv.FormatInt(ts, 10)}, "SignatureMethod": {"HmacSHA256"}}
		var ps []tcsign.Param
		for k, vs := range v {
			ps = append(ps, tcsign.Param{Name: k, Value: vs[0]})
		}
		v.Set("Signature", tcsign.V1Sign(adminKey, "HmacSHA256", tcsign.V1StringToSign("POST", host, "/v2/index.php", ps)))
		return v
	}
	now := time.Now().Unix()
	first, second := legacy(now), legacy(now-1)
	for i, v := range []url.Values{first, second} {
		if r := s.send(http.MethodPost, v); r.Code != 0 {
			t.Fatalf("request %d with Nonce 31337: %d %q", i, r.Code, r.Message)
		}
	}
	if r := s.send(http.MethodPost, first); r.Code != 4500 {
		t.Fatalf("replay: %d %q, want 4500", r.Code, r.Message)
	}
}

// TestTC3ScopeAndHostPinned: a request signed for another service and host
// (as one captured against Tencent Cloud, with a credential imported from
// there) is refused; with allowed_hosts, so is one for service kms with
// Tencent Cloud's host. The official SDK keeps working.
func TestTC3ScopeAndHostPinned(t *testing.T) {
	env := newTokenEnv(t)
	s := startKMSD(t, append(env, "KMSD_ALLOWED_HOSTS=127.0.0.1,localhost"))
	send := func(service, host string) apiReply {
		body := `{"Limit":1}`
		ts := time.Now().Unix()
		req, _ := http.NewRequest(http.MethodPost, s.url+"/", strings.NewReader(body))
		req.Host = host
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-TC-Action", "ListKeys")
		req.Header.Set("X-TC-Version", "2019-01-18")
		req.Header.Set("X-TC-Timestamp", strconv.FormatInt(ts, 10))
		req.Header.Set("Authorization", tcsign.SignTC3(adminID, adminKey, service, http.MethodPost, host, "application/json", "", ts, []byte(body)))
		return doAPI(t, req)
	}
	for _, tc := range []struct{ service, host, want string }{
		{"cvm", "cvm.tencentcloudapi.com", "AuthFailure.InvalidAuthorization"},
		{"kms", "kms.tencentcloudapi.com", "AuthFailure.InvalidAuthorization"},
		{"cvm", strings.TrimPrefix(s.url, "http://"), "AuthFailure.InvalidAuthorization"},
		{"kms", strings.TrimPrefix(s.url, "http://"), ""},
	} {
		if r := send(tc.service, tc.host); r.code() != tc.want {
			t.Errorf("service %s, Host %s: %q, want %q", tc.service, tc.host, r.code(), tc.want)
		}
	}
	if _, err := s.sdk().ListKeys(tckms.NewListKeysRequest()); err != nil {
		t.Fatalf("official SDK: %v", err)
	}
	// Without allowed_hosts, the cvm request is refused all the same.
	d, _, _ := newServer(t)
	body := `{}`
	ts := time.Now().Unix()
	req, _ := http.NewRequest(http.MethodPost, d.url+"/", strings.NewReader(body))
	req.Host = "cvm.tencentcloudapi.com"
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", "ListKeys")
	req.Header.Set("X-TC-Version", "2019-01-18")
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("Authorization", tcsign.SignTC3(adminID, adminKey, "cvm", http.MethodPost, "cvm.tencentcloudapi.com", "application/json", "", ts, []byte(body)))
	if r := doAPI(t, req); r.code() != "AuthFailure.InvalidAuthorization" {
		t.Fatalf("default: request signed for cvm: %q", r.code())
	}
}
