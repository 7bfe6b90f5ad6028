package kms

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// Per-version usage accounting.
//
// Every encryption under a key version (Encrypt, GenerateDataKey,
// ReEncrypt) takes a number from the version's in-memory counter (used).
// Before the encryption runs, that number must be covered by the version's
// durable reservation (reserved, mirrored in store.Version.UsageReserved):
// when it is not, one goroutine raises the reservation in the store by a
// batch (Config.UsageBatch) while the others wait. So the store is written
// once per batch, not per request, and after a crash the counter restarts
// at the durable reservation: it may over-count by up to a batch, never
// under-count. Failed encryptions count too (over-counting is safe).
//
// When the number exceeds Config.VersionUsageLimit the version is not used:
// a new version is made (rotateForUsage) and the encryption moves to it. If
// no version can be made, the encryption is refused with ErrUsageLimit.

// usage is the counter of one key version. It is shared by every cache
// entry of the key.
type usage struct {
	used     atomic.Uint64 // numbers handed out, including reserved-at-load
	reserved atomic.Uint64 // durable reservation, as far as this process knows
	mu       sync.Mutex    // held while raising the reservation
	// On a shared store (cluster.go) the node owns the numbers
	// next+1..end of a block claimed with ClaimUsage; guarded by mu.
	next, end uint64
}

func newUsage(reserved uint64) *usage {
	u := &usage{}
	u.used.Store(reserved)
	u.reserved.Store(reserved)
	return u
}

// count reports the encryptions counted under the version: exact while the
// process runs, an upper bound after a restart.
func (u *usage) count() uint64 { return u.used.Load() }

// reserveUsage makes the reservation of v cover n (n <= usageLimit).
func (s *Service) reserveUsage(ctx context.Context, k *keyEntry, v *versionEntry, n uint64) error {
	v.usage.mu.Lock()
	defer v.usage.mu.Unlock()
	if n <= v.usage.reserved.Load() {
		return nil
	}
	upTo := min(s.usageLimit, n-1+s.usageBatch)
	if err := s.store.ReserveUsage(ctx, k.meta.KeyID, v.number, upTo); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("kms: reserve usage: %w", ctx.Err())
		}
		s.versionLog(k, v).Error("kms: usage reservation failed", "err", err)
		return storeErr("reserve usage", err)
	}
	v.usage.reserved.Store(upTo)
	return nil
}

// rotateForUsage makes a new version of k because version full reached the
// usage limit, unless another caller did already, and returns the key's
// current entry. Errors wrap ErrUsageLimit (and the cause), or are the
// key's state error if it changed meanwhile.
func (s *Service) rotateForUsage(ctx context.Context, k *keyEntry, full uint32) (*keyEntry, error) {
	cur, release, err := s.lockForMaintenance(ctx, k.meta.KeyID)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := s.checkEncryptState(cur, "encrypt"); err != nil {
		return nil, err
	}
	if cur.current().number != full {
		return cur, nil
	}
	s.log.Info("kms: key version reached its usage limit; making a new version",
		"key_id", k.meta.KeyID, "version", full, "limit", s.usageLimit)
	nk, err := s.rotateLocked(ctx, cur, "usage limit")
	if err != nil {
		return nil, fmt.Errorf("%w: key %s: %w", ErrUsageLimit, k.meta.KeyID, err)
	}
	return nk, nil
}

// UsageLimit returns the number of encryptions allowed under one key
// version.
func (s *Service) UsageLimit() uint64 { return s.usageLimit }
