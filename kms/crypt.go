package kms

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/google/uuid"

	"hsmkms/hsm"
)

// ---------------------------------------------------------------------------
// Encrypt / Decrypt

func (s *Service) versionLog(k *keyEntry, v *versionEntry) *slog.Logger {
	return s.log.With("key_id", k.meta.KeyID, "version", v.number, "object_id", fmt.Sprintf("%x", v.objectID))
}

// encryptingKey is the preamble of every operation that encrypts under a
// CMK (Encrypt, GenerateDataKey, ReEncrypt's destination): the cached key
// id, if it may encrypt now. keyID is the id as the caller gave it, for
// the error; op names the operation for checkEncryptState.
//
// Errors: lookupCtx's (on a shared store); ErrKeyNotFound if there is no
// such key; the state errors of checkEncryptState.
func (s *Service) encryptingKey(ctx context.Context, id uuid.UUID, keyID, op string) (*keyEntry, error) {
	k, err := s.lookupCtx(ctx, id)
	if err != nil {
		return nil, err
	}
	if k == nil {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, keyID)
	}
	if err := refuseAsymmetric(k); err != nil { // asym.go
		return nil, err
	}
	if err := s.checkEncryptState(k, op); err != nil {
		return nil, err
	}
	return k, nil
}

// checkEncryptState says whether k may encrypt (Encrypt, GenerateDataKey,
// ReEncrypt's destination): only when Enabled. A refused use of a
// PendingDelete key is logged as a warning, as Tencent alarms on it.
func (s *Service) checkEncryptState(k *keyEntry, op string) error {
	switch k.meta.KeyState {
	case StateEnabled:
		return nil
	case StateArchived:
		return fmt.Errorf("%w: %s", ErrKeyArchived, k.meta.KeyID)
	}
	return s.refuse(k, op)
}

// checkDecryptState says whether k may decrypt (Decrypt, ReEncrypt's
// source): when Enabled or Archived.
func (s *Service) checkDecryptState(k *keyEntry, op string) error {
	switch k.meta.KeyState {
	case StateEnabled, StateArchived:
		return nil
	}
	return s.refuse(k, op)
}

func (s *Service) refuse(k *keyEntry, op string) error {
	switch k.meta.KeyState {
	case StateDisabled:
		return fmt.Errorf("%w: %s", ErrKeyDisabled, k.meta.KeyID)
	case StateDeleted:
		return fmt.Errorf("%w: %s is deleted", ErrKeyNotFound, k.meta.KeyID)
	case StatePendingDelete:
		s.log.Warn("kms: use of a key pending deletion refused", "op", op, "key_id", k.meta.KeyID,
			"deletion_date", k.meta.DeletionDate)
	}
	return fmt.Errorf("%w: %s is %s", ErrKeyStateNotSupported, k.meta.KeyID, k.meta.KeyState)
}

// Encrypt seals a plaintext under the newest version of a key.
//
// Errors: ErrInvalidKeyID (not a canonical lower-case UUID),
// ErrPlaintextEmpty, ErrPlaintextTooLong, ErrInvalidContext; ErrKeyNotFound
// (unknown or Deleted key), ErrKeyDisabled, ErrKeyArchived,
// ErrKeyStateNotSupported (PendingDelete, logged as a warning);
// ErrUsageLimit if the version is exhausted and no new one could be made;
// ErrBusy, ErrUnavailable or a context error from the HSM; ErrInternal if
// the token lacks the key's object or fails unexpectedly (logged). Encrypt
// writes the store only to reserve a batch of usage (one write per
// Config.UsageBatch encryptions of a version, or to add a version when the
// usage limit is reached) and logs only failures that indicate a fault.
func (s *Service) Encrypt(ctx context.Context, in EncryptInput) (EncryptResult, error) {
	id, ok := parseKeyID(in.KeyID)
	if !ok {
		return EncryptResult{}, ErrInvalidKeyID
	}
	if err := authorize(ctx, "kms:Encrypt", in.KeyID); err != nil {
		return EncryptResult{}, err
	}
	switch {
	case len(in.Plaintext) == 0:
		return EncryptResult{}, ErrPlaintextEmpty
	case len(in.Plaintext) > MaxPlaintext:
		return EncryptResult{}, ErrPlaintextTooLong
	}
	ec, err := parseContextCached(in.EncryptionContext)
	if err != nil {
		return EncryptResult{}, err
	}
	k, err := s.encryptingKey(ctx, id, in.KeyID, "encrypt")
	if err != nil {
		return EncryptResult{}, err
	}
	blob, v, err := s.seal(ctx, k, in.Plaintext, ec, "encrypt")
	if err != nil {
		return EncryptResult{}, err
	}
	return EncryptResult{KeyID: k.meta.KeyID, KeyVersion: v, Ciphertext: blob}, nil
}

// sealScratch holds seal's AAD scratch buffers (no secret is ever in
// them: the AAD is the envelope header and the encryption context).
var sealScratch = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func putSealScratch(p *[]byte, b []byte) {
	if cap(b) <= 2*MaxEnvelopeBytes {
		*p = b[:0]
		sealScratch.Put(p)
	}
}

// seal encrypts plaintext under the newest version of k (whose state the
// caller checked) and returns the binary envelope and the version used. It
// counts the encryption against the version (see usage) and, when the
// version reached the usage limit, makes a new version first. It never
// writes the store except for one usage reservation per batch.
func (s *Service) seal(ctx context.Context, k *keyEntry, plaintext []byte, ec EncryptionContext, op string) ([]byte, uint32, error) {
	if err := s.checkFresh(); err != nil {
		return nil, 0, err
	}
	for attempt := 0; ; attempt++ {
		v := k.current()
		var exhausted bool
		if s.cluster != nil {
			ok, err := s.takeShared(ctx, k, v)
			if err != nil {
				return nil, 0, err
			}
			exhausted = !ok
		} else if n := v.usage.used.Add(1); n > s.usageLimit {
			exhausted = true
		} else if n > v.usage.reserved.Load() {
			if err := s.reserveUsage(ctx, k, v, n); err != nil {
				return nil, 0, err
			}
		}
		if exhausted {
			if attempt >= 2 {
				return nil, 0, fmt.Errorf("%w: key %s: rotated versions were exhausted concurrently", ErrUsageLimit, k.meta.KeyID)
			}
			nk, err := s.rotateForUsage(ctx, k, v.number)
			if err != nil {
				return nil, 0, err
			}
			k = nk
			continue
		}

		// The AAD is built in a pooled scratch buffer (the HSM keeps no
		// reference to its inputs); the envelope goes into a buffer of its
		// own, sized exactly, which the caller's reply carries.
		sp := sealScratch.Get().(*[]byte)
		aad := append((*sp)[:0], v.header[:]...)
		aad = ec.AppendCanonical(aad)
		iv, sealed, err := s.hsm.Seal(ctx, v.objectID, plaintext, aad)
		putSealScratch(sp, aad)
		if err != nil {
			return nil, 0, s.hsmErr(s.versionLog(k, v), op, err)
		}
		if len(iv) != hsm.IVBytes || len(sealed) != len(plaintext)+hsm.TagBytes {
			s.versionLog(k, v).Error("kms: HSM returned a malformed seal", "iv_len", len(iv), "sealed_len", len(sealed))
			return nil, 0, fmt.Errorf("%w: kms: %s: malformed HSM output", ErrInternal, op)
		}
		env := make([]byte, 0, len(v.header)+1+len(iv)+len(sealed))
		env = append(env, v.header[:]...)
		env = append(env, byte(len(iv)))
		env = append(env, iv...)
		env = append(env, sealed...)
		return env, v.number, nil
	}
}

// Decrypt opens a ciphertext blob made by Encrypt.
//
// Errors: ErrInvalidCiphertext (malformed blob, or a key version the key
// does not have), ErrInvalidContext; ErrKeyNotFound (the blob names an
// unknown or Deleted key), ErrKeyDisabled, ErrKeyStateNotSupported
// (PendingDelete, logged as a warning); Archived keys decrypt; ErrDecrypt if the blob does not authenticate under its
// key and the given context (altered blob, relabelled key id or version,
// different context); ErrBusy, ErrUnavailable, a context error or
// ErrInternal as for Encrypt. Decrypt never touches the store. The blob is
// parsed in pure Go before any HSM call.
func (s *Service) Decrypt(ctx context.Context, in DecryptInput) (DecryptResult, error) {
	env, err := ParseBlob(in.CiphertextBlob)
	if err != nil {
		return DecryptResult{}, err
	}
	if err := authorize(ctx, "kms:Decrypt", uuid.UUID(env.KeyID).String()); err != nil {
		return DecryptResult{}, err
	}
	ec, err := parseContextCached(in.EncryptionContext)
	if err != nil {
		return DecryptResult{}, err
	}
	k, v, pt, err := s.open(ctx, env, ec, "decrypt")
	if err != nil {
		return DecryptResult{}, err
	}
	return DecryptResult{KeyID: k.meta.KeyID, KeyVersion: v, Plaintext: pt}, nil
}

// open decrypts a parsed envelope under its key, whose state must allow
// decryption. It returns the key, the version used and the plaintext.
func (s *Service) open(ctx context.Context, env Envelope, ec EncryptionContext, op string) (*keyEntry, uint32, []byte, error) {
	if err := s.checkFresh(); err != nil {
		return nil, 0, nil, err
	}
	k, err := s.lookupCtx(ctx, uuid.UUID(env.KeyID))
	if err != nil {
		return nil, 0, nil, err
	}
	if k == nil {
		return nil, 0, nil, fmt.Errorf("%w: %s", ErrKeyNotFound, uuid.UUID(env.KeyID))
	}
	v := k.version(env.KeyVersion)
	if v == nil && s.cluster != nil && env.KeyVersion > k.current().number {
		// Rotated on another node a moment ago: read through.
		if nk, err := s.readThrough(ctx, k.id); err != nil {
			return nil, 0, nil, err
		} else if nk != nil {
			k, v = nk, nk.version(env.KeyVersion)
		}
	}
	if err := refuseAsymmetric(k); err != nil { // asym.go
		return nil, 0, nil, err
	}
	if err := s.checkDecryptState(k, op); err != nil {
		return nil, 0, nil, err
	}
	if v == nil {
		return nil, 0, nil, fmt.Errorf("%w: key %s has no version %d", ErrInvalidCiphertext, k.meta.KeyID, env.KeyVersion)
	}

	aad := make([]byte, 0, HeaderLen+ec.CanonicalLen())
	aad = append(aad, v.header[:]...)
	aad = ec.AppendCanonical(aad)
	pt, err := s.hsm.Open(ctx, v.objectID, env.IV, env.Sealed, aad)
	if err != nil {
		switch {
		case errors.Is(err, hsm.ErrNotAuthentic):
			return nil, 0, nil, ErrDecrypt
		case errors.Is(err, hsm.ErrInvalidInput):
			// ParseBlob enforces what the HSM layer checks; if the HSM is
			// stricter still, the blob is what it refuses.
			return nil, 0, nil, fmt.Errorf("%w: refused by the HSM layer", ErrInvalidCiphertext)
		}
		return nil, 0, nil, s.hsmErr(s.versionLog(k, v), op, err)
	}
	return k, v.number, pt, nil
}

// contexts caches parsed encryption contexts by their text for Encrypt and
// Decrypt: callers send few distinct contexts, ParseContext is pure and an
// EncryptionContext is immutable, so a hit is exact. Only contexts that
// parse, and of at most maxCachedContext bytes, are cached; the cache
// forgets everything when it holds maxCachedContexts.
var contexts struct {
	mu sync.RWMutex
	m  map[string]EncryptionContext
}

const (
	maxCachedContext  = 512
	maxCachedContexts = 1024
)

// parseContextCached is ParseContext through the contexts cache.
func parseContextCached(s string) (EncryptionContext, error) {
	if s == "" || len(s) > maxCachedContext {
		return ParseContext(s)
	}
	contexts.mu.RLock()
	ec, ok := contexts.m[s]
	contexts.mu.RUnlock()
	if ok {
		return ec, nil
	}
	ec, err := ParseContext(s)
	if err != nil {
		return ec, err
	}
	contexts.mu.Lock()
	if contexts.m == nil || len(contexts.m) >= maxCachedContexts {
		contexts.m = make(map[string]EncryptionContext)
	}
	contexts.m[strings.Clone(s)] = ec
	contexts.mu.Unlock()
	return ec, nil
}
