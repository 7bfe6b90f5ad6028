package httpapi

import (
	"context"
	"encoding/base64"
	"errors"

	"hsmkms/kms"
)

// Asymmetric keys through the AWS KMS API (aws.go): CreateKey with an
// asymmetric KeySpec, their KeyMetadata, GetPublicKey, Sign, Verify, and
// Encrypt/Decrypt with an RSAES_OAEP algorithm. Thin adapters over the
// domain's asymmetric CMKs (kms/asym.go): AWS's (KeySpec, KeyUsage) pairs
// map to the Tencent KeyUsages, AWS's algorithm names to the domain's.
//
// Policy words: the domain authorises each operation with the word of the
// Tencent action that does the same thing: GetPublicKey is
// kms:GetPublicKey, Sign kms:SignByAsymmetricKey, Verify
// kms:VerifyByAsymmetricKey, Decrypt with an RSAES algorithm
// kms:AsymmetricRsaDecrypt. Encrypt with an RSAES algorithm, which the
// Tencent API lacks, is kms:Encrypt (kms.Service.AsymmetricRsaEncrypt).

// awsKind is how the AWS API names a domain KeyUsage.
type awsKind struct {
	keySpec, keyUsage string
	encAlgs, signAlgs []string
}

const (
	awsEncryptDecrypt = "ENCRYPT_DECRYPT"
	awsSignVerify     = "SIGN_VERIFY"
)

// awsKinds maps each domain KeyUsage to its AWS KeySpec, KeyUsage and
// algorithms. RSAES_OAEP_SHA_256 is listed as AWS lists it; a token without
// OAEP-SHA-256 (SoftHSM 2.6) refuses it at Decrypt.
var awsKinds = map[string]awsKind{
	kms.DefaultKeyUsage:   {symmetricDefault, awsEncryptDecrypt, []string{symmetricDefault}, nil},
	kms.UsageRSADecrypt:   {"RSA_2048", awsEncryptDecrypt, []string{kms.AlgRSAESOAEPSHA1, kms.AlgRSAESOAEPSHA256}, nil},
	kms.UsageRSASign:      {"RSA_2048", awsSignVerify, nil, []string{"RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PSS_SHA_256"}},
	kms.UsageECCSign:      {"ECC_NIST_P256", awsSignVerify, nil, []string{"ECDSA_SHA_256"}},
	kms.UsageECDSA384Sign: {"ECC_NIST_P384", awsSignVerify, nil, []string{"ECDSA_SHA_384"}},
}

// awsKindOf returns the AWS names of a domain KeyUsage ("" is a symmetric
// key made by hand). An unknown usage keeps its own name.
func awsKindOf(usage string) awsKind {
	if usage == "" {
		usage = kms.DefaultKeyUsage
	}
	if k, ok := awsKinds[usage]; ok {
		return k
	}
	return awsKind{keySpec: usage, keyUsage: usage}
}

// awsKnownSpecs are AWS KeySpecs (and CustomerMasterKeySpecs) hsmkms does
// not serve: UnsupportedOperationException, where an unknown name is a
// ValidationException.
var awsKnownSpecs = map[string]bool{"RSA_3072": true, "RSA_4096": true, "ECC_NIST_P521": true, "ECC_SECG_P256K1": true,
	"HMAC_224": true, "HMAC_256": true, "HMAC_384": true, "HMAC_512": true, "SM2": true, "ML_DSA_44": true, "ML_DSA_65": true,
	"ML_DSA_87": true, "ECC_NIST_EDWARDS25519": true, "ML_KEM_512": true, "ML_KEM_768": true, "ML_KEM_1024": true}

var awsKeyUsages = map[string]bool{awsEncryptDecrypt: true, awsSignVerify: true, "GENERATE_VERIFY_MAC": true, "KEY_AGREEMENT": true, "ENCAPSULATE_DECAPSULATE": true}

// awsCreateUsage returns the domain KeyUsage of CreateKey's KeySpec (or the
// deprecated CustomerMasterKeySpec) and KeyUsage (default
// ENCRYPT_DECRYPT), as AWS checks them: an unknown name or a pair that does
// not fit (ECC_NIST_P256 with ENCRYPT_DECRYPT) is a ValidationException, a
// KeySpec AWS has and hsmkms does not serve an UnsupportedOperationException.
func awsCreateUsage(keySpec, cmkSpec, keyUsage *string) (string, error) {
	spec, usage := symmetricDefault, awsEncryptDecrypt
	switch {
	case keySpec != nil && cmkSpec != nil && *keySpec != *cmkSpec:
		return "", awsErrorf("ValidationException", "give KeySpec or CustomerMasterKeySpec (deprecated), not both")
	case keySpec != nil:
		spec = *keySpec
	case cmkSpec != nil:
		spec = *cmkSpec
	}
	if keyUsage != nil {
		usage = *keyUsage
	}
	if !awsKeyUsages[usage] {
		return "", awsErrorf("ValidationException", "1 validation error detected: Value '"+truncate(usage, 64)+"' at 'keyUsage' failed to satisfy constraint: Member must satisfy enum value set: [ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC, KEY_AGREEMENT, ENCAPSULATE_DECAPSULATE]")
	}
	served := false
	for u, k := range awsKinds {
		if k.keySpec == spec {
			served = true
			if k.keyUsage == usage {
				return u, nil
			}
		}
	}
	switch {
	case served:
		return "", awsErrorf("ValidationException", "KeyUsage "+usage+" is not compatible with KeySpec "+spec)
	case awsKnownSpecs[spec]:
		return "", awsErrorf("UnsupportedOperationException", "KeySpec "+spec+" is not supported by this server (it serves SYMMETRIC_DEFAULT, RSA_2048, ECC_NIST_P256 and ECC_NIST_P384)")
	}
	return "", awsErrorf("ValidationException", "1 validation error detected: Value '"+truncate(spec, 64)+"' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set")
}

// Asymmetric encryption algorithms of Encrypt and Decrypt.

// isAsymAlgorithm reports whether an EncryptionAlgorithm is one of AWS's
// asymmetric ones (the request then goes to awsRSAEncrypt or awsRSADecrypt).
func isAsymAlgorithm(alg *string) bool {
	return alg != nil && (*alg == kms.AlgRSAESOAEPSHA1 || *alg == kms.AlgRSAESOAEPSHA256 || *alg == "SM2PKE")
}

// asymCryptChecks refuses what an asymmetric Encrypt or Decrypt does not
// take: an SM2 algorithm (no SM2 keys here), an EncryptionContext (AWS
// refuses it with asymmetric keys too), DryRun.
func asymCryptChecks(alg string, ec awsContext, dry *bool) error {
	if alg == "SM2PKE" {
		return unsupported("SM2PKE (SM2 keys)")
	}
	if len(ec) > 0 && string(ec) != "{}" {
		return awsErrorf("ValidationException", "EncryptionContext is not supported with the asymmetric EncryptionAlgorithm "+alg)
	}
	return checkDryRun(dry)
}

// awsRSAEncrypter is the domain's public-key encryption; *kms.Service
// implements it.
type awsRSAEncrypter interface {
	AsymmetricRsaEncrypt(ctx context.Context, keyID string, plaintext []byte, algorithm string) (kms.RSAEncryptResult, error)
}

// awsRSAEncrypt is Encrypt with RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256
// under an RSA_2048 ENCRYPT_DECRYPT key: the ciphertext is the bare RSA
// ciphertext, as AWS's.
func (s *Server) awsRSAEncrypt(ctx context.Context, req *awsEncryptRequest) (*awsEncryptResponse, error) {
	alg := *req.EncryptionAlgorithm
	if err := asymCryptChecks(alg, req.EncryptionContext, req.DryRun); err != nil {
		return nil, err
	}
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	if err != nil {
		return nil, err
	}
	a, ok := s.kms.(awsRSAEncrypter)
	if !ok {
		return nil, unsupported("asymmetric encryption")
	}
	pt, err := decodePlaintext(*req.Plaintext)
	if err != nil {
		return nil, awsErrorf("SerializationException", "the Plaintext is not standard base64")
	}
	res, err := a.AsymmetricRsaEncrypt(ctx, id, pt, alg)
	clear(pt)
	if errors.Is(err, kms.ErrPlaintextTooLong) {
		return nil, awsErrorf("ValidationException", "the Plaintext is too long: an RSA_2048 key encrypts at most 214 bytes with RSAES_OAEP_SHA_1, 190 with RSAES_OAEP_SHA_256")
	}
	if err != nil {
		return nil, err
	}
	return &awsEncryptResponse{CiphertextBlob: wireBytes(res.Ciphertext), KeyID: s.keyARN(awsRegion(ctx), res.KeyID), EncryptionAlgorithm: alg}, nil
}

// awsRSADecrypt is Decrypt with RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256:
// inside the token, under the key KeyId names (required, as AWS requires
// it for an asymmetric ciphertext). Any ciphertext that does not decrypt is
// one InvalidCiphertextException.
func (s *Server) awsRSADecrypt(ctx context.Context, req *awsDecryptRequest) (*awsDecryptResponse, error) {
	alg := *req.EncryptionAlgorithm
	if err := asymCryptChecks(alg, req.EncryptionContext, req.DryRun); err != nil {
		return nil, err
	}
	if len(req.Recipient) > 0 {
		return nil, unsupported("Recipient")
	}
	if req.KeyId == nil || *req.KeyId == "" {
		return nil, awsErrorf("ValidationException", "KeyId is required to decrypt with the asymmetric EncryptionAlgorithm "+alg)
	}
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	if err != nil {
		return nil, err
	}
	ct, err := decodeBase64(*req.CiphertextBlob)
	if err != nil {
		return nil, awsErrorf("SerializationException", "the CiphertextBlob is not standard base64")
	}
	a, err := s.awsAsymmetric()
	if err != nil {
		return nil, err
	}
	res, err := a.AsymmetricRsaDecrypt(ctx, id, ct, alg)
	if err != nil {
		return nil, err
	}
	return &awsDecryptResponse{KeyID: s.keyARN(awsRegion(ctx), res.KeyID), Plaintext: wireBytes(res.Plaintext), EncryptionAlgorithm: alg}, nil
}

func (s *Server) awsAsymmetric() (Asymmetric, error) {
	a, ok := s.kms.(Asymmetric)
	if !ok {
		return nil, unsupported("asymmetric keys")
	}
	return a, nil
}

// GetPublicKey

type awsGetPublicKeyResponse struct {
	KeyID                 string   `json:"KeyId"`
	PublicKey             string   `json:"PublicKey"`
	CustomerMasterKeySpec string   `json:"CustomerMasterKeySpec"`
	KeySpec               string   `json:"KeySpec"`
	KeyUsage              string   `json:"KeyUsage"`
	EncryptionAlgorithms  []string `json:"EncryptionAlgorithms,omitempty"`
	SigningAlgorithms     []string `json:"SigningAlgorithms,omitempty"`
}

func (s *Server) awsGetPublicKey(ctx context.Context, req *awsKeyIDRequest) (*awsGetPublicKeyResponse, error) {
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	if err != nil {
		return nil, err
	}
	a, err := s.awsAsymmetric()
	if err != nil {
		return nil, err
	}
	pk, err := a.GetPublicKey(ctx, id)
	if err != nil {
		return nil, err
	}
	k := awsKindOf(pk.KeyUsage)
	return &awsGetPublicKeyResponse{KeyID: s.keyARN(awsRegion(ctx), pk.KeyID), PublicKey: base64.StdEncoding.EncodeToString(pk.DER),
		CustomerMasterKeySpec: k.keySpec, KeySpec: k.keySpec, KeyUsage: k.keyUsage, EncryptionAlgorithms: k.encAlgs, SigningAlgorithms: k.signAlgs}, nil
}

// Sign, Verify

// awsSigAlgs maps AWS's signing algorithms to the domain's.
var awsSigAlgs = map[string]string{
	"RSASSA_PSS_SHA_256":        kms.AlgRSAPSSSHA256,
	"RSASSA_PKCS1_V1_5_SHA_256": kms.AlgRSAPKCS1SHA256,
	"ECDSA_SHA_256":             kms.AlgECCP256,
	"ECDSA_SHA_384":             kms.AlgECCP384,
}

// awsKnownSigAlgs are AWS signing algorithms hsmkms does not serve.
var awsKnownSigAlgs = map[string]bool{"RSASSA_PSS_SHA_384": true, "RSASSA_PSS_SHA_512": true, "RSASSA_PKCS1_V1_5_SHA_384": true,
	"RSASSA_PKCS1_V1_5_SHA_512": true, "ECDSA_SHA_512": true, "SM2DSA": true, "ML_DSA_SHAKE_256": true, "ED25519_SHA_512": true, "ED25519_PH_SHA_512": true}

type awsSignRequest struct {
	KeyId            *string  `json:"KeyId"`
	Message          *string  `json:"Message"`
	MessageType      *string  `json:"MessageType"`
	SigningAlgorithm *string  `json:"SigningAlgorithm"`
	Signature        *string  `json:"Signature"` // Verify only
	GrantTokens      []string `json:"GrantTokens"`
	DryRun           *bool    `json:"DryRun"`
}

type awsSignResponse struct {
	KeyID            string `json:"KeyId"`
	Signature        string `json:"Signature"`
	SigningAlgorithm string `json:"SigningAlgorithm"`
}

type awsVerifyResponse struct {
	KeyID            string `json:"KeyId"`
	SignatureValid   bool   `json:"SignatureValid"`
	SigningAlgorithm string `json:"SigningAlgorithm"`
}

// awsSignInput checks and decodes the fields Sign and Verify share.
func (s *Server) awsSignInput(ctx context.Context, req *awsSignRequest) (kms.SignInput, error) {
	for _, f := range []struct {
		name string
		v    *string
	}{{"keyId", req.KeyId}, {"message", req.Message}, {"signingAlgorithm", req.SigningAlgorithm}} {
		if err := required(f.name, f.v); err != nil {
			return kms.SignInput{}, err
		}
	}
	alg, ok := awsSigAlgs[*req.SigningAlgorithm]
	switch {
	case !ok && awsKnownSigAlgs[*req.SigningAlgorithm]:
		return kms.SignInput{}, awsErrorf("UnsupportedOperationException", "SigningAlgorithm "+*req.SigningAlgorithm+" is not supported by this server (it serves RSASSA_PSS_SHA_256, RSASSA_PKCS1_V1_5_SHA_256, ECDSA_SHA_256 and ECDSA_SHA_384)")
	case !ok:
		return kms.SignInput{}, awsErrorf("ValidationException", "1 validation error detected: Value '"+truncate(*req.SigningAlgorithm, 64)+"' at 'signingAlgorithm' failed to satisfy constraint: Member must satisfy enum value set")
	}
	mt := kms.MessageTypeRaw
	if req.MessageType != nil {
		switch *req.MessageType {
		case kms.MessageTypeRaw, kms.MessageTypeDigest:
			mt = *req.MessageType
		case "EXTERNAL_MU":
			return kms.SignInput{}, unsupported("MessageType EXTERNAL_MU (ML-DSA keys)")
		default:
			return kms.SignInput{}, awsErrorf("ValidationException", "MessageType must be RAW or DIGEST")
		}
	}
	if err := checkDryRun(req.DryRun); err != nil {
		return kms.SignInput{}, err
	}
	msg, err := decodeBase64(*req.Message)
	if err != nil {
		return kms.SignInput{}, awsErrorf("SerializationException", "the Message is not standard base64")
	}
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	if err != nil {
		return kms.SignInput{}, err
	}
	return kms.SignInput{KeyID: id, Algorithm: alg, Message: msg, MessageType: mt}, nil
}

// awsSignError maps the domain's refusal of an algorithm that does not fit
// the key to AWS's InvalidKeyUsageException.
func awsSignError(err error, alg string) error {
	if errors.Is(err, kms.ErrInvalidAlgorithm) {
		return awsErrorf("InvalidKeyUsageException", "SigningAlgorithm "+alg+" is not compatible with the key's KeySpec")
	}
	return err
}

func (s *Server) awsSign(ctx context.Context, req *awsSignRequest) (*awsSignResponse, error) {
	if req.Signature != nil {
		return nil, awsErrorf("ValidationException", "Sign takes no Signature")
	}
	in, err := s.awsSignInput(ctx, req)
	if err != nil {
		return nil, err
	}
	a, err := s.awsAsymmetric()
	if err != nil {
		return nil, err
	}
	sig, err := a.SignByAsymmetricKey(ctx, in)
	if err != nil {
		return nil, awsSignError(err, *req.SigningAlgorithm)
	}
	return &awsSignResponse{KeyID: s.keyARN(awsRegion(ctx), in.KeyID), Signature: base64.StdEncoding.EncodeToString(sig), SigningAlgorithm: *req.SigningAlgorithm}, nil
}

// awsVerify answers SignatureValid true, or KMSInvalidSignatureException
// for a signature that does not verify, as AWS does.
func (s *Server) awsVerify(ctx context.Context, req *awsSignRequest) (*awsVerifyResponse, error) {
	if err := required("signature", req.Signature); err != nil {
		return nil, err
	}
	in, err := s.awsSignInput(ctx, req)
	if err != nil {
		return nil, err
	}
	if in.Signature, err = decodeBase64(*req.Signature); err != nil {
		return nil, awsErrorf("SerializationException", "the Signature is not standard base64")
	}
	a, err := s.awsAsymmetric()
	if err != nil {
		return nil, err
	}
	ok, err := a.VerifyByAsymmetricKey(ctx, in)
	if err != nil {
		return nil, awsSignError(err, *req.SigningAlgorithm)
	}
	if !ok {
		return nil, awsErrorf("KMSInvalidSignatureException", "the signature is not valid for this message, key and SigningAlgorithm")
	}
	return &awsVerifyResponse{KeyID: s.keyARN(awsRegion(ctx), in.KeyID), SignatureValid: true, SigningAlgorithm: *req.SigningAlgorithm}, nil
}
