package main_test

// Asymmetric CMKs end to end, with the official Go SDK against the real
// kmsd: every KeyUsage created, its public key exported, kmsd's signatures
// checked by Go's crypto and by the openssl command, kmsd's Verify checked
// against signatures it did not make, RSA ciphertexts of the standard
// library decrypted inside the token, the refusals with Tencent's codes,
// crash safety and tampering with the stored public key or usage.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"database/sql"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"

	"hsmkms/softhsm"
	"hsmkms/softhsm/faultmod"
)

// asymCase is one asymmetric KeyUsage and its signature algorithms.
type asymCase struct {
	usage string
	algs  []string // signature algorithms; none for a decryption key
	hash  crypto.Hash
}

var asymCases = []asymCase{
	{"ASYMMETRIC_SIGN_VERIFY_RSA_2048", []string{"RSA_PKCS1_SHA_256", "RSA_PSS_SHA_256"}, crypto.SHA256},
	{"ASYMMETRIC_SIGN_VERIFY_ECC", []string{"ECC_P256_R1"}, crypto.SHA256},
	{"ASYMMETRIC_SIGN_VERIFY_ECDSA384", []string{"ECC_P384_R1"}, crypto.SHA384},
	{"ASYMMETRIC_DECRYPT_RSA_2048", nil, crypto.SHA256},
}

func digestOf(h crypto.Hash, msg []byte) []byte {
	if h == crypto.SHA384 {
		d := sha512.Sum384(msg)
		return d[:]
	}
	d := sha256.Sum256(msg)
	return d[:]
}

// openssl is the path of the openssl command; the test fails (never
// skips) without it.
func openssl(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("the openssl command is needed to check signatures independently: %v", err)
	}
	return p
}

// opensslVerify checks sig over msg (RAW: openssl dgst) or over its digest
// (DIGEST: openssl pkeyutl) with the PEM public key, as a user of the
// exported key would.
func opensslVerify(t *testing.T, pemFile, alg string, h crypto.Hash, raw bool, msg, sig []byte) {
	t.Helper()
	dir := t.TempDir()
	in, sf := filepath.Join(dir, "in"), filepath.Join(dir, "sig")
	md := "sha256"
	if h == crypto.SHA384 {
		md = "sha384"
	}
	data := msg
	if !raw {
		data = digestOf(h, msg)
	}
	if err := os.WriteFile(in, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sf, sig, 0o600); err != nil {
		t.Fatal(err)
	}
	var args []string
	if raw {
		args = []string{"dgst", "-" + md, "-verify", pemFile, "-signature", sf}
		if alg == "RSA_PSS_SHA_256" {
			args = append(args, "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32", "-sigopt", "rsa_mgf1_md:sha256")
		}
		args = append(args, in)
	} else {
		args = []string{"pkeyutl", "-verify", "-pubin", "-inkey", pemFile, "-in", in, "-sigfile", sf, "-pkeyopt", "digest:" + md}
		if alg == "RSA_PSS_SHA_256" {
			args = append(args, "-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:32", "-pkeyopt", "rsa_mgf1_md:sha256")
		}
	}
	out, err := exec.Command(openssl(t), args...).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("Verified OK")) && !bytes.Contains(out, []byte("Signature Verified Successfully")) {
		t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// stdlibVerify checks a kmsd signature with Go's crypto.
func stdlibVerify(t *testing.T, pub any, alg string, digest, sig []byte) {
	t.Helper()
	var err error
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		if alg == "RSA_PSS_SHA_256" {
			err = rsa.VerifyPSS(pk, crypto.SHA256, digest, sig, &rsa.PSSOptions{SaltLength: 32})
		} else {
			err = rsa.VerifyPKCS1v15(pk, crypto.SHA256, digest, sig)
		}
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(pk, digest, sig) {
			err = fmt.Errorf("ECDSA signature (DER) does not verify")
		}
	default:
		err = fmt.Errorf("public key of type %T", pub)
	}
	if err != nil {
		t.Errorf("%s: Go's crypto refuses kmsd's signature: %v", alg, err)
	}
}

func (s *server) sign(t *testing.T, c *tckms.Client, keyID, alg, msgType string, msg []byte) []byte {
	t.Helper()
	r := tckms.NewSignByAsymmetricKeyRequest()
	r.KeyId, r.Algorithm, r.MessageType = common.StringPtr(keyID), common.StringPtr(alg), common.StringPtr(msgType)
	r.Message = common.StringPtr(base64.StdEncoding.EncodeToString(msg))
	resp, err := c.SignByAsymmetricKey(r)
	if err != nil {
		t.Fatalf("SignByAsymmetricKey %s %s: %v", alg, msgType, err)
	}
	sig, err := base64.StdEncoding.DecodeString(*resp.Response.Signature)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func (s *server) verify(t *testing.T, c *tckms.Client, keyID, alg, msgType string, msg, sig []byte) bool {
	t.Helper()
	r := tckms.NewVerifyByAsymmetricKeyRequest()
	r.KeyId, r.Algorithm, r.MessageType = common.StringPtr(keyID), common.StringPtr(alg), common.StringPtr(msgType)
	r.Message = common.StringPtr(base64.StdEncoding.EncodeToString(msg))
	r.SignatureValue = common.StringPtr(base64.StdEncoding.EncodeToString(sig))
	resp, err := c.VerifyByAsymmetricKey(r)
	if err != nil {
		t.Fatalf("VerifyByAsymmetricKey %s %s: %v", alg, msgType, err)
	}
	return *resp.Response.SignatureValid
}

// foreignSignature signs digest with a fresh key of pub's kind, made by
// the standard library: a well-formed signature kmsd's key did not make.
func foreignSignature(t *testing.T, pub any, alg string, digest []byte) []byte {
	t.Helper()
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		k, err := rsa.GenerateKey(rand.Reader, pk.N.BitLen())
		if err != nil {
			t.Fatal(err)
		}
		if alg == "RSA_PSS_SHA_256" {
			sig, _ := rsa.SignPSS(rand.Reader, k, crypto.SHA256, digest, nil)
			return sig
		}
		sig, _ := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest)
		return sig
	case *ecdsa.PublicKey:
		k, err := ecdsa.GenerateKey(pk.Curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		sig, _ := ecdsa.SignASN1(rand.Reader, k, digest)
		return sig
	}
	t.Fatalf("public key of type %T", pub)
	return nil
}

// highS re-encodes an ECDSA signature (r, s) as (r, n-s): the standard
// library's arithmetic makes another valid signature of the same digest.
func highS(t *testing.T, curve elliptic.Curve, sig []byte) []byte {
	t.Helper()
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(sig, &rs); err != nil {
		t.Fatalf("kmsd's ECDSA signature is not DER: %v", err)
	}
	rs.S = new(big.Int).Sub(curve.Params().N, rs.S)
	out, err := asn1.Marshal(rs)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sdkCreate(t *testing.T, c *tckms.Client, alias, usage string) (string, error) {
	t.Helper()
	ck := tckms.NewCreateKeyRequest()
	ck.Alias, ck.KeyUsage = common.StringPtr(alias), common.StringPtr(usage)
	r, err := c.CreateKey(ck)
	if err != nil {
		return "", err
	}
	if *r.Response.KeyUsage != usage || *r.Response.KeyState != "Enabled" {
		t.Fatalf("CreateKey %s: %s", usage, r.ToJsonString())
	}
	return *r.Response.KeyId, nil
}

// TestSDKAsymmetricKeys: every asymmetric KeyUsage through the official SDK.
func TestSDKAsymmetricKeys(t *testing.T) {
	tok := softhsm.NewTokenNoEnv(t)
	data := t.TempDir()
	env := kmsdEnv(tok, data)
	bootstrap(t, env)
	s := startKMSD(t, env)
	c := s.sdk()

	la, err := c.ListAlgorithms(tckms.NewListAlgorithmsRequest())
	if err != nil {
		t.Fatalf("ListAlgorithms: %v", err)
	}
	got := la.ToJsonString()
	for _, want := range []string{`{"KeyUsage":"ENCRYPT_DECRYPT","Algorithm":"AES_256"}`,
		`{"KeyUsage":"ASYMMETRIC_DECRYPT_RSA_2048","Algorithm":"RSA_2048"}`,
		`{"KeyUsage":"ASYMMETRIC_SIGN_VERIFY_RSA_2048","Algorithm":"RSA_2048"}`,
		`{"KeyUsage":"ASYMMETRIC_SIGN_VERIFY_ECC","Algorithm":"ECC"}`,
		`{"KeyUsage":"ASYMMETRIC_SIGN_VERIFY_ECDSA384","Algorithm":"ECDSA384"}`} {
		if !strings.Contains(got, want) {
			t.Errorf("ListAlgorithms lacks %s: %s", want, got)
		}
	}
	if strings.Contains(got, "SM2") {
		t.Errorf("ListAlgorithms offers SM2, which the token lacks: %s", got)
	}
	for _, u := range []string{"ASYMMETRIC_SIGN_VERIFY_SM2", "ASYMMETRIC_DECRYPT_SM2"} {
		_, err := sdkCreate(t, c, "sm2", u)
		if sdkCode(err) != "UnsupportedOperation" || !strings.Contains(err.Error(), "SM2 key-pair mechanism") {
			t.Errorf("CreateKey %s: %v, want UnsupportedOperation naming the mechanism", u, err)
		}
	}

	keys := map[string]string{}
	pubs := map[string]any{}
	for _, tc := range asymCases {
		t.Run(tc.usage, func(t *testing.T) {
			keyID, err := sdkCreate(t, c, strings.ToLower(strings.ReplaceAll(tc.usage, "_", "-")), tc.usage)
			if err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
			keys[tc.usage] = keyID
			gp := tckms.NewGetPublicKeyRequest()
			gp.KeyId = common.StringPtr(keyID)
			pr, err := c.GetPublicKey(gp)
			if err != nil {
				t.Fatalf("GetPublicKey: %v", err)
			}
			der, err := base64.StdEncoding.DecodeString(*pr.Response.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			blk, _ := pem.Decode([]byte(*pr.Response.PublicKeyPem))
			if blk == nil || blk.Type != "PUBLIC KEY" || !bytes.Equal(blk.Bytes, der) || *pr.Response.KeyId != keyID {
				t.Fatalf("GetPublicKey: PEM and DER differ: %s", pr.ToJsonString())
			}
			pub, err := x509.ParsePKIXPublicKey(der)
			if err != nil {
				t.Fatalf("public key: %v", err)
			}
			pubs[tc.usage] = pub
			pemFile := filepath.Join(t.TempDir(), "pub.pem")
			if err := os.WriteFile(pemFile, []byte(*pr.Response.PublicKeyPem), 0o600); err != nil {
				t.Fatal(err)
			}
			switch p := pub.(type) {
			case *rsa.PublicKey:
				if p.N.BitLen() != 2048 {
					t.Fatalf("RSA modulus of %d bits", p.N.BitLen())
				}
			case *ecdsa.PublicKey:
				if want := map[string]int{"ASYMMETRIC_SIGN_VERIFY_ECC": 256, "ASYMMETRIC_SIGN_VERIFY_ECDSA384": 384}[tc.usage]; p.Curve.Params().BitSize != want {
					t.Fatalf("curve of %d bits, want %d", p.Curve.Params().BitSize, want)
				}
			}

			for _, alg := range tc.algs {
				for _, mt := range []string{"RAW", "DIGEST"} {
					msg := []byte(secret("message signed by " + alg + " " + mt + " " + keyID))
					input := msg
					if mt == "DIGEST" {
						input = digestOf(tc.hash, msg)
					}
					sig := s.sign(t, c, keyID, alg, mt, input)
					stdlibVerify(t, pub, alg, digestOf(tc.hash, msg), sig)
					opensslVerify(t, pemFile, alg, tc.hash, mt == "RAW", msg, sig)
					if !s.verify(t, c, keyID, alg, mt, input, sig) {
						t.Errorf("%s %s: kmsd does not verify its own signature", alg, mt)
					}
					tampered := bytes.Clone(input)
					tampered[0] ^= 1
					if s.verify(t, c, keyID, alg, mt, tampered, sig) {
						t.Errorf("%s %s: a tampered message verifies", alg, mt)
					}
					if s.verify(t, c, keyID, alg, mt, input, foreignSignature(t, pub, alg, digestOf(tc.hash, msg))) {
						t.Errorf("%s %s: another key's signature verifies", alg, mt)
					}
					if ec, ok := pub.(*ecdsa.PublicKey); ok && !s.verify(t, c, keyID, alg, mt, input, highS(t, ec.Curve, sig)) {
						t.Errorf("%s %s: the standard library's re-encoding (r, n-s) of a valid signature does not verify", alg, mt)
					}
				}
			}
			if tc.algs == nil {
				checkRSADecrypt(t, c, tok, keyID, pub.(*rsa.PublicKey))
			}
		})
	}
	if t.Failed() {
		return
	}
	checkAsymRefusals(t, s, c, keys)
	checkAsymLifecycle(t, s, c, keys)

	// The audit trail names the new actions, never their inputs (the leak
	// check of TestMain looks for every message and plaintext).
	trail, err := os.ReadFile(filepath.Join(data, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"ListAlgorithms", "GetPublicKey", "SignByAsymmetricKey", "VerifyByAsymmetricKey", "AsymmetricRsaDecrypt"} {
		if !regexp.MustCompile(`"action":"` + a + `"`).Match(trail) {
			t.Errorf("the audit trail does not record %s", a)
		}
	}
}

func checkRSADecrypt(t *testing.T, c *tckms.Client, tok softhsm.Token, keyID string, pk *rsa.PublicKey) {
	t.Helper()
	pt := []byte(secret("RSA plaintext for " + keyID))
	decrypt := func(alg string, ct []byte) ([]byte, error) {
		r := tckms.NewAsymmetricRsaDecryptRequest()
		r.KeyId, r.Algorithm = common.StringPtr(keyID), common.StringPtr(alg)
		r.Ciphertext = common.StringPtr(base64.StdEncoding.EncodeToString(ct))
		resp, err := c.AsymmetricRsaDecrypt(r)
		if err != nil {
			return nil, err
		}
		if *resp.Response.KeyId != keyID {
			t.Errorf("AsymmetricRsaDecrypt KeyId %s", *resp.Response.KeyId)
		}
		return base64.StdEncoding.DecodeString(*resp.Response.Plaintext)
	}
	ct15, _ := rsa.EncryptPKCS1v15(rand.Reader, pk, pt)
	ct1, _ := rsa.EncryptOAEP(sha1.New(), rand.Reader, pk, pt, nil)
	ct256, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, pk, pt, nil)
	for _, x := range []struct {
		alg string
		ct  []byte
	}{{"RSAES_PKCS1_V1_5", ct15}, {"RSAES_OAEP_SHA_1", ct1}, {"RSAES_OAEP_SHA_256", ct256}} {
		got, err := decrypt(x.alg, x.ct)
		if x.alg == "RSAES_OAEP_SHA_256" && tok.SoftHSM2() {
			// SoftHSM 2.6 decrypts OAEP with SHA-1 only (OPERATIONS.md,
			// module differences): a clear refusal naming the mechanism.
			if sdkCode(err) != "UnsupportedOperation" || !strings.Contains(err.Error(), "CKM_SHA256") {
				t.Errorf("%s on SoftHSM2: %v, want UnsupportedOperation naming CKM_SHA256", x.alg, err)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, pt) {
			t.Errorf("%s: %q, %v", x.alg, got, err)
		}
	}
	// Bad ciphertexts: one code, whatever went wrong.
	bad := bytes.Clone(ct1)
	bad[10] ^= 0x80
	for _, b := range [][]byte{bad, ct15, ct1[:200]} {
		if _, err := decrypt("RSAES_OAEP_SHA_1", b); sdkCode(err) != "FailedOperation.DecryptError" {
			t.Errorf("bad OAEP ciphertext: %v, want FailedOperation.DecryptError", err)
		}
	}
	if _, err := decrypt("RSAES_OAEP_SHA_512", ct1); sdkCode(err) != "InvalidParameterValue" {
		t.Errorf("unknown algorithm: %v", err)
	}
}

// checkAsymRefusals: the symmetric actions refuse asymmetric keys and the
// reverse, with Tencent's codes; bad algorithms and messages are refused.
func checkAsymRefusals(t *testing.T, s *server, c *tckms.Client, keys map[string]string) {
	t.Helper()
	ecc, rsaDec, rsaSign := keys["ASYMMETRIC_SIGN_VERIFY_ECC"], keys["ASYMMETRIC_DECRYPT_RSA_2048"], keys["ASYMMETRIC_SIGN_VERIFY_RSA_2048"]
	sym := s.createKey("symmetric")

	enc := tckms.NewEncryptRequest()
	enc.KeyId, enc.Plaintext = common.StringPtr(ecc), common.StringPtr(b64("never encrypted under an ECC key"))
	if _, err := c.Encrypt(enc); sdkCode(err) != "InvalidParameterValue.InvalidKeyUsage" {
		t.Errorf("Encrypt under an asymmetric key: %v", err)
	}
	gd := tckms.NewGenerateDataKeyRequest()
	gd.KeyId, gd.KeySpec = common.StringPtr(rsaDec), common.StringPtr("AES_256")
	if _, err := c.GenerateDataKey(gd); sdkCode(err) != "InvalidParameterValue.InvalidKeyUsage" {
		t.Errorf("GenerateDataKey under an asymmetric key: %v", err)
	}
	// {"KeyId":K} was the body of the reads above, maybe in this second:
	// the official SDK signs no action (README, "Authentication rules").
	nextSecond()
	er := tckms.NewEnableKeyRotationRequest()
	er.KeyId = common.StringPtr(rsaSign)
	if _, err := c.EnableKeyRotation(er); sdkCode(err) != "UnsupportedOperation.RotateNotSupported" {
		t.Errorf("EnableKeyRotation of an asymmetric key: %v", err)
	}
	rk := tckms.NewRotateKeyRequest()
	rk.KeyId = common.StringPtr(ecc)
	if _, err := c.RotateKey(rk); sdkCode(err) != "UnsupportedOperation.RotateNotSupported" {
		t.Errorf("RotateKey of an asymmetric key: %v", err)
	}
	gp := tckms.NewGetPublicKeyRequest()
	gp.KeyId = common.StringPtr(sym)
	if _, err := c.GetPublicKey(gp); sdkCode(err) != "InvalidParameterValue.InvalidKeyUsage" {
		t.Errorf("GetPublicKey of a symmetric key: %v", err)
	}
	sign := func(keyID, alg, mt string, msg []byte) error {
		r := tckms.NewSignByAsymmetricKeyRequest()
		r.KeyId, r.Algorithm, r.MessageType = common.StringPtr(keyID), common.StringPtr(alg), common.StringPtr(mt)
		r.Message = common.StringPtr(base64.StdEncoding.EncodeToString(msg))
		_, err := c.SignByAsymmetricKey(r)
		return err
	}
	for name, x := range map[string]struct {
		key, alg, mt string
		msg          []byte
		code         string
	}{
		"symmetric key":     {sym, "ECC_P256_R1", "RAW", []byte("m1"), "InvalidParameterValue.InvalidKeyUsage"},
		"decryption key":    {rsaDec, "RSA_PKCS1_SHA_256", "RAW", []byte("m2"), "InvalidParameterValue.InvalidKeyUsage"},
		"algorithm of RSA":  {ecc, "RSA_PSS_SHA_256", "RAW", []byte("m3"), "InvalidParameterValue"},
		"SM2DSA":            {ecc, "SM2DSA", "RAW", []byte("m4"), "InvalidParameterValue"},
		"short digest":      {ecc, "ECC_P256_R1", "DIGEST", make([]byte, 31), "InvalidParameterValue"},
		"P-256 digest, 384": {keys["ASYMMETRIC_SIGN_VERIFY_ECDSA384"], "ECC_P384_R1", "DIGEST", make([]byte, 32), "InvalidParameterValue"},
		"long message":      {ecc, "ECC_P256_R1", "RAW", make([]byte, 4097), "InvalidParameterValue"},
		"message type":      {ecc, "ECC_P256_R1", "HASH", []byte("m5"), "InvalidParameterValue"},
	} {
		if err := sign(x.key, x.alg, x.mt, x.msg); sdkCode(err) != x.code {
			t.Errorf("%s: %v, want %s", name, err, x.code)
		}
	}
	if err := sign(ecc, "ECC_P256_R1", "RAW", make([]byte, 4096)); err != nil {
		t.Errorf("a RAW message of 4096 bytes: %v", err)
	}

	// A credential allowed to sign with one key only.
	id, key := s.credential(t, "signer", `{"version":"2.0","statement":[{"effect":"allow","action":["kms:SignByAsymmetricKey"],"resource":["`+ecc+`"]}]}`)
	sc := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", id, key)
	r := tckms.NewSignByAsymmetricKeyRequest()
	r.KeyId, r.Algorithm, r.Message = common.StringPtr(ecc), common.StringPtr("ECC_P256_R1"), common.StringPtr(b64("signed by the signer"))
	if _, err := sc.SignByAsymmetricKey(r); err != nil {
		t.Errorf("restricted credential, its key: %v", err)
	}
	r = tckms.NewSignByAsymmetricKeyRequest()
	r.KeyId, r.Algorithm, r.Message = common.StringPtr(rsaSign), common.StringPtr("RSA_PSS_SHA_256"), common.StringPtr(b64("not signed by the signer"))
	if _, err := sc.SignByAsymmetricKey(r); sdkCode(err) != "UnauthorizedOperation" {
		t.Errorf("restricted credential, another key: %v", err)
	}
	gp = tckms.NewGetPublicKeyRequest()
	gp.KeyId = common.StringPtr(ecc)
	if _, err := sc.GetPublicKey(gp); sdkCode(err) != "UnauthorizedOperation" {
		t.Errorf("restricted credential, GetPublicKey: %v", err)
	}
}

// checkAsymLifecycle: describe, list by KeyUsage, disable, archive and
// scheduled deletion work on asymmetric keys.
func checkAsymLifecycle(t *testing.T, s *server, c *tckms.Client, keys map[string]string) {
	t.Helper()
	ecc := keys["ASYMMETRIC_SIGN_VERIFY_ECC"]
	ld := tckms.NewListKeyDetailRequest()
	ld.KeyUsage = common.StringPtr("ASYMMETRIC_SIGN_VERIFY_ECC")
	lr, err := c.ListKeyDetail(ld)
	if err != nil || *lr.Response.TotalCount != 1 || *lr.Response.KeyMetadatas[0].KeyId != ecc ||
		*lr.Response.KeyMetadatas[0].KeyUsage != "ASYMMETRIC_SIGN_VERIFY_ECC" {
		t.Fatalf("ListKeyDetail by KeyUsage: %v %v", lr, err)
	}
	ld = tckms.NewListKeyDetailRequest()
	ld.KeyUsage = common.StringPtr("ALL")
	if lr, err := c.ListKeyDetail(ld); err != nil || *lr.Response.TotalCount != 5 {
		t.Fatalf("ListKeyDetail ALL: %v %v", lr, err)
	}
	signCode := func(msg string) string {
		r := tckms.NewSignByAsymmetricKeyRequest()
		r.KeyId, r.Algorithm, r.Message = common.StringPtr(ecc), common.StringPtr("ECC_P256_R1"), common.StringPtr(b64(msg))
		_, err := c.SignByAsymmetricKey(r)
		return sdkCode(err)
	}
	keyReq := func() *string { return common.StringPtr(ecc) }
	nextSecond()
	dk := tckms.NewDescribeKeyRequest()
	dk.KeyId = keyReq()
	if d, err := c.DescribeKey(dk); err != nil || *d.Response.KeyMetadata.KeyUsage != "ASYMMETRIC_SIGN_VERIFY_ECC" {
		t.Fatalf("DescribeKey: %v %v", d, err)
	}
	nextSecond()
	dis := tckms.NewDisableKeyRequest()
	dis.KeyId = keyReq()
	if _, err := c.DisableKey(dis); err != nil {
		t.Fatal(err)
	}
	if code := signCode("asym-msg-while-disabled-q7"); code != "ResourceUnavailable.CmkDisabled" {
		t.Errorf("Sign with a disabled key: %q", code)
	}
	nextSecond()
	en := tckms.NewEnableKeyRequest()
	en.KeyId = keyReq()
	if _, err := c.EnableKey(en); err != nil {
		t.Fatal(err)
	}
	nextSecond()
	ar := tckms.NewArchiveKeyRequest()
	ar.KeyId = keyReq()
	if _, err := c.ArchiveKey(ar); err != nil {
		t.Fatal(err)
	}
	if code := signCode("asym-msg-while-archived-q7"); code != "ResourceUnavailable.CmkArchived" {
		t.Errorf("Sign with an archived key: %q", code)
	}
	nextSecond()
	ca := tckms.NewCancelKeyArchiveRequest()
	ca.KeyId = keyReq()
	if _, err := c.CancelKeyArchive(ca); err != nil {
		t.Fatal(err)
	}
	if code := signCode("asym-msg-enabled-again-q7"); code != "" {
		t.Errorf("Sign after CancelKeyArchive: %q", code)
	}
	nextSecond()
	dis = tckms.NewDisableKeyRequest()
	dis.KeyId = keyReq()
	if _, err := c.DisableKey(dis); err != nil {
		t.Fatal(err)
	}
	sd := tckms.NewScheduleKeyDeletionRequest()
	sd.KeyId, sd.PendingWindowInDays = keyReq(), common.Uint64Ptr(7)
	if _, err := c.ScheduleKeyDeletion(sd); err != nil {
		t.Fatal(err)
	}
	if code := signCode("asym-msg-pending-deletion-q7"); code != "ResourceUnavailable.CmkStateNotSupport" {
		t.Errorf("Sign with a key pending deletion: %q", code)
	}
	nextSecond()
	cd := tckms.NewCancelKeyDeletionRequest()
	cd.KeyId = keyReq()
	if _, err := c.CancelKeyDeletion(cd); err != nil {
		t.Fatal(err)
	}
}

// TestTamperedAsymmetricKey: whoever can write the database cannot swap an
// asymmetric key's public key (so that Verify accepts their signatures,
// or GetPublicKey hands out their key) or change its usage: the row fails
// its MAC and the key is not obeyed.
func TestTamperedAsymmetricKey(t *testing.T) {
	s, tok, data := newServer(t)
	env := kmsdEnv(tok, data)
	c := s.sdk()
	swapped, err := sdkCreate(t, c, "swapped", "ASYMMETRIC_SIGN_VERIFY_ECC")
	if err != nil {
		t.Fatal(err)
	}
	repurposed, err := sdkCreate(t, c, "repurposed", "ASYMMETRIC_SIGN_VERIFY_RSA_2048")
	if err != nil {
		t.Fatal(err)
	}
	untouched, err := sdkCreate(t, c, "untouched", "ASYMMETRIC_SIGN_VERIFY_ECC")
	if err != nil {
		t.Fatal(err)
	}
	s.stop()

	attacker, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&attacker.PublicKey)
	db, err := sql.Open("sqlite", filepath.Join(data, "kms.db"))
	if err != nil {
		t.Fatal(err)
	}
	execSQL(t, db, `UPDATE keys SET public_key = ? WHERE id = ?`, der, swapped)
	execSQL(t, db, `UPDATE keys SET usage = 'ASYMMETRIC_DECRYPT_RSA_2048' WHERE id = ?`, repurposed)
	db.Close()

	s = startKMSD(t, env)
	c = s.sdk()
	msg := []byte("signed by the attacker")
	d := sha256.Sum256(msg)
	forged, _ := ecdsa.SignASN1(rand.Reader, attacker, d[:])
	vr := tckms.NewVerifyByAsymmetricKeyRequest()
	vr.KeyId, vr.Algorithm = common.StringPtr(swapped), common.StringPtr("ECC_P256_R1")
	vr.Message = common.StringPtr(base64.StdEncoding.EncodeToString(msg))
	vr.SignatureValue = common.StringPtr(base64.StdEncoding.EncodeToString(forged))
	if r, err := c.VerifyByAsymmetricKey(vr); sdkCode(err) != "ResourceUnavailable.CmkDisabled" {
		t.Errorf("Verify under a swapped public key: %v %v, want ResourceUnavailable.CmkDisabled", r, err)
	}
	gp := tckms.NewGetPublicKeyRequest()
	gp.KeyId = common.StringPtr(swapped)
	if r, err := c.GetPublicKey(gp); sdkCode(err) != "ResourceUnavailable.CmkDisabled" {
		t.Errorf("GetPublicKey of a swapped public key: %v %v", r, err)
	}
	rd := tckms.NewAsymmetricRsaDecryptRequest()
	rd.KeyId, rd.Algorithm, rd.Ciphertext = common.StringPtr(repurposed), common.StringPtr("RSAES_OAEP_SHA_1"), common.StringPtr(base64.StdEncoding.EncodeToString(make([]byte, 256)))
	if _, err := c.AsymmetricRsaDecrypt(rd); sdkCode(err) != "ResourceUnavailable.CmkDisabled" {
		t.Errorf("AsymmetricRsaDecrypt with a key whose usage was changed: %v", err)
	}
	gp = tckms.NewGetPublicKeyRequest()
	gp.KeyId = common.StringPtr(untouched)
	if _, err := c.GetPublicKey(gp); err != nil {
		t.Errorf("untouched key: %v", err)
	}
	if n := s.metric(t, "kmsd_integrity_failing_rows"); n != 2 {
		t.Errorf("kmsd_integrity_failing_rows %v, want 2", n)
	}
}

// TestCrashAsymmetric: kmsd killed between the key pair's token object
// and the store (create:intent, create:generated), or in the middle of the
// purge of an asymmetric key, leaves neither an orphan private key nor a
// dangling key once restarted.
func TestCrashAsymmetric(t *testing.T) {
	for _, point := range []string{"create:intent", "create:generated", "purge:destroyed-one"} {
		t.Run(point, func(t *testing.T) {
			env, _ := crashEnv(t)
			s := startFaulty(t, env)
			keyID, err := sdkCreate(t, s.sdk(), "survivor", "ASYMMETRIC_SIGN_VERIFY_ECC")
			if err != nil {
				t.Fatal(err)
			}
			s.stop()

			if point == "purge:destroyed-one" {
				s = startFaulty(t, env)
				c := s.sdk()
				dis := tckms.NewDisableKeyRequest()
				dis.KeyId = common.StringPtr(keyID)
				if _, err := c.DisableKey(dis); err != nil {
					t.Fatal(err)
				}
				sk := tckms.NewScheduleKeyDeletionRequest()
				sk.KeyId, sk.PendingWindowInDays = common.StringPtr(keyID), common.Uint64Ptr(7)
				if _, err := c.ScheduleKeyDeletion(sk); err != nil {
					t.Fatal(err)
				}
				s.stop()
				later := append(env, "KMSD_CLOCK_OFFSET=192h", "KMSD_MAINTENANCE_INTERVAL=200ms")
				if s := startFaulty(t, append(later, "KMSD_FAULT_POINT="+point)); s != nil {
					s.killed()
				}
				s = startFaulty(t, later)
				if rec := s.recovery(); rec["missing"] != 0 || rec["unresolved"] != 0 {
					t.Fatalf("recovery %v", rec)
				}
				dk := tckms.NewDescribeKeyRequest()
				dk.KeyId = common.StringPtr(keyID)
				c = s.sdk()
				for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
					d, err := c.DescribeKey(dk)
					if err != nil {
						t.Fatal(err)
					}
					if *d.Response.KeyMetadata.KeyState == "Deleted" {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("not purged: %s", d.ToJsonString())
					}
				}
				s.stop()
				s = startFaulty(t, later)
				if rec := s.recovery(); rec["orphans"] != 0 || rec["missing"] != 0 {
					t.Fatalf("recovery after the purge %v: the private key survived or is reported missing", rec)
				}
				return
			}

			s = startFaulty(t, append(env, "KMSD_FAULT_POINT="+point))
			if _, err := sdkCreate(t, s.sdk(), "lost", "ASYMMETRIC_DECRYPT_RSA_2048"); err == nil {
				t.Fatal("CreateKey answered although kmsd was killed")
			}
			s.killed()

			s = startFaulty(t, env)
			if rec := s.recovery(); rec["rolled_back"] != 1 || rec["orphans"] != 0 || rec["missing"] != 0 || rec["unresolved"] != 0 {
				t.Fatalf("recovery %v", rec)
			}
			c := s.sdk()
			lk := tckms.NewListKeyDetailRequest()
			lk.KeyUsage = common.StringPtr("ALL")
			if r, err := c.ListKeyDetail(lk); err != nil || *r.Response.TotalCount != 1 || *r.Response.KeyMetadatas[0].KeyId != keyID {
				t.Fatalf("ListKeyDetail after the crash: %v %v", r, err)
			}
			gp := tckms.NewGetPublicKeyRequest()
			gp.KeyId = common.StringPtr(keyID)
			if _, err := c.GetPublicKey(gp); err != nil {
				t.Fatalf("GetPublicKey of the survivor: %v", err)
			}
			if _, err := sdkCreate(t, c, "lost", "ASYMMETRIC_DECRYPT_RSA_2048"); err != nil {
				t.Fatalf("CreateKey after the crash: %v", err)
			}
			s.stop()
			s = startFaulty(t, env)
			if rec := s.recovery(); rec["rolled_back"] != 0 || rec["orphans"] != 0 || rec["missing"] != 0 {
				t.Fatalf("second recovery %v: a private key was left behind", rec)
			}
		})
	}
}

// TestKmsctlAsymmetric: the kmsctl commands of the asymmetric keys, with
// openssl on the other side (as the README shows them).
func TestKmsctlAsymmetric(t *testing.T) {
	s, _, _ := newServer(t)
	dir := t.TempDir()
	ctl := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "kmsctl"), append([]string{"-endpoint", s.url}, args...)...)
		cmd.Env = append(os.Environ(), "TENCENTCLOUD_SECRET_ID="+adminID, "TENCENTCLOUD_SECRET_KEY="+adminKey)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("%v: %s", err, stderr.String())
		}
		return string(out), nil
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := ctl(args...)
		if err != nil {
			t.Fatalf("kmsctl %v: %v", args, err)
		}
		return out
	}
	keyID := func(out string) string {
		t.Helper()
		m := regexp.MustCompile(`keyId\s+(\S+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no keyId in:\n%s", out)
		}
		return m[1]
	}
	if out := must("list-algorithms"); !strings.Contains(out, "ASYMMETRIC_SIGN_VERIFY_ECDSA384") || !strings.Contains(out, "ENCRYPT_DECRYPT") {
		t.Fatalf("list-algorithms:\n%s", out)
	}
	signer := keyID(must("create-key", "-alias", "ctl-signer", "-key-usage", "ASYMMETRIC_SIGN_VERIFY_ECDSA384"))
	pemFile, msgFile, sigFile := filepath.Join(dir, "pub.pem"), filepath.Join(dir, "msg"), filepath.Join(dir, "sig")
	must("get-public-key", "-key-id", signer, "-out", pemFile)
	if err := os.WriteFile(msgFile, []byte(secret("a release signed through kmsctl")), 0o600); err != nil {
		t.Fatal(err)
	}
	must("sign", "-key-id", signer, "-algorithm", "ECC_P384_R1", "-in", msgFile, "-out", sigFile)
	if out, err := exec.Command(openssl(t), "dgst", "-sha384", "-verify", pemFile, "-signature", sigFile, msgFile).CombinedOutput(); err != nil {
		t.Fatalf("openssl does not verify kmsctl's signature: %v\n%s", err, out)
	}
	if out := must("verify", "-key-id", signer, "-algorithm", "ECC_P384_R1", "-in", msgFile, "-signature-file", sigFile); !regexpLine(out, "SignatureValid", "true") {
		t.Fatalf("verify:\n%s", out)
	}
	if out, err := ctl("verify", "-key-id", signer, "-algorithm", "ECC_P384_R1", "-message", "another message", "-signature-file", sigFile); err == nil || !regexpLine(out, "SignatureValid", "false") {
		t.Fatalf("verify of another message: %v\n%s", err, out)
	}

	decrypter := keyID(must("create-key", "-alias", "ctl-decrypter", "-key-usage", "ASYMMETRIC_DECRYPT_RSA_2048"))
	must("get-public-key", "-key-id", decrypter, "-out", pemFile)
	ptFile, ctFile := filepath.Join(dir, "pt"), filepath.Join(dir, "ct")
	pt := secret("wrapped by openssl for the token")
	if err := os.WriteFile(ptFile, []byte(pt), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(openssl(t), "pkeyutl", "-encrypt", "-pubin", "-inkey", pemFile, "-in", ptFile, "-out", ctFile,
		"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1").CombinedOutput(); err != nil {
		t.Fatalf("openssl pkeyutl -encrypt: %v\n%s", err, out)
	}
	if out := must("rsa-decrypt", "-key-id", decrypter, "-algorithm", "RSAES_OAEP_SHA_1", "-in", ctFile); out != pt {
		t.Fatalf("rsa-decrypt: %q", out)
	}
}

// TestAsymMechanismMissing: kmsd asks the module which mechanisms it has.
// With CKM_EC_KEY_PAIR_GEN hidden (by the fault-injection module, as on a
// token without it), ListAlgorithms drops the ECC usages and CreateKey of
// one answers UnsupportedOperation naming the mechanism, while RSA keys
// are still made; once the mechanism is back, so are the usages.
func TestAsymMechanismMissing(t *testing.T) {
	tok := softhsm.NewSoftHSM2TokenNoEnv(t)
	so := faultmod.Build(t)
	ctl := faultmod.NewController(t)
	env := append(kmsdEnv(tok, t.TempDir()), ctl.Env()...)
	env = append(env, "KMSD_PKCS11_MODULE="+so)
	bootstrap(t, env)
	s := startKMSD(t, env)
	c := s.sdk()

	ctl.HideMechanism(0x1040) // CKM_EC_KEY_PAIR_GEN (only hsm/p11 imports PKCS#11)
	la, err := c.ListAlgorithms(tckms.NewListAlgorithmsRequest())
	if err != nil {
		t.Fatal(err)
	}
	if got := la.ToJsonString(); strings.Contains(got, "ECC") || strings.Contains(got, "ECDSA384") || !strings.Contains(got, "ASYMMETRIC_SIGN_VERIFY_RSA_2048") {
		t.Fatalf("ListAlgorithms without CKM_EC_KEY_PAIR_GEN: %s", got)
	}
	if _, err := sdkCreate(t, c, "ecc", "ASYMMETRIC_SIGN_VERIFY_ECC"); sdkCode(err) != "UnsupportedOperation" || !strings.Contains(err.Error(), "CKM_EC_KEY_PAIR_GEN") {
		t.Fatalf("CreateKey ECC without CKM_EC_KEY_PAIR_GEN: %v", err)
	}
	if _, err := sdkCreate(t, c, "rsa", "ASYMMETRIC_SIGN_VERIFY_RSA_2048"); err != nil {
		t.Fatalf("CreateKey RSA: %v", err)
	}
	ctl.Reset()
	if _, err := sdkCreate(t, c, "ecc", "ASYMMETRIC_SIGN_VERIFY_ECC"); err != nil {
		t.Fatalf("CreateKey ECC with the mechanism back: %v", err)
	}
}
