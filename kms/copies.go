package kms

import (
	"context"
	"time"
)

// copyDropper is the optional part of an HSM that keeps per-session working
// copies of CMKs (hsm/p11 does, as session objects): DropWorkingCopies
// destroys every copy of one token object, in every session, so that a key
// that stopped being usable leaves no copy in the token's session memory.
// The next use, if any, makes a fresh copy from the token object.
type copyDropper interface {
	DropWorkingCopies(ctx context.Context, objectID []byte) error
}

// dropTimeout bounds dropping the copies of one key after a change. It is
// short because the caller may hold writeMu (a saturated or hung HSM must
// not stall management actions) and a drop that does not happen is
// harmless: the key's state refuses it, and its copies die with their
// sessions or at their next check (hsm/p11 Config.CopyCheckInterval).
const dropTimeout = 2 * time.Second

// dropStaleCopies drops the working copies that the change from old to nk
// leaves without a use: every version's when the key stops serving any
// operation (Disabled, PendingDelete, Deleted), and the previous current
// version's when a rotation added a version (it now only decrypts, which
// makes a copy again on demand). It is called after nk is published, for
// local changes and for changes made by other nodes alike. Failures are
// logged and otherwise ignored: the state in the cache, not the absence of
// copies, is what refuses the key; a copy left behind dies with its
// session.
func (s *Service) dropStaleCopies(old, nk *keyEntry) {
	d, ok := s.hsm.(copyDropper)
	if !ok || old == nil || nk == nil {
		return
	}
	var objs [][]byte
	switch {
	case unusable(nk.meta.KeyState) && !unusable(old.meta.KeyState):
		for i := range old.versions {
			objs = append(objs, old.versions[i].objectID)
		}
	case len(nk.versions) > len(old.versions):
		objs = append(objs, old.current().objectID)
	}
	if len(objs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), dropTimeout)
	defer cancel()
	for _, o := range objs {
		if err := d.DropWorkingCopies(ctx, o); err != nil {
			s.log.Warn("kms: dropping working copies failed", "key_id", nk.meta.KeyID, "err", err)
			return
		}
	}
}

// unusable reports whether a key in state st serves neither Encrypt nor
// Decrypt.
func unusable(st string) bool {
	return st == StateDisabled || st == StatePendingDelete || st == StateDeleted
}
