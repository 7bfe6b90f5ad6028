package kms

import (
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"hsmkms/store"
)

// The key cache: every key's metadata in memory, as immutable entries
// published in Service.keys.

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

		ValidTo: r.MaterialValidTo,
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

// lookup returns the cached key, or nil.
func (s *Service) lookup(id uuid.UUID) *keyEntry {
	s.mu.RLock()
	k := s.keys[id]
	s.mu.RUnlock()
	return k
}

// publish adds a committed key to the cache and releases its reservation.
func (s *Service) publish(k *keyEntry) {
	s.mu.Lock()
	delete(s.reserved, k.meta.Alias)
	s.swapLocked(k) // on a shared store the sync may have installed it already
	s.mu.Unlock()
}
