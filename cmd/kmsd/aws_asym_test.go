package main_test

// Asymmetric keys through the AWS KMS API, with the AWS SDK for Go v2
// against the real kmsd: CreateKey of each KeySpec served, DescribeKey and
// GetPublicKey as AWS reports them, Sign checked by Go's crypto/rsa and
// crypto/ecdsa, Verify of good, tampered and foreign signatures
// (KMSInvalidSignatureException), RSA Decrypt of the standard library's
// OAEP ciphertexts inside the token, Encrypt with the public key, the
// refusals with AWS's __types, and the policy words of each operation.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"

	"hsmkms/softhsm"
)

// awsAsymCase is one AWS KeySpec and KeyUsage served, with its algorithms.
type awsAsymCase struct {
	spec  types.KeySpec
	usage types.KeyUsageType
	sign  []types.SigningAlgorithmSpec
	enc   []types.EncryptionAlgorithmSpec
	hash  crypto.Hash
}

var awsAsymCases = []awsAsymCase{
	{types.KeySpecRsa2048, types.KeyUsageTypeSignVerify, []types.SigningAlgorithmSpec{types.SigningAlgorithmSpecRsassaPkcs1V15Sha256, types.SigningAlgorithmSpecRsassaPssSha256}, nil, crypto.SHA256},
	{types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify, []types.SigningAlgorithmSpec{types.SigningAlgorithmSpecEcdsaSha256}, nil, crypto.SHA256},
	{types.KeySpecEccNistP384, types.KeyUsageTypeSignVerify, []types.SigningAlgorithmSpec{types.SigningAlgorithmSpecEcdsaSha384}, nil, crypto.SHA384},
	{types.KeySpecRsa2048, types.KeyUsageTypeEncryptDecrypt, nil, []types.EncryptionAlgorithmSpec{types.EncryptionAlgorithmSpecRsaesOaepSha1, types.EncryptionAlgorithmSpecRsaesOaepSha256}, crypto.SHA256},
}

// tencentAlg is the Tencent name of an AWS signing algorithm (for the
// helpers of asym_test.go).
func tencentAlg(a types.SigningAlgorithmSpec) string {
	return map[types.SigningAlgorithmSpec]string{types.SigningAlgorithmSpecRsassaPkcs1V15Sha256: "RSA_PKCS1_SHA_256",
		types.SigningAlgorithmSpecRsassaPssSha256: "RSA_PSS_SHA_256", types.SigningAlgorithmSpecEcdsaSha256: "ECC_P256_R1",
		types.SigningAlgorithmSpecEcdsaSha384: "ECC_P384_R1"}[a]
}

func TestAWSAsymmetricKeys(t *testing.T) {
	tok := softhsm.NewTokenNoEnv(t)
	data := t.TempDir()
	env := append(kmsdEnv(tok, data), "KMSD_AWS_REGIONS="+awsRegion, "KMSD_AWS_ACCOUNT_ID="+awsAccount)
	bootstrap(t, env)
	s := startKMSD(t, env)
	ctx := context.Background()
	c := awsClient(s, adminID, adminKey)
	tc := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	arn := func(id string) string { return "arn:aws:kms:" + awsRegion + ":" + awsAccount + ":key/" + id }

	keys := map[string]string{} // spec/usage -> key id
	for _, tcase := range awsAsymCases {
		name := string(tcase.spec) + "/" + string(tcase.usage)
		t.Run(name, func(t *testing.T) {
			ck, err := c.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: tcase.spec, KeyUsage: tcase.usage, Description: aws.String(name)})
			if err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
			id := *ck.KeyMetadata.KeyId
			keys[name] = id
			d, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(id)})
			if err != nil {
				t.Fatalf("DescribeKey: %v", err)
			}
			for _, md := range []*types.KeyMetadata{ck.KeyMetadata, d.KeyMetadata} {
				if md.KeySpec != tcase.spec || md.CustomerMasterKeySpec != types.CustomerMasterKeySpec(tcase.spec) || md.KeyUsage != tcase.usage ||
					!slices.Equal(md.SigningAlgorithms, tcase.sign) || !slices.Equal(md.EncryptionAlgorithms, tcase.enc) || md.KeyState != types.KeyStateEnabled {
					t.Fatalf("KeyMetadata %+v", md)
				}
			}
			gp, err := c.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: aws.String(id)})
			if err != nil {
				t.Fatalf("GetPublicKey: %v", err)
			}
			if *gp.KeyId != arn(id) || gp.KeySpec != tcase.spec || gp.KeyUsage != tcase.usage ||
				!slices.Equal(gp.SigningAlgorithms, tcase.sign) || !slices.Equal(gp.EncryptionAlgorithms, tcase.enc) {
				t.Fatalf("GetPublicKey %+v", gp)
			}
			pub, err := x509.ParsePKIXPublicKey(gp.PublicKey)
			if err != nil {
				t.Fatalf("GetPublicKey: not a DER SubjectPublicKeyInfo: %v", err)
			}
			// The same public key through the Tencent API.
			tg := tckms.NewGetPublicKeyRequest()
			tg.KeyId = common.StringPtr(id)
			tr, err := tc.GetPublicKey(tg)
			if err != nil || *tr.Response.PublicKey != base64.StdEncoding.EncodeToString(gp.PublicKey) {
				t.Fatalf("Tencent GetPublicKey differs: %v", err)
			}
			switch p := pub.(type) {
			case *rsa.PublicKey:
				if p.N.BitLen() != 2048 {
					t.Fatalf("RSA modulus of %d bits", p.N.BitLen())
				}
			case *ecdsa.PublicKey:
				if want := map[types.KeySpec]int{types.KeySpecEccNistP256: 256, types.KeySpecEccNistP384: 384}[tcase.spec]; p.Curve.Params().BitSize != want {
					t.Fatalf("curve of %d bits, want %d", p.Curve.Params().BitSize, want)
				}
			}
			for _, alg := range tcase.sign {
				for _, mt := range []types.MessageType{types.MessageTypeRaw, types.MessageTypeDigest} {
					checkAWSSign(t, c, id, pub, alg, mt, tcase.hash)
				}
			}
			if tcase.enc != nil {
				checkAWSRSADecrypt(t, c, tok, id, pub.(*rsa.PublicKey))
			}
		})
	}
	if t.Failed() {
		return
	}
	checkAWSAsymRefusals(t, c, keys)
	checkAWSAsymPolicies(t, s, keys)
	_, err := c.ReEncrypt(ctx, &awskms.ReEncryptInput{CiphertextBlob: make([]byte, 256), DestinationKeyId: aws.String(keys["RSA_2048/ENCRYPT_DECRYPT"]),
		SourceKeyId: aws.String(keys["RSA_2048/ENCRYPT_DECRYPT"]), SourceEncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	wantAWSErr(t, "ReEncrypt of an RSA ciphertext", err, "UnsupportedOperationException", 400)

	// The audit trail records the asymmetric actions like the others
	// (never their messages: the leak check of TestMain).
	for _, w := range []struct{ action, code string }{
		{"CreateKey", "0"}, {"GetPublicKey", "0"}, {"Sign", "0"}, {"Verify", "0"}, {"Verify", "KMSInvalidSignatureException"},
		{"Decrypt", "0"}, {"Encrypt", "0"}, {"Sign", "AccessDeniedException"},
	} {
		if len(auditedAWS(t, data, w.action, w.code)) == 0 {
			t.Errorf("no audit line of the AWS %s answered %s", w.action, w.code)
		}
	}
}

// checkAWSSign signs through the AWS API and checks the signature with
// Go's crypto and with kmsd's Verify; a tampered message and another key's
// signature are KMSInvalidSignatureException.
func checkAWSSign(t *testing.T, c *awskms.Client, id string, pub any, alg types.SigningAlgorithmSpec, mt types.MessageType, h crypto.Hash) {
	t.Helper()
	ctx := context.Background()
	msg := []byte(secret("signed through the AWS API by " + string(alg) + " " + string(mt) + " " + id))
	input := msg
	if mt == types.MessageTypeDigest {
		input = digestOf(h, msg)
	}
	sr, err := c.Sign(ctx, &awskms.SignInput{KeyId: aws.String(id), Message: input, MessageType: mt, SigningAlgorithm: alg, GrantTokens: []string{"ignored"}})
	if err != nil {
		t.Fatalf("Sign %s %s: %v", alg, mt, err)
	}
	if sr.SigningAlgorithm != alg || !strings.HasSuffix(*sr.KeyId, ":key/"+id) {
		t.Errorf("Sign answers %s %s", sr.SigningAlgorithm, *sr.KeyId)
	}
	stdlibVerify(t, pub, tencentAlg(alg), digestOf(h, msg), sr.Signature)
	if _, ok := pub.(*ecdsa.PublicKey); ok && (len(sr.Signature) < 8 || sr.Signature[0] != 0x30) {
		t.Errorf("%s: the signature is not DER: % x", alg, sr.Signature)
	}
	vr, err := c.Verify(ctx, &awskms.VerifyInput{KeyId: aws.String(id), Message: input, MessageType: mt, Signature: sr.Signature, SigningAlgorithm: alg})
	if err != nil || !vr.SignatureValid || vr.SigningAlgorithm != alg {
		t.Errorf("Verify of kmsd's own signature %s %s: %v %+v", alg, mt, err, vr)
	}
	tampered := bytes.Clone(input)
	tampered[0] ^= 1
	_, err = c.Verify(ctx, &awskms.VerifyInput{KeyId: aws.String(id), Message: tampered, MessageType: mt, Signature: sr.Signature, SigningAlgorithm: alg})
	wantAWSErr(t, "Verify of a tampered message", err, "KMSInvalidSignatureException", 400)
	foreign := foreignSignature(t, pub, tencentAlg(alg), digestOf(h, msg))
	_, err = c.Verify(ctx, &awskms.VerifyInput{KeyId: aws.String(id), Message: input, MessageType: mt, Signature: foreign, SigningAlgorithm: alg})
	wantAWSErr(t, "Verify of another key's signature", err, "KMSInvalidSignatureException", 400)
}

// checkAWSRSADecrypt decrypts the standard library's OAEP ciphertexts
// through AWS Decrypt (inside the token), and AWS Encrypt's ciphertexts.
func checkAWSRSADecrypt(t *testing.T, c *awskms.Client, tok softhsm.Token, id string, pk *rsa.PublicKey) {
	t.Helper()
	ctx := context.Background()
	pt := []byte(secret("RSA plaintext through the AWS API for " + id))
	ct1, _ := rsa.EncryptOAEP(sha1.New(), rand.Reader, pk, pt, nil)
	ct256, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, pk, pt, nil)
	decrypt := func(alg types.EncryptionAlgorithmSpec, ct []byte) ([]byte, error) {
		r, err := c.Decrypt(ctx, &awskms.DecryptInput{KeyId: aws.String(id), CiphertextBlob: ct, EncryptionAlgorithm: alg})
		if err != nil {
			return nil, err
		}
		if r.EncryptionAlgorithm != alg || !strings.HasSuffix(*r.KeyId, ":key/"+id) {
			t.Errorf("Decrypt answers %s %s", r.EncryptionAlgorithm, *r.KeyId)
		}
		return r.Plaintext, nil
	}
	oaep256 := func(what string, got []byte, err error) {
		t.Helper()
		if tok.SoftHSM2() {
			// SoftHSM 2.6 decrypts OAEP with SHA-1 only (OPERATIONS.md).
			if c, _ := awsCode(err); c != "UnsupportedOperationException" || !strings.Contains(err.Error(), "CKM_SHA256") {
				t.Errorf("%s on SoftHSM2: %v, want UnsupportedOperationException naming CKM_SHA256", what, err)
			}
			return
		}
		if err != nil || !bytes.Equal(got, pt) {
			t.Errorf("%s: %q, %v", what, got, err)
		}
	}
	got, err := decrypt(types.EncryptionAlgorithmSpecRsaesOaepSha1, ct1)
	if err != nil || !bytes.Equal(got, pt) {
		t.Errorf("Decrypt of a stdlib RSAES_OAEP_SHA_1 ciphertext: %q, %v", got, err)
	}
	got, err = decrypt(types.EncryptionAlgorithmSpecRsaesOaepSha256, ct256)
	oaep256("Decrypt of a stdlib RSAES_OAEP_SHA_256 ciphertext", got, err)

	// Encrypt with the public key, then Decrypt inside the token.
	for _, alg := range []types.EncryptionAlgorithmSpec{types.EncryptionAlgorithmSpecRsaesOaepSha1, types.EncryptionAlgorithmSpecRsaesOaepSha256} {
		er, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: pt, EncryptionAlgorithm: alg})
		if err != nil || er.EncryptionAlgorithm != alg || len(er.CiphertextBlob) != 256 {
			t.Fatalf("Encrypt %s: %v %+v", alg, err, er)
		}
		got, err := decrypt(alg, er.CiphertextBlob)
		if alg == types.EncryptionAlgorithmSpecRsaesOaepSha256 {
			oaep256("Decrypt of an AWS Encrypt RSAES_OAEP_SHA_256 ciphertext", got, err)
		} else if err != nil || !bytes.Equal(got, pt) {
			t.Errorf("Decrypt of an AWS Encrypt %s ciphertext: %q, %v", alg, got, err)
		}
	}
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: make([]byte, 215), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	wantAWSErr(t, "Encrypt of 215 bytes under RSAES_OAEP_SHA_1", err, "ValidationException", 400)
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: pt, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1, EncryptionContext: map[string]string{"a": "b"}})
	wantAWSErr(t, "Encrypt with an RSA algorithm and a context", err, "ValidationException", 400)
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: pt})
	wantAWSErr(t, "Encrypt SYMMETRIC_DEFAULT under an RSA key", err, "InvalidKeyUsageException", 400)

	// Bad ciphertexts: one __type, whatever went wrong.
	bad := bytes.Clone(ct1)
	bad[10] ^= 0x80
	for _, b := range [][]byte{bad, ct1[:200], ct256} { // ct256: OAEP-SHA-256 padding read as OAEP-SHA-1
		_, err := decrypt(types.EncryptionAlgorithmSpecRsaesOaepSha1, b)
		wantAWSErr(t, "Decrypt of a bad RSA ciphertext", err, "InvalidCiphertextException", 400)
	}
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: ct1, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	wantAWSErr(t, "RSA Decrypt without KeyId", err, "ValidationException", 400)
}

// checkAWSAsymRefusals: specs and usages AWS has and hsmkms does not
// serve, pairs that do not fit, algorithms of another key, symmetric
// actions on asymmetric keys and the reverse.
func checkAWSAsymRefusals(t *testing.T, c *awskms.Client, keys map[string]string) {
	t.Helper()
	ctx := context.Background()
	for _, x := range []struct {
		in  awskms.CreateKeyInput
		typ string
	}{
		{awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256}, "ValidationException"}, // ENCRYPT_DECRYPT by default
		{awskms.CreateKeyInput{KeySpec: types.KeySpecSymmetricDefault, KeyUsage: types.KeyUsageTypeSignVerify}, "ValidationException"},
		{awskms.CreateKeyInput{KeySpec: "RSA_1024", KeyUsage: types.KeyUsageTypeSignVerify}, "ValidationException"},
		{awskms.CreateKeyInput{KeySpec: types.KeySpecRsa2048, KeyUsage: "SIGN"}, "ValidationException"},
		{awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP521, KeyUsage: types.KeyUsageTypeSignVerify}, "UnsupportedOperationException"},
		{awskms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac}, "UnsupportedOperationException"},
		{awskms.CreateKeyInput{KeySpec: types.KeySpecSm2, KeyUsage: types.KeyUsageTypeSignVerify}, "UnsupportedOperationException"},
	} {
		_, err := c.CreateKey(ctx, &x.in)
		wantAWSErr(t, "CreateKey "+string(x.in.KeySpec)+"/"+string(x.in.KeyUsage), err, x.typ, 400)
	}
	ecc := keys["ECC_NIST_P256/SIGN_VERIFY"]
	rsaDec := keys["RSA_2048/ENCRYPT_DECRYPT"]
	msg := []byte("m")
	_, err := c.Sign(ctx, &awskms.SignInput{KeyId: aws.String(ecc), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha384})
	wantAWSErr(t, "Sign with ECDSA_SHA_384 under a P-256 key", err, "InvalidKeyUsageException", 400)
	_, err = c.Sign(ctx, &awskms.SignInput{KeyId: aws.String(ecc), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecRsassaPssSha512})
	wantAWSErr(t, "Sign with RSASSA_PSS_SHA_512", err, "UnsupportedOperationException", 400)
	_, err = c.Sign(ctx, &awskms.SignInput{KeyId: aws.String(ecc), Message: msg, MessageType: types.MessageTypeDigest, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantAWSErr(t, "Sign of a 1-byte DIGEST", err, "ValidationException", 400)
	_, err = c.Sign(ctx, &awskms.SignInput{KeyId: aws.String(rsaDec), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecRsassaPssSha256})
	wantAWSErr(t, "Sign under an RSA decryption key", err, "InvalidKeyUsageException", 400)
	_, err = c.Sign(ctx, &awskms.SignInput{KeyId: aws.String(ecc), Message: make([]byte, 4097), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantAWSErr(t, "Sign of 4097 bytes", err, "ValidationException", 400)
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(ecc), Plaintext: msg, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	wantAWSErr(t, "RSA Encrypt under an ECC key", err, "InvalidKeyUsageException", 400)
	_, err = c.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: aws.String(rsaDec), KeySpec: types.DataKeySpecAes256})
	wantAWSErr(t, "GenerateDataKey under an RSA key", err, "InvalidKeyUsageException", 400)
	_, err = c.EnableKeyRotation(ctx, &awskms.EnableKeyRotationInput{KeyId: aws.String(ecc)})
	wantAWSErr(t, "EnableKeyRotation of an asymmetric key", err, "UnsupportedOperationException", 400)

	sym, err := c.CreateKey(ctx, &awskms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: sym.KeyMetadata.KeyId})
	wantAWSErr(t, "GetPublicKey of a symmetric key", err, "InvalidKeyUsageException", 400)
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{KeyId: sym.KeyMetadata.KeyId, CiphertextBlob: make([]byte, 256), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	wantAWSErr(t, "RSA Decrypt under a symmetric key", err, "InvalidKeyUsageException", 400)

	// A disabled key signs nothing.
	if _, err := c.DisableKey(ctx, &awskms.DisableKeyInput{KeyId: aws.String(ecc)}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Sign(ctx, &awskms.SignInput{KeyId: aws.String(ecc), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantAWSErr(t, "Sign under a disabled key", err, "DisabledException", 400)
	if _, err := c.EnableKey(ctx, &awskms.EnableKeyInput{KeyId: aws.String(ecc)}); err != nil {
		t.Fatal(err)
	}
}

// checkAWSAsymPolicies: each AWS operation needs its policy word, the
// Tencent action's where the operation is the same (README, "The AWS KMS
// API").
func checkAWSAsymPolicies(t *testing.T, s *server, keys map[string]string) {
	t.Helper()
	ctx := context.Background()
	ecc, rsaDec := keys["ECC_NIST_P256/SIGN_VERIFY"], keys["RSA_2048/ENCRYPT_DECRYPT"]
	signer := s.sdkCred(t, adminID, adminKey).create("aws-signer", `{"effect":"allow","action":["kms:SignByAsymmetricKey","kms:GetPublicKey"],"resource":"`+ecc+`"}`)
	cs := awsClient(s, signer.id, signer.key)
	msg := []byte(secret("policy-checked message"))
	sr, err := cs.Sign(ctx, &awskms.SignInput{KeyId: aws.String(ecc), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	if err != nil {
		t.Fatalf("Sign with kms:SignByAsymmetricKey: %v", err)
	}
	if _, err := cs.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: aws.String(ecc)}); err != nil {
		t.Fatalf("GetPublicKey with kms:GetPublicKey: %v", err)
	}
	_, err = cs.Verify(ctx, &awskms.VerifyInput{KeyId: aws.String(ecc), Message: msg, Signature: sr.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantAWSErr(t, "Verify without kms:VerifyByAsymmetricKey", err, "AccessDeniedException", 400)
	_, err = cs.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: aws.String(rsaDec)})
	wantAWSErr(t, "GetPublicKey of a key outside the policy", err, "AccessDeniedException", 400)

	verifier := s.sdkCred(t, adminID, adminKey).create("aws-verifier", `{"effect":"allow","action":["kms:VerifyByAsymmetricKey"],"resource":"`+ecc+`"}`)
	cv := awsClient(s, verifier.id, verifier.key)
	if _, err := cv.Verify(ctx, &awskms.VerifyInput{KeyId: aws.String(ecc), Message: msg, Signature: sr.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}); err != nil {
		t.Fatalf("Verify with kms:VerifyByAsymmetricKey: %v", err)
	}
	_, err = cv.Sign(ctx, &awskms.SignInput{KeyId: aws.String(ecc), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantAWSErr(t, "Sign without kms:SignByAsymmetricKey", err, "AccessDeniedException", 400)

	// RSA: Encrypt with the public key is kms:Encrypt; Decrypt inside the
	// token kms:AsymmetricRsaDecrypt.
	enc := s.sdkCred(t, adminID, adminKey).create("aws-rsa-enc", `{"effect":"allow","action":["kms:Encrypt"],"resource":"`+rsaDec+`"}`)
	ce := awsClient(s, enc.id, enc.key)
	er, err := ce.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(rsaDec), Plaintext: msg, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	if err != nil {
		t.Fatalf("RSA Encrypt with kms:Encrypt: %v", err)
	}
	_, err = ce.Decrypt(ctx, &awskms.DecryptInput{KeyId: aws.String(rsaDec), CiphertextBlob: er.CiphertextBlob, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	wantAWSErr(t, "RSA Decrypt with kms:Encrypt only", err, "AccessDeniedException", 400)
	dec := s.sdkCred(t, adminID, adminKey).create("aws-rsa-dec", `{"effect":"allow","action":["kms:AsymmetricRsaDecrypt"],"resource":"`+rsaDec+`"}`)
	cd := awsClient(s, dec.id, dec.key)
	dr, err := cd.Decrypt(ctx, &awskms.DecryptInput{KeyId: aws.String(rsaDec), CiphertextBlob: er.CiphertextBlob, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	if err != nil || !bytes.Equal(dr.Plaintext, msg) {
		t.Fatalf("RSA Decrypt with kms:AsymmetricRsaDecrypt: %v", err)
	}
	_, err = cd.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(rsaDec), Plaintext: msg, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	wantAWSErr(t, "RSA Encrypt with kms:AsymmetricRsaDecrypt only", err, "AccessDeniedException", 400)
}
