package kms

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"hsmkms/hsm"
	"hsmkms/store"
)

// ImportKeyMaterialInput is the request of ImportKeyMaterial.
type ImportKeyMaterialInput struct {
	KeyID                string
	EncryptedKeyMaterial string // base64 of the material wrapped under the public key of GetParametersForImport
	ImportToken          string // from GetParametersForImport, usable once
	ValidTo              uint64 // Unix seconds when the material expires; 0: never
}

// ImportKeyMaterial unwraps imported material into the EXTERNAL key
// in.KeyID inside the token. On a PendingImport key the material becomes
// the key's AES-256 token object (non-extractable) and the key Enabled; on
// an Enabled key (a re-import, to change ValidTo) it is only compared. The
// material must be the one imported first into this key (compared by key
// check value, computed in the token). The import token is then used up
// and its wrapping key destroyed.
//
// Errors: ErrInvalidKeyID, ErrUnauthorized, ErrKeyNotFound,
// ErrNotExternalKey, ErrKeyStateNotSupported (not Enabled or
// PendingImport), ErrInvalidValidTo, ErrImportTokenInvalid (unknown, used,
// issued for another key, or failing its integrity check),
// ErrImportTokenExpired, ErrDecryptMaterial (not base64, not 256 bytes,
// does not decrypt, not a 256-bit key), ErrMaterialNotMatch; ErrBusy,
// ErrUnavailable, ErrInternal.
func (s *Service) ImportKeyMaterial(ctx context.Context, in ImportKeyMaterialInput) (KeyMetadata, error) {
	if _, ok := parseKeyID(in.KeyID); !ok {
		return KeyMetadata{}, ErrInvalidKeyID
	}
	if err := authorize(ctx, "kms:ImportKeyMaterial", in.KeyID); err != nil {
		return KeyMetadata{}, err
	}
	ih, ist, err := s.importer()
	if err != nil {
		return KeyMetadata{}, err
	}
	wrapped, err := base64.StdEncoding.DecodeString(in.EncryptedKeyMaterial)
	if err != nil || len(wrapped) != hsm.WrappedKeyBytes {
		return KeyMetadata{}, fmt.Errorf("%w: want base64 of %d bytes (RSA-2048)", ErrDecryptMaterial, hsm.WrappedKeyBytes)
	}
	token, err := base64.StdEncoding.DecodeString(in.ImportToken)
	if err != nil || len(token) != importTokenBytes {
		return KeyMetadata{}, ErrImportTokenInvalid
	}
	now := s.now().UTC()
	var validTo time.Time
	if in.ValidTo != 0 {
		if in.ValidTo > MaxValidTo || int64(in.ValidTo) <= now.Unix() {
			return KeyMetadata{}, fmt.Errorf("%w: %d", ErrInvalidValidTo, in.ValidTo)
		}
		validTo = time.Unix(int64(in.ValidTo), 0).UTC()
	}

	k, release, err := s.lockForMaintenance(ctx, in.KeyID)
	if err != nil {
		return KeyMetadata{}, err
	}
	defer release()
	if err := checkExternal(k, in.KeyID); err != nil {
		return KeyMetadata{}, err
	}
	if k.meta.KeyState != StateEnabled && k.meta.KeyState != StatePendingImport {
		return KeyMetadata{}, notSupported(k)
	}
	p, err := s.importParams(ctx, ist, token)
	if err != nil {
		return KeyMetadata{}, err
	}
	if p.KeyID != in.KeyID {
		return KeyMetadata{}, ErrImportTokenInvalid
	}
	if !p.ValidTo.After(now) {
		return KeyMetadata{}, ErrImportTokenExpired
	}
	h, err := oaepHash(p.Algorithm)
	if err != nil {
		return KeyMetadata{}, fmt.Errorf("%w: %w", ErrImportTokenInvalid, err)
	}
	v := k.current()
	log := s.log.With("key_id", in.KeyID, "object_id", fmt.Sprintf("%x", v.objectID))
	label := fmt.Sprintf("%s/v%d", in.KeyID, v.number)
	r := k.rec
	if r.MaterialLoaded {
		// A re-import: compare in a throwaway session object.
		kcv, err := ih.ImportKey(ctx, p.WrappingObjectID, h, wrapped, v.objectID, label, false)
		if err != nil {
			return KeyMetadata{}, s.importErr(log, err)
		}
		if !bytes.Equal(checkHash(in.KeyID, kcv), r.MaterialCheck) {
			return KeyMetadata{}, ErrMaterialNotMatch
		}
		r.MaterialValidTo = validTo
		nr, err := s.writeKey(ctx, k, r)
		if err != nil {
			return KeyMetadata{}, storeErr("import key material", err)
		}
		return s.importDone(ctx, ist, log, k, nr, p)
	}

	// 1. Durable intent: a crash from here on leaves no material on the
	// token for a key the store says has none.
	if err := s.addIntent(ctx, store.PendingObject{ObjectID: v.objectID, KeyID: in.KeyID, Version: v.number, CreatedAt: now}); err != nil {
		return KeyMetadata{}, storeErr("import key material", err)
	}
	s.fault("import:intent")
	// 2. The material, unwrapped inside the token into the key's object.
	kcv, err := ih.ImportKey(ctx, p.WrappingObjectID, h, wrapped, v.objectID, label, true)
	if err != nil {
		s.rollback(ctx, log, v.objectID)
		return KeyMetadata{}, s.importErr(log, err)
	}
	s.fault("import:unwrapped")
	sum := checkHash(in.KeyID, kcv)
	if r.MaterialCheck != nil && !bytes.Equal(sum, r.MaterialCheck) {
		s.rollback(ctx, log, v.objectID)
		return KeyMetadata{}, ErrMaterialNotMatch
	}
	// 3. Commit.
	r.MaterialCheck, r.MaterialLoaded, r.MaterialValidTo, r.State = sum, true, validTo, StateEnabled
	nr, err := s.writeKey(ctx, k, r)
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		got, gerr := s.store.GetKey(cctx, in.KeyID)
		cancel()
		switch {
		case gerr == nil && got.Gen == nr.Gen && got.MaterialLoaded:
			log.Warn("kms: import key material: store reported an error but the import is committed", "err", err)
			nr = got
		case gerr == nil || errors.Is(gerr, store.ErrNotFound):
			s.rollback(ctx, log, v.objectID)
			return KeyMetadata{}, storeErr("import key material", err)
		default:
			log.Error("kms: import key material: commit failed and its outcome is unknown; the intent is left for Recover", "err", err, "get_err", gerr)
			return KeyMetadata{}, storeErr("import key material", err)
		}
	}
	if err := s.store.DeletePendingObject(ctx, v.objectID); err != nil {
		log.Warn("kms: import key material: cannot delete the intent; Recover will", "err", err)
	}
	return s.importDone(ctx, ist, log, k, nr, p)
}

// importParams finds and verifies the parameters of an import token.
func (s *Service) importParams(ctx context.Context, ist ImportStore, token []byte) (store.ImportParams, error) {
	sum := sha256.Sum256(token)
	p, err := ist.GetImportParams(ctx, sum[:])
	if errors.Is(err, store.ErrNotFound) {
		return store.ImportParams{}, ErrImportTokenInvalid
	}
	if err != nil {
		return store.ImportParams{}, storeErr("import key material", err)
	}
	id := fmt.Sprintf("%x", p.WrappingObjectID)
	if err := s.verify(ctx, "import parameters "+id, importMsg(p), p.MAC); err != nil {
		if errors.Is(err, ErrIntegrity) {
			s.reportIntegrity(KindImport, id, err)
			return store.ImportParams{}, fmt.Errorf("%w: %w", ErrImportTokenInvalid, err)
		}
		return store.ImportParams{}, err
	}
	if reservedObject(p.WrappingObjectID) {
		return store.ImportParams{}, fmt.Errorf("%w: names a reserved token object", ErrImportTokenInvalid)
	}
	return p, nil
}

// importErr classifies a failure of ImportKey.
func (s *Service) importErr(log *slog.Logger, err error) error {
	switch {
	case errors.Is(err, hsm.ErrNotAuthentic):
		return fmt.Errorf("%w (%v)", ErrDecryptMaterial, err)
	case errors.Is(err, hsm.ErrKeyNotFound):
		// The wrapping key is gone: expired and destroyed meanwhile.
		return fmt.Errorf("%w: its wrapping key no longer exists", ErrImportTokenExpired)
	case errors.Is(err, hsm.ErrMisconfigured):
		return fmt.Errorf("%w: %v", ErrWrappingUnsupported, err)
	}
	return s.hsmErr(log, "import key material", err)
}

// importDone publishes the imported key and uses the token up: its
// parameters are deleted and its wrapping key destroyed (intent first, so
// that a crash leaves no wrapping key behind).
func (s *Service) importDone(ctx context.Context, ist ImportStore, log *slog.Logger, k *keyEntry, nr store.Key, p store.ImportParams) (KeyMetadata, error) {
	nk, err := newKeyEntry(nr, k)
	if err != nil {
		return KeyMetadata{}, fmt.Errorf("%w: import key material: %w", ErrInternal, err)
	}
	s.replace(k, nk)
	log.Info("kms: key material imported", "state", nr.State, "valid_to", nr.MaterialValidTo)
	s.retireParams(ctx, ist, log, p)
	return nk.meta, nil
}

// retireParams deletes import parameters and destroys their wrapping key,
// best effort (what is left is retried by Recover or the maintenance job).
func (s *Service) retireParams(ctx context.Context, ist ImportStore, log *slog.Logger, p store.ImportParams) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := s.addIntent(cctx, store.PendingObject{ObjectID: p.WrappingObjectID, KeyID: p.KeyID, Version: 1, CreatedAt: s.now().UTC()}); err != nil {
		// Without the intent, keep the row: the maintenance job destroys
		// the wrapping key when it expires. The token is single-use only
		// in effect (a second import of the same material changes nothing).
		log.Error("kms: import parameters: cannot record the intent; the wrapping key is destroyed when it expires", "err", err)
		return
	}
	if err := ist.DeleteImportParams(cctx, p.TokenHash); err != nil {
		log.Error("kms: import parameters: cannot delete them; Recover will", "err", err)
		return
	}
	s.fault("import:params-deleted")
	s.rollbackWrapping(cctx, log, p.WrappingObjectID)
}

// DeleteImportedKeyMaterial destroys the imported material of the
// EXTERNAL key keyID: the key becomes PendingImport (importing the same
// material makes it usable again). A PendingImport key is left as is.
//
// Errors: ErrInvalidKeyID, ErrUnauthorized, ErrKeyNotFound,
// ErrNotExternalKey, ErrKeyStateNotSupported (PendingDelete); ErrBusy,
// ErrUnavailable, ErrInternal.
func (s *Service) DeleteImportedKeyMaterial(ctx context.Context, keyID string) (KeyMetadata, error) {
	if _, ok := parseKeyID(keyID); !ok {
		return KeyMetadata{}, ErrInvalidKeyID
	}
	if err := authorize(ctx, "kms:DeleteImportedKeyMaterial", keyID); err != nil {
		return KeyMetadata{}, err
	}
	k, release, err := s.lockForMaintenance(ctx, keyID)
	if err != nil {
		return KeyMetadata{}, err
	}
	defer release()
	if err := checkExternal(k, keyID); err != nil {
		return KeyMetadata{}, err
	}
	switch {
	case k.meta.KeyState == StatePendingDelete:
		return KeyMetadata{}, notSupported(k)
	case !k.rec.MaterialLoaded:
		return k.meta, nil
	}
	nk, err := s.unloadMaterial(ctx, k, "deleted")
	if err != nil {
		return KeyMetadata{}, err
	}
	return nk.meta, nil
}

// unloadMaterial destroys the material of k (caller holds what
// lockForMaintenance takes): intent, the key written without material
// (PendingImport, or still PendingDelete), the object destroyed, the intent
// deleted. A crash in between is finished by Recover.
func (s *Service) unloadMaterial(ctx context.Context, k *keyEntry, reason string) (*keyEntry, error) {
	v := k.current()
	log := s.log.With("key_id", k.meta.KeyID, "object_id", fmt.Sprintf("%x", v.objectID))
	if err := s.addIntent(ctx, store.PendingObject{ObjectID: v.objectID, KeyID: k.meta.KeyID, Version: v.number, CreatedAt: s.now().UTC()}); err != nil {
		return nil, storeErr("delete imported key material", err)
	}
	s.fault("unload:intent")
	r := k.rec
	r.MaterialLoaded = false
	if r.State != StatePendingDelete {
		r.State = StatePendingImport
	}
	nr, err := s.writeKey(ctx, k, r)
	if err != nil {
		// Not written (or unknown): the key still has its material, which
		// Recover keeps (the intent names an object of a loaded key).
		return nil, storeErr("delete imported key material", err)
	}
	nk, err := newKeyEntry(nr, k)
	if err != nil {
		return nil, fmt.Errorf("%w: delete imported key material: %w", ErrInternal, err)
	}
	s.replace(k, nk)
	s.fault("unload:written")
	if err := s.hsm.DestroyKey(ctx, v.objectID); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
		log.Error("kms: imported material not destroyed yet; the intent is kept for Recover", "err", err)
		return nil, s.hsmErr(log, "delete imported key material", err)
	}
	if err := s.store.DeletePendingObject(ctx, v.objectID); err != nil {
		log.Warn("kms: delete imported key material: cannot delete the intent; Recover will", "err", err)
	}
	log.Info("kms: imported key material destroyed", "reason", reason, "state", nr.State)
	return nk, nil
}

// maintainImports is the import part of Maintain: it destroys imported
// material whose ValidTo has passed and the wrapping keys of expired
// import parameters. Errors are joined; what failed is retried next pass.
func (s *Service) maintainImports(ctx context.Context, rep *MaintenanceReport) error {
	ih, ist, err := s.importer()
	if err != nil {
		return nil // no key import here
	}
	var errs []error
	now := s.now()
	s.mu.RLock()
	var expired []string
	for _, k := range s.keys {
		r := k.rec
		if r.Origin == OriginExternal && r.MaterialLoaded && !r.MaterialValidTo.IsZero() && !r.MaterialValidTo.After(now) && k.suspect == nil {
			expired = append(expired, r.ID)
		}
	}
	s.mu.RUnlock()
	for _, id := range expired {
		done, err := s.expireMaterial(ctx, id)
		if err != nil {
			errs = append(errs, fmt.Errorf("kms: expire imported material of %s: %w", id, err))
		} else if done {
			rep.MaterialExpired = append(rep.MaterialExpired, id)
		}
	}
	params, err := ist.ListImportParams(ctx)
	if err != nil {
		return errors.Join(append(errs, storeErr("expire import parameters", err))...)
	}
	for _, p := range params {
		if p.ValidTo.After(now) {
			continue
		}
		id := fmt.Sprintf("%x", p.WrappingObjectID)
		if err := s.verify(ctx, "import parameters "+id, importMsg(p), p.MAC); err != nil {
			if errors.Is(err, ErrIntegrity) {
				s.reportIntegrity(KindImport, id, err)
			}
			errs = append(errs, err)
			continue
		}
		switch err := ih.DestroyWrappingKey(ctx, p.WrappingObjectID); {
		case err == nil:
			rep.WrappingKeysDestroyed++
			s.log.Info("kms: wrapping key of expired import parameters destroyed", "key_id", p.KeyID, "object_id", id)
		case !errors.Is(err, hsm.ErrKeyNotFound):
			errs = append(errs, s.hsmErr(s.log, "destroy expired wrapping key", err))
			continue
		}
		// The row outlives its wrapping key by ImportParamsTTL, so that
		// its token is answered "expired" rather than "unknown".
		if p.ValidTo.Add(ImportParamsTTL).After(now) {
			continue
		}
		if err := ist.DeleteImportParams(ctx, p.TokenHash); err != nil {
			errs = append(errs, storeErr("expire import parameters", err))
		}
	}
	return errors.Join(errs...)
}

// expireMaterial unloads the material of keyID if it is still loaded and
// past its ValidTo, re-checked under the key's locks.
func (s *Service) expireMaterial(ctx context.Context, keyID string) (bool, error) {
	return s.sweepKey(ctx, keyID, func(k *keyEntry) (bool, error) {
		r := k.rec
		if k.suspect != nil || r.Origin != OriginExternal || !r.MaterialLoaded || r.MaterialValidTo.IsZero() || r.MaterialValidTo.After(s.now()) {
			return false, nil
		}
		if _, err := s.unloadMaterial(ctx, k, "expired"); err != nil {
			return false, err
		}
		return true, nil
	})
}

// importOrphans lists the wrapping keys on the token that no import
// parameters and no intent name (Recover reports them, never destroys
// them). Without key import support it returns nothing.
func (s *Service) importOrphans(ctx context.Context, intents map[string]bool) ([][]byte, error) {
	ih, ist, err := s.importer()
	if err != nil {
		return nil, nil
	}
	onToken, err := ih.WrappingKeyIDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("kms: recover: list wrapping keys: %w", err)
	}
	params, err := ist.ListImportParams(ctx)
	if err != nil {
		return nil, fmt.Errorf("kms: recover: list import parameters: %w", err)
	}
	named := make(map[string]bool, len(params))
	for _, p := range params {
		named[string(p.WrappingObjectID)] = true
	}
	var out [][]byte
	for _, id := range onToken {
		if !named[string(id)] && !intents[string(id)] {
			out = append(out, id)
		}
	}
	return out, nil
}
