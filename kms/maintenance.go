package kms

import (
	"context"
	"errors"
	"fmt"
	"time"

	"hsmkms/hsm"
)

// MaintenanceReport is what one Maintain pass did.
type MaintenanceReport struct {
	Purged  []string // keys whose token objects were destroyed (now Deleted)
	Rotated []string // keys that got a new version by automatic rotation

	MaterialExpired       []string // EXTERNAL keys whose imported material expired (destroyed; now PendingImport)
	WrappingKeysDestroyed int      // wrapping keys of expired import parameters destroyed
}

// RunMaintenance calls Maintain at once and then every
// Config.MaintenanceInterval until ctx is done; failures are logged and
// retried at the next pass. On a shared store a pass runs only while this
// node holds the cluster-wide maintenance lock, so exactly one node runs
// the jobs at a time (see cluster.go). Run it in its own goroutine.
func (s *Service) RunMaintenance(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		if !s.maintenanceTurn(ctx) {
			// Another node runs the jobs; try again at the next pass.
		} else if _, err := s.Maintain(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("kms: maintenance incomplete; retrying at the next pass", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Maintain purges every PendingDelete key whose deletion date has passed
// (by the Service's clock) and rotates every Enabled key whose automatic
// rotation is due. It is idempotent and safe to run concurrently with
// everything else; a key it could not handle is reported in the error and
// retried at the next call.
//
// The purge destroys the token object of every version of the key (one
// already absent counts as destroyed), then records the key as Deleted
// with the time of the purge, keeping its metadata as a tombstone. A crash
// in between leaves the key PendingDelete past its date, so the next pass
// finishes the purge; CancelKeyDeletion refuses such a key.
func (s *Service) Maintain(ctx context.Context) (MaintenanceReport, error) {
	var rep MaintenanceReport
	var errs []error
	now := s.now()
	s.mu.RLock()
	var purge, rotate []*keyEntry
	for _, k := range s.keys {
		switch {
		case k.meta.KeyState == StatePendingDelete && !k.meta.DeletionDate.After(now):
			purge = append(purge, k)
		case k.meta.KeyState == StateEnabled && k.meta.KeyRotationEnabled && !k.meta.NextRotateTime.After(now):
			rotate = append(rotate, k)
		}
	}
	s.mu.RUnlock()
	for _, k := range purge {
		done, err := s.purge(ctx, k.meta.KeyID)
		if err != nil {
			errs = append(errs, err)
		} else if done {
			rep.Purged = append(rep.Purged, k.meta.KeyID)
		}
	}
	for _, k := range rotate {
		done, err := s.rotateIfDue(ctx, k.meta.KeyID)
		if err != nil {
			errs = append(errs, err)
		} else if done {
			rep.Rotated = append(rep.Rotated, k.meta.KeyID)
		}
	}
	if err := s.maintainImports(ctx, &rep); err != nil {
		errs = append(errs, err)
	}
	return rep, errors.Join(errs...)
}

// lockForMaintenance takes what a change that may make or destroy token
// objects of key keyID needs, in this order: recoverMu shared (Recover
// waits), writeMu, and the key itself through lockFresh (on a shared store
// its cluster-wide lock, then a fresh read). It returns the key's current
// entry and a release function that undoes all three, which the caller
// must call; on error nothing is held. Errors are lockFresh's
// (ErrKeyNotFound, ErrInvalidKeyID, the state errors of a deleted key,
// store errors).
func (s *Service) lockForMaintenance(ctx context.Context, keyID string) (k *keyEntry, release func(), err error) {
	s.recoverMu.RLock()
	s.writeMu.Lock()
	held := false
	defer func() {
		if !held {
			s.writeMu.Unlock()
			s.recoverMu.RUnlock()
		}
	}()
	k, unlock, err := s.lockFresh(ctx, keyID)
	if err != nil {
		return nil, nil, err
	}
	held = true
	return k, func() {
		unlock()
		s.writeMu.Unlock()
		s.recoverMu.RUnlock()
	}, nil
}

// sweepKey runs act on the current entry of keyID under
// lockForMaintenance, for the periodic passes (purge, rotateIfDue,
// expireMaterial): a key gone meanwhile (ErrKeyNotFound) is no error, and
// act is then not called. act reports whether it changed the key; the
// locks are released when it returns.
func (s *Service) sweepKey(ctx context.Context, keyID string, act func(k *keyEntry) (bool, error)) (bool, error) {
	k, release, err := s.lockForMaintenance(ctx, keyID)
	if errors.Is(err, ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer release()
	return act(k)
}

// purge destroys a key whose deletion window ended; it re-checks the key
// under writeMu, so it never acts on a key whose deletion was cancelled.
func (s *Service) purge(ctx context.Context, keyID string) (bool, error) {
	return s.sweepKey(ctx, keyID, func(k *keyEntry) (bool, error) {
		now := s.now().UTC()
		if k.meta.KeyState != StatePendingDelete || k.meta.DeletionDate.After(now) {
			return false, nil
		}
		log := s.log.With("key_id", keyID)
		// Destroying token objects cannot be undone: act only on what the
		// store holds now, verified, and identical to the cached entry.
		fresh, err := s.store.GetKey(ctx, keyID)
		if err != nil {
			return false, storeErr("purge", err)
		}
		if err := s.checkKey(ctx, fresh, k.floor); err != nil {
			if errors.Is(err, ErrIntegrity) {
				s.reportIntegrity(KindKey, keyID, err)
			}
			return false, fmt.Errorf("kms: purge %s refused: %w", keyID, err)
		}
		if !sameRecord(fresh, k.rec) {
			return false, fmt.Errorf("kms: purge %s: the stored key differs from the cached one; retrying at the next pass", keyID)
		}
		for _, v := range k.versions {
			if reservedObject(v.objectID) {
				err := fmt.Errorf("%w: key %s names a reserved token object", ErrIntegrity, keyID)
				s.reportIntegrity(KindKey, keyID, err)
				return false, fmt.Errorf("kms: purge %s refused: %w", keyID, err)
			}
		}
		for i, v := range k.versions {
			if err := s.hsm.DestroyKey(ctx, v.objectID); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
				return false, fmt.Errorf("kms: purge %s: %w", keyID, s.hsmErr(s.versionLog(k, &k.versions[i]), "purge", err))
			}
			s.fault("purge:destroyed-one")
		}
		s.fault("purge:destroyed-all")
		r := k.rec
		r.State = StateDeleted
		r.DeletionDate = now
		r.RotationEnabled = false
		r, err = s.writeKey(ctx, k, r)
		if err != nil {
			log.Error("kms: purge: token objects destroyed but the tombstone was not written; retrying at the next pass", "err", err)
			return false, storeErr("purge", err)
		}
		nk, err := newKeyEntry(r, k)
		if err != nil {
			return false, fmt.Errorf("%w: purge: %w", ErrInternal, err)
		}
		s.replace(k, nk)
		log.Info("kms: key purged: every token object destroyed, metadata kept as a tombstone", "versions", len(k.versions))
		return true, nil
	})
}

// rotateIfDue rotates a key whose automatic rotation is due, re-checking
// under writeMu.
func (s *Service) rotateIfDue(ctx context.Context, keyID string) (bool, error) {
	return s.sweepKey(ctx, keyID, func(k *keyEntry) (bool, error) {
		if k.meta.KeyState != StateEnabled || !k.meta.KeyRotationEnabled || k.meta.NextRotateTime.After(s.now()) {
			return false, nil
		}
		if _, err := s.rotateLocked(ctx, k, "scheduled"); err != nil {
			return false, fmt.Errorf("kms: automatic rotation of %s: %w", keyID, err)
		}
		return true, nil
	})
}
