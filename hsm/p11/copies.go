package p11

import (
	"context"
	"errors"
	"time"

	"github.com/miekg/pkcs11"
)

// Working copies.
//
// On SoftHSM2 (file object store) every C_EncryptInit/C_DecryptInit on a
// token object re-reads the object's file to see changes by other
// processes; on a session object it does not (≈6 µs instead of ≈11 µs).
// So each session keeps, per CMK it has used, a copy made with
// C_CopyObject and CKA_TOKEN=false: a session object that lives inside the
// token like the original, is private, stays CKA_SENSITIVE and not
// CKA_EXTRACTABLE (inherited), and disappears with its session.
//
// Copies are dropped (and destroyed) when the key is destroyed through
// DestroyKey or DropWorkingCopies, when their session is replaced or
// closed, and when the token object they copy turns out to be gone. A
// generation per object id makes a copy made concurrently with a drop
// harmless: it is destroyed instead of cached. A CMK destroyed behind the
// service's back (another process) is noticed when a copy's token object is
// checked again, at most Config.CopyCheckInterval after its last check.
//
// If the module refuses C_CopyObject, the Token stops trying and uses the
// token objects; if it refuses to copy one object (SoftHSM2 copies no
// object that is not CKA_MODIFIABLE), that object is used directly in that
// session from then on. A copy that could wrap or unwrap, or that is not a
// sensitive, non-extractable session object, is destroyed at once and the
// token object used instead (copyIsSafe).

type workCopy struct {
	h       pkcs11.ObjectHandle // the session object
	tokenH  pkcs11.ObjectHandle // the token object it copies
	checked time.Time           // when tokenH was last known to exist
	// self: this key cannot be copied (the module refused, or the copy
	// was unsafe); h is tokenH, used directly, never destroyed.
	self bool
}

// copyTemplate makes the copy of objectID a session object. It inherits
// CKA_SENSITIVE=true and CKA_EXTRACTABLE=false (SoftHSM2 refuses even to
// restate them in a copy template: CKR_ATTRIBUTE_READ_ONLY; the tests check
// the copy's attributes). The copy's
// CKA_ID is longer than any object id (so a lookup by object id never finds
// a copy) and its label is empty (so KeyIDs never lists one).
func copyTemplate(objectID []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, copyID(objectID)),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, ""),
	}
}

// copyID is the CKA_ID of a working copy: 0xFF, the object id's length,
// the object id, zero padding; always maxObjectID+2 bytes.
func copyID(objectID []byte) []byte {
	id := make([]byte, maxObjectID+2)
	id[0] = 0xFF
	id[1] = byte(len(objectID))
	copy(id[2:], objectID)
	return id
}

// workingCopy returns the handle session s should use for the token object
// tokenH of objectID: its working copy, made on first use, or tokenH itself
// when copies are off or cannot be made. It returns tokenH, false if the
// token object is known to be gone (the caller's operation then fails with
// an invalid handle and re-resolves).
func (t *Token) workingCopy(s pkcs11.SessionHandle, objectID []byte, tokenH pkcs11.ObjectHandle) pkcs11.ObjectHandle {
	if t.noCopies.Load() {
		return tokenH
	}
	// Map lookups with string(objectID) in the index expression do not
	// allocate; a string variable would.
	t.cmu.Lock()
	e, ok := t.copies[s][string(objectID)]
	gen := t.cgen[string(objectID)]
	t.cmu.Unlock()
	if ok && e.tokenH == tokenH {
		if t.copyMaxAge > 0 && t.now().Sub(e.checked) < t.copyMaxAge {
			return e.h
		}
		// Is the original still there? One attribute read of it.
		if _, err := t.mod.GetAttributeValue(s, tokenH, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)}); err != nil {
			t.dropCopies(s, objectID)
			return tokenH
		}
		e.checked = t.now()
		t.cmu.Lock()
		if t.cgen[string(objectID)] == gen {
			if m := t.copies[s]; m != nil {
				if _, still := m[string(objectID)]; still {
					m[string(objectID)] = e
				}
			}
		}
		t.cmu.Unlock()
		return e.h
	}
	if ok {
		// A copy of an object that was re-created meanwhile.
		t.dropCopies(s, objectID)
		t.cmu.Lock()
		gen = t.cgen[string(objectID)]
		t.cmu.Unlock()
	}
	h, err := t.mod.CopyObject(s, tokenH, copyTemplate(objectID))
	self := false
	if err != nil {
		var rv pkcs11.Error
		if errors.As(err, &rv) {
			switch uint(rv) {
			case pkcs11.CKR_FUNCTION_NOT_SUPPORTED, pkcs11.CKR_TEMPLATE_INCONSISTENT, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID:
				t.noCopies.Store(true) // this module will never copy
				return tokenH
			case pkcs11.CKR_ACTION_PROHIBITED, pkcs11.CKR_ATTRIBUTE_READ_ONLY:
				// This object cannot be copied (SoftHSM2: it is not
				// CKA_MODIFIABLE); others may be.
				self = true
			}
		}
		if !self {
			return tokenH // perhaps transient: try again next time
		}
		h = tokenH
	} else if !t.copyIsSafe(s, h) {
		// The token object can wrap or unwrap, or the copy came out
		// exportable: never hold such a copy; use the token object.
		_ = t.mod.DestroyObject(s, h)
		h, self = tokenH, true
	}
	t.cmu.Lock()
	if t.cgen[string(objectID)] != gen {
		// Dropped while we copied: do not resurrect it.
		t.cmu.Unlock()
		if !self {
			_ = t.mod.DestroyObject(s, h)
		}
		return tokenH
	}
	m := t.copies[s]
	if m == nil {
		m = make(map[string]workCopy)
		t.copies[s] = m
	}
	m[string(objectID)] = workCopy{h: h, tokenH: tokenH, checked: t.now(), self: self}
	t.cmu.Unlock()
	return h
}

// copyIsSafe reads the attributes of a fresh copy h (one
// C_GetAttributeValue) and reports whether it is a session object that is
// sensitive, not extractable, and cannot wrap or unwrap. A copy inherits
// the token object's attributes; a CMK made by another tool (or a module
// whose copy template handling differs) could otherwise give the service a
// session object able to export keys. The copy template cannot say
// CKA_WRAP=false itself: SoftHSM2 refuses that (CKR_ATTRIBUTE_READ_ONLY).
func (t *Token) copyIsSafe(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) bool {
	attrs, err := t.mod.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, nil),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, nil),
	})
	if err != nil || len(attrs) != 5 {
		return false
	}
	want := []byte{0, 1, 0, 0, 0} // token, sensitive, extractable, wrap, unwrap
	for i, a := range attrs {
		if len(a.Value) != 1 || (a.Value[0] != 0) != (want[i] != 0) {
			return false
		}
	}
	return true
}

// dropCopies forgets every working copy of objectID, in every session, and
// destroys them through session s. A copy being made concurrently is
// destroyed by its maker.
func (t *Token) dropCopies(s pkcs11.SessionHandle, objectID []byte) {
	key := string(objectID)
	var doomed []pkcs11.ObjectHandle
	t.cmu.Lock()
	t.cgen[key]++
	for _, m := range t.copies {
		if e, ok := m[key]; ok {
			if !e.self {
				doomed = append(doomed, e.h)
			}
			delete(m, key)
		}
	}
	t.cmu.Unlock()
	for _, h := range doomed {
		// Session objects are visible to every session of the
		// application; failure means it is gone already.
		_ = t.mod.DestroyObject(s, h)
	}
}

// forgetSession forgets the copies of a session that is being closed or
// replaced (closing a session destroys its session objects).
// forgetAllCopies forgets every working copy (their sessions are gone).
func (t *Token) forgetAllCopies() {
	t.cmu.Lock()
	t.copies = make(map[pkcs11.SessionHandle]map[string]workCopy)
	t.cmu.Unlock()
}

func (t *Token) forgetSession(s pkcs11.SessionHandle) {
	t.cmu.Lock()
	delete(t.copies, s)
	t.cmu.Unlock()
}

// DropWorkingCopies destroys every working copy of the CMK objectID, in
// every session; the next use makes a fresh one from the token object. Call
// it when a key stops being usable for a while (disabled, rotated out) so
// no copy of it lingers in the token's session memory. It waits for a
// session like any call.
//
// Errors: hsm.ErrInvalidInput if objectID is not 1..64 bytes; hsm.ErrBusy
// (wrapping ctx.Err()) if no session frees up before ctx is done;
// hsm.ErrUnavailable.
func (t *Token) DropWorkingCopies(ctx context.Context, objectID []byte) error {
	if err := checkObjectID(objectID); err != nil {
		return err
	}
	if err := t.enter(); err != nil {
		return err
	}
	defer t.mu.RUnlock()
	return t.do(ctx, func(s pkcs11.SessionHandle) error {
		t.dropCopies(s, objectID)
		return nil
	})
}

// workingCopies reports how many copies of objectID exist, for tests.
func (t *Token) workingCopies(objectID []byte) []pkcs11.ObjectHandle {
	t.cmu.Lock()
	defer t.cmu.Unlock()
	var hs []pkcs11.ObjectHandle
	for _, m := range t.copies {
		if e, ok := m[string(objectID)]; ok && !e.self {
			hs = append(hs, e.h)
		}
	}
	return hs
}
