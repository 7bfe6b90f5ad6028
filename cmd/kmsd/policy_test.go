package main_test

// Policies and administration through the real server and the official Go
// SDK: the credential actions (hsmkms's own) are sent with the SDK's
// common client, the key actions with its kms client.

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tcerr "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/errors"
	tchttp "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/http"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"
)

// sdkCred is a credential used through the official SDK.
type sdkCred struct {
	t      *testing.T
	s      *server
	id     string
	key    string
	common *common.Client
	kms    *tckms.Client

	// The last call: the official SDKs sign neither the action nor a
	// nonce, so two calls with the same body in one second carry one
	// signature, which kmsd accepts with one action only (README,
	// "Security model"). call waits for the next second in that case.
	lastSecond           int64
	lastBody, lastAction string
}

func (s *server) sdkCred(t *testing.T, id, key string) *sdkCred {
	t.Helper()
	cpf := profile.NewClientProfile()
	cpf.HttpProfile.Endpoint = strings.TrimPrefix(s.url, "http://")
	cpf.HttpProfile.Scheme = "HTTP"
	cpf.HttpProfile.ReqTimeout = 10
	return &sdkCred{t: t, s: s, id: id, key: key,
		common: common.NewCommonClient(common.NewCredential(id, key), "ap-guangzhou", cpf),
		kms:    sdkClient(t, s, "TC3-HMAC-SHA256", "POST", id, key)}
}

// call sends an action with the SDK's common client and returns the
// Response object, or the error code and message.
func (c *sdkCred) call(action string, params map[string]any) (resp map[string]any, code, msg string) {
	c.t.Helper()
	req := tchttp.NewCommonRequest("kms", "2019-01-18", action)
	if err := req.SetActionParameters(params); err != nil {
		c.t.Fatal(err)
	}
	sent, _ := json.Marshal(params)
	if time.Now().Unix() == c.lastSecond && string(sent) == c.lastBody && action != c.lastAction {
		nextSecond()
	}
	c.lastSecond, c.lastBody, c.lastAction = time.Now().Unix(), string(sent), action
	out := tchttp.NewCommonResponse()
	if err := c.common.Send(req, out); err != nil {
		var e *tcerr.TencentCloudSDKError
		if !errors.As(err, &e) {
			c.t.Fatalf("%s: not an SDK error: %v", action, err)
		}
		return nil, e.Code, e.Message
	}
	var body struct{ Response map[string]any }
	if err := json.Unmarshal(out.GetBody(), &body); err != nil {
		c.t.Fatal(err)
	}
	return body.Response, "", ""
}

func (c *sdkCred) mustCall(action string, params map[string]any) map[string]any {
	c.t.Helper()
	r, code, msg := c.call(action, params)
	if code != "" {
		c.t.Fatalf("%s as %s: %s %s", action, c.id, code, msg)
	}
	return r
}

// create makes a credential with policy (statements of a 2.0 policy) and
// returns a caller for it.
func (c *sdkCred) create(name, statements string) *sdkCred {
	c.t.Helper()
	r := c.mustCall("CreateCredential", map[string]any{"Name": name, "Policy": `{"version":"2.0","statement":[` + statements + `]}`})
	return c.s.sdkCred(c.t, r["SecretId"].(string), secret(r["SecretKey"].(string)))
}

// policyOf returns the stored policy of a credential, as ListCredentials
// shows it.
func (c *sdkCred) policyOf(id string) (policy string, enabled bool) {
	c.t.Helper()
	r := c.mustCall("ListCredentials", map[string]any{})
	for _, x := range r["Credentials"].([]any) {
		m := x.(map[string]any)
		if m["SecretId"] == id {
			return m["Policy"].(string), m["Enabled"].(bool)
		}
	}
	c.t.Fatalf("credential %s not listed", id)
	return "", false
}

func stmt(effect, actions, resources string) string {
	return fmt.Sprintf(`{"effect":%q,"action":%s,"resource":%s}`, effect, actions, resources)
}

// A credential with key-action wildcards, or with credential rights of its
// own, cannot raise itself or anyone above what it holds, nor lock out an
// administrator.
func TestPolicyAdministrationThroughSDK(t *testing.T) {
	s, tok, data := newServer(t)
	admin := s.sdkCred(t, adminID, adminKey)
	keyA := s.createKey("pol-a")

	narrow := stmt("allow", `["kms:Encrypt"]`, `"`+keyA+`"`)
	app := admin.create("app", narrow)
	off := admin.create("off", narrow)
	admin.mustCall("DisableCredential", map[string]any{"SecretId": off.id})
	updater := admin.create("updater", stmt("allow", `"kms:Update*"`, `"*"`))
	creator := admin.create("creator", stmt("allow", `"kms:Create*"`, `"*"`))
	enabler := admin.create("enabler", stmt("allow", `"kms:Enable*"`, `"*"`))
	disabler := admin.create("disabler", stmt("allow", `"kms:Disable*"`, `"*"`))
	manager := admin.create("manager", stmt("allow", `"kms-admin:*"`, `"*"`)+","+stmt("allow", `["kms:Encrypt","kms:Decrypt"]`, `"`+keyA+`"`))
	fullPolicy := `{"version":"2.0","statement":[{"effect":"allow","action":["kms:*","kms-admin:*"],"resource":["*"]}]}`
	appPolicy, _ := admin.policyOf(app.id)

	tests := []struct {
		name   string
		caller *sdkCred
		action string
		params map[string]any
		code   string
	}{
		{"kms:Update* updates its own policy", updater, "UpdateCredentialPolicy", map[string]any{"SecretId": updater.id, "Policy": fullPolicy}, "UnauthorizedOperation"},
		{"kms:Update* updates another's policy", updater, "UpdateCredentialPolicy", map[string]any{"SecretId": app.id, "Policy": fullPolicy}, "UnauthorizedOperation"},
		{"kms:Create* creates a credential", creator, "CreateCredential", map[string]any{"Name": "x", "Policy": fullPolicy}, "UnauthorizedOperation"},
		{"kms:Enable* enables a disabled credential", enabler, "EnableCredential", map[string]any{"SecretId": off.id}, "UnauthorizedOperation"},
		{"kms:Disable* disables the administrator", disabler, "DisableCredential", map[string]any{"SecretId": adminID}, "UnauthorizedOperation"},
		{"kms:Disable* disables a credential", disabler, "DisableCredential", map[string]any{"SecretId": app.id}, "UnauthorizedOperation"},
		{"manager disables the administrator", manager, "DisableCredential", map[string]any{"SecretId": adminID}, "UnauthorizedOperation"},
		{"manager deletes the administrator", manager, "DeleteCredential", map[string]any{"SecretId": adminID}, "UnauthorizedOperation"},
		{"manager narrows the administrator", manager, "UpdateCredentialPolicy", map[string]any{"SecretId": adminID, "Policy": appPolicy}, "UnauthorizedOperation"},
		{"manager mints an administrator", manager, "CreateCredential", map[string]any{"Name": "x", "Policy": fullPolicy}, "UnauthorizedOperation"},
		{"manager mints a wider credential", manager, "CreateCredential", map[string]any{"Name": "x", "Policy": `{"version":"2.0","statement":[` + stmt("allow", `"kms:Encrypt"`, `"*"`) + `]}`}, "UnauthorizedOperation"},
		{"manager widens app", manager, "UpdateCredentialPolicy", map[string]any{"SecretId": app.id, "Policy": `{"version":"2.0","statement":[` + stmt("allow", `"kms:*"`, `"`+keyA+`"`) + `]}`}, "UnauthorizedOperation"},
		{"manager widens itself", manager, "UpdateCredentialPolicy", map[string]any{"SecretId": manager.id, "Policy": appPolicy}, "UnauthorizedOperation"},
		{"administrator disables itself", admin, "DisableCredential", map[string]any{"SecretId": adminID}, "UnauthorizedOperation"},
		{"administrator deletes itself", admin, "DeleteCredential", map[string]any{"SecretId": adminID}, "UnauthorizedOperation"},
		// What stays allowed.
		{"manager mints a narrower credential", manager, "CreateCredential", map[string]any{"Name": "y", "Policy": appPolicy}, ""},
		{"manager disables app", manager, "DisableCredential", map[string]any{"SecretId": app.id}, ""},
		{"manager enables app", manager, "EnableCredential", map[string]any{"SecretId": app.id}, ""},
		{"administrator disables the manager", admin, "DisableCredential", map[string]any{"SecretId": manager.id}, ""},
		{"administrator enables the manager", admin, "EnableCredential", map[string]any{"SecretId": manager.id}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, code, msg := tt.caller.call(tt.action, tt.params); code != tt.code {
				t.Fatalf("%s: %q %s, want %q", tt.action, code, msg, tt.code)
			}
		})
	}
	// Nothing refused changed anything.
	if p, enabled := admin.policyOf(adminID); !enabled || !strings.Contains(p, `"kms-admin:*"`) {
		t.Fatalf("administrator now %v %s", enabled, p)
	}
	if p, _ := admin.policyOf(updater.id); strings.Contains(p, "kms-admin") {
		t.Fatalf("updater's policy changed: %s", p)
	}
	if p, _ := admin.policyOf(app.id); p != appPolicy {
		t.Fatalf("app's policy changed: %s", p)
	}
	if _, code, _ := off.call("ListCredentials", map[string]any{}); code != "AuthFailure.SecretIdNotFound" {
		t.Fatalf("the disabled credential authenticates: %q", code)
	}
	// The key-action wildcards still do what they are for.
	if _, code, msg := creator.call("CreateKey", map[string]any{"Alias": "by-creator"}); code != "" {
		t.Fatalf("kms:Create* cannot CreateKey: %s %s", code, msg)
	}
	if _, code, msg := updater.call("UpdateKeyDescription", map[string]any{"KeyId": keyA, "Description": "by updater"}); code != "" {
		t.Fatalf("kms:Update* cannot UpdateKeyDescription: %s %s", code, msg)
	}
	// The refusal says why.
	if _, _, msg := manager.call("CreateCredential", map[string]any{"Name": "x", "Policy": fullPolicy}); !strings.Contains(msg, "does not hold") {
		t.Fatalf("refusal message %q", msg)
	}
	if _, _, msg := admin.call("DisableCredential", map[string]any{"SecretId": adminID}); !strings.Contains(msg, "its own") {
		t.Fatalf("refusal message %q", msg)
	}

	t.Run("stored before the upgrade", func(t *testing.T) {
		// Credentials stored by a release before the kms-admin: namespace:
		// the administrator policy and a key administrator's kms:Update*,
		// kms:Delete* (written as that release stored them).
		s.stop()
		old := func(id, statements string) string {
			return `UPDATE credentials SET policy = '{"version":"2.0","statement":[` + statements + `]}' WHERE secret_id = '` + id + `'`
		}
		downgradeSQLite(t, tok, data, []string{
			old(adminID, `{"effect":"allow","action":["kms:*"],"resource":["*"]}`),
			old(updater.id, `{"effect":"allow","action":["kms:Update*","kms:Delete*","kms:Disable*"],"resource":["*"]}`),
			old(disabler.id, `{"effect":"allow","action":["*"],"resource":["*"]},{"effect":"deny","action":["kms:Disable*"],"resource":["*"]}`),
		})
		s = startKMSD(t, kmsdEnv(tok, data))
		admin, updater, disabler := s.sdkCred(t, adminID, adminKey), s.sdkCred(t, updater.id, updater.key), s.sdkCred(t, disabler.id, disabler.key)
		if _, code, msg := updater.call("UpdateCredentialPolicy", map[string]any{"SecretId": updater.id, "Policy": fullPolicy}); code != "UnauthorizedOperation" {
			t.Fatalf("old kms:Update* updates its own policy: %q %s", code, msg)
		}
		if _, code, msg := updater.call("DeleteCredential", map[string]any{"SecretId": adminID}); code != "UnauthorizedOperation" {
			t.Fatalf("old kms:Delete* deletes the administrator: %q %s", code, msg)
		}
		// An old deny still denies what it denied.
		if _, code, msg := disabler.call("DisableCredential", map[string]any{"SecretId": app.id}); code != "UnauthorizedOperation" {
			t.Fatalf("old deny kms:Disable* lets DisableCredential through: %q %s", code, msg)
		}
		// The old administrator is still one.
		made := admin.create("after-upgrade", stmt("allow", `["kms:*","kms-admin:*"]`, `"*"`))
		admin.mustCall("UpdateCredentialPolicy", map[string]any{"SecretId": updater.id, "Policy": appPolicy})
		made.mustCall("DisableCredential", map[string]any{"SecretId": app.id})
		if !strings.Contains(s.stderr.String(), "predates the kms-admin: namespace") {
			t.Fatal("the upgrade reading was not logged")
		}
	})
}

// A Decrypt deny cannot be got round with ReEncrypt.
func TestReEncryptHonoursDecryptDenyThroughSDK(t *testing.T) {
	s, _, _ := newServer(t)
	admin := s.sdkCred(t, adminID, adminKey)
	keyA, keyB := s.createKey("re-a"), s.createKey("re-b")
	cred := admin.create("re", stmt("allow", `"kms:*"`, `"*"`)+","+stmt("deny", `"kms:Decrypt"`, `"`+keyB+`"`))

	enc := tckms.NewEncryptRequest()
	enc.KeyId = common.StringPtr(keyB)
	enc.Plaintext = common.StringPtr(base64.StdEncoding.EncodeToString([]byte(secret("under B, not for re"))))
	er, err := admin.kms.Encrypt(enc)
	if err != nil {
		t.Fatal(err)
	}
	dec := tckms.NewDecryptRequest()
	dec.CiphertextBlob = er.Response.CiphertextBlob
	if _, err := cred.kms.Decrypt(dec); sdkCode(err) != "UnauthorizedOperation" {
		t.Fatalf("Decrypt under B: %v", err)
	}
	re := tckms.NewReEncryptRequest()
	re.CiphertextBlob = er.Response.CiphertextBlob
	re.DestinationKeyId = common.StringPtr(keyA)
	if r, err := cred.kms.ReEncrypt(re); sdkCode(err) != "UnauthorizedOperation" {
		t.Fatalf("ReEncrypt from B to A: %v %v", r, err)
	}
	// In place, too.
	re.DestinationKeyId = common.StringPtr(keyB)
	if _, err := cred.kms.ReEncrypt(re); sdkCode(err) != "UnauthorizedOperation" {
		t.Fatalf("ReEncrypt from B to B: %v", err)
	}
	// The administrator still can.
	re.DestinationKeyId = common.StringPtr(keyA)
	if _, err := admin.kms.ReEncrypt(re); err != nil {
		t.Fatalf("administrator ReEncrypt: %v", err)
	}
}

// Policies that could never match are refused when saved, through the API
// and the local CLI, naming the statement and the value.
func TestPolicyValidationThroughSDK(t *testing.T) {
	s, tok, data := newServer(t)
	admin := s.sdkCred(t, adminID, adminKey)
	keyB := s.createKey("val-b")
	app := admin.create("app", stmt("allow", `"kms:Encrypt"`, `"*"`))
	upper := strings.ToUpper(keyB)
	forms := []struct{ name, action, resource, want string }{
		{"misspelt action", "kms:Decrpyt", keyB, `"kms:Decrpyt"`},
		{"key/ without qcs", "kms:Decrypt", "key/" + keyB, `"key/` + keyB + `"`},
		{"upper-case key id", "kms:Decrypt", upper, `"` + upper + `"`},
		{"QCS", "kms:Decrypt", "QCS::kms:ap-guangzhou:uin/1:key/" + keyB, `"QCS::kms`},
		{"Key/", "kms:Decrypt", "qcs::kms:ap-guangzhou:uin/1:Key/" + keyB, `:Key/`},
		{"trailing slash", "kms:Decrypt", "qcs::kms:ap-guangzhou:uin/1:key/" + keyB + "/", keyB + `/"`},
		{"another service", "kms:Decrypt", "qcs::cos:ap-guangzhou:uin/1:*", `"cos"`},
		{"credential action in kms:", "kms:UpdateCredentialPolicy", "*", `kms-admin:UpdateCredentialPolicy`},
		{"wildcard matching no action", "kms:Destroy*", "*", `"kms:Destroy*" matches no action`},
	}
	for _, f := range forms {
		t.Run(f.name, func(t *testing.T) {
			doc := `{"version":"2.0","statement":[` + stmt("allow", `"kms:Encrypt"`, `"*"`) + "," + stmt("deny", `"`+f.action+`"`, `"`+f.resource+`"`) + `]}`
			_, code, msg := admin.call("CreateCredential", map[string]any{"Name": "bad", "Policy": doc})
			if code != "InvalidParameterValue" || !strings.Contains(msg, "statement[1]") || !strings.Contains(msg, f.want) {
				t.Fatalf("CreateCredential: %q %q", code, msg)
			}
			_, code, msg = admin.call("UpdateCredentialPolicy", map[string]any{"SecretId": app.id, "Policy": doc})
			if code != "InvalidParameterValue" || !strings.Contains(msg, "statement[1]") || !strings.Contains(msg, f.want) {
				t.Fatalf("UpdateCredentialPolicy: %q %q", code, msg)
			}
		})
	}
	if r := admin.mustCall("ListCredentials", map[string]any{}); len(r["Credentials"].([]any)) != 2 {
		t.Fatalf("credentials made anyway: %v", r)
	}

	// kmsctl: -admin makes a full administrator; a credential cannot
	// disable itself.
	kmsctl := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "kmsctl"), append([]string{"-endpoint", s.url}, args...)...)
		cmd.Env = append(os.Environ(), "TENCENTCLOUD_SECRET_ID="+adminID, "TENCENTCLOUD_SECRET_KEY="+adminKey)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := kmsctl("credentials", "create", "-admin", "-name", "ctl-admin")
	if err != nil {
		t.Fatalf("kmsctl credentials create -admin: %v\n%s", err, out)
	}
	var ctlID, ctlKey string
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "TENCENTCLOUD_SECRET_ID="); ok {
			ctlID = v
		}
		if v, ok := strings.CutPrefix(line, "TENCENTCLOUD_SECRET_KEY="); ok {
			ctlKey = secret(v)
		}
	}
	ctlAdmin := s.sdkCred(t, ctlID, ctlKey)
	ctlAdmin.mustCall("DisableCredential", map[string]any{"SecretId": app.id})
	ctlAdmin.mustCall("EnableCredential", map[string]any{"SecretId": app.id})
	if out, err := kmsctl("credentials", "disable", "-secret-id", adminID); err == nil || !strings.Contains(out, "UnauthorizedOperation") {
		t.Fatalf("kmsctl credentials disable of itself: %v\n%s", err, out)
	}

	// The local CLI refuses them too.
	s.stop()
	file := filepath.Join(t.TempDir(), "bad.json")
	doc := `{"version":"2.0","statement":[` + stmt("deny", `"kms:Decrypt"`, `"qcs::cos:ap-guangzhou:uin/1:*"`) + `]}`
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"create", "import"} {
		cmd := exec.Command(filepath.Join(binDir, "kmsd"), "credentials", verb, "-name", "cli", "-policy-file", file)
		cmd.Env = append(kmsdEnv(tok, data), "TENCENTCLOUD_SECRET_ID=AKIDclipolicy00000000000000000000000", "TENCENTCLOUD_SECRET_KEY="+secret("cliPolicySecretKey00000000000000"))
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), `the service must be kms, not "cos"`) {
			t.Fatalf("kmsd credentials %s with an invalid policy: %v\n%s", verb, err, out)
		}
	}
}
