package kms

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"hsmkms/hsm"
	"hsmkms/store"
)

// ---------------------------------------------------------------------------
// CreateKey

func validateAlias(a string) error {
	if len(a) == 0 {
		return fmt.Errorf("%w: empty", ErrInvalidAlias)
	}
	if len(a) > MaxAliasChars {
		return fmt.Errorf("%w: longer than %d characters", ErrInvalidAlias, MaxAliasChars)
	}
	for i := 0; i < len(a); i++ {
		c := a[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("%w: must start with a letter or a digit", ErrInvalidAlias)
		}
		if !alnum && c != '_' && c != '-' {
			return fmt.Errorf("%w: only letters, digits, '_' and '-' are allowed", ErrInvalidAlias)
		}
	}
	if len(a) >= len(ReservedAliasPrefix) && strings.EqualFold(a[:len(ReservedAliasPrefix)], ReservedAliasPrefix) {
		return fmt.Errorf("%w: the prefix %q is reserved", ErrInvalidAlias, ReservedAliasPrefix)
	}
	return nil
}

func validateDescription(d string) error {
	if len(d) > MaxDescription {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidDesc, MaxDescription)
	}
	if !utf8.ValidString(d) {
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidDesc)
	}
	return nil
}

func normaliseKeyUsage(u string) (string, error) {
	switch u {
	case "", DefaultKeyUsage, LegacyKeyUsage:
		return DefaultKeyUsage, nil
	case UsageSM2Decrypt, UsageSM2Sign: // refused by checkUsageSupported, naming the mechanism
		return u, nil
	}
	if IsAsymmetricUsage(u) {
		return u, nil
	}
	return "", fmt.Errorf("%w: %q is not a KeyUsage", ErrInvalidKeyUsage, u)
}

// reserve claims alias and one unit of the key limit for a CreateKey in
// flight.
func (s *Service) reserve(alias string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, taken := s.aliases[alias]; taken {
		return fmt.Errorf("%w: %q", ErrAliasExists, alias)
	}
	if _, taken := s.reserved[alias]; taken {
		return fmt.Errorf("%w: %q", ErrAliasExists, alias)
	}
	if s.live+len(s.reserved) >= s.keyLimit {
		return fmt.Errorf("%w: %d keys", ErrLimitExceeded, s.keyLimit)
	}
	s.reserved[alias] = struct{}{}
	return nil
}

func (s *Service) unreserve(alias string) {
	s.mu.Lock()
	delete(s.reserved, alias)
	s.mu.Unlock()
}

// cleanupTimeout bounds the best-effort rollback of a failed CreateKey.
const cleanupTimeout = 30 * time.Second

// CreateKey creates a CMK: a new token object and its metadata, and returns
// the metadata of the new key (state Enabled, version 1).
//
// Errors: ErrInvalidAlias, ErrInvalidDesc, ErrInvalidKeyUsage for bad input;
// ErrAliasExists if the alias is held by a key that is not Deleted or by a
// CreateKey in flight (aliases compare case-sensitively; a Deleted key's
// alias can be reused, as the store allows); ErrLimitExceeded if the key limit is reached;
// ErrBusy or ErrUnavailable from the HSM; ErrInternal for store failures and
// unexpected HSM failures (these also wrap the cause).
//
// Creation is crash-safe. The steps are: record the token object as pending
// in the store (a durable intent), generate the object on the token, commit
// the key (one transaction that also deletes the intent), publish it in the
// cache. A key is reported created only once both the object and the
// metadata are durable. On failure the object is destroyed and the intent
// deleted (best effort, logged); whatever a failure or a crash leaves behind
// is resolved by Recover. CreateKey calls may run concurrently.
func (s *Service) CreateKey(ctx context.Context, in CreateKeyInput) (KeyMetadata, error) {
	if err := authorize(ctx, "kms:CreateKey", "*"); err != nil {
		return KeyMetadata{}, err
	}
	if err := validateAlias(in.Alias); err != nil {
		return KeyMetadata{}, err
	}
	if err := validateDescription(in.Description); err != nil {
		return KeyMetadata{}, err
	}
	usage, err := normaliseKeyUsage(in.KeyUsage)
	if err != nil {
		return KeyMetadata{}, err
	}
	if err := validateTagSet(in.Tags, MaxTagsPerKey); err != nil {
		return KeyMetadata{}, err
	}
	switch in.Type {
	case 0, KeyTypeKMS:
	case KeyTypeExternal:
		if usage != DefaultKeyUsage {
			return KeyMetadata{}, fmt.Errorf("%w: imported key material is AES-256, for the KeyUsage ENCRYPT_DECRYPT only", ErrInvalidKeyUsage)
		}
		return s.createExternal(ctx, in, usage)
	default:
		return KeyMetadata{}, fmt.Errorf("%w: %d", ErrInvalidType, in.Type)
	}
	if err := s.checkUsageSupported(ctx, usage); err != nil {
		return KeyMetadata{}, err
	}

	s.recoverMu.RLock()
	defer s.recoverMu.RUnlock()

	if err := s.reserve(in.Alias); err != nil {
		return KeyMetadata{}, err
	}
	published := false
	defer func() {
		if !published {
			s.unreserve(in.Alias)
		}
	}()

	keyID, objectID, err := newKeyIDs(ctx, in.Tags)
	if err != nil {
		return KeyMetadata{}, err
	}
	now := s.now().UTC()
	log := s.log.With("key_id", keyID, "object_id", fmt.Sprintf("%x", objectID))

	// 1. Durable intent.
	if err := s.addIntent(ctx, store.PendingObject{
		ObjectID: objectID, KeyID: keyID, Version: 1, CreatedAt: now,
	}); err != nil {
		log.Error("kms: create key: recording intent failed", "err", err)
		return KeyMetadata{}, storeErr("create key", err)
	}
	s.fault("create:intent")

	// 2. Token object. A failure may still have created it (a timeout
	// after the token acted), so roll back in every case.
	publicKey, err := s.generateObject(ctx, usage, objectID, keyID+"/v1") // asym.go
	if err != nil {
		s.rollback(ctx, log, objectID)
		if errors.Is(err, ErrUnsupported) {
			return KeyMetadata{}, err
		}
		return KeyMetadata{}, s.hsmErr(log, "create key", err)
	}
	s.fault("create:generated")

	// 3. Commit.
	rec := store.Key{
		ID:          keyID,
		Alias:       in.Alias,
		Description: in.Description,
		Usage:       usage,
		State:       StateEnabled,
		Origin:      OriginTencentKMS,
		CreatedAt:   now,
		Versions:    []store.Version{{Number: 1, ObjectID: objectID, CreatedAt: now}},
		Gen:         1,
		PublicKey:   publicKey, // nil for a symmetric key
	}
	rec.Tags, _ = applyTags(nil, in.Tags, nil) // validated above
	if err := s.sealKey(ctx, &rec); err != nil {
		s.rollback(ctx, log, objectID)
		return KeyMetadata{}, err
	}
	if err := s.store.CreateKey(ctx, rec); err != nil {
		if errors.Is(err, store.ErrAliasExists) {
			s.rollback(ctx, log, objectID)
			return KeyMetadata{}, fmt.Errorf("%w: %q", ErrAliasExists, in.Alias)
		}
		// The commit may have happened despite the error (e.g. the
		// connection failed after COMMIT): ask before destroying material
		// a committed key would depend on.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		got, gerr := s.store.GetKey(cctx, keyID)
		cancel()
		switch {
		case gerr == nil && hasObject(got, objectID):
			log.Warn("kms: create key: store reported an error but the key is committed", "err", err)
			rec = got
		case errors.Is(gerr, store.ErrNotFound) || gerr == nil:
			// Definitely not committed with this object.
			log.Error("kms: create key: commit failed", "err", err)
			s.rollback(ctx, log, objectID)
			return KeyMetadata{}, storeErr("create key", err)
		default:
			log.Error("kms: create key: commit failed and its outcome is unknown; the intent is left for Recover",
				"err", err, "get_err", gerr)
			return KeyMetadata{}, storeErr("create key", err)
		}
	}

	// 4. Publish.
	k, err := newKeyEntry(rec, nil)
	if err != nil {
		// Cannot happen for a record built above.
		log.Error("kms: create key: committed key is not servable", "err", err)
		return KeyMetadata{}, fmt.Errorf("%w: create key: %w", ErrInternal, err)
	}
	s.publish(k)
	published = true
	log.Info("kms: key created", "alias", in.Alias)
	return k.meta, nil
}

// newKeyIDs draws a new key's id (a random UUID) and the object id of its
// version 1 (16 random bytes), and, if tags are given, checks that the
// caller may tag the key (ActTagResources): the common start of CreateKey
// and createExternal (import.go).
//
// Errors: ErrUnauthorized (from authorize); ErrInternal if randomness fails.
func newKeyIDs(ctx context.Context, tags []Tag) (keyID string, objectID []byte, err error) {
	id, err := uuid.NewRandom()
	if err != nil {
		return "", nil, fmt.Errorf("%w: create key: key id: %w", ErrInternal, err)
	}
	keyID = id.String()
	if len(tags) > 0 {
		if err := authorize(ctx, ActTagResources, keyID); err != nil {
			return "", nil, err
		}
	}
	objectID = make([]byte, 16)
	if _, err := rand.Read(objectID); err != nil {
		return "", nil, fmt.Errorf("%w: create key: object id: %w", ErrInternal, err)
	}
	return keyID, objectID, nil
}

func hasObject(k store.Key, objectID []byte) bool {
	for _, v := range k.Versions {
		if string(v.ObjectID) == string(objectID) {
			return true
		}
	}
	return false
}

// rollback destroys an uncommitted token object and deletes its intent. If
// the object cannot be destroyed the intent is kept so that Recover retries.
// It runs even if ctx is cancelled, within cleanupTimeout.
func (s *Service) rollback(ctx context.Context, log *slog.Logger, objectID []byte) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := s.hsm.DestroyKey(cctx, objectID); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
		log.Error("kms: rollback: cannot destroy the uncommitted token object; the intent is kept for Recover", "err", err)
		return
	}
	if err := s.store.DeletePendingObject(cctx, objectID); err != nil {
		log.Error("kms: rollback: cannot delete the intent; Recover will", "err", err)
		return
	}
	log.Info("kms: rollback: uncommitted token object destroyed")
}

// ---------------------------------------------------------------------------
// Recover

// Recover reconciles the token with the store. It is idempotent, and it
// waits for CreateKey calls in flight (and blocks new ones) while it runs.
//
// For each pending object (intent): if its key was committed with that
// object, the intent is deleted; otherwise the token object is destroyed (an
// absent object is fine) and the intent deleted. Then the objects on the
// token are compared with those the store names: token objects without
// metadata are orphans, reported and logged at Warn level but never destroyed
// automatically (an operator may be restoring a store backup that names
// them); key versions of keys that are not Deleted whose object is missing
// are logged at Error level.
//
// The error, if any, joins every failure; the report is valid as far as
// Recover got.
func (s *Service) Recover(ctx context.Context) (RecoveryReport, error) {
	s.recoverMu.Lock()
	defer s.recoverMu.Unlock()

	var rep RecoveryReport
	var errs []error

	pending, err := s.store.PendingObjects(ctx)
	if err != nil {
		return rep, fmt.Errorf("kms: recover: pending objects: %w", err)
	}
	unresolved := make(map[string]bool)
	for _, p := range pending {
		log := s.log.With("key_id", p.KeyID, "version", p.Version, "object_id", fmt.Sprintf("%x", p.ObjectID))
		// An intent may make Recover destroy a token object: obey only
		// one that verifies and names no object of the service's own.
		err := s.verify(ctx, fmt.Sprintf("intent %x", p.ObjectID), intentMsg(p), p.MAC)
		if err == nil && reservedObject(p.ObjectID) {
			err = fmt.Errorf("%w: intent %x names a reserved token object", ErrIntegrity, p.ObjectID)
		}
		if errors.Is(err, ErrIntegrity) {
			s.reportIntegrity(KindIntent, fmt.Sprintf("%x", p.ObjectID), err)
		}
		if err != nil {
			log.Error("kms: recover: intent not acted on", "err", err)
			rep.Unresolved = append(rep.Unresolved, p.ObjectID)
			unresolved[string(p.ObjectID)] = true
			errs = append(errs, err)
			continue
		}
		s.clearIntegrity(KindIntent, fmt.Sprintf("%x", p.ObjectID))
		committed, err := s.resolveIntent(ctx, p)
		if err != nil {
			log.Error("kms: recover: intent unresolved", "err", err)
			rep.Unresolved = append(rep.Unresolved, p.ObjectID)
			unresolved[string(p.ObjectID)] = true
			errs = append(errs, err)
			continue
		}
		if committed {
			log.Info("kms: recover: intent of a committed key deleted")
			rep.Committed++
		} else {
			log.Warn("kms: recover: uncommitted token object destroyed and intent deleted")
			rep.RolledBack = append(rep.RolledBack, p.ObjectID)
		}
	}

	onToken, err := s.hsm.KeyIDs(ctx)
	if err != nil {
		return rep, errors.Join(append(errs, fmt.Errorf("kms: recover: list token objects: %w", err))...)
	}
	known, err := s.store.ObjectIDs(ctx)
	if err != nil {
		return rep, errors.Join(append(errs, fmt.Errorf("kms: recover: list store objects: %w", err))...)
	}
	keys, err := s.store.ListKeys(ctx)
	if err != nil {
		return rep, errors.Join(append(errs, fmt.Errorf("kms: recover: list keys: %w", err))...)
	}

	tokenSet := make(map[string]bool, len(onToken))
	for _, id := range onToken {
		tokenSet[string(id)] = true
	}
	// Objects of Deleted keys (tombstones) are not "known": the purge
	// destroyed them, so one still on the token is reported as an orphan.
	deleted := make(map[string]bool)
	for _, k := range keys {
		if k.State == StateDeleted {
			for _, v := range k.Versions {
				deleted[string(v.ObjectID)] = true
			}
		}
	}
	knownSet := make(map[string]bool, len(known))
	for _, id := range known {
		if !deleted[string(id)] {
			knownSet[string(id)] = true
		}
	}
	now := s.now()
	for _, k := range keys {
		purging := k.State == StatePendingDelete && !k.DeletionDate.After(now)
		for _, v := range k.Versions {
			if k.State == StateDeleted {
				continue
			}
			knownSet[string(v.ObjectID)] = true
			if purging || tokenSet[string(v.ObjectID)] || materialAbsent(k) {
				continue
			}
			rep.Missing = append(rep.Missing, MissingObject{KeyID: k.ID, Version: v.Number, ObjectID: v.ObjectID})
			s.log.Error("kms: recover: token object of a key version is missing; its ciphertexts cannot be decrypted",
				"key_id", k.ID, "version", v.Number, "object_id", fmt.Sprintf("%x", v.ObjectID))
		}
	}
	for _, k := range keys {
		if materialAbsent(k) && k.State != StateDeleted {
			// An EXTERNAL key without material owns no object: one on
			// the token is reported, as orphans are.
			for _, v := range k.Versions {
				delete(knownSet, string(v.ObjectID))
			}
		}
	}
	knownSet[string(credKEKObjectID)] = true
	knownSet[string(macKeyObjectID)] = true
	for _, id := range onToken {
		if knownSet[string(id)] || unresolved[string(id)] {
			continue
		}
		rep.Orphans = append(rep.Orphans, id)
	}
	wrapOrphans, err := s.importOrphans(ctx, unresolved)
	if err != nil {
		errs = append(errs, err)
	}
	rep.Orphans = append(rep.Orphans, wrapOrphans...)
	if len(rep.Orphans) > 0 {
		ids := make([]string, len(rep.Orphans))
		for i, id := range rep.Orphans {
			ids[i] = fmt.Sprintf("%x", id)
		}
		s.log.Warn("kms: recover: orphan token objects without metadata (left in place; destroy them by hand only if no store backup names them)",
			"count", len(ids), "object_ids", ids)
	}
	return rep, errors.Join(errs...)
}

// resolveIntent settles one pending object; it reports whether the key was
// committed.
func (s *Service) resolveIntent(ctx context.Context, p store.PendingObject) (committed bool, err error) {
	k, err := s.store.GetKey(ctx, p.KeyID)
	switch {
	case err == nil && hasObject(k, p.ObjectID) && !materialAbsent(k):
		committed = true
	case err == nil || errors.Is(err, store.ErrNotFound):
		// Not committed (or the key exists but without this object: a
		// version whose commit never happened; or an EXTERNAL key whose
		// material the store says is not loaded: an import that never
		// committed, or a deletion of the material that did). The object
		// may also be a wrapping key of GetParametersForImport.
		if err := s.hsm.DestroyKey(ctx, p.ObjectID); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
			return false, fmt.Errorf("kms: recover: destroy %x: %w", p.ObjectID, err)
		}
		if err := s.destroyWrapping(ctx, p.ObjectID); err != nil {
			return false, fmt.Errorf("kms: recover: destroy wrapping key %x: %w", p.ObjectID, err)
		}
	default:
		return false, fmt.Errorf("kms: recover: get key %s: %w", p.KeyID, err)
	}
	if err := s.store.DeletePendingObject(ctx, p.ObjectID); err != nil {
		return committed, fmt.Errorf("kms: recover: delete intent %x: %w", p.ObjectID, err)
	}
	return committed, nil
}
