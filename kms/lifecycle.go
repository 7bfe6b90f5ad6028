package kms

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"hsmkms/store"
)

// Key lifecycle: queries and state changes.
//
// States and transitions (Tencent Cloud KMS semantics):
//
//	action               Enabled        Disabled        PendingDelete            Archived
//	EnableKey            Enabled (=)    Enabled         StateNotSupported        StateNotSupported
//	DisableKey           Disabled       Disabled (=)    StateNotSupported        StateNotSupported
//	ScheduleKeyDeletion  ShouldBeDisab. PendingDelete   StateNotSupported        ShouldBeDisabled
//	CancelKeyDeletion    NotPendingDel. NotPendingDel.  Disabled (*)             NotPendingDelete
//	ArchiveKey           Archived       StateNotSupp.   StateNotSupported        Archived (=)
//	CancelKeyArchive     StateNotSupp.  StateNotSupp.   StateNotSupported        Enabled
//	UpdateAlias/Desc.    ok             ok              StateNotSupported        ok
//	Enable/DisableKeyRotation ok        ok              StateNotSupported        StateNotSupported
//	RotateKey            new version    KeyDisabled     StateNotSupported        StateNotSupported
//	Encrypt, GenerateDataKey, ReEncrypt (destination)
//	                     ok             KeyDisabled     StateNotSupported (warn) KeyArchived
//	Decrypt, ReEncrypt (source)
//	                     ok             KeyDisabled     StateNotSupported (warn) ok
//
// (=) succeeds without change. (*) only while the deletion window is open:
// once DeletionDate has passed the key is being purged and the answer is
// StateNotSupported. A Deleted key (a tombstone kept after the purge) is
// ErrKeyNotFound for every action except DescribeKey. A refused action
// changes nothing.

// ListKeysInput selects and pages keys for ListKeys and ListKeyDetail.
// Deleted keys are never listed.
type ListKeysInput struct {
	Offset int // keys skipped
	Limit  int // at most this many keys returned; 0 means all
	// States keeps keys in one of these states; empty means every state
	// but Deleted.
	States []string
	// Search keeps keys whose id or alias contains it (case-insensitive).
	Search string
	// Origin keeps keys of this origin; "" or "ALL" means any.
	Origin string
	// KeyUsage keeps keys of this usage; "" or "ALL" means any.
	KeyUsage string
	// Descending orders by creation time, newest first; otherwise oldest
	// first. Ties are broken by key id.
	Descending bool
	// TagFilters keeps keys whose tags match every filter (tags.go); a key
	// failing its integrity check matches none.
	TagFilters []TagFilter
}

// ListKeysResult is one page of keys.
type ListKeysResult struct {
	TotalCount int // keys matching the filters, before paging
	Keys       []KeyMetadata
}

// VersionInfo describes one version of a key.
type VersionInfo struct {
	Version   uint32
	CreatedAt time.Time
	// EncryptionCount is the number of encryptions counted under the
	// version: exact while kmsd runs, an upper bound after a restart (see
	// Config.UsageBatch). Never lower than the true count.
	EncryptionCount uint64
	Current         bool
}

// lookupLive returns the cached key unless it is absent or Deleted.
func (s *Service) lookupLive(keyID string) (*keyEntry, error) {
	id, ok := parseKeyID(keyID)
	if !ok {
		return nil, ErrInvalidKeyID
	}
	k := s.lookup(id)
	if k == nil || k.meta.KeyState == StateDeleted {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, keyID)
	}
	return k, nil
}

// DescribeKey returns the metadata of a key, Deleted keys (tombstones)
// included. Errors: ErrInvalidKeyID, ErrUnauthorized, ErrKeyNotFound. It
// never touches the store or the HSM.
func (s *Service) DescribeKey(ctx context.Context, keyID string) (KeyMetadata, error) {
	id, ok := parseKeyID(keyID)
	if !ok {
		return KeyMetadata{}, ErrInvalidKeyID
	}
	if err := authorize(ctx, "kms:DescribeKey", keyID); err != nil {
		return KeyMetadata{}, err
	}
	k, err := s.lookupCtx(ctx, id)
	if err != nil {
		return KeyMetadata{}, err
	}
	if k == nil {
		return KeyMetadata{}, fmt.Errorf("%w: %s", ErrKeyNotFound, keyID)
	}
	return k.meta, nil
}

// DescribeKeys returns the metadata of up to MaxBatchKeys keys, in the
// order asked; ids of keys that do not exist are skipped. Errors:
// ErrTooManyKeys, ErrDuplicateKeyID, ErrInvalidKeyID, ErrUnauthorized (the
// caller needs kms:DescribeKeys on every key).
func (s *Service) DescribeKeys(ctx context.Context, keyIDs []string) ([]KeyMetadata, error) {
	if err := checkBatch(keyIDs); err != nil {
		return nil, err
	}
	for _, id := range keyIDs {
		if err := authorize(ctx, "kms:DescribeKeys", id); err != nil {
			return nil, err
		}
	}
	out := make([]KeyMetadata, 0, len(keyIDs))
	for _, keyID := range keyIDs {
		id, _ := parseKeyID(keyID)
		if k := s.lookup(id); k != nil {
			out = append(out, k.meta)
		}
	}
	return out, nil
}

func checkBatch(keyIDs []string) error {
	if len(keyIDs) > MaxBatchKeys {
		return fmt.Errorf("%w: %d", ErrTooManyKeys, len(keyIDs))
	}
	seen := make(map[string]bool, len(keyIDs))
	for _, id := range keyIDs {
		if !validKeyID(id) {
			return ErrInvalidKeyID
		}
		if seen[id] {
			return fmt.Errorf("%w: %s", ErrDuplicateKeyID, id)
		}
		seen[id] = true
	}
	return nil
}

// ListKeys lists keys that are not Deleted (authorised as kms:ListKeys on
// "*"). It never touches the store or the HSM.
func (s *Service) ListKeys(ctx context.Context, in ListKeysInput) (ListKeysResult, error) {
	if err := authorize(ctx, "kms:ListKeys", "*"); err != nil {
		return ListKeysResult{}, err
	}
	return s.list(in), nil
}

// ListKeyDetail is ListKeys authorised as kms:ListKeyDetail.
func (s *Service) ListKeyDetail(ctx context.Context, in ListKeysInput) (ListKeysResult, error) {
	if err := authorize(ctx, "kms:ListKeyDetail", "*"); err != nil {
		return ListKeysResult{}, err
	}
	return s.list(in), nil
}

func (s *Service) list(in ListKeysInput) ListKeysResult {
	search := strings.ToLower(in.Search)
	s.mu.RLock()
	all := make([]KeyMetadata, 0, len(s.keys))
	for _, k := range s.keys {
		m := k.meta
		switch {
		case m.KeyState == StateDeleted,
			len(in.States) > 0 && !slices.Contains(in.States, m.KeyState),
			in.Origin != "" && in.Origin != "ALL" && in.Origin != m.Origin,
			in.KeyUsage != "" && in.KeyUsage != "ALL" && in.KeyUsage != m.KeyUsage,
			search != "" && !strings.Contains(m.KeyID, search) && !strings.Contains(strings.ToLower(m.Alias), search),
			len(in.TagFilters) > 0 && (k.suspect != nil || !matchTags(k.rec.Tags, in.TagFilters)):
			continue
		}
		all = append(all, m)
	}
	s.mu.RUnlock()
	slices.SortFunc(all, func(a, b KeyMetadata) int {
		c := a.CreateTime.Compare(b.CreateTime)
		if c == 0 {
			c = cmp.Compare(a.KeyID, b.KeyID)
		}
		if in.Descending {
			return -c
		}
		return c
	})
	res := ListKeysResult{TotalCount: len(all)}
	lo := min(max(in.Offset, 0), len(all))
	hi := len(all)
	if in.Limit > 0 {
		hi = min(lo+in.Limit, hi)
	}
	res.Keys = all[lo:hi]
	return res
}

// KeyVersions returns the versions of a key with their usage counts
// (authorised as kms:DescribeKey). Errors: ErrInvalidKeyID,
// ErrUnauthorized, ErrKeyNotFound.
func (s *Service) KeyVersions(ctx context.Context, keyID string) ([]VersionInfo, error) {
	id, ok := parseKeyID(keyID)
	if !ok {
		return nil, ErrInvalidKeyID
	}
	if err := authorize(ctx, "kms:DescribeKey", keyID); err != nil {
		return nil, err
	}
	k := s.lookup(id)
	if s.cluster != nil {
		// Other nodes' usage claims are not notified: read them now.
		nk, err := s.readThrough(ctx, id)
		if err != nil {
			return nil, err
		}
		if nk != nil {
			k = nk
		}
	}
	if k == nil {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, keyID)
	}
	out := make([]VersionInfo, len(k.versions))
	for i, v := range k.versions {
		count := v.usage.count()
		if s.cluster != nil {
			// The cluster-wide reservation: an upper bound of every
			// node's encryptions, never going backwards.
			count = max(count, v.usage.reserved.Load())
		}
		out[i] = VersionInfo{Version: v.number, CreatedAt: v.createdAt, EncryptionCount: min(count, s.usageLimit),
			Current: i == len(k.versions)-1}
	}
	return out, nil
}

// stateChange computes the record of key k after action, or the error that
// refuses it. It is pure: nothing is written.
type stateChange func(k *keyEntry, r *store.Key, now time.Time) error

func notSupported(k *keyEntry) error {
	return fmt.Errorf("%w: %s is %s", ErrKeyStateNotSupported, k.meta.KeyID, k.meta.KeyState)
}

func toEnabled(k *keyEntry, r *store.Key, _ time.Time) error {
	switch r.State {
	case StateEnabled, StateDisabled:
		r.State = StateEnabled
		return nil
	}
	return notSupported(k)
}

func toDisabled(k *keyEntry, r *store.Key, _ time.Time) error {
	switch r.State {
	case StateEnabled, StateDisabled:
		r.State = StateDisabled
		return nil
	}
	return notSupported(k)
}

func scheduleDeletion(days int) stateChange {
	return func(k *keyEntry, r *store.Key, now time.Time) error {
		switch r.State {
		case StateDisabled, StatePendingImport:
			r.State = StatePendingDelete
			r.DeletionDate = now.Add(time.Duration(days) * 24 * time.Hour)
			return nil
		case StateEnabled, StateArchived:
			return fmt.Errorf("%w: %s is %s", ErrKeyShouldBeDisabled, k.meta.KeyID, r.State)
		}
		return notSupported(k)
	}
}

func cancelDeletion(k *keyEntry, r *store.Key, now time.Time) error {
	if r.State != StatePendingDelete {
		return fmt.Errorf("%w: %s is %s", ErrKeyNotPendingDelete, k.meta.KeyID, r.State)
	}
	if !r.DeletionDate.After(now) {
		return fmt.Errorf("%w: %s: the deletion window has ended and the key is being purged", ErrKeyStateNotSupported, k.meta.KeyID)
	}
	r.State = StateDisabled
	if materialAbsent(*r) {
		r.State = StatePendingImport
	}
	r.DeletionDate = time.Time{}
	return nil
}

func toArchived(k *keyEntry, r *store.Key, _ time.Time) error {
	switch r.State {
	case StateEnabled, StateArchived:
		r.State = StateArchived
		return nil
	}
	return notSupported(k)
}

func cancelArchive(k *keyEntry, r *store.Key, _ time.Time) error {
	if r.State != StateArchived {
		return notSupported(k)
	}
	r.State = StateEnabled
	return nil
}

func notPendingDelete(k *keyEntry, r *store.Key) error {
	if r.State == StatePendingDelete {
		return notSupported(k)
	}
	return nil
}

// change applies f to key keyID under writeMu and, if the record changed,
// writes it to the store and then publishes it, so the change is enforced
// from the next request on. It authorises action on the key first.
func (s *Service) change(ctx context.Context, action, keyID string, f stateChange) (KeyMetadata, error) {
	if _, ok := parseKeyID(keyID); !ok {
		return KeyMetadata{}, ErrInvalidKeyID
	}
	if err := authorize(ctx, action, keyID); err != nil {
		return KeyMetadata{}, err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	k, unlock, err := s.lockFresh(ctx, keyID)
	if err != nil {
		return KeyMetadata{}, err
	}
	defer unlock()
	return s.applyLocked(ctx, action, k, f)
}

// applyLocked is change for a key already looked up; writeMu is held.
func (s *Service) applyLocked(ctx context.Context, action string, k *keyEntry, f stateChange) (KeyMetadata, error) {
	r := k.rec
	if err := f(k, &r, s.now().UTC()); err != nil {
		return KeyMetadata{}, err
	}
	if sameMetadata(r, k.rec) {
		return k.meta, nil
	}
	nks, err := s.applyAllLocked(ctx, action, []*keyEntry{k}, []store.Key{r})
	if err != nil {
		return KeyMetadata{}, err
	}
	return nks[0].meta, nil
}

func sameMetadata(a, b store.Key) bool {
	return a.Alias == b.Alias && a.Description == b.Description && a.State == b.State &&
		a.DeletionDate.Equal(b.DeletionDate) && a.RotationEnabled == b.RotationEnabled &&
		a.RotateDays == b.RotateDays && a.LastRotatedAt.Equal(b.LastRotatedAt) &&
		sameTags(a.Tags, b.Tags)
}

// replace publishes nk in place of old, keeping the alias index and the
// count of live keys right, then drops the working copies the change made
// useless.
func (s *Service) replace(old, nk *keyEntry) {
	s.mu.Lock()
	prev := s.swapLocked(nk)
	s.mu.Unlock()
	if prev == nil {
		prev = old
	}
	s.dropStaleCopies(prev, nk)
}

// EnableKey makes a Disabled key Enabled (an Enabled key stays so).
// Errors: ErrInvalidKeyID, ErrUnauthorized, ErrKeyNotFound,
// ErrKeyStateNotSupported (PendingDelete, Archived), ErrInternal.
func (s *Service) EnableKey(ctx context.Context, keyID string) error {
	_, err := s.change(ctx, "kms:EnableKey", keyID, toEnabled)
	return err
}

// DisableKey makes an Enabled key Disabled (a Disabled key stays so); a
// Disabled key neither encrypts nor decrypts. Errors as EnableKey.
func (s *Service) DisableKey(ctx context.Context, keyID string) error {
	_, err := s.change(ctx, "kms:DisableKey", keyID, toDisabled)
	return err
}

// EnableKeys enables up to MaxBatchKeys keys: either every key is checked
// to allow it and then changed, in one store transaction, or nothing is
// changed. Errors: as DescribeKeys for the list, then as EnableKey for
// each key.
func (s *Service) EnableKeys(ctx context.Context, keyIDs []string) error {
	return s.changeAll(ctx, "kms:EnableKeys", keyIDs, toEnabled)
}

// DisableKeys disables up to MaxBatchKeys keys, all or none (see EnableKeys).
func (s *Service) DisableKeys(ctx context.Context, keyIDs []string) error {
	return s.changeAll(ctx, "kms:DisableKeys", keyIDs, toDisabled)
}

func (s *Service) changeAll(ctx context.Context, action string, keyIDs []string, f stateChange) error {
	if err := checkBatch(keyIDs); err != nil {
		return err
	}
	for _, id := range keyIDs {
		if err := authorize(ctx, action, id); err != nil {
			return err
		}
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	fresh, unlock, err := s.lockFreshAll(ctx, keyIDs)
	if err != nil {
		return err
	}
	defer unlock()
	keys := make([]*keyEntry, 0, len(keyIDs))
	recs := make([]store.Key, 0, len(keyIDs))
	now := s.now().UTC()
	for _, id := range keyIDs {
		k := fresh[id]
		r := k.rec
		if err := f(k, &r, now); err != nil {
			return err
		}
		if !sameMetadata(r, k.rec) {
			keys, recs = append(keys, k), append(recs, r)
		}
	}
	_, err = s.applyAllLocked(ctx, action, keys, recs)
	return err
}

// applyAllLocked stores recs, the changed records of keys, in one store
// transaction (all or none), publishes them together and returns the new
// entries; writeMu and the keys' locks are held. Errors: ErrAliasExists
// (naming the alias a change gave), ErrInternal and the store's
// (storeErr).
func (s *Service) applyAllLocked(ctx context.Context, action string, keys []*keyEntry, recs []store.Key) ([]*keyEntry, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	for i, k := range keys {
		if err := s.sealUpdate(ctx, k, &recs[i]); err != nil {
			return nil, storeErr(action, err)
		}
	}
	if err := s.store.UpdateKeys(ctx, recs...); err != nil {
		if errors.Is(err, store.ErrAliasExists) {
			for i, k := range keys {
				if recs[i].Alias != k.rec.Alias {
					return nil, fmt.Errorf("%w: %q", ErrAliasExists, recs[i].Alias)
				}
			}
			return nil, ErrAliasExists
		}
		s.log.Error("kms: key update failed", "action", action, "key_id", keys[0].meta.KeyID, "keys", len(keys), "err", err)
		return nil, storeErr(action, err)
	}
	entries := make([]*keyEntry, len(keys))
	for i, k := range keys {
		nk, err := newKeyEntry(recs[i], k)
		if err != nil {
			s.log.Error("kms: updated key is not servable", "key_id", k.meta.KeyID, "err", err)
			return nil, fmt.Errorf("%w: %s: %w", ErrInternal, action, err)
		}
		entries[i] = nk
	}
	// Under one lock: no reader sees some of the changes and not others
	// (an alias on neither of its two keys, or on both).
	prev := make([]*keyEntry, len(keys))
	s.mu.Lock()
	for i, nk := range entries {
		prev[i] = s.swapLocked(nk)
	}
	s.mu.Unlock()
	for i, k := range keys {
		s.dropStaleCopies(cmp.Or(prev[i], k), entries[i])
		if recs[i].State != k.rec.State {
			s.log.Info("kms: key state changed", "key_id", k.meta.KeyID, "from", k.rec.State, "to", recs[i].State, "action", action)
		}
	}
	return entries, nil
}

// ScheduleKeyDeletion schedules the purge of a Disabled key after
// pendingWindowInDays (7..30) days and returns its metadata (PendingDelete,
// DeletionDate set). From now on the key refuses every use; the background
// maintenance destroys its token objects when the window ends. Errors:
// ErrInvalidKeyID, ErrInvalidPendingWindow, ErrUnauthorized,
// ErrKeyNotFound, ErrKeyShouldBeDisabled (Enabled, Archived),
// ErrKeyStateNotSupported (already PendingDelete), ErrInternal.
func (s *Service) ScheduleKeyDeletion(ctx context.Context, keyID string, pendingWindowInDays int) (KeyMetadata, error) {
	if pendingWindowInDays < MinPendingWindowDays || pendingWindowInDays > MaxPendingWindowDays {
		return KeyMetadata{}, fmt.Errorf("%w: %d", ErrInvalidPendingWindow, pendingWindowInDays)
	}
	return s.change(ctx, "kms:ScheduleKeyDeletion", keyID, scheduleDeletion(pendingWindowInDays))
}

// CancelKeyDeletion returns a PendingDelete key to Disabled while its
// deletion window is open. Errors: ErrInvalidKeyID, ErrUnauthorized,
// ErrKeyNotFound, ErrKeyNotPendingDelete, ErrKeyStateNotSupported (the
// window has ended), ErrInternal.
func (s *Service) CancelKeyDeletion(ctx context.Context, keyID string) (KeyMetadata, error) {
	return s.change(ctx, "kms:CancelKeyDeletion", keyID, cancelDeletion)
}

// ArchiveKey makes an Enabled key Archived: it still decrypts but no longer
// encrypts. Errors as EnableKey (Disabled and PendingDelete are
// ErrKeyStateNotSupported).
func (s *Service) ArchiveKey(ctx context.Context, keyID string) error {
	_, err := s.change(ctx, "kms:ArchiveKey", keyID, toArchived)
	return err
}

// CancelKeyArchive returns an Archived key to Enabled. Errors as EnableKey
// (any other state is ErrKeyStateNotSupported).
func (s *Service) CancelKeyArchive(ctx context.Context, keyID string) error {
	_, err := s.change(ctx, "kms:CancelKeyArchive", keyID, cancelArchive)
	return err
}

// UpdateAlias renames a key. Errors: ErrInvalidKeyID, ErrInvalidAlias,
// ErrUnauthorized, ErrKeyNotFound, ErrKeyStateNotSupported (PendingDelete),
// ErrAliasExists (held by another key that is not Deleted, or being
// created), ErrInternal.
func (s *Service) UpdateAlias(ctx context.Context, keyID, alias string) error {
	return s.setAlias(ctx, "kms:UpdateAlias", keyID, alias, nil)
}

// setAlias is UpdateAlias authorising action; when replaceable is not nil,
// a key whose current alias it refuses keeps it (ErrKeyHasAlias).
func (s *Service) setAlias(ctx context.Context, action, keyID, alias string, replaceable func(string) bool) error {
	if err := validateAlias(alias); err != nil {
		return err
	}
	_, err := s.change(ctx, action, keyID, func(k *keyEntry, r *store.Key, _ time.Time) error {
		if err := notPendingDelete(k, r); err != nil {
			return err
		}
		if replaceable != nil && r.Alias != alias && !replaceable(r.Alias) {
			return fmt.Errorf("%w: %q", ErrKeyHasAlias, r.Alias)
		}
		s.mu.RLock()
		holder, held := s.aliases[alias]
		_, creating := s.reserved[alias]
		s.mu.RUnlock()
		if (held && holder != k.id) || creating {
			return fmt.Errorf("%w: %q", ErrAliasExists, alias)
		}
		r.Alias = alias
		return nil
	})
	return err
}

// UpdateKeyDescription changes a key's description. Errors:
// ErrInvalidKeyID, ErrInvalidDesc, ErrUnauthorized, ErrKeyNotFound,
// ErrKeyStateNotSupported (PendingDelete), ErrInternal.
func (s *Service) UpdateKeyDescription(ctx context.Context, keyID, description string) error {
	if err := validateDescription(description); err != nil {
		return err
	}
	_, err := s.change(ctx, "kms:UpdateKeyDescription", keyID, func(k *keyEntry, r *store.Key, _ time.Time) error {
		if err := notPendingDelete(k, r); err != nil {
			return err
		}
		r.Description = description
		return nil
	})
	return err
}
