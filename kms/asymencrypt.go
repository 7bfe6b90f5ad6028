package kms

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
)

// RSAEncryptResult is the answer of AsymmetricRsaEncrypt.
type RSAEncryptResult struct {
	KeyID      string
	Ciphertext []byte
}

// AsymmetricRsaEncrypt encrypts plaintext with the public key of an
// Enabled ASYMMETRIC_DECRYPT_RSA_2048 key, as the AWS KMS API's Encrypt
// does for an RSA key: RSAES-OAEP (algorithm RSAES_OAEP_SHA_1 or
// RSAES_OAEP_SHA_256, MGF1 with the same hash, no label) with Go's
// crypto/rsa on the public key of the key's authenticated row. No HSM call:
// anyone with the public key (GetPublicKey) can do the same; the action
// exists so that AWS clients need not. It is authorised as kms:Encrypt,
// the word of the AWS action. The plaintext is at most 214 (SHA-1) or 190
// (SHA-256) bytes for a 2048-bit key. RSAES_PKCS1_V1_5 is refused: AWS
// does not offer it for encryption and new ciphertexts should not use it.
//
// Errors: ErrInvalidKeyID, ErrUnauthorized, ErrKeyNotFound,
// ErrInvalidKeyUsage (not an RSA decryption key), ErrInvalidAlgorithm,
// ErrPlaintextEmpty, ErrPlaintextTooLong, the state errors of Encrypt,
// ErrInternal.
func (s *Service) AsymmetricRsaEncrypt(ctx context.Context, keyID string, plaintext []byte, algorithm string) (RSAEncryptResult, error) {
	if err := authorize(ctx, "kms:Encrypt", keyID); err != nil {
		return RSAEncryptResult{}, err
	}
	k, err := s.asymKey(ctx, keyID, "asymmetric encrypt", isDecryptUsage, s.checkEncryptState)
	if err != nil {
		return RSAEncryptResult{}, err
	}
	var h hash.Hash
	switch algorithm {
	case AlgRSAESOAEPSHA1:
		h = sha1.New()
	case AlgRSAESOAEPSHA256:
		h = sha256.New()
	default:
		return RSAEncryptResult{}, fmt.Errorf("%w: %q: want RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256", ErrInvalidAlgorithm, algorithm)
	}
	if len(plaintext) == 0 {
		return RSAEncryptResult{}, ErrPlaintextEmpty
	}
	pub, err := x509.ParsePKIXPublicKey(k.rec.PublicKey)
	if err != nil {
		return RSAEncryptResult{}, fmt.Errorf("%w: asymmetric encrypt: stored public key: %v", ErrInternal, err)
	}
	pk, ok := pub.(*rsa.PublicKey)
	if !ok {
		return RSAEncryptResult{}, fmt.Errorf("%w: asymmetric encrypt: stored public key of type %T", ErrInternal, pub)
	}
	ct, err := rsa.EncryptOAEP(h, rand.Reader, pk, plaintext, nil)
	if errors.Is(err, rsa.ErrMessageTooLong) {
		return RSAEncryptResult{}, fmt.Errorf("%w: at most %d bytes under %s", ErrPlaintextTooLong, pk.Size()-2*h.Size()-2, algorithm)
	}
	if err != nil {
		return RSAEncryptResult{}, fmt.Errorf("%w: asymmetric encrypt: %v", ErrInternal, err)
	}
	return RSAEncryptResult{KeyID: k.meta.KeyID, Ciphertext: ct}, nil
}
