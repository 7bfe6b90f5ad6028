package httpapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"hsmkms/kms"
)

// refusingAdmin is a domain whose key and credential administration
// refuses everything with err: what reaches it proves the edge let the
// request through to the domain.
type refusingAdmin struct{ err error }

func (a refusingAdmin) DescribeKey(context.Context, string) (kms.KeyMetadata, error) {
	return kms.KeyMetadata{}, a.err
}
func (a refusingAdmin) DescribeKeys(context.Context, []string) ([]kms.KeyMetadata, error) {
	return nil, a.err
}
func (a refusingAdmin) ListKeys(context.Context, kms.ListKeysInput) (kms.ListKeysResult, error) {
	return kms.ListKeysResult{}, a.err
}
func (a refusingAdmin) ListKeyDetail(context.Context, kms.ListKeysInput) (kms.ListKeysResult, error) {
	return kms.ListKeysResult{}, a.err
}
func (a refusingAdmin) KeyVersions(context.Context, string) ([]kms.VersionInfo, error) {
	return nil, a.err
}
func (a refusingAdmin) UsageLimit() uint64                             { return 0 }
func (a refusingAdmin) EnableKey(context.Context, string) error        { return a.err }
func (a refusingAdmin) DisableKey(context.Context, string) error       { return a.err }
func (a refusingAdmin) EnableKeys(context.Context, []string) error     { return a.err }
func (a refusingAdmin) DisableKeys(context.Context, []string) error    { return a.err }
func (a refusingAdmin) ArchiveKey(context.Context, string) error       { return a.err }
func (a refusingAdmin) CancelKeyArchive(context.Context, string) error { return a.err }
func (a refusingAdmin) ScheduleKeyDeletion(context.Context, string, int) (kms.KeyMetadata, error) {
	return kms.KeyMetadata{}, a.err
}
func (a refusingAdmin) CancelKeyDeletion(context.Context, string) (kms.KeyMetadata, error) {
	return kms.KeyMetadata{}, a.err
}
func (a refusingAdmin) UpdateAlias(context.Context, string, string) error          { return a.err }
func (a refusingAdmin) UpdateKeyDescription(context.Context, string, string) error { return a.err }
func (a refusingAdmin) RotateKey(context.Context, string) (kms.KeyMetadata, error) {
	return kms.KeyMetadata{}, a.err
}
func (a refusingAdmin) EnableKeyRotation(context.Context, string, int) error { return a.err }
func (a refusingAdmin) DisableKeyRotation(context.Context, string) error     { return a.err }
func (a refusingAdmin) GetKeyRotationStatus(context.Context, string) (kms.KeyMetadata, error) {
	return kms.KeyMetadata{}, a.err
}
func (a refusingAdmin) GenerateDataKey(context.Context, kms.GenerateDataKeyInput) (kms.GenerateDataKeyResult, error) {
	return kms.GenerateDataKeyResult{}, a.err
}
func (a refusingAdmin) GenerateRandom(context.Context, int) ([]byte, error) { return nil, a.err }
func (a refusingAdmin) ReEncrypt(context.Context, kms.ReEncryptInput) (kms.ReEncryptResult, error) {
	return kms.ReEncryptResult{}, a.err
}
func (a refusingAdmin) CreateCredential(context.Context, string, kms.Policy) (kms.CredentialInfo, string, error) {
	return kms.CredentialInfo{}, "", a.err
}
func (a refusingAdmin) ListCredentials(context.Context) ([]kms.CredentialInfo, error) {
	return nil, a.err
}
func (a refusingAdmin) SetCredentialEnabled(context.Context, string, bool) error { return a.err }
func (a refusingAdmin) UpdateCredentialPolicy(context.Context, string, kms.Policy) error {
	return a.err
}
func (a refusingAdmin) DeleteCredential(context.Context, string) error { return a.err }

// Every API 3.0 action of the table, through the edge: an unknown
// parameter is refused before the domain is called; an empty request is
// refused as MissingParameter by the actions that require a parameter,
// and reaches the domain (whose refusal comes back as its code) for the
// others; a complete request reaches the domain.
func TestEveryAPI3Action(t *testing.T) {
	refusal := errors.New("kms: unauthorized operation: " + "test")
	refusal = errors.Join(kms.ErrUnauthorized, refusal)
	admin := refusingAdmin{err: refusal}
	s := New(&fakeKMS{CredentialAdmin: admin, KeyAdmin: admin, TagAdmin: admin, err: refusal}, Config{Logger: discardLogger()})
	const key = "9999aed0-4956-11e9-bc70-5254005e86b4"
	complete := map[string]string{
		"CreateKey": `{"Alias":"a"}`, "Encrypt": `{"KeyId":"` + key + `","Plaintext":"aGk="}`, "Decrypt": `{"CiphertextBlob":"YmxvYg=="}`,
		"GenerateDataKey": `{"KeyId":"` + key + `","KeySpec":"AES_256"}`, "ReEncrypt": `{"CiphertextBlob":"YmxvYg=="}`,
		"GenerateRandom": `{"NumberOfBytes":16}`, "DescribeKeys": `{"KeyIds":["` + key + `"]}`,
		"EnableKeys": `{"KeyIds":["` + key + `"]}`, "DisableKeys": `{"KeyIds":["` + key + `"]}`,
		"ListKeys": `{}`, "ListKeyDetail": `{}`, "ListCredentials": `{}`,
		"UpdateAlias": `{"KeyId":"` + key + `","Alias":"b"}`, "UpdateKeyDescription": `{"KeyId":"` + key + `","Description":"d"}`,
		"ScheduleKeyDeletion": `{"KeyId":"` + key + `","PendingWindowInDays":7}`, "EnableKeyRotation": `{"KeyId":"` + key + `"}`,
		"GetParametersForImport": `{"KeyId":"` + key + `","WrappingAlgorithm":"RSAES_OAEP_SHA_256","WrappingKeySpec":"RSA_2048"}`,
		"ImportKeyMaterial":      `{"KeyId":"` + key + `","EncryptedKeyMaterial":"bQ==","ImportToken":"dA==","ValidTo":0}`,
		"CreateCredential":       `{"Name":"n","Policy":"{\"version\":\"2.0\",\"statement\":[{\"effect\":\"allow\",\"action\":[\"kms:Encrypt\"],\"resource\":[\"*\"]}]}"}`,
		"UpdateCredentialPolicy": `{"SecretId":"AKIDx","Policy":"{\"version\":\"2.0\",\"statement\":[{\"effect\":\"allow\",\"action\":[\"kms:Encrypt\"],\"resource\":[\"*\"]}]}"}`,
		"EnableCredential":       `{"SecretId":"AKIDx"}`, "DisableCredential": `{"SecretId":"AKIDx"}`, "DeleteCredential": `{"SecretId":"AKIDx"}`,
		"SignByAsymmetricKey":   `{"KeyId":"` + key + `","Algorithm":"ECC_P256_R1","Message":"aGk="}`,
		"VerifyByAsymmetricKey": `{"KeyId":"` + key + `","Algorithm":"ECC_P256_R1","Message":"aGk=","SignatureValue":"aGk="}`,
		"AsymmetricRsaDecrypt":  `{"KeyId":"` + key + `","Algorithm":"RSAES_OAEP_SHA_256","Ciphertext":"aGk="}`,
		"ListAlgorithms":        `{}`,
	}
	noneRequired := map[string]bool{"ListKeys": true, "ListKeyDetail": true, "ListCredentials": true, "GenerateRandom": false, "ListAlgorithms": true,
		"GetServiceStatus": true, "GetRegions": true}
	complete["GetServiceStatus"], complete["GetRegions"] = `{}`, `{}`
	for name := range s.actions.api3 {
		t.Run(name, func(t *testing.T) {
			send := func(body string) string {
				t.Helper()
				return (&tc3Call{action: name, signed: name, body: body}).send(t, s) // the action signed: same bodies, many actions
			}
			if got := send(`{"NoSuchParameter":"x"}`); got != "UnknownParameter" {
				t.Fatalf("unknown parameter: %q", got)
			}
			want := "MissingParameter"
			if noneRequired[name] {
				want = "UnauthorizedOperation"
			}
			if got := send(`{}`); got != want && !(want == "MissingParameter" && got == "InvalidParameter") {
				t.Fatalf("empty request: %q, want %s", got, want)
			}
			body, ok := complete[name]
			if !ok {
				body = `{"KeyId":"` + key + `"}`
			}
			if got := send(body); got != "UnauthorizedOperation" {
				t.Fatalf("complete request %s: %q, want the domain's refusal", body, got)
			}
		})
	}
}

// Every legacy action of the table: a complete request reaches the domain
// (its refusal comes back as 4102); an unknown parameter is refused (4000).
func TestEveryLegacyAction(t *testing.T) {
	admin := refusingAdmin{err: kms.ErrUnauthorized}
	s := New(&fakeKMS{CredentialAdmin: admin, KeyAdmin: admin, err: kms.ErrUnauthorized}, Config{Logger: discardLogger()})
	complete := map[string]url.Values{
		"CreateKey": {"alias": {"a"}}, "Encrypt": {"keyId": {"k"}, "plaintext": {"aGk="}}, "Decrypt": {"ciphertextBlob": {"b"}},
		"ListKey": {"limit": {"5"}}, "SetKeyAttributes": {"keyId": {"k"}, "alias": {"b"}},
		"ScheduleKeyDeletion": {"keyId": {"k"}, "pendingWindowInDays": {"7"}}, "GenerateDataKey": {"keyId": {"k"}, "numberOfBytes": {"16"}},
	}
	for name := range s.actions.legacy {
		t.Run(name, func(t *testing.T) {
			v, ok := complete[name]
			if !ok {
				v = url.Values{"keyId": {"k"}}
			}
			for _, tc := range []struct {
				extra url.Values
				code  int
			}{{nil, 4102}, {url.Values{"nope": {"x"}}, 4000}} {
				q := url.Values{"Action": {name}}
				for k, vs := range v {
					q[k] = vs
				}
				for k, vs := range tc.extra {
					q[k] = vs
				}
				q = signV1(http.MethodGet, "example.com", LegacyPath, "HmacSHA256", q)
				var r reply
				serve(t, s, httptest.NewRequest(http.MethodGet, "http://example.com"+LegacyPath+"?"+q.Encode(), nil), &r)
				if r.Code == nil || *r.Code != tc.code {
					t.Fatalf("%v: code %v %q, want %d", q, r.Code, r.Message, tc.code)
				}
			}
		})
	}
}
