package kms

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"hsmkms/store"
)

// Several nodes on one shared store.
//
// When the Store also implements SharedStore (store.Postgres does), the
// Service assumes other kmsd nodes use the same store and the same token,
// and keeps its in-memory caches consistent with theirs:
//
//   - Cache invalidation. RunSync watches the store's change notifications
//     (PostgreSQL LISTEN/NOTIFY, sent when a change commits) and re-reads
//     each key or credential named, typically within milliseconds. After a
//     reconnection (notifications sent meanwhile are lost) and every
//     Config.ResyncInterval (the TTL fallback) it re-reads everything.
//     Bound: a change committed by any node is enforced by every node
//     within 1 s while its watch connection is up.
//   - Read-through. A key or credential unknown to the cache, or a key
//     version unknown to it (a rotation on another node), is read from the
//     store at once, so a key created or rotated on one node is usable on
//     every node immediately.
//   - Cross-node writes. Every change to a key takes the store's lock on
//     that key and re-reads the key first (see lockFresh), so changes made
//     on different nodes never overwrite each other and a rotation never
//     reuses a version number.
//   - Usage. Encryptions are counted in blocks claimed atomically in the
//     store (ClaimUsage): blocks of different nodes never overlap, so the
//     sum over all nodes never exceeds Config.VersionUsageLimit.
//   - Background jobs. RunMaintenance runs a pass only while this node
//     holds the store's maintenance lock: exactly one node at a time; when
//     it dies its session ends and another node takes over at its next
//     pass.
//   - Outages. While the node cannot confirm its cache is current (the
//     watch is down), Encrypt, Decrypt, GenerateDataKey and ReEncrypt keep
//     serving from the cache for Config.StaleAfter (default 60 s), then
//     fail with ErrUnavailable; management actions fail at once with
//     ErrUnavailable (they need the store). An encryption also needs a
//     usage block: a node that used up its block during an outage refuses
//     encryptions under that version until the store is back.

// SharedStore is a Store that several nodes share. *store.Postgres
// implements it.
type SharedStore interface {
	Store
	// Watch delivers committed changes until ctx is done (see
	// store.Postgres.Watch).
	Watch(ctx context.Context, aliveEvery time.Duration, changed func(store.Change)) error
	// LockKey takes the cluster-wide lock of a key.
	LockKey(ctx context.Context, keyID string) (unlock func(), err error)
	// ClaimUsage claims the next block of at most n encryptions of a
	// version, never past limit: numbers from+1..end.
	ClaimUsage(ctx context.Context, keyID string, version uint32, n, limit uint64) (from, end uint64, err error)
	// TryMaintenanceLock reports whether this node runs the background jobs.
	TryMaintenanceLock(ctx context.Context) (bool, error)
	// GetCredential reads one credential; store.ErrNotFound.
	GetCredential(ctx context.Context, secretID string) (store.Credential, error)
}

// Defaults of the cluster settings.
const (
	DefaultStaleAfter     = 60 * time.Second
	DefaultResyncInterval = 10 * time.Second
	// syncAliveEvery is how often the watch connection is checked.
	syncAliveEvery = 250 * time.Millisecond
)

// clusterState is the Service's state for a shared store.
type clusterState struct {
	store      SharedStore
	staleAfter time.Duration
	resync     time.Duration
	// synced is the time (UnixNano, Service clock) the cache was last
	// confirmed current.
	synced atomic.Int64
	leader atomic.Bool
}

// checkFresh refuses cryptographic work once the cache has gone
// unconfirmed for longer than StaleAfter.
func (s *Service) checkFresh() error {
	c := s.cluster
	if c == nil {
		return nil
	}
	age := s.now().Sub(time.Unix(0, c.synced.Load()))
	if age > c.staleAfter {
		return fmt.Errorf("%w: the metadata store has been unreachable for %s (limit %s)", ErrUnavailable,
			age.Truncate(time.Second), c.staleAfter)
	}
	return nil
}

// RunSync keeps the caches consistent with the shared store until ctx is
// done (see the comment at the top of cluster.go). It returns at once for
// a store that is not shared. Run it in its own goroutine.
func (s *Service) RunSync(ctx context.Context) {
	c := s.cluster
	if c == nil {
		return
	}
	changes := make(chan store.Change, 1024)
	go func() {
		_ = c.store.Watch(ctx, syncAliveEvery, func(ch store.Change) {
			select {
			case changes <- ch:
			default: // overflow: re-read everything
				select {
				case changes <- store.Change{Kind: store.ChangeAll}:
				default:
				}
			}
		})
	}()
	ticker := time.NewTicker(c.resync)
	defer ticker.Stop()
	needAll := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			needAll = true
		case ch := <-changes:
			switch ch.Kind {
			case store.ChangeKey:
				if err := s.refreshKey(ctx, ch.ID); err != nil {
					needAll = true
				}
			case store.ChangeCredential:
				if err := s.refreshCredential(ctx, ch.ID); err != nil {
					needAll = true
				}
			case store.ChangeAll:
				needAll = true
			case store.ChangeAlive:
				if !needAll {
					c.synced.Store(s.now().UnixNano())
				}
			}
		}
		if needAll && len(changes) == 0 {
			start := s.now()
			if err := s.resyncAll(ctx); err != nil {
				if ctx.Err() == nil {
					s.log.Warn("kms: cache resync failed; retrying", "err", err)
				}
				continue
			}
			needAll = false
			c.synced.Store(start.UnixNano())
		}
	}
}

// resyncAll re-reads every key and credential.
func (s *Service) resyncAll(ctx context.Context) error {
	// Read under writeMu, so a local change cannot slip between the read
	// and the install and be overwritten by an older record.
	s.writeMu.Lock()
	recs, err := s.store.ListKeys(ctx)
	if err != nil {
		s.writeMu.Unlock()
		return err
	}
	for _, r := range recs {
		if err := s.installLocked(ctx, r); err != nil {
			s.log.Error("kms: stored key is not servable", "key_id", r.ID, "err", err)
		}
	}
	s.writeMu.Unlock()
	// A copy: the local changes write s.creds in place (under credMu),
	// and the entries are read below without the lock.
	s.credMu.RLock()
	old, gen := maps.Clone(s.creds), s.credGen
	s.credMu.RUnlock()
	creds, err := s.store.ListCredentials(ctx)
	if err != nil {
		return err
	}
	next := make(map[string]*credEntry, len(creds))
	for _, r := range creds {
		e, err := s.credEntryChecked(ctx, r, old[r.SecretID])
		if err != nil {
			s.log.Error("kms: credential cannot be loaded; it will not authenticate", "secret_id", r.SecretID, "err", err)
			continue
		}
		next[r.SecretID] = e
	}
	s.credMu.Lock()
	defer s.credMu.Unlock()
	if s.credGen != gen {
		// A local change raced the read: its notification follows; read
		// everything again rather than install what may predate it.
		return errors.New("credentials changed during the resync")
	}
	s.creds = next
	for id := range old {
		if next[id] == nil {
			s.clearIntegrity(KindCredential, id) // deleted
		}
	}
	return nil
}

// refreshKey re-reads one key and installs it.
func (s *Service) refreshKey(ctx context.Context, keyID string) error {
	// Read under writeMu, so a local change cannot slip between the read
	// and the install and be overwritten by an older record.
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	r, err := s.store.GetKey(ctx, keyID)
	if errors.Is(err, store.ErrNotFound) {
		return nil // keys are never removed; a failed create notifies nobody
	}
	if err != nil {
		return err
	}
	return s.installLocked(ctx, r)
}

// installLocked makes the cache hold the stored record r, unless it
// already does. writeMu is held.
func (s *Service) installLocked(ctx context.Context, r store.Key) error {
	_, err := s.adopt(ctx, r, false)
	return err
}

// adopt installs the stored record r in the cache (replacing the cached
// entry unless it is identical) and returns the key's entry. With
// newerOnly (callers that do not hold writeMu, so a local change may have
// been published since r was read) it replaces only an entry with fewer
// versions. The decision and the swap are atomic: if the entry changes
// meanwhile, adopt decides again.
//
// The record is verified (integrity.go) before it replaces the entry; one
// that fails is installed quarantined.
func (s *Service) adopt(ctx context.Context, r store.Key, newerOnly bool) (*keyEntry, error) {
	id, ok := parseKeyID(r.ID)
	if !ok {
		return nil, fmt.Errorf("key id %q is not a canonical UUID", r.ID)
	}
	for {
		cur := s.lookup(id)
		if cur != nil && (sameRecord(cur.rec, r) || newerOnly && len(cur.versions) >= len(r.Versions)) {
			raiseReserved(cur, r)
			return cur, nil
		}
		nk, err := s.entryFor(ctx, r, cur)
		if err != nil {
			return nil, err
		}
		raiseReserved(nk, r)
		s.mu.Lock()
		if s.keys[id] != cur {
			s.mu.Unlock()
			continue
		}
		s.swapLocked(nk)
		s.mu.Unlock()
		s.dropStaleCopies(cur, nk)
		if cur != nil && cur.meta.KeyState != nk.meta.KeyState {
			s.log.Info("kms: key changed by another node", "key_id", r.ID, "from", cur.meta.KeyState, "to", nk.meta.KeyState)
		}
		return nk, nil
	}
}

// swapLocked makes nk the cached entry of its key, keeping the alias index
// and the count of live keys right whatever was cached before, and returns
// the previous entry (nil if none). s.mu is held.
func (s *Service) swapLocked(nk *keyEntry) (old *keyEntry) {
	old = s.keys[nk.id]
	s.keys[nk.id] = nk
	if old != nil && old.meta.KeyState != StateDeleted {
		if s.aliases[old.meta.Alias] == nk.id {
			delete(s.aliases, old.meta.Alias)
		}
		s.live--
	}
	if nk.meta.KeyState != StateDeleted {
		s.live++
		if nk.meta.Alias != "" {
			s.aliases[nk.meta.Alias] = nk.id
		}
	}
	return old
}

// raiseReserved records the store's usage reservations (other nodes'
// claims included) as a lower bound of the versions' counts.
func raiseReserved(k *keyEntry, r store.Key) {
	for _, v := range r.Versions {
		if e := k.version(v.Number); e != nil {
			for {
				cur := e.usage.reserved.Load()
				if v.UsageReserved <= cur || e.usage.reserved.CompareAndSwap(cur, v.UsageReserved) {
					break
				}
			}
		}
	}
}

// sameRecord reports whether a and b describe the same metadata and
// versions.
func sameRecord(a, b store.Key) bool {
	if !sameMetadata(a, b) || a.Gen != b.Gen || string(a.MAC) != string(b.MAC) || len(a.Versions) != len(b.Versions) {
		return false
	}
	if a.Usage != b.Usage || string(a.PublicKey) != string(b.PublicKey) { // asym.go: re-verified on a refresh
		return false
	}
	for i := range a.Versions {
		if a.Versions[i].Number != b.Versions[i].Number || string(a.Versions[i].ObjectID) != string(b.Versions[i].ObjectID) ||
			string(a.Versions[i].MAC) != string(b.Versions[i].MAC) {
			return false
		}
	}
	return true
}

// lookupCtx is lookup with read-through on a shared store: a key the cache
// does not hold (made on another node a moment ago) is read from the store.
func (s *Service) lookupCtx(ctx context.Context, id uuid.UUID) (*keyEntry, error) {
	k := s.lookup(id)
	if k != nil || s.cluster == nil {
		return k, nil
	}
	return s.readThrough(ctx, id)
}

// readThrough reads a key from the shared store and installs it; nil if
// the store has no such key.
func (s *Service) readThrough(ctx context.Context, id uuid.UUID) (*keyEntry, error) {
	r, err := s.store.GetKey(ctx, id.String())
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, storeErr("read key", err)
	}
	// Without writeMu a local change may have been published since the
	// read: install r only over an entry with fewer versions (or none).
	return s.adopt(ctx, r, true)
}

// lockFresh returns the entry of key keyID to change, with a release
// function the caller must call. writeMu is held. On a shared store it
// first takes the key's cluster-wide lock and re-reads the key, so the
// change applies to what every node sees.
func (s *Service) lockFresh(ctx context.Context, keyID string) (*keyEntry, func(), error) {
	if s.cluster == nil {
		k, err := s.lookupLive(keyID)
		if err == nil {
			err = checkUsable(k)
		}
		if err != nil {
			return nil, nil, err
		}
		return k, func() {}, nil
	}
	if _, ok := parseKeyID(keyID); !ok {
		return nil, nil, ErrInvalidKeyID
	}
	unlock, err := s.cluster.store.LockKey(ctx, keyID)
	if err != nil {
		return nil, nil, storeErr("lock key", err)
	}
	r, err := s.store.GetKey(ctx, keyID)
	if errors.Is(err, store.ErrNotFound) {
		unlock()
		return nil, nil, fmt.Errorf("%w: %s", ErrKeyNotFound, keyID)
	}
	if err == nil {
		_, err = s.adopt(ctx, r, false)
	}
	if err != nil {
		unlock()
		return nil, nil, storeErr("read key", err)
	}
	k, err := s.lookupLive(keyID)
	if err == nil {
		err = checkUsable(k)
	}
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return k, unlock, nil
}

// lockFreshAll is lockFresh for several keys, locked in a fixed order so
// that nodes changing overlapping batches cannot deadlock.
func (s *Service) lockFreshAll(ctx context.Context, keyIDs []string) (map[string]*keyEntry, func(), error) {
	sorted := slices.Sorted(slices.Values(keyIDs))
	out := make(map[string]*keyEntry, len(sorted))
	var unlocks []func()
	release := func() {
		for i := len(unlocks) - 1; i >= 0; i-- {
			unlocks[i]()
		}
	}
	for _, id := range sorted {
		k, unlock, err := s.lockFresh(ctx, id)
		if err != nil {
			release()
			return nil, nil, err
		}
		unlocks = append(unlocks, unlock)
		out[id] = k
	}
	return out, release, nil
}

// takeShared takes one encryption number of v from this node's block,
// claiming a new block from the shared store when it is used up. It
// reports false when the version is exhausted cluster-wide.
func (s *Service) takeShared(ctx context.Context, k *keyEntry, v *versionEntry) (bool, error) {
	u := v.usage
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.next < u.end {
		u.next++
		u.used.Add(1)
		return true, nil
	}
	from, end, err := s.cluster.store.ClaimUsage(ctx, k.meta.KeyID, v.number, s.usageBatch, s.usageLimit)
	if err != nil {
		if ctx.Err() != nil {
			return false, fmt.Errorf("kms: reserve usage: %w", ctx.Err())
		}
		s.versionLog(k, v).Error("kms: usage reservation failed", "err", err)
		return false, storeErr("reserve usage", err)
	}
	for {
		cur := u.reserved.Load()
		if end <= cur || u.reserved.CompareAndSwap(cur, end) {
			break
		}
	}
	if from >= end {
		return false, nil
	}
	u.next, u.end = from+1, end
	u.used.Add(1)
	return true, nil
}

// maintenanceTurn reports whether this node runs the background jobs now:
// always on an unshared store, else while it holds the maintenance lock.
func (s *Service) maintenanceTurn(ctx context.Context) bool {
	c := s.cluster
	if c == nil {
		return true
	}
	ok, err := c.store.TryMaintenanceLock(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("kms: maintenance: cannot reach the store to take the maintenance lock", "err", err)
		}
		ok = false
	}
	if was := c.leader.Swap(ok); was != ok {
		if ok {
			s.log.Info("kms: maintenance: this node now runs the background jobs (purge, automatic rotation)")
		} else {
			s.log.Info("kms: maintenance: this node no longer runs the background jobs")
		}
	}
	if ok {
		if p, is := c.store.(interface {
			PurgeNonces(context.Context, time.Time) error
		}); is {
			if err := p.PurgeNonces(ctx, s.now()); err != nil && ctx.Err() == nil {
				s.log.Warn("kms: maintenance: purging expired nonces failed", "err", err)
			}
		}
	}
	return ok
}

// IsMaintenanceLeader reports whether this node ran the last background
// pass (always true on an unshared store once a pass ran).
func (s *Service) IsMaintenanceLeader() bool {
	return s.cluster == nil || s.cluster.leader.Load()
}

// Store returns the metadata store the Service runs on.
func (s *Service) Store() Store { return s.store }
