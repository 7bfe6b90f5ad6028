package kms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"

	"hsmkms/hsm"
)

// Asymmetric CMKs: key pairs whose private half is a token object (see
// hsm/p11/asym.go) and whose public half, a DER SubjectPublicKeyInfo, is
// kept in the key's row (store.Key.PublicKey) under the row MAC. An
// asymmetric key has exactly one version (no rotation) whose object id
// names the private key; it never encrypts, decrypts envelopes or makes
// data keys, and the symmetric actions refuse it (ErrInvalidKeyUsage), as
// the asymmetric actions refuse a symmetric key.

// Key usages of asymmetric CMKs (CreateKey's KeyUsage, as the Tencent SDK
// names them).
const (
	UsageRSADecrypt    = "ASYMMETRIC_DECRYPT_RSA_2048"
	UsageRSASign       = "ASYMMETRIC_SIGN_VERIFY_RSA_2048"
	UsageECCSign       = "ASYMMETRIC_SIGN_VERIFY_ECC"
	UsageECDSA384Sign  = "ASYMMETRIC_SIGN_VERIFY_ECDSA384"
	UsageSM2Decrypt    = "ASYMMETRIC_DECRYPT_SM2"
	UsageSM2Sign       = "ASYMMETRIC_SIGN_VERIFY_SM2"
	symmetricAlgorithm = "AES_256"
)

// Signature algorithms (SignByAsymmetricKey, VerifyByAsymmetricKey).
// ECC_P384_R1 is hsmkms's name for ECDSA on P-384 with SHA-384: neither the
// SDK (v1.3.152) nor Tencent's public documentation names the algorithm of
// an ASYMMETRIC_SIGN_VERIFY_ECDSA384 key, so it follows ECC_P256_R1.
const (
	AlgRSAPSSSHA256   = "RSA_PSS_SHA_256"
	AlgRSAPKCS1SHA256 = "RSA_PKCS1_SHA_256"
	AlgECCP256        = "ECC_P256_R1"
	AlgECCP384        = "ECC_P384_R1"
	AlgSM2DSA         = "SM2DSA"
)

// RSA decryption algorithms (AsymmetricRsaDecrypt).
const (
	AlgRSAESPKCS1v15    = "RSAES_PKCS1_V1_5"
	AlgRSAESOAEPSHA1    = "RSAES_OAEP_SHA_1"
	AlgRSAESOAEPSHA256  = "RSAES_OAEP_SHA_256"
	MessageTypeRaw      = "RAW"
	MessageTypeDigest   = "DIGEST"
	MaxSignMessageBytes = 4096 // a RAW message, after base64 decoding
)

// Errors of the asymmetric operations.
var (
	// ErrUnsupported: the token (or hsmkms) does not offer what was
	// asked (an SM2 key, a mechanism the module lacks); the message names
	// what is missing. Tencent: UnsupportedOperation.
	ErrUnsupported = errors.New("kms: unsupported operation")
	// ErrRotateNotSupported: rotation of an asymmetric key, or of a key
	// with imported material (import.go). Tencent:
	// UnsupportedOperation.RotateNotSupported.
	ErrRotateNotSupported = errors.New("kms: rotation is not supported for this key")
	// ErrInvalidAlgorithm: the Algorithm is unknown or does not fit the
	// key's usage.
	ErrInvalidAlgorithm = errors.New("kms: invalid algorithm")
	// ErrInvalidMessage: the Message is empty, longer than 4096 bytes
	// (RAW), or not exactly the digest size (DIGEST); or the MessageType is
	// neither RAW nor DIGEST.
	ErrInvalidMessage = errors.New("kms: invalid message")
	// ErrAsymDecrypt: an RSA ciphertext did not decrypt. One error for
	// every cause (length, padding), so answers are no padding oracle.
	// Tencent: FailedOperation.DecryptError.
	ErrAsymDecrypt = errors.New("kms: asymmetric decryption failed")
)

// AsymHSM is what the asymmetric CMKs need from the token; hsm/p11's
// *Token implements it. The Service uses it when its HSM implements it;
// otherwise every asymmetric operation is ErrUnsupported.
type AsymHSM interface {
	// AsymSupport says which key pairs, signatures and paddings the token
	// offers.
	AsymSupport(ctx context.Context) (hsm.AsymSupport, error)
	// GenerateKeyPair makes a key pair whose private half is the token
	// object objectID allowed only use; it returns the public key as a
	// DER SubjectPublicKeyInfo.
	GenerateKeyPair(ctx context.Context, objectID []byte, label string, spec hsm.KeySpec, use hsm.KeyPairUse) ([]byte, error)
	// SignDigest signs a digest; ECDSA signatures are r||s.
	SignDigest(ctx context.Context, objectID []byte, mech hsm.SignMechanism, digest []byte) ([]byte, error)
	// DecryptRSA decrypts an RSA ciphertext; any decryption failure is
	// hsm.ErrNotAuthentic.
	DecryptRSA(ctx context.Context, objectID []byte, pad hsm.RSAPadding, ciphertext []byte) ([]byte, error)
}

// asymKind describes one asymmetric key usage.
type asymKind struct {
	spec      hsm.KeySpec
	use       hsm.KeyPairUse
	algorithm string // ListAlgorithms' name of the key kind
}

var asymKinds = map[string]asymKind{
	UsageRSADecrypt:   {hsm.SpecRSA2048, hsm.UseDecrypt, "RSA_2048"},
	UsageRSASign:      {hsm.SpecRSA2048, hsm.UseSign, "RSA_2048"},
	UsageECCSign:      {hsm.SpecECP256, hsm.UseSign, "ECC"},
	UsageECDSA384Sign: {hsm.SpecECP384, hsm.UseSign, "ECDSA384"},
}

// IsAsymmetricUsage reports whether u is the KeyUsage of an asymmetric
// key hsmkms can make (SM2 usages excluded).
func IsAsymmetricUsage(u string) bool {
	_, ok := asymKinds[u]
	return ok
}

// sigAlg is one signature algorithm.
type sigAlg struct {
	usage string
	mech  hsm.SignMechanism
	hash  crypto.Hash
}

var sigAlgs = map[string]sigAlg{
	AlgRSAPKCS1SHA256: {UsageRSASign, hsm.SignRSAPKCS1SHA256, crypto.SHA256},
	AlgRSAPSSSHA256:   {UsageRSASign, hsm.SignRSAPSSSHA256, crypto.SHA256},
	AlgECCP256:        {UsageECCSign, hsm.SignECDSA, crypto.SHA256},
	AlgECCP384:        {UsageECDSA384Sign, hsm.SignECDSA, crypto.SHA384},
}

var rsaPads = map[string]hsm.RSAPadding{
	AlgRSAESPKCS1v15:   hsm.PadPKCS1v15,
	AlgRSAESOAEPSHA1:   hsm.PadOAEPSHA1,
	AlgRSAESOAEPSHA256: hsm.PadOAEPSHA256,
}

func (s *Service) asymHSM() (AsymHSM, error) {
	a, ok := s.hsm.(AsymHSM)
	if !ok {
		return nil, fmt.Errorf("%w: this HSM offers no asymmetric keys", ErrUnsupported)
	}
	return a, nil
}

// checkUsageSupported refuses, before anything is written, a KeyUsage the
// token cannot serve: SM2 always (no standard PKCS#11 mechanism), the
// others when the module lacks the key-pair mechanism.
func (s *Service) checkUsageSupported(ctx context.Context, usage string) error {
	if usage == UsageSM2Decrypt || usage == UsageSM2Sign {
		return fmt.Errorf("%w: %s needs an SM2 key-pair mechanism, which PKCS#11 does not define and this token does not offer", ErrUnsupported, usage)
	}
	kind, ok := asymKinds[usage]
	if !ok {
		return nil
	}
	a, err := s.asymHSM()
	if err != nil {
		return err
	}
	sup, err := a.AsymSupport(ctx)
	if err != nil {
		return s.hsmErr(s.log, "create key", err)
	}
	for _, sp := range sup.Specs {
		if sp == kind.spec {
			return nil
		}
	}
	return fmt.Errorf("%w: %s: the token lacks %s", ErrUnsupported, usage, sup.Missing[string(kind.spec)])
}

// generateObject makes the token object of version 1 of a new key: an AES
// key, or the private key of a key pair (then the public key is returned).
func (s *Service) generateObject(ctx context.Context, usage string, objectID []byte, label string) ([]byte, error) {
	kind, ok := asymKinds[usage]
	if !ok {
		return nil, s.hsm.GenerateKey(ctx, objectID, label)
	}
	a, err := s.asymHSM()
	if err != nil {
		return nil, err
	}
	pub, err := a.GenerateKeyPair(ctx, objectID, label, kind.spec, kind.use)
	if err != nil {
		return nil, err
	}
	if _, err := x509.ParsePKIXPublicKey(pub); err != nil {
		return nil, fmt.Errorf("%w: the token's public key does not parse: %v", hsm.ErrUnavailable, err)
	}
	return pub, nil
}

// refuseAsymmetric is the check of the symmetric operations (Encrypt,
// Decrypt, GenerateDataKey, ReEncrypt): an asymmetric key is refused. A
// symmetric key's usage is always stored as DefaultKeyUsage
// (normaliseKeyUsage; "" in rows made by hand), so a few comparisons and
// no lookup on the hot path.
func refuseAsymmetric(k *keyEntry) error {
	if len(k.rec.PublicKey) > 0 || k.meta.KeyUsage != DefaultKeyUsage && k.meta.KeyUsage != "" {
		return fmt.Errorf("%w: %s is an %s key", ErrInvalidKeyUsage, k.meta.KeyID, k.meta.KeyUsage)
	}
	return nil
}

// refuseRotation is the check of RotateKey and Enable/DisableKeyRotation.
func refuseRotation(k *keyEntry) error {
	if len(k.rec.PublicKey) > 0 || IsAsymmetricUsage(k.meta.KeyUsage) {
		return fmt.Errorf("%w: %s", ErrRotateNotSupported, k.meta.KeyID)
	}
	return nil
}

// asymKey is the preamble of the asymmetric operations: the key, which
// must have usage (one of usages), and whose state check allows op.
func (s *Service) asymKey(ctx context.Context, keyID, op string, usages func(string) bool, state func(*keyEntry, string) error) (*keyEntry, error) {
	id, ok := parseKeyID(keyID)
	if !ok {
		return nil, ErrInvalidKeyID
	}
	k, err := s.lookupCtx(ctx, id)
	if err != nil {
		return nil, err
	}
	if k == nil {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, keyID)
	}
	if k.meta.KeyState == StateDeleted {
		return nil, fmt.Errorf("%w: %s is deleted", ErrKeyNotFound, keyID)
	}
	if !usages(k.meta.KeyUsage) || len(k.rec.PublicKey) == 0 {
		return nil, fmt.Errorf("%w: %s is an %s key", ErrInvalidKeyUsage, keyID, k.meta.KeyUsage)
	}
	if err := state(k, op); err != nil {
		return nil, err
	}
	return k, nil
}

// PublicKey is the answer of GetPublicKey.
type PublicKey struct {
	KeyID    string
	KeyUsage string // the key's KeyUsage (UsageRSADecrypt, UsageRSASign...)
	DER      []byte // SubjectPublicKeyInfo
	PEM      string // "-----BEGIN PUBLIC KEY-----" ...
}

// GetPublicKey returns the public key of an Enabled asymmetric key, from
// the key's authenticated row (no HSM call). Errors: ErrInvalidKeyID,
// ErrUnauthorized, ErrKeyNotFound, ErrInvalidKeyUsage (symmetric key),
// ErrKeyDisabled, ErrKeyArchived, ErrKeyStateNotSupported.
func (s *Service) GetPublicKey(ctx context.Context, keyID string) (PublicKey, error) {
	if err := authorize(ctx, "kms:GetPublicKey", keyID); err != nil {
		return PublicKey{}, err
	}
	k, err := s.asymKey(ctx, keyID, "get public key", IsAsymmetricUsage, s.checkEncryptState)
	if err != nil {
		return PublicKey{}, err
	}
	der := append([]byte(nil), k.rec.PublicKey...)
	return PublicKey{KeyID: k.meta.KeyID, KeyUsage: k.meta.KeyUsage, DER: der,
		PEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}, nil
}

// SignInput is the request of SignByAsymmetricKey and, with Signature,
// VerifyByAsymmetricKey.
type SignInput struct {
	KeyID       string
	Algorithm   string // AlgRSAPSSSHA256, AlgRSAPKCS1SHA256, AlgECCP256, AlgECCP384
	Message     []byte // RAW: 1..4096 bytes; DIGEST: the algorithm's digest (32 or 48 bytes)
	MessageType string // "" (RAW), MessageTypeRaw or MessageTypeDigest
	Signature   []byte // VerifyByAsymmetricKey only
}

// digestFor checks the algorithm against the key and returns the digest to
// sign or verify.
func digestFor(k *keyEntry, in SignInput) (sigAlg, []byte, error) {
	alg, ok := sigAlgs[in.Algorithm]
	if !ok || alg.usage != k.meta.KeyUsage {
		return sigAlg{}, nil, fmt.Errorf("%w: %q is not an algorithm of %s keys", ErrInvalidAlgorithm, in.Algorithm, k.meta.KeyUsage)
	}
	switch in.MessageType {
	case "", MessageTypeRaw:
		if len(in.Message) == 0 || len(in.Message) > MaxSignMessageBytes {
			return sigAlg{}, nil, fmt.Errorf("%w: a RAW message is 1 to %d bytes", ErrInvalidMessage, MaxSignMessageBytes)
		}
		if alg.hash == crypto.SHA384 {
			d := sha512.Sum384(in.Message)
			return alg, d[:], nil
		}
		d := sha256.Sum256(in.Message)
		return alg, d[:], nil
	case MessageTypeDigest:
		if len(in.Message) != alg.hash.Size() {
			return sigAlg{}, nil, fmt.Errorf("%w: a %s digest is %d bytes", ErrInvalidMessage, in.Algorithm, alg.hash.Size())
		}
		return alg, in.Message, nil
	}
	return sigAlg{}, nil, fmt.Errorf("%w: MessageType must be RAW or DIGEST", ErrInvalidMessage)
}

func isSignUsage(u string) bool {
	k, ok := asymKinds[u]
	return ok && k.use == hsm.UseSign
}

// SignByAsymmetricKey signs a message (hashed here, RAW) or a digest
// (DIGEST) with the private key of an Enabled signing key. Signatures are
// PKCS #1 v1.5 or PSS (SHA-256, MGF1-SHA-256, 32-byte salt) for RSA, and
// ASN.1 DER ECDSA-Sig-Value (SEQUENCE of r and s) for ECDSA, as Tencent
// documents. Nothing of the message is logged.
//
// Errors: ErrInvalidKeyID, ErrUnauthorized, ErrKeyNotFound,
// ErrInvalidKeyUsage (not a signing key), ErrInvalidAlgorithm,
// ErrInvalidMessage, the state errors of Encrypt; ErrUnsupported if the
// module refuses the mechanism; ErrBusy, ErrUnavailable, ErrInternal.
func (s *Service) SignByAsymmetricKey(ctx context.Context, in SignInput) ([]byte, error) {
	if err := authorize(ctx, "kms:SignByAsymmetricKey", in.KeyID); err != nil {
		return nil, err
	}
	k, err := s.asymKey(ctx, in.KeyID, "sign", isSignUsage, s.checkEncryptState)
	if err != nil {
		return nil, err
	}
	alg, digest, err := digestFor(k, in)
	if err != nil {
		return nil, err
	}
	a, err := s.asymHSM()
	if err != nil {
		return nil, err
	}
	v := k.current()
	sig, err := a.SignDigest(ctx, v.objectID, alg.mech, digest)
	if err != nil {
		if errors.Is(err, hsm.ErrMisconfigured) {
			return nil, fmt.Errorf("%w: the token refuses %s: %v", ErrUnsupported, in.Algorithm, err)
		}
		return nil, s.hsmErr(s.versionLog(k, v), "sign", err)
	}
	if alg.mech != hsm.SignECDSA {
		return sig, nil
	}
	// PKCS#11 CKM_ECDSA gives r||s; Tencent (and OpenSSL, Go) use DER.
	n := 32
	if alg.hash == crypto.SHA384 {
		n = 48
	}
	if len(sig) != 2*n {
		s.versionLog(k, v).Error("kms: the token returned an ECDSA signature of an unexpected size", "bytes", len(sig))
		return nil, fmt.Errorf("%w: sign: ECDSA signature of %d bytes", ErrInternal, len(sig))
	}
	der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])})
	if err != nil {
		return nil, fmt.Errorf("%w: sign: %v", ErrInternal, err)
	}
	return der, nil
}

// VerifyByAsymmetricKey checks a signature with the key's public key (from
// its authenticated row, with the Go standard library: no HSM call).
// valid is false for a signature that does not verify, whatever its form;
// PSS signatures of any salt length verify. Errors as SignByAsymmetricKey.
func (s *Service) VerifyByAsymmetricKey(ctx context.Context, in SignInput) (valid bool, err error) {
	if err := authorize(ctx, "kms:VerifyByAsymmetricKey", in.KeyID); err != nil {
		return false, err
	}
	k, err := s.asymKey(ctx, in.KeyID, "verify", isSignUsage, s.checkEncryptState)
	if err != nil {
		return false, err
	}
	alg, digest, err := digestFor(k, in)
	if err != nil {
		return false, err
	}
	pub, err := x509.ParsePKIXPublicKey(k.rec.PublicKey)
	if err != nil {
		return false, fmt.Errorf("%w: verify: stored public key: %v", ErrInternal, err)
	}
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		if alg.mech == hsm.SignRSAPSSSHA256 {
			return rsa.VerifyPSS(pk, crypto.SHA256, digest, in.Signature, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil, nil
		}
		return rsa.VerifyPKCS1v15(pk, crypto.SHA256, digest, in.Signature) == nil, nil
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(pk, digest, in.Signature), nil
	}
	return false, fmt.Errorf("%w: verify: stored public key of type %T", ErrInternal, pub)
}

// RSADecryptResult is the answer of AsymmetricRsaDecrypt.
type RSADecryptResult struct {
	KeyID     string
	Plaintext []byte
}

func isDecryptUsage(u string) bool { return u == UsageRSADecrypt }

// AsymmetricRsaDecrypt decrypts, inside the token, a ciphertext made with
// the public key of an ASYMMETRIC_DECRYPT_RSA_2048 key (Enabled or
// Archived). algorithm is RSAES_PKCS1_V1_5, RSAES_OAEP_SHA_1 or
// RSAES_OAEP_SHA_256 (MGF1 with the same hash, no label).
//
// Errors: ErrAsymDecrypt for any ciphertext that does not decrypt (one
// error, whatever the cause); ErrInvalidKeyID, ErrUnauthorized,
// ErrKeyNotFound, ErrInvalidKeyUsage, ErrInvalidAlgorithm, the state
// errors of Decrypt; ErrUnsupported if the module lacks the padding
// (SoftHSM 2.6: OAEP with SHA-1 only); ErrBusy, ErrUnavailable,
// ErrInternal.
func (s *Service) AsymmetricRsaDecrypt(ctx context.Context, keyID string, ciphertext []byte, algorithm string) (RSADecryptResult, error) {
	if err := authorize(ctx, "kms:AsymmetricRsaDecrypt", keyID); err != nil {
		return RSADecryptResult{}, err
	}
	k, err := s.asymKey(ctx, keyID, "asymmetric decrypt", isDecryptUsage, s.checkDecryptState)
	if err != nil {
		return RSADecryptResult{}, err
	}
	pad, ok := rsaPads[algorithm]
	if !ok {
		return RSADecryptResult{}, fmt.Errorf("%w: %q: want RSAES_PKCS1_V1_5, RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256", ErrInvalidAlgorithm, algorithm)
	}
	a, err := s.asymHSM()
	if err != nil {
		return RSADecryptResult{}, err
	}
	v := k.current()
	pt, err := a.DecryptRSA(ctx, v.objectID, pad, ciphertext)
	switch {
	case err == nil:
		return RSADecryptResult{KeyID: k.meta.KeyID, Plaintext: pt}, nil
	case errors.Is(err, hsm.ErrNotAuthentic):
		return RSADecryptResult{}, ErrAsymDecrypt
	case errors.Is(err, hsm.ErrMisconfigured):
		return RSADecryptResult{}, fmt.Errorf("%w: %s: %v", ErrUnsupported, algorithm, err)
	}
	return RSADecryptResult{}, s.hsmErr(s.versionLog(k, v), "asymmetric decrypt", err)
}

// AlgorithmInfo is one entry of ListAlgorithms: a key usage and the name
// of its key kind.
type AlgorithmInfo struct {
	KeyUsage  string
	Algorithm string
}

// Algorithms is the answer of ListAlgorithms.
type Algorithms struct {
	Symmetric            []AlgorithmInfo
	Asymmetric           []AlgorithmInfo
	AsymmetricSignVerify []AlgorithmInfo
}

// ListAlgorithms lists the key usages this token serves, asking the module
// which mechanisms it has: ENCRYPT_DECRYPT (AES-256-GCM, checked at
// start-up) always; each asymmetric usage when the token can generate its
// key pair and use it (sign, or decrypt with at least one padding).
// Authorised as kms:ListAlgorithms on "*".
func (s *Service) ListAlgorithms(ctx context.Context) (Algorithms, error) {
	if err := authorize(ctx, "kms:ListAlgorithms", "*"); err != nil {
		return Algorithms{}, err
	}
	out := Algorithms{Symmetric: []AlgorithmInfo{{DefaultKeyUsage, symmetricAlgorithm}}}
	a, ok := s.hsm.(AsymHSM)
	if !ok {
		return out, nil
	}
	sup, err := a.AsymSupport(ctx)
	if err != nil {
		return Algorithms{}, s.hsmErr(s.log, "list algorithms", err)
	}
	has := func(spec hsm.KeySpec, sign []hsm.SignMechanism, dec bool) bool {
		ok := false
		for _, sp := range sup.Specs {
			ok = ok || sp == spec
		}
		if !ok {
			return false
		}
		if dec {
			return len(sup.Decrypt) > 0
		}
		for _, m := range sup.Sign {
			for _, w := range sign {
				if m == w {
					return true
				}
			}
		}
		return false
	}
	if has(hsm.SpecRSA2048, nil, true) {
		out.Asymmetric = append(out.Asymmetric, AlgorithmInfo{UsageRSADecrypt, asymKinds[UsageRSADecrypt].algorithm})
	}
	for _, u := range []string{UsageRSASign, UsageECCSign, UsageECDSA384Sign} {
		var mechs []hsm.SignMechanism
		for _, alg := range sigAlgs {
			if alg.usage == u {
				mechs = append(mechs, alg.mech)
			}
		}
		if has(asymKinds[u].spec, mechs, false) {
			out.AsymmetricSignVerify = append(out.AsymmetricSignVerify, AlgorithmInfo{u, asymKinds[u].algorithm})
		}
	}
	return out, nil
}
