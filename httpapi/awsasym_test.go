package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"hsmkms/kms"
)

// awsAsymFake records what the AWS API's asymmetric actions hand the
// domain, and answers with valid and err.
type awsAsymFake struct {
	*fakeKMS
	created kms.CreateKeyInput
	sign    kms.SignInput
	valid   bool
	decAlg  string
	encAlg  string
}

func (f *awsAsymFake) CreateKey(_ context.Context, in kms.CreateKeyInput) (kms.KeyMetadata, error) {
	f.created = in
	return kms.KeyMetadata{KeyID: "9999aed0-4956-11e9-bc70-5254005e86b4", KeyUsage: in.KeyUsage, KeyState: kms.StateEnabled, CreateTime: time.Unix(1700000000, 0)}, f.err
}

func (f *awsAsymFake) SignByAsymmetricKey(_ context.Context, in kms.SignInput) ([]byte, error) {
	f.sign = in
	return []byte("sig"), f.err
}

func (f *awsAsymFake) VerifyByAsymmetricKey(_ context.Context, in kms.SignInput) (bool, error) {
	f.sign = in
	return f.valid, f.err
}

func (f *awsAsymFake) AsymmetricRsaDecrypt(_ context.Context, keyID string, _ []byte, alg string) (kms.RSADecryptResult, error) {
	f.decAlg = alg
	return kms.RSADecryptResult{KeyID: keyID, Plaintext: []byte("pt")}, f.err
}

func (f *awsAsymFake) AsymmetricRsaEncrypt(_ context.Context, keyID string, _ []byte, alg string) (kms.RSAEncryptResult, error) {
	f.encAlg = alg
	return kms.RSAEncryptResult{KeyID: keyID, Ciphertext: []byte("ct")}, f.err
}

func (f *awsAsymFake) GetPublicKey(_ context.Context, keyID string) (kms.PublicKey, error) {
	return kms.PublicKey{KeyID: keyID, KeyUsage: kms.UsageECDSA384Sign, DER: []byte{0x30}}, f.err
}

const awsAsymKey = "11111111-2222-3333-4444-555555555555"

// The AWS API's asymmetric actions: AWS's names map to the domain's, the
// refusals are AWS's __types, and nothing refused reaches the domain.
func TestAWSAsymmetricEdge(t *testing.T) {
	k := `"KeyId":"` + awsAsymKey + `"`
	rows := []struct {
		name, action, body string
		valid, reaches     bool // reaches: the domain is asked, and answers valid
		domainErr          error
		typ                string // "" for HTTP 200
		check              func(f *awsAsymFake, reply map[string]any) string
	}{
		{name: "RSA sign key", action: "CreateKey", body: `{"KeySpec":"RSA_2048","KeyUsage":"SIGN_VERIFY"}`,
			check: func(f *awsAsymFake, r map[string]any) string {
				md := r["KeyMetadata"].(map[string]any)
				return want(f.created.KeyUsage == kms.UsageRSASign && md["KeySpec"] == "RSA_2048" && md["KeyUsage"] == "SIGN_VERIFY" &&
					fmt.Sprint(md["SigningAlgorithms"]) == "[RSASSA_PKCS1_V1_5_SHA_256 RSASSA_PSS_SHA_256]" && md["EncryptionAlgorithms"] == nil, f.created, r)
			}},
		{name: "RSA decryption key by default usage", action: "CreateKey", body: `{"KeySpec":"RSA_2048"}`,
			check: func(f *awsAsymFake, r map[string]any) string {
				md := r["KeyMetadata"].(map[string]any)
				return want(f.created.KeyUsage == kms.UsageRSADecrypt && md["KeyUsage"] == "ENCRYPT_DECRYPT" &&
					fmt.Sprint(md["EncryptionAlgorithms"]) == "[RSAES_OAEP_SHA_1 RSAES_OAEP_SHA_256]" && md["SigningAlgorithms"] == nil, f.created, r)
			}},
		{name: "P-384 by the deprecated field", action: "CreateKey", body: `{"CustomerMasterKeySpec":"ECC_NIST_P384","KeyUsage":"SIGN_VERIFY"}`,
			check: func(f *awsAsymFake, r map[string]any) string {
				return want(f.created.KeyUsage == kms.UsageECDSA384Sign, f.created, r)
			}},
		{name: "P-256", action: "CreateKey", body: `{"KeySpec":"ECC_NIST_P256","KeyUsage":"SIGN_VERIFY"}`,
			check: func(f *awsAsymFake, r map[string]any) string {
				return want(f.created.KeyUsage == kms.UsageECCSign, f.created, r)
			}},
		{name: "symmetric", action: "CreateKey", body: `{"KeySpec":"SYMMETRIC_DEFAULT","CustomerMasterKeySpec":"SYMMETRIC_DEFAULT"}`,
			check: func(f *awsAsymFake, r map[string]any) string {
				md := r["KeyMetadata"].(map[string]any)
				return want(f.created.KeyUsage == kms.DefaultKeyUsage && fmt.Sprint(md["EncryptionAlgorithms"]) == "[SYMMETRIC_DEFAULT]", f.created, r)
			}},
		{name: "two specs", action: "CreateKey", body: `{"KeySpec":"ECC_NIST_P256","CustomerMasterKeySpec":"ECC_NIST_P384","KeyUsage":"SIGN_VERIFY"}`, typ: "ValidationException"},
		{name: "ECC to encrypt", action: "CreateKey", body: `{"KeySpec":"ECC_NIST_P256"}`, typ: "ValidationException"},
		{name: "unknown usage", action: "CreateKey", body: `{"KeySpec":"RSA_2048","KeyUsage":"SIGN"}`, typ: "ValidationException"},
		{name: "unknown spec", action: "CreateKey", body: `{"KeySpec":"RSA_1024","KeyUsage":"SIGN_VERIFY"}`, typ: "ValidationException"},
		{name: "RSA_3072", action: "CreateKey", body: `{"KeySpec":"RSA_3072","KeyUsage":"SIGN_VERIFY"}`, typ: "UnsupportedOperationException"},
		{name: "HMAC", action: "CreateKey", body: `{"KeySpec":"HMAC_256","KeyUsage":"GENERATE_VERIFY_MAC"}`, typ: "UnsupportedOperationException"},

		{name: "RAW by default", action: "Sign", body: `{` + k + `,"Message":"bQ==","SigningAlgorithm":"ECDSA_SHA_256"}`,
			check: func(f *awsAsymFake, r map[string]any) string {
				return want(f.sign.Algorithm == kms.AlgECCP256 && f.sign.MessageType == kms.MessageTypeRaw && string(f.sign.Message) == "m" &&
					r["Signature"] == "c2ln" && r["SigningAlgorithm"] == "ECDSA_SHA_256", f.sign, r)
			}},
		{name: "DIGEST", action: "Sign", body: `{` + k + `,"Message":"bQ==","MessageType":"DIGEST","SigningAlgorithm":"RSASSA_PSS_SHA_256"}`,
			check: func(f *awsAsymFake, r map[string]any) string {
				return want(f.sign.Algorithm == kms.AlgRSAPSSSHA256 && f.sign.MessageType == kms.MessageTypeDigest, f.sign, r)
			}},
		{name: "algorithm of another key", action: "Sign", body: `{` + k + `,"Message":"bQ==","SigningAlgorithm":"ECDSA_SHA_384"}`, domainErr: kms.ErrInvalidAlgorithm, typ: "InvalidKeyUsageException"},
		{name: "EXTERNAL_MU", action: "Sign", body: `{` + k + `,"Message":"bQ==","MessageType":"EXTERNAL_MU","SigningAlgorithm":"ECDSA_SHA_256"}`, typ: "UnsupportedOperationException"},
		{name: "unknown MessageType", action: "Sign", body: `{` + k + `,"Message":"bQ==","MessageType":"HEX","SigningAlgorithm":"ECDSA_SHA_256"}`, typ: "ValidationException"},
		{name: "ECDSA_SHA_512", action: "Sign", body: `{` + k + `,"Message":"bQ==","SigningAlgorithm":"ECDSA_SHA_512"}`, typ: "UnsupportedOperationException"},
		{name: "unknown algorithm", action: "Sign", body: `{` + k + `,"Message":"bQ==","SigningAlgorithm":"ECC_P256_R1"}`, typ: "ValidationException"},
		{name: "no algorithm", action: "Sign", body: `{` + k + `,"Message":"bQ=="}`, typ: "ValidationException"},
		{name: "bad base64", action: "Sign", body: `{` + k + `,"Message":"b!==","SigningAlgorithm":"ECDSA_SHA_256"}`, typ: "SerializationException"},
		{name: "a Signature", action: "Sign", body: `{` + k + `,"Message":"bQ==","Signature":"bQ==","SigningAlgorithm":"ECDSA_SHA_256"}`, typ: "ValidationException"},
		{name: "DryRun", action: "Sign", body: `{` + k + `,"Message":"bQ==","SigningAlgorithm":"ECDSA_SHA_256","DryRun":true}`, typ: "UnsupportedOperationException"},

		{name: "valid", action: "Verify", body: `{` + k + `,"Message":"bQ==","Signature":"c2ln","SigningAlgorithm":"ECDSA_SHA_384"}`, valid: true,
			check: func(f *awsAsymFake, r map[string]any) string {
				return want(r["SignatureValid"] == true && string(f.sign.Signature) == "sig" && f.sign.Algorithm == kms.AlgECCP384, f.sign, r)
			}},
		{name: "invalid", action: "Verify", body: `{` + k + `,"Message":"bQ==","Signature":"c2ln","SigningAlgorithm":"ECDSA_SHA_384"}`, reaches: true, typ: "KMSInvalidSignatureException"},
		{name: "no Signature", action: "Verify", body: `{` + k + `,"Message":"bQ==","SigningAlgorithm":"ECDSA_SHA_384"}`, typ: "ValidationException"},

		{name: "public key", action: "GetPublicKey", body: `{` + k + `}`,
			check: func(f *awsAsymFake, r map[string]any) string {
				return want(r["KeySpec"] == "ECC_NIST_P384" && r["KeyUsage"] == "SIGN_VERIFY" && r["PublicKey"] == "MA==" &&
					fmt.Sprint(r["SigningAlgorithms"]) == "[ECDSA_SHA_384]" && strings.HasSuffix(r["KeyId"].(string), ":key/"+awsAsymKey), nil, r)
			}},

		{name: "RSA", action: "Decrypt", body: `{` + k + `,"CiphertextBlob":"Y3Q=","EncryptionAlgorithm":"RSAES_OAEP_SHA_256"}`,
			check: func(f *awsAsymFake, r map[string]any) string {
				return want(f.decAlg == kms.AlgRSAESOAEPSHA256 && r["Plaintext"] == "cHQ=" && r["EncryptionAlgorithm"] == "RSAES_OAEP_SHA_256", f.decAlg, r)
			}},
		{name: "RSA without KeyId", action: "Decrypt", body: `{"CiphertextBlob":"Y3Q=","EncryptionAlgorithm":"RSAES_OAEP_SHA_1"}`, typ: "ValidationException"},
		{name: "RSA with a context", action: "Decrypt", body: `{` + k + `,"CiphertextBlob":"Y3Q=","EncryptionAlgorithm":"RSAES_OAEP_SHA_1","EncryptionContext":{"a":"b"}}`, typ: "ValidationException"},
		{name: "SM2PKE", action: "Decrypt", body: `{` + k + `,"CiphertextBlob":"Y3Q=","EncryptionAlgorithm":"SM2PKE"}`, typ: "UnsupportedOperationException"},
		{name: "RSA bad ciphertext", action: "Decrypt", body: `{` + k + `,"CiphertextBlob":"Y3Q=","EncryptionAlgorithm":"RSAES_OAEP_SHA_1"}`, domainErr: kms.ErrAsymDecrypt, typ: "InvalidCiphertextException"},
		{name: "PKCS1 v1.5", action: "Decrypt", body: `{` + k + `,"CiphertextBlob":"Y3Q=","EncryptionAlgorithm":"RSAES_PKCS1_V1_5"}`, typ: "ValidationException"},
		{name: "RSA", action: "Encrypt", body: `{` + k + `,"Plaintext":"cHQ=","EncryptionAlgorithm":"RSAES_OAEP_SHA_1"}`,
			check: func(f *awsAsymFake, r map[string]any) string {
				return want(f.encAlg == kms.AlgRSAESOAEPSHA1 && r["CiphertextBlob"] == "Y3Q=" && r["EncryptionAlgorithm"] == "RSAES_OAEP_SHA_1", f.encAlg, r)
			}},
		{name: "RSA", action: "ReEncrypt", body: `{"CiphertextBlob":"Y3Q=","DestinationKeyId":"` + awsAsymKey + `","SourceEncryptionAlgorithm":"RSAES_OAEP_SHA_1"}`, typ: "UnsupportedOperationException"},
		{name: "RSA too long", action: "Encrypt", body: `{` + k + `,"Plaintext":"cHQ=","EncryptionAlgorithm":"RSAES_OAEP_SHA_1"}`, domainErr: kms.ErrPlaintextTooLong, typ: "ValidationException"},
	}
	now := time.Now()
	for _, row := range rows {
		t.Run(row.action+"/"+row.name, func(t *testing.T) {
			f := &awsAsymFake{fakeKMS: &fakeKMS{err: row.domainErr}, valid: row.valid}
			s := awsTestServer(f, Config{Clock: func() time.Time { return now }})
			st, e, rec := awsReply(t, s, awsTestRequest(t, row.action, row.body, now, nil))
			if row.typ != "" {
				if st != 400 || e.Type != row.typ || e.Message == "" {
					t.Fatalf("HTTP %d %+v, want 400 %s", st, e, row.typ)
				}
				if row.domainErr == nil && !row.reaches && (f.created.KeyUsage != "" || f.sign.KeyID != "" || f.decAlg != "" || f.encAlg != "") {
					t.Fatalf("a refused request reached the domain")
				}
				return
			}
			var r map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &r); st != 200 || err != nil {
				t.Fatalf("HTTP %d: %s", st, rec.Body.String())
			}
			if msg := row.check(f, r); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}

func want(ok bool, domain any, reply map[string]any) string {
	if ok {
		return ""
	}
	return fmt.Sprintf("the domain got %+v, the reply is %v", domain, reply)
}
