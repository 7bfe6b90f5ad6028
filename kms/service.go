package kms

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"

	"hsmkms/hsm"
	"hsmkms/store"
)

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
	credGen uint64                // bumped by every change of creds outside a resync; guarded by credMu

	cluster *clusterState // nil unless the store is a SharedStore (cluster.go)

	integ integrity // rows failing their integrity check (integrity.go)

	region string // Config.Region (status.go)
}

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
		region:     cfg.Region,
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

// storeErr classifies a store failure: an unreachable store is
// ErrUnavailable (the client may retry), anything else ErrInternal. The
// cause is wrapped too.
func storeErr(op string, err error) error {
	if errors.Is(err, store.ErrUnavailable) {
		return fmt.Errorf("%w: %s: store: %w", ErrUnavailable, op, err)
	}
	return fmt.Errorf("%w: %s: store: %w", ErrInternal, op, err)
}

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
