package kms

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"hsmkms/store"
)

// sealUnsealed computes the MAC of every stored row that has none (rows an
// older release wrote) and returns how many it sealed. Keys and
// credentials get the next generation. It runs at the start that creates
// the MAC key (the upgrade) and by ResealUnsealed.
func (s *Service) sealUnsealed(ctx context.Context) (int, error) {
	n := 0
	keys, err := s.store.ListKeys(ctx)
	if err != nil {
		return n, err
	}
	for _, r := range keys {
		missing := len(r.MAC) == 0
		for _, v := range r.Versions {
			missing = missing || len(v.MAC) == 0
		}
		if !missing {
			continue
		}
		c, err := s.resealKeyRecord(ctx, r, 0, false)
		n += c
		if err != nil {
			return n, err
		}
	}
	creds, err := s.store.ListCredentials(ctx)
	if err != nil {
		return n, err
	}
	for _, c := range creds {
		if len(c.MAC) != 0 {
			continue
		}
		c.Gen++
		if err := s.sealCred(ctx, &c); err != nil {
			return n, err
		}
		if err := s.store.UpdateCredential(ctx, c); err != nil {
			return n, err
		}
		n++
	}
	intents, err := s.store.PendingObjects(ctx)
	if err != nil {
		return n, err
	}
	for _, p := range intents {
		if len(p.MAC) != 0 {
			continue
		}
		if err := s.sealIntent(ctx, &p); err != nil {
			return n, err
		}
		if err := s.store.SetPendingMAC(ctx, p.ObjectID, p.MAC); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// resealKeyRecord writes new MACs for the stored key r: for every version
// (all of them if all, else those without one) and for the key at the
// generation after max(r.Gen, floor). It returns the number of rows sealed.
func (s *Service) resealKeyRecord(ctx context.Context, r store.Key, floor uint64, all bool) (int, error) {
	n := 0
	r.Versions = append([]store.Version(nil), r.Versions...)
	for i := range r.Versions {
		if !all && len(r.Versions[i].MAC) != 0 {
			continue
		}
		m, err := s.mac(ctx, versionMsg(r.ID, r.Versions[i]))
		if err != nil {
			return n, err
		}
		if err := s.store.SetVersionMAC(ctx, r.ID, r.Versions[i].Number, m); err != nil {
			return n, err
		}
		r.Versions[i].MAC = m
		n++
	}
	r.Gen = max(r.Gen, floor) + 1
	m, err := s.mac(ctx, keyMsg(r))
	if err != nil {
		return n, err
	}
	r.MAC = m
	if err := s.store.UpdateKey(ctx, r); err != nil {
		return n, err
	}
	return n + 1, nil
}

// ResealUnsealed seals every stored row that has no MAC, after an
// administrator checked them (for example when an upgrade was interrupted
// after the MAC key was made). Requires kms-admin:Reseal. It returns how many
// rows it sealed. Rows of a running node's cache are picked up at its next
// refresh (shared store) or restart.
func (s *Service) ResealUnsealed(ctx context.Context) (int, error) {
	if err := authorize(ctx, actReseal, "*"); err != nil {
		return 0, err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.sealUnsealed(ctx)
}

// ResealKey accepts the stored metadata of key keyID, as it is now, after
// an administrator checked it: it computes new MACs for the key and every
// version at the next generation and serves the key as stored. Requires
// kms-admin:Reseal. Errors: ErrInvalidKeyID, ErrKeyNotFound, store and HSM
// failures.
func (s *Service) ResealKey(ctx context.Context, keyID string) error {
	id, ok := parseKeyID(keyID)
	if !ok {
		return ErrInvalidKeyID
	}
	if err := authorize(ctx, actReseal, "*"); err != nil {
		return err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.cluster != nil {
		unlock, err := s.cluster.store.LockKey(ctx, keyID)
		if err != nil {
			return storeErr("lock key", err)
		}
		defer unlock()
	}
	r, err := s.store.GetKey(ctx, keyID)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrKeyNotFound, keyID)
	}
	if err != nil {
		return storeErr("reseal key", err)
	}
	cur := s.lookup(id)
	var floor uint64
	if cur != nil {
		floor = cur.floor
	}
	if _, err := s.resealKeyRecord(ctx, r, floor, true); err != nil {
		return fmt.Errorf("kms: reseal key %s: %w", keyID, err)
	}
	r, err = s.store.GetKey(ctx, keyID)
	if err != nil {
		return storeErr("reseal key", err)
	}
	if _, err := s.adopt(ctx, r, false); err != nil {
		return err
	}
	s.log.Warn("kms: key resealed by an administrator: its stored metadata is accepted as it is now", "key_id", keyID, "state", r.State, "gen", r.Gen)
	return nil
}

// ResealCredential accepts the stored row of credential secretID, as it is
// now, after an administrator checked it (policy, enabled flag, name).
// Requires kms-admin:Reseal. ErrCredentialNotFound if there is no such row.
func (s *Service) ResealCredential(ctx context.Context, secretID string) error {
	if err := authorize(ctx, actReseal, "*"); err != nil {
		return err
	}
	s.credMu.Lock()
	defer s.credMu.Unlock()
	recs, err := s.store.ListCredentials(ctx)
	if err != nil {
		return storeErr("reseal credential", err)
	}
	for _, r := range recs {
		if r.SecretID != secretID {
			continue
		}
		var floor uint64
		old := s.creds[secretID]
		if old != nil {
			floor = old.floor
		}
		r.Gen = max(r.Gen, floor) + 1
		if err := s.sealCred(ctx, &r); err != nil {
			return err
		}
		if err := s.store.UpdateCredential(ctx, r); err != nil {
			return storeErr("reseal credential", err)
		}
		e, err := s.credEntryChecked(ctx, r, nil)
		if err != nil {
			return fmt.Errorf("kms: reseal credential %s: %w", secretID, err)
		}
		s.creds[secretID] = e
		s.credGen++
		s.log.Warn("kms: credential resealed by an administrator: its stored row is accepted as it is now",
			"secret_id", secretID, "enabled", r.Enabled, "gen", r.Gen)
		return nil
	}
	return fmt.Errorf("%w: %s", ErrCredentialNotFound, secretID)
}

// ResealIntent accepts the stored intent whose object id is objectIDHex
// (hex), after an administrator checked it; the next Recover (restart)
// acts on it. Requires kms-admin:Reseal.
func (s *Service) ResealIntent(ctx context.Context, objectIDHex string) error {
	if err := authorize(ctx, actReseal, "*"); err != nil {
		return err
	}
	objectID, err := hex.DecodeString(objectIDHex)
	if err != nil || len(objectID) == 0 {
		return fmt.Errorf("kms: reseal intent: %q is not a hex object id", objectIDHex)
	}
	if reservedObject(objectID) {
		return fmt.Errorf("kms: reseal intent: %x is a reserved token object; delete the intent instead", objectID)
	}
	s.recoverMu.Lock()
	defer s.recoverMu.Unlock()
	intents, err := s.store.PendingObjects(ctx)
	if err != nil {
		return storeErr("reseal intent", err)
	}
	for _, p := range intents {
		if string(p.ObjectID) != string(objectID) {
			continue
		}
		if err := s.sealIntent(ctx, &p); err != nil {
			return err
		}
		if err := s.store.SetPendingMAC(ctx, p.ObjectID, p.MAC); err != nil {
			return storeErr("reseal intent", err)
		}
		s.clearIntegrity(KindIntent, objectIDHex)
		s.log.Warn("kms: intent resealed by an administrator", "object_id", objectIDHex, "key_id", p.KeyID, "version", p.Version)
		return nil
	}
	return fmt.Errorf("kms: reseal intent: no intent with object id %s", objectIDHex)
}
