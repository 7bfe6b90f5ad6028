package kms

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"hsmkms/store"
)

// RotateKey adds a new version to an Enabled key: a new token object that
// Encrypt uses from now on. Ciphertexts of every older version still
// decrypt. It returns the key's metadata (CurrentVersion is the new
// version, LastRotateTime now).
//
// Errors: ErrInvalidKeyID, ErrUnauthorized, ErrKeyNotFound,
// ErrKeyDisabled, ErrKeyStateNotSupported (PendingDelete, Archived);
// ErrBusy, ErrUnavailable or ErrInternal from the HSM or the store.
//
// Rotation is crash-safe like CreateKey: intent, token object, then one
// store transaction that adds the version and deletes the intent; Recover
// resolves whatever a crash leaves. Unlike Tencent Cloud, rotations are
// not rate limited.
func (s *Service) RotateKey(ctx context.Context, keyID string) (KeyMetadata, error) {
	if _, ok := parseKeyID(keyID); !ok {
		return KeyMetadata{}, ErrInvalidKeyID
	}
	if err := authorize(ctx, "kms:RotateKey", keyID); err != nil {
		return KeyMetadata{}, err
	}
	k, release, err := s.lockForMaintenance(ctx, keyID)
	if err != nil {
		return KeyMetadata{}, err
	}
	defer release()
	if err := refuseRotation(k); err != nil { // asym.go
		return KeyMetadata{}, err
	}
	switch k.meta.KeyState {
	case StateEnabled:
	case StateDisabled:
		return KeyMetadata{}, fmt.Errorf("%w: %s", ErrKeyDisabled, keyID)
	default:
		return KeyMetadata{}, notSupported(k)
	}
	nk, err := s.rotateLocked(ctx, k, "requested")
	if err != nil {
		return KeyMetadata{}, err
	}
	return nk.meta, nil
}

// rotateLocked adds a version to k and publishes the new entry. The caller
// holds recoverMu (shared) and writeMu, and has checked k's state.
func (s *Service) rotateLocked(ctx context.Context, k *keyEntry, reason string) (*keyEntry, error) {
	if k.meta.Origin == OriginExternal {
		// Imported material cannot be renewed inside the token.
		return nil, fmt.Errorf("%w: %s has imported material", ErrRotateNotSupported, k.meta.KeyID)
	}
	cur := k.current().number
	if cur == ^uint32(0) {
		return nil, fmt.Errorf("%w: key %s has the maximum number of versions", ErrInternal, k.meta.KeyID)
	}
	next := cur + 1
	objectID := make([]byte, 16)
	if _, err := rand.Read(objectID); err != nil {
		return nil, fmt.Errorf("%w: rotate key: object id: %w", ErrInternal, err)
	}
	now := s.now().UTC()
	log := s.log.With("key_id", k.meta.KeyID, "version", next, "object_id", fmt.Sprintf("%x", objectID))

	// 1. Durable intent.
	if err := s.addIntent(ctx, store.PendingObject{
		ObjectID: objectID, KeyID: k.meta.KeyID, Version: next, CreatedAt: now,
	}); err != nil {
		log.Error("kms: rotate key: recording intent failed", "err", err)
		return nil, storeErr("rotate key", err)
	}
	s.fault("rotate:intent")

	// 2. Token object.
	if err := s.hsm.GenerateKey(ctx, objectID, k.meta.KeyID+"/v"+strconv.FormatUint(uint64(next), 10)); err != nil {
		s.rollback(ctx, log, objectID)
		return nil, s.hsmErr(log, "rotate key", err)
	}
	s.fault("rotate:generated")

	// 3. Commit.
	v := store.Version{Number: next, ObjectID: objectID, CreatedAt: now}
	r := k.rec
	r.Versions = append(slices.Clip(slices.Clone(r.Versions)), v)
	r.LastRotatedAt = now
	r.Gen = max(k.rec.Gen, k.floor) + 1
	if err := s.sealKey(ctx, &r); err != nil {
		s.rollback(ctx, log, objectID)
		return nil, err
	}
	v = r.Versions[len(r.Versions)-1]
	if err := s.store.AddVersion(ctx, r, v); err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		got, gerr := s.store.GetKey(cctx, k.meta.KeyID)
		cancel()
		switch {
		case gerr == nil && hasObject(got, objectID):
			log.Warn("kms: rotate key: store reported an error but the version is committed", "err", err)
		case errors.Is(gerr, store.ErrNotFound) || gerr == nil:
			log.Error("kms: rotate key: commit failed", "err", err)
			s.rollback(ctx, log, objectID)
			return nil, storeErr("rotate key", err)
		default:
			log.Error("kms: rotate key: commit failed and its outcome is unknown; the intent is left for Recover",
				"err", err, "get_err", gerr)
			return nil, storeErr("rotate key", err)
		}
	}

	// 4. Publish.
	nk, err := newKeyEntry(r, k)
	if err != nil {
		log.Error("kms: rotate key: committed key is not servable", "err", err)
		return nil, fmt.Errorf("%w: rotate key: %w", ErrInternal, err)
	}
	s.replace(k, nk)
	log.Info("kms: key rotated", "reason", reason)
	return nk, nil
}

// EnableKeyRotation turns on automatic rotation every rotateDays days
// (7..365; 0 means DefaultRotateDays), counted from the last rotation (or
// the creation). Errors: ErrInvalidKeyID, ErrInvalidRotateDays,
// ErrUnauthorized, ErrKeyNotFound, ErrKeyStateNotSupported (PendingDelete,
// Archived), ErrInternal.
func (s *Service) EnableKeyRotation(ctx context.Context, keyID string, rotateDays int) error {
	if rotateDays == 0 {
		rotateDays = DefaultRotateDays
	}
	if rotateDays < MinRotateDays || rotateDays > MaxRotateDays {
		return fmt.Errorf("%w: %d", ErrInvalidRotateDays, rotateDays)
	}
	_, err := s.change(ctx, "kms:EnableKeyRotation", keyID, func(k *keyEntry, r *store.Key, _ time.Time) error {
		if k.meta.Origin == OriginExternal {
			return fmt.Errorf("%w: %s", ErrExternalCannotRotate, keyID)
		}
		if err := rotationState(k); err != nil {
			return err
		}
		r.RotationEnabled = true
		r.RotateDays = uint32(rotateDays)
		return nil
	})
	return err
}

// DisableKeyRotation turns automatic rotation off. Errors as
// EnableKeyRotation.
func (s *Service) DisableKeyRotation(ctx context.Context, keyID string) error {
	_, err := s.change(ctx, "kms:DisableKeyRotation", keyID, func(k *keyEntry, r *store.Key, _ time.Time) error {
		if err := rotationState(k); err != nil {
			return err
		}
		r.RotationEnabled = false
		return nil
	})
	return err
}

func rotationState(k *keyEntry) error {
	if err := refuseRotation(k); err != nil { // asym.go
		return err
	}
	switch k.meta.KeyState {
	case StateEnabled, StateDisabled:
		return nil
	}
	return notSupported(k)
}

// GetKeyRotationStatus returns the metadata of a key that is not Deleted,
// whose KeyRotationEnabled, RotateDays, LastRotateTime and NextRotateTime
// give its rotation state. Errors: ErrInvalidKeyID, ErrUnauthorized,
// ErrKeyNotFound.
func (s *Service) GetKeyRotationStatus(ctx context.Context, keyID string) (KeyMetadata, error) {
	if _, ok := parseKeyID(keyID); !ok {
		return KeyMetadata{}, ErrInvalidKeyID
	}
	if err := authorize(ctx, "kms:GetKeyRotationStatus", keyID); err != nil {
		return KeyMetadata{}, err
	}
	k, err := s.lookupLive(keyID)
	if err != nil {
		return KeyMetadata{}, err
	}
	return k.meta, nil
}
