package p11

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// Keys with a fixed object id.
//
// Some keys have a well-known CKA_ID instead of a random one (the
// credentials key, EnsureKey; the metadata MAC key, EnsureMACKey): every
// node and every restart finds them by that id. Two hazards:
//
//   - C_GenerateKey with a CKA_ID that already exists replaces the existing
//     key's material on NSS softoken (SoftHSM2 makes a second object).
//     Whatever was sealed under the old key would be lost. So the id is
//     always looked up on the token first, never only in a prefix-filtered
//     listing or a cache.
//   - Two nodes (or processes) starting at once both miss the key and
//     both create it. PKCS#11 has no atomic "create if absent".
//
// ensureFixed therefore never generates under the fixed id: it generates
// under a fresh random claim id (which cannot collide) with a label
// outside the service's prefix (so no listing shows it), then claims the
// fixed id with C_SetAttributeValue (which makes a second object on both
// modules, never a replacement) and looks again: a creator keeps its key
// only if it is then the one object with the id. Of two creators that
// claimed at once, the second to look sees two and destroys its own; if
// both see two, both destroy theirs and retry after a random pause. At
// most one creator ever keeps a key, and nobody uses a key before keeping
// it. Within one process the calls are serialised (genMu). On a module
// that refuses to change CKA_ID, the key is generated under the fixed id
// right after it was seen absent (serialised within the process only). A
// creator that
// dies between generating and claiming leaves a key labelled
// "hsmkms-claim:<hex>" that nothing uses or lists; it may be destroyed.

const (
	fixedAttempts   = 8
	claimLabelStart = "hsmkms-claim:" // never under a LabelPrefix a listing uses
)

// fixedGen generates a CKA_MODIFIABLE key with CKA_ID claimID and
// CKA_LABEL claimLabel on session s (ensureFixed then renames it). A key
// type with a fixed id (mac.go) passes its own.
type fixedGen func(s pkcs11.SessionHandle, claimID []byte, claimLabel string) (pkcs11.ObjectHandle, error)

// ensureFixed returns once exactly one secret key with CKA_ID objectID is
// on the token (created reports whether this call made it, labelled
// LabelPrefix+label), and caches its handle. The caller holds enter.
func (t *Token) ensureFixed(ctx context.Context, objectID []byte, label string, gen fixedGen) (created bool, err error) {
	select {
	case t.genMu <- struct{}{}:
		defer func() { <-t.genMu }()
	case <-ctx.Done():
		return false, fmt.Errorf("%w: %w", hsm.ErrBusy, ctx.Err())
	}
	for attempt := 1; ; attempt++ {
		var again bool
		var transient error
		err = t.do(ctx, func(s pkcs11.SessionHandle) error {
			var err error
			created, again, transient, err = t.ensureFixedOnce(s, objectID, t.cfg.LabelPrefix+label, gen)
			return err
		})
		if err != nil || !again {
			return created, err
		}
		if attempt == fixedAttempts {
			if transient != nil {
				return false, transient
			}
			return false, errf(hsm.ErrUnavailable, "C_SetAttributeValue", "key with fixed object id %x: more than one secret key has the id, or other creators kept racing for it (%d attempts)", objectID, attempt)
		}
		// Racing creators: pause a random while before looking again.
		select {
		case <-time.After(time.Duration(1+mrand.IntN(20*attempt)) * time.Millisecond):
		case <-ctx.Done():
			return false, fmt.Errorf("%w: %w", hsm.ErrBusy, ctx.Err())
		}
	}
}

// ensureFixedOnce is one round of ensureFixed on session s. again reports
// a lost race: nothing is kept and the caller tries again; transient is
// then the generation's failure, if that is what was lost (reported if the
// last attempt fails the same way).
func (t *Token) ensureFixedOnce(s pkcs11.SessionHandle, objectID []byte, label string, gen fixedGen) (created, again bool, transient, err error) {
	// exists: one key has the id (cached); more than one is either two
	// creators in the middle of a round or a real duplicate: look again
	// later, and after fixedAttempts report it.
	exists := func() (ok, again bool, err error) {
		hs, err := t.findSettled(s, objectID)
		switch {
		case err != nil:
			return false, false, err
		case len(hs) > 1:
			return false, true, nil
		case len(hs) == 1:
			t.cache(objectID, hs[0])
			return true, false, nil
		}
		return false, false, nil
	}
	if ok, again, err := exists(); ok || again || err != nil {
		return false, again, nil, err
	}
	claim := make([]byte, randomIDLen)
	if _, err := rand.Read(claim); err != nil {
		return false, false, nil, fmt.Errorf("%w: crypto/rand: %w", hsm.ErrUnavailable, err)
	}
	h, err := gen(s, claim, claimLabelStart+hex.EncodeToString(claim))
	if rv := rvOf(err); rv == pkcs11.CKR_GENERAL_ERROR || rv == pkcs11.CKR_TEMPLATE_INCONSISTENT {
		// SoftHSM2 fails key generations running in parallel (in several
		// processes, or several sessions of one) now and then, with
		// either code (its issue #573; the second when the new object's
		// attributes fail to save): try again, and report it if every
		// attempt fails so.
		return false, true, err, nil
	}
	if err != nil {
		return false, false, nil, err
	}
	destroy := func() { _ = t.mod.DestroyObject(s, h) }
	// Someone may have finished meanwhile.
	if ok, again, err := exists(); ok || again || err != nil {
		destroy()
		return false, again, nil, err
	}
	if err := t.mod.SetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ID, objectID),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}); err != nil {
		destroy()
		e := classify("C_SetAttributeValue", err)
		if rv := rvOf(e); !templateRefused(e) && rv != pkcs11.CKR_ACTION_PROHIBITED {
			return false, false, nil, e
		}
		// The module does not rename keys: generate under the fixed id,
		// which was just seen absent (no race protection across
		// processes on such a module, only within this one).
		if ok, again, err := exists(); ok || again || err != nil {
			return false, again, nil, err
		}
		h, err := gen(s, objectID, label)
		if err != nil {
			return false, false, nil, err
		}
		t.cache(objectID, h)
		return true, false, nil, nil
	}
	hs, err := t.find(s, objectID, 2)
	if err != nil {
		destroy()
		return false, false, nil, err
	}
	if len(hs) == 1 && hs[0] == h {
		t.cache(objectID, h)
		return true, false, nil, nil
	}
	// Another creator claimed the id too: give ours up.
	destroy()
	t.uncache(objectID)
	return false, true, nil, nil
}
