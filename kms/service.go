package kms

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"hsmkms/hsm"
	"hsmkms/store"
)

// Config tunes a Service. The zero value is usable.
type Config struct {
	// KeyLimit caps the number of keys that are not Deleted; 0 means DefaultKeyLimit.
	KeyLimit int
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// Logger receives operational events (never plaintext or key material);
	// nil means slog.Default().
	Logger *slog.Logger
	// VersionUsageLimit is the number of encryptions (Encrypt,
	// GenerateDataKey, ReEncrypt) allowed under one key version; the next
	// one is served by a new version, made automatically. 0 means
	// DefaultVersionUsageLimit; at most 2^62.
	VersionUsageLimit uint64
	// UsageBatch is how many encryptions one durable usage reservation
	// covers (one store write per batch); 0 means DefaultUsageBatch. It is
	// capped by VersionUsageLimit.
	UsageBatch uint64
	// MaintenanceInterval is how often RunMaintenance purges keys whose
	// deletion window ended and rotates keys whose rotation is due; 0 means
	// one minute.
	MaintenanceInterval time.Duration
	// StaleAfter bounds, on a shared store (see SharedStore), how long
	// Encrypt, Decrypt, GenerateDataKey and ReEncrypt keep serving from
	// the cache while it cannot be confirmed current (the store is
	// unreachable); 0 means DefaultStaleAfter.
	StaleAfter time.Duration
	// ResyncInterval is, on a shared store, how often every key and
	// credential is re-read in case a change notification was lost (the
	// TTL of the caches); 0 means DefaultResyncInterval.
	ResyncInterval time.Duration
	// FaultPoint, if set, is called at named points of CreateKey, RotateKey
	// and the purge ("create:intent", "create:generated",
	// "rotate:intent", "rotate:generated", "purge:destroyed-one",
	// "purge:destroyed-all"). Crash tests use it to kill the process at a
	// chosen point; production leaves it nil.
	FaultPoint func(point string)
	// OnIntegrityFailure, if set, is called (synchronously, without locks
	// held) for every stored row newly found failing its integrity check
	// (see integrity.go); kmsd records it in the audit trail.
	OnIntegrityFailure func(IntegrityFailure)
}

// CreateKeyInput is the request of CreateKey.
type CreateKeyInput struct {
	Alias       string // required, 1-60 of [A-Za-z0-9_-], first a letter or digit, unique
	Description string // optional, at most 1024 bytes
	KeyUsage    string // "" or "ENCRYPT_DECRYPT"
}

// KeyMetadata describes a key as the API reports it.
type KeyMetadata struct {
	KeyID          string
	Alias          string
	Description    string
	KeyUsage       string
	KeyState       string
	Origin         string
	CreateTime     time.Time
	DeletionDate   time.Time // scheduled deletion (PendingDelete) or purge time (Deleted); else zero
	CurrentVersion uint32

	KeyRotationEnabled bool
	RotateDays         uint32    // rotation period when KeyRotationEnabled
	LastRotateTime     time.Time // zero if the key never rotated
	NextRotateTime     time.Time // zero unless KeyRotationEnabled
}

// EncryptInput is the request of Encrypt. Encrypt reads Plaintext only
// while it runs and keeps no reference to it: callers may clear and reuse
// the buffer once it returns.
type EncryptInput struct {
	KeyID             string
	Plaintext         []byte // raw bytes, 1..MaxPlaintext
	EncryptionContext string // "" or a JSON object of strings, <= MaxContextChars
}

// EncryptResult is the response of Encrypt.
type EncryptResult struct {
	KeyID          string
	KeyVersion     uint32
	CiphertextBlob string // base64 of the envelope
}

// DecryptInput is the request of Decrypt.
type DecryptInput struct {
	CiphertextBlob    string
	EncryptionContext string
}

// DecryptResult is the response of Decrypt.
type DecryptResult struct {
	KeyID      string
	KeyVersion uint32
	Plaintext  []byte
}

// RecoveryReport is what Recover found and did.
type RecoveryReport struct {
	// Committed counts intents whose key had been committed (the crash
	// came after store.CreateKey): the intent was deleted.
	Committed int
	// RolledBack lists the object ids of intents whose key was never
	// committed: the token object was destroyed (or was already absent)
	// and the intent deleted.
	RolledBack [][]byte
	// Unresolved lists the object ids of intents Recover could not resolve
	// now (HSM or store failure); they are kept for the next run.
	Unresolved [][]byte
	// Orphans lists token objects made by this service that no version of
	// a key that is not Deleted and no intent names (an object of a Deleted
	// key outlived its purge). They are NOT destroyed: the store may be
	// being restored from a backup that names them. An operator decides.
	Orphans [][]byte
	// Missing lists key versions (of keys not Deleted) whose token object
	// is absent: ciphertexts under them cannot be decrypted.
	Missing []MissingObject
}

// MissingObject names a key version whose token object is absent.
type MissingObject struct {
	KeyID    string
	Version  uint32
	ObjectID []byte
}

// Service implements the key-management operations. It is safe for
// concurrent use.
//
// All key metadata is cached in memory when the Service is made; Encrypt,
// Decrypt and DescribeKey are served from the cache and the HSM and never
// touch the store. On an unshared store the Service assumes it is the
// only writer while it runs; on a SharedStore it cooperates with the other
// nodes (see cluster.go).
type Service struct {
	hsm        HSM
	store      Store
	log        *slog.Logger
	now        func() time.Time
	keyLimit   int
	usageLimit uint64
	usageBatch uint64
	interval   time.Duration
	fault      func(string)

	// writeMu serialises every change to an existing key (state, alias,
	// description, rotation settings, new versions, purge): each reads the
	// cached entry, writes the store, then publishes a new entry.
	writeMu sync.Mutex

	// recoverMu keeps Recover away from CreateKeys in flight: CreateKey
	// holds it shared from its intent to its commit, Recover exclusively,
	// so Recover never rolls back an intent that is still being acted on.
	recoverMu sync.RWMutex

	mu       sync.RWMutex
	keys     map[uuid.UUID]*keyEntry // all keys, Deleted included; entries immutable
	aliases  map[string]uuid.UUID    // aliases of keys that are not Deleted
	reserved map[string]struct{}     // aliases of CreateKeys in flight
	live     int                     // keys not Deleted

	credMu  sync.RWMutex
	creds   map[string]*credEntry // by SecretId; entries immutable
	credGen uint64                // bumped by every local credential change; guarded by credMu

	cluster *clusterState // nil unless the store is a SharedStore (cluster.go)

	integ integrity // rows failing their integrity check (integrity.go)
}

// keyEntry is the cached metadata of one key. It is immutable once
// published in Service.keys; a change publishes a new entry.
type keyEntry struct {
	id       uuid.UUID
	meta     KeyMetadata
	rec      store.Key      // the stored record the entry was made from; Versions shared, never modified
	versions []versionEntry // ascending by number, never empty
	// floor is the highest generation of the key verified (or written)
	// since the Service started: a stored record below it is a rollback.
	floor uint64
	// suspect is why the record failed its integrity check; nil if it
	// passed. A suspect entry is served as Disabled and never changed.
	suspect error
}

type versionEntry struct {
	number    uint32
	objectID  []byte
	header    [HeaderLen]byte
	createdAt time.Time
	usage     *usage // shared by every entry of the key, mutable (atomics)
}

func (k *keyEntry) version(n uint32) *versionEntry {
	// Versions are normally 1..N; fall back to a search if they are not.
	if n >= 1 && int(n) <= len(k.versions) && k.versions[n-1].number == n {
		return &k.versions[n-1]
	}
	for i := range k.versions {
		if k.versions[i].number == n {
			return &k.versions[i]
		}
	}
	return nil
}

func (k *keyEntry) current() *versionEntry { return &k.versions[len(k.versions)-1] }

// newKeyEntry makes the cache entry of a stored key. Usage counters of
// versions prev already had are shared with prev; new versions start from
// their durable reservation.
func newKeyEntry(r store.Key, prev *keyEntry) (*keyEntry, error) {
	id, ok := parseKeyID(r.ID)
	if !ok {
		return nil, fmt.Errorf("key id %q is not a canonical UUID", r.ID)
	}
	if len(r.Versions) == 0 {
		return nil, fmt.Errorf("key %s has no versions", r.ID)
	}
	k := &keyEntry{id: id, rec: r, versions: make([]versionEntry, len(r.Versions)), floor: r.Gen}
	for i, v := range r.Versions {
		if v.Number == 0 || (i > 0 && v.Number <= r.Versions[i-1].Number) {
			return nil, fmt.Errorf("key %s: versions not ascending from 1", r.ID)
		}
		if len(v.ObjectID) == 0 {
			return nil, fmt.Errorf("key %s version %d has no object id", r.ID, v.Number)
		}
		var u *usage
		if prev != nil {
			if pv := prev.version(v.Number); pv != nil {
				u = pv.usage
			}
		}
		if u == nil {
			u = newUsage(v.UsageReserved)
		}
		k.versions[i] = versionEntry{
			number:    v.Number,
			objectID:  slices.Clone(v.ObjectID),
			header:    makeHeader(id, v.Number),
			createdAt: v.CreatedAt,
			usage:     u,
		}
	}
	k.meta = KeyMetadata{
		KeyID:          r.ID,
		Alias:          r.Alias,
		Description:    r.Description,
		KeyUsage:       r.Usage,
		KeyState:       r.State,
		Origin:         r.Origin,
		CreateTime:     r.CreatedAt,
		DeletionDate:   r.DeletionDate,
		CurrentVersion: r.Versions[len(r.Versions)-1].Number,

		KeyRotationEnabled: r.RotationEnabled,
		RotateDays:         r.RotateDays,
		LastRotateTime:     r.LastRotatedAt,
	}
	if r.RotationEnabled {
		k.meta.NextRotateTime = nextRotation(r)
	}
	return k, nil
}

// nextRotation is when automatic rotation of r is due: RotateDays after
// its last rotation, or after its creation if it never rotated.
func nextRotation(r store.Key) time.Time {
	base := r.LastRotatedAt
	if base.IsZero() {
		base = r.CreatedAt
	}
	days := r.RotateDays
	if days == 0 {
		days = DefaultRotateDays
	}
	return base.Add(time.Duration(days) * 24 * time.Hour)
}

// cleanupTimeout bounds the best-effort rollback of a failed CreateKey.
const cleanupTimeout = 30 * time.Second

// New returns a Service over the token and the store. It loads every key
// from the store into memory, then runs Recover and logs its findings.
//
// New fails if the store cannot be read or holds a key it cannot serve (a
// non-canonical id, no versions, two keys that are not Deleted sharing an
// alias): the service refuses to start on inconsistent metadata. A failure of Recover is logged at Error
// level but does not fail New: unresolved intents stay in the store and the
// next Recover retries them.
func New(ctx context.Context, h HSM, s Store, cfg Config) (*Service, error) {
	if h == nil || s == nil {
		return nil, errors.New("kms: New: nil HSM or Store")
	}
	svc := &Service{
		hsm:        h,
		store:      s,
		log:        cfg.Logger,
		now:        cfg.Clock,
		keyLimit:   cfg.KeyLimit,
		usageLimit: cfg.VersionUsageLimit,
		usageBatch: cfg.UsageBatch,
		interval:   cfg.MaintenanceInterval,
		fault:      cfg.FaultPoint,
		keys:       make(map[uuid.UUID]*keyEntry),
		aliases:    make(map[string]uuid.UUID),
		reserved:   make(map[string]struct{}),
		integ:      integrity{failing: make(map[string]IntegrityFailure), hook: cfg.OnIntegrityFailure},
	}
	if svc.log == nil {
		svc.log = slog.Default()
	}
	if svc.now == nil {
		svc.now = time.Now
	}
	if svc.keyLimit <= 0 {
		svc.keyLimit = DefaultKeyLimit
	}
	if svc.usageLimit == 0 {
		svc.usageLimit = DefaultVersionUsageLimit
	}
	if svc.usageLimit > 1<<62 {
		return nil, errors.New("kms: New: VersionUsageLimit above 2^62")
	}
	if svc.usageBatch == 0 {
		svc.usageBatch = DefaultUsageBatch
	}
	svc.usageBatch = min(svc.usageBatch, svc.usageLimit)
	if svc.interval <= 0 {
		svc.interval = time.Minute
	}
	if svc.fault == nil {
		svc.fault = func(string) {}
	}
	if ss, ok := s.(SharedStore); ok {
		svc.cluster = &clusterState{store: ss, staleAfter: cfg.StaleAfter, resync: cfg.ResyncInterval}
		if svc.cluster.staleAfter <= 0 {
			svc.cluster.staleAfter = DefaultStaleAfter
		}
		if svc.cluster.resync <= 0 {
			svc.cluster.resync = DefaultResyncInterval
		}
		svc.cluster.synced.Store(svc.now().UnixNano())
	}
	created, err := svc.ensureMACKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("kms: New: %w", err)
	}
	if created {
		// The first start with metadata MACs (the HSM says so): seal the
		// rows an older release wrote.
		n, err := svc.sealUnsealed(ctx)
		if err != nil {
			return nil, fmt.Errorf("kms: New: seal the existing metadata: %w", err)
		}
		svc.log.Warn("kms: upgrade: computed the MACs of every stored row written before metadata MACs existed", "rows", n)
	}
	recs, err := s.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("kms: New: load keys: %w", err)
	}
	for _, r := range recs {
		k, err := svc.entryFor(ctx, r, nil)
		if err != nil {
			return nil, fmt.Errorf("kms: New: %w", err)
		}
		if _, dup := svc.keys[k.id]; dup {
			return nil, fmt.Errorf("kms: New: duplicate key %s", r.ID)
		}
		svc.keys[k.id] = k
		if k.meta.KeyState == StateDeleted {
			continue
		}
		svc.live++
		if k.meta.Alias == "" {
			continue
		}
		if other, dup := svc.aliases[r.Alias]; dup {
			return nil, fmt.Errorf("kms: New: keys %s and %s share alias %q", other, r.ID, r.Alias)
		}
		svc.aliases[r.Alias] = k.id
	}
	svc.log.Info("kms: keys loaded", "keys", len(svc.keys), "live", svc.live)

	if err := svc.loadCredentials(ctx); err != nil {
		return nil, fmt.Errorf("kms: New: %w", err)
	}

	rep, err := svc.Recover(ctx)
	if err != nil {
		svc.log.Error("kms: recovery incomplete; unresolved intents are retried at the next start", "err", err)
	}
	svc.log.Info("kms: recovery done",
		"committed", rep.Committed, "rolled_back", len(rep.RolledBack),
		"unresolved", len(rep.Unresolved), "orphans", len(rep.Orphans), "missing", len(rep.Missing))
	return svc, nil
}

// lookup returns the cached key, or nil.
func (s *Service) lookup(id uuid.UUID) *keyEntry {
	s.mu.RLock()
	k := s.keys[id]
	s.mu.RUnlock()
	return k
}

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
	}
	return "", fmt.Errorf("%w: only %s is supported", ErrInvalidKeyUsage, DefaultKeyUsage)
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

// publish adds a committed key to the cache and releases its reservation.
func (s *Service) publish(k *keyEntry) {
	s.mu.Lock()
	delete(s.reserved, k.meta.Alias)
	s.swapLocked(k) // on a shared store the sync may have installed it already
	s.mu.Unlock()
}

// storeErr classifies a store failure: an unreachable store is
// ErrUnavailable (the client may retry), anything else ErrInternal. The
// cause is wrapped too.
func storeErr(op string, err error) error {
	if errors.Is(err, store.ErrUnavailable) {
		return fmt.Errorf("%w: %s: store: %w", ErrUnavailable, op, err)
	}
	return fmt.Errorf("%w: %s: store: %w", ErrInternal, op, err)
}

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

	id, err := uuid.NewRandom()
	if err != nil {
		return KeyMetadata{}, fmt.Errorf("%w: create key: key id: %w", ErrInternal, err)
	}
	keyID := id.String()
	objectID := make([]byte, 16)
	if _, err := rand.Read(objectID); err != nil {
		return KeyMetadata{}, fmt.Errorf("%w: create key: object id: %w", ErrInternal, err)
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
	if err := s.hsm.GenerateKey(ctx, objectID, keyID+"/v1"); err != nil {
		s.rollback(ctx, log, objectID)
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
	}
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
			if purging || tokenSet[string(v.ObjectID)] {
				continue
			}
			rep.Missing = append(rep.Missing, MissingObject{KeyID: k.ID, Version: v.Number, ObjectID: v.ObjectID})
			s.log.Error("kms: recover: token object of a key version is missing; its ciphertexts cannot be decrypted",
				"key_id", k.ID, "version", v.Number, "object_id", fmt.Sprintf("%x", v.ObjectID))
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
	case err == nil && hasObject(k, p.ObjectID):
		committed = true
	case err == nil || errors.Is(err, store.ErrNotFound):
		// Not committed (or the key exists but without this object: a
		// version whose commit never happened).
		if err := s.hsm.DestroyKey(ctx, p.ObjectID); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
			return false, fmt.Errorf("kms: recover: destroy %x: %w", p.ObjectID, err)
		}
	default:
		return false, fmt.Errorf("kms: recover: get key %s: %w", p.KeyID, err)
	}
	if err := s.store.DeletePendingObject(ctx, p.ObjectID); err != nil {
		return committed, fmt.Errorf("kms: recover: delete intent %x: %w", p.ObjectID, err)
	}
	return committed, nil
}

// ---------------------------------------------------------------------------
// Encrypt / Decrypt

// hsmErr classifies an HSM failure: ErrBusy, ErrUnavailable and context
// errors pass through (wrapped); login or token loss becomes ErrUnavailable;
// hsm.ErrKeyNotFound (metadata names an object the token lacks) and anything
// else become ErrInternal and are logged at Error level. The HSM cause of an
// ErrInternal is kept in the message only, so errors.Is never mistakes it
// for a client-side condition.
func (s *Service) hsmErr(log *slog.Logger, op string, err error) error {
	switch {
	case errors.Is(err, hsm.ErrBusy), errors.Is(err, hsm.ErrUnavailable),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("kms: %s: %w", op, err)
	case errors.Is(err, hsm.ErrLogin), errors.Is(err, hsm.ErrTokenNotFound):
		log.Error("kms: HSM unavailable", "op", op, "err", err)
		return fmt.Errorf("%w: kms: %s: %v", ErrUnavailable, op, err)
	case errors.Is(err, hsm.ErrKeyNotFound):
		log.Error("kms: token object named by the metadata is missing", "op", op, "err", err)
		return fmt.Errorf("%w: kms: %s: token object missing", ErrInternal, op)
	default:
		log.Error("kms: unexpected HSM failure", "op", op, "err", err)
		return fmt.Errorf("%w: kms: %s: %v", ErrInternal, op, err)
	}
}

func (s *Service) versionLog(k *keyEntry, v *versionEntry) *slog.Logger {
	return s.log.With("key_id", k.meta.KeyID, "version", v.number, "object_id", fmt.Sprintf("%x", v.objectID))
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
	k, err := s.lookupCtx(ctx, id)
	if err != nil {
		return EncryptResult{}, err
	}
	if k == nil {
		return EncryptResult{}, fmt.Errorf("%w: %s", ErrKeyNotFound, in.KeyID)
	}
	if err := s.checkEncryptState(k, "encrypt"); err != nil {
		return EncryptResult{}, err
	}
	blob, v, err := s.seal(ctx, k, in.Plaintext, ec, "encrypt")
	if err != nil {
		return EncryptResult{}, err
	}
	return EncryptResult{KeyID: k.meta.KeyID, KeyVersion: v, CiphertextBlob: blob}, nil
}

// seal encrypts plaintext under the newest version of k (whose state the
// caller checked) and returns the base64 envelope and the version used. It
// counts the encryption against the version (see usage) and, when the
// version reached the usage limit, makes a new version first. It never
// writes the store except for one usage reservation per batch.
// sealScratch holds seal's scratch buffers (AAD, then envelope; no secret
// is ever in them: the envelope is ciphertext).
var sealScratch = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func putSealScratch(p *[]byte, b []byte) {
	if cap(b) <= 2*MaxEnvelopeBytes {
		*p = b[:0]
		sealScratch.Put(p)
	}
}

func (s *Service) seal(ctx context.Context, k *keyEntry, plaintext []byte, ec EncryptionContext, op string) (string, uint32, error) {
	if err := s.checkFresh(); err != nil {
		return "", 0, err
	}
	for attempt := 0; ; attempt++ {
		v := k.current()
		var exhausted bool
		if s.cluster != nil {
			ok, err := s.takeShared(ctx, k, v)
			if err != nil {
				return "", 0, err
			}
			exhausted = !ok
		} else if n := v.usage.used.Add(1); n > s.usageLimit {
			exhausted = true
		} else if n > v.usage.reserved.Load() {
			if err := s.reserveUsage(ctx, k, v, n); err != nil {
				return "", 0, err
			}
		}
		if exhausted {
			if attempt >= 2 {
				return "", 0, fmt.Errorf("%w: key %s: rotated versions were exhausted concurrently", ErrUsageLimit, k.meta.KeyID)
			}
			nk, err := s.rotateForUsage(ctx, k, v.number)
			if err != nil {
				return "", 0, err
			}
			k = nk
			continue
		}

		// One scratch buffer holds the AAD, then the envelope: neither
		// outlives this call (the HSM keeps no reference to its inputs and
		// the envelope is copied into the base64 string).
		sp := sealScratch.Get().(*[]byte)
		aad := append((*sp)[:0], v.header[:]...)
		aad = ec.AppendCanonical(aad)
		iv, sealed, err := s.hsm.Seal(ctx, v.objectID, plaintext, aad)
		if err != nil {
			putSealScratch(sp, aad)
			return "", 0, s.hsmErr(s.versionLog(k, v), op, err)
		}
		if len(iv) != hsm.IVBytes || len(sealed) != len(plaintext)+hsm.TagBytes {
			putSealScratch(sp, aad)
			s.versionLog(k, v).Error("kms: HSM returned a malformed seal", "iv_len", len(iv), "sealed_len", len(sealed))
			return "", 0, fmt.Errorf("%w: kms: %s: malformed HSM output", ErrInternal, op)
		}
		buf := append(aad[:0], v.header[:]...)
		buf = append(buf, byte(len(iv)))
		buf = append(buf, iv...)
		buf = append(buf, sealed...)
		blob := encodeBlob(buf)
		putSealScratch(sp, buf)
		return blob, v.number, nil
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
