package kms

import (
	"context"
	"fmt"
	"slices"

	"github.com/google/uuid"
)

// GenerateDataKeyInput is the request of GenerateDataKey.
type GenerateDataKeyInput struct {
	KeyID string
	// KeySpec is "AES_128" (16 bytes), "AES_256" (32 bytes) or "".
	KeySpec string
	// NumberOfBytes is the data key length, 1..MaxDataKeyBytes; 0 means
	// not given. It wins over KeySpec; one of the two is required.
	NumberOfBytes     int
	EncryptionContext string
}

// GenerateDataKeyResult is the response of GenerateDataKey. The caller
// must not keep Plaintext longer than it needs it.
type GenerateDataKeyResult struct {
	KeyID      string
	KeyVersion uint32
	Plaintext  []byte // the data key
	Ciphertext []byte // the binary envelope of the data key under the CMK
}

// CiphertextBlob returns the wire form of Ciphertext (standard, padded
// base64); Decrypt recovers the data key from it.
func (r GenerateDataKeyResult) CiphertextBlob() string { return encodeBlob(r.Ciphertext) }

// dataKeyLength resolves KeySpec and NumberOfBytes.
func dataKeyLength(spec string, n int) (int, error) {
	specLen := 0
	switch spec {
	case "":
	case "AES_128":
		specLen = 16
	case "AES_256":
		specLen = 32
	default:
		return 0, ErrInvalidKeySpec
	}
	switch {
	case n < 0 || n > MaxDataKeyBytes:
		return 0, fmt.Errorf("%w: %d", ErrInvalidNumberOfBytes, n)
	case n > 0:
		return n, nil
	case specLen > 0:
		return specLen, nil
	}
	return 0, fmt.Errorf("%w: KeySpec or NumberOfBytes is required", ErrInvalidKeySpec)
}

// GenerateDataKey draws a data key from the HSM's random number generator
// and returns it in plaintext and sealed under the newest version of the
// CMK with the caller's encryption context, exactly as Encrypt would seal
// it (the blob decrypts with Decrypt). It counts as one encryption under
// the version.
//
// Errors: ErrInvalidKeyID, ErrInvalidKeySpec, ErrInvalidNumberOfBytes,
// ErrInvalidContext, ErrUnauthorized; the key state errors of Encrypt;
// ErrUsageLimit; ErrBusy, ErrUnavailable, ErrInternal.
func (s *Service) GenerateDataKey(ctx context.Context, in GenerateDataKeyInput) (GenerateDataKeyResult, error) {
	return s.generateDataKey(ctx, "kms:GenerateDataKey", in)
}

// generateDataKey is GenerateDataKey authorising action.
func (s *Service) generateDataKey(ctx context.Context, action string, in GenerateDataKeyInput) (GenerateDataKeyResult, error) {
	id, ok := parseKeyID(in.KeyID)
	if !ok {
		return GenerateDataKeyResult{}, ErrInvalidKeyID
	}
	if err := authorize(ctx, action, in.KeyID); err != nil {
		return GenerateDataKeyResult{}, err
	}
	n, err := dataKeyLength(in.KeySpec, in.NumberOfBytes)
	if err != nil {
		return GenerateDataKeyResult{}, err
	}
	ec, err := ParseContext(in.EncryptionContext)
	if err != nil {
		return GenerateDataKeyResult{}, err
	}
	k, err := s.encryptingKey(ctx, id, in.KeyID, "generate data key")
	if err != nil {
		return GenerateDataKeyResult{}, err
	}
	dk, err := s.hsm.Random(ctx, n)
	if err != nil {
		return GenerateDataKeyResult{}, s.hsmErr(s.log, "generate data key", err)
	}
	blob, v, err := s.seal(ctx, k, dk, ec, "generate data key")
	if err != nil {
		clear(dk)
		return GenerateDataKeyResult{}, err
	}
	return GenerateDataKeyResult{KeyID: k.meta.KeyID, KeyVersion: v, Plaintext: dk, Ciphertext: blob}, nil
}

// GenerateRandom returns n (1..MaxDataKeyBytes) bytes from the HSM's
// random number generator. Errors: ErrUnauthorized (kms:GenerateRandom on
// "*"), ErrInvalidNumberOfBytes, ErrBusy, ErrUnavailable, ErrInternal.
func (s *Service) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	if err := authorize(ctx, "kms:GenerateRandom", "*"); err != nil {
		return nil, err
	}
	if n < 1 || n > MaxDataKeyBytes {
		return nil, fmt.Errorf("%w: %d", ErrInvalidNumberOfBytes, n)
	}
	b, err := s.hsm.Random(ctx, n)
	if err != nil {
		return nil, s.hsmErr(s.log, "generate random", err)
	}
	return b, nil
}

// ReEncryptInput is the request of ReEncrypt.
type ReEncryptInput struct {
	CiphertextBlob string
	// DestinationKeyID is the key of the new blob; "" means the blob's key.
	DestinationKeyID             string
	SourceEncryptionContext      string // the context the blob was made with
	DestinationEncryptionContext string // the context the new blob requires
}

// ReEncryptResult is the response of ReEncrypt.
type ReEncryptResult struct {
	Ciphertext  []byte // the binary envelope of the new blob
	KeyID       string // the key of the new blob
	KeyVersion  uint32
	SourceKeyID string
	// ReEncrypted is false when the blob was already under the newest
	// version of the destination key with the destination context: the
	// original blob is returned unchanged.
	ReEncrypted bool
}

// CiphertextBlob returns the wire form of Ciphertext (standard, padded
// base64).
func (r ReEncryptResult) CiphertextBlob() string { return encodeBlob(r.Ciphertext) }

// ReEncrypt opens a blob and seals its plaintext again, under the newest
// version of the destination key and the destination context. The
// plaintext never leaves the service and is wiped after use. The caller
// needs kms:ReEncrypt and kms:Decrypt on the source key, and kms:ReEncrypt
// and kms:Encrypt on the destination key (the same key when the blob is
// re-encrypted under its own key).
//
// Errors: ErrInvalidCiphertext, ErrInvalidKeyID, ErrInvalidContext,
// ErrUnauthorized; the source key must allow Decrypt and the destination
// key Encrypt (their state errors); ErrDecrypt; ErrUsageLimit; ErrBusy,
// ErrUnavailable, ErrInternal.
func (s *Service) ReEncrypt(ctx context.Context, in ReEncryptInput) (ReEncryptResult, error) {
	env, err := ParseBlob(in.CiphertextBlob)
	if err != nil {
		return ReEncryptResult{}, err
	}
	srcID := uuid.UUID(env.KeyID).String()
	dstID := in.DestinationKeyID
	if dstID == "" {
		dstID = srcID
	}
	dst, ok := parseKeyID(dstID)
	if !ok {
		return ReEncryptResult{}, ErrInvalidKeyID
	}
	// ReEncrypt decrypts under the source and encrypts under the
	// destination: it needs what Decrypt and Encrypt need, so that it is
	// no way around a deny on either.
	for _, c := range [...]struct{ action, key string }{
		{"kms:ReEncrypt", srcID}, {"kms:Decrypt", srcID},
		{"kms:ReEncrypt", dstID}, {"kms:Encrypt", dstID},
	} {
		if err := authorize(ctx, c.action, c.key); err != nil {
			return ReEncryptResult{}, err
		}
	}
	srcEC, err := ParseContext(in.SourceEncryptionContext)
	if err != nil {
		return ReEncryptResult{}, err
	}
	dstEC, err := ParseContext(in.DestinationEncryptionContext)
	if err != nil {
		return ReEncryptResult{}, err
	}
	dk, err := s.encryptingKey(ctx, dst, dstID, "re-encrypt")
	if err != nil {
		return ReEncryptResult{}, err
	}
	_, _, pt, err := s.open(ctx, env, srcEC, "re-encrypt")
	if err != nil {
		return ReEncryptResult{}, err
	}
	defer clear(pt)
	if dstID == srcID && env.KeyVersion == dk.current().number && slices.Equal(srcEC.Canonical(), dstEC.Canonical()) {
		same, err := env.MarshalBinary() // what ParseBlob accepted re-encodes to exactly in.CiphertextBlob
		if err != nil {
			return ReEncryptResult{}, err
		}
		return ReEncryptResult{Ciphertext: same, KeyID: dstID, KeyVersion: env.KeyVersion,
			SourceKeyID: srcID, ReEncrypted: false}, nil
	}
	blob, v, err := s.seal(ctx, dk, pt, dstEC, "re-encrypt")
	if err != nil {
		return ReEncryptResult{}, err
	}
	return ReEncryptResult{Ciphertext: blob, KeyID: dk.meta.KeyID, KeyVersion: v, SourceKeyID: srcID, ReEncrypted: true}, nil
}
