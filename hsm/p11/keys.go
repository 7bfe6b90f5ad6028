package p11

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// keyTemplate is the attribute set of every CMK: a non-extractable,
// sensitive, private AES-256 token object usable only to encrypt and
// decrypt.
func keyTemplate(objectID []byte, label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, hsm.KeyBytes),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, objectID),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// GenerateKey creates the CMK objectID on the token (C_GenerateKey,
// CKM_AES_KEY_GEN): AES-256, CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE,
// not extractable, encrypt/decrypt only, CKA_ID objectID and CKA_LABEL
// LabelPrefix+label. The handle is cached for Seal and Open.
//
// Errors: hsm.ErrInvalidInput if objectID is not 1..64 bytes, label is not
// printable UTF-8 of at most 128 bytes, or a secret key with this CKA_ID
// already exists; hsm.ErrBusy (wrapping ctx.Err()) if no session frees up
// before ctx is done; hsm.ErrUnavailable.
//
// Safe for concurrent use; calls of GenerateKey are serialised within the
// Token (SoftHSM2 misbehaves under parallel key generation, and this makes
// the duplicate check and the generation atomic within the process).
func (t *Token) GenerateKey(ctx context.Context, objectID []byte, label string) error {
	if err := checkObjectID(objectID); err != nil {
		return err
	}
	if len(label) > maxLabel || !printable(label) {
		return fmt.Errorf("%w: key label must be printable UTF-8 of at most %d bytes", hsm.ErrInvalidInput, maxLabel)
	}
	if err := t.enter(); err != nil {
		return err
	}
	defer t.mu.RUnlock()
	select {
	case t.genMu <- struct{}{}:
		defer func() { <-t.genMu }()
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", hsm.ErrBusy, ctx.Err())
	}
	return t.do(ctx, func(s pkcs11.SessionHandle) error {
		hs, err := t.find(s, objectID, 1)
		if err != nil {
			return err
		}
		if len(hs) > 0 {
			return fmt.Errorf("%w: a secret key with object id %x already exists", hsm.ErrInvalidInput, objectID)
		}
		h, err := t.mod.GenerateKey(s,
			[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
			keyTemplate(objectID, t.cfg.LabelPrefix+label))
		if err != nil {
			return classify("C_GenerateKey", err)
		}
		t.cache(objectID, h)
		return nil
	})
}

// find returns up to max handles of secret keys whose CKA_ID is objectID.
func (t *Token) find(s pkcs11.SessionHandle, objectID []byte, max int) ([]pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, objectID),
	}
	if err := t.mod.FindObjectsInit(s, tmpl); err != nil {
		return nil, classify("C_FindObjectsInit", err)
	}
	hs, _, err := t.mod.FindObjects(s, max)
	// Always end the search: an active find would block the next one on
	// this session (CKR_OPERATION_ACTIVE).
	ferr := t.mod.FindObjectsFinal(s)
	if err != nil {
		return nil, classify("C_FindObjects", err)
	}
	if ferr != nil {
		return nil, classify("C_FindObjectsFinal", ferr)
	}
	return hs, nil
}

// resolve returns the handle of objectID, from the cache or from the token.
// cached reports whether it came from the cache (and may be stale).
func (t *Token) resolve(s pkcs11.SessionHandle, objectID []byte) (h pkcs11.ObjectHandle, cached bool, err error) {
	t.hmu.RLock()
	h, ok := t.handles[string(objectID)]
	t.hmu.RUnlock()
	if ok {
		return h, true, nil
	}
	hs, err := t.find(s, objectID, 2)
	if err != nil {
		return 0, false, err
	}
	switch len(hs) {
	case 0:
		return 0, false, fmt.Errorf("%w: no secret key with object id %x", hsm.ErrKeyNotFound, objectID)
	case 1:
		t.cache(objectID, hs[0])
		return hs[0], false, nil
	default:
		return 0, false, errf(hsm.ErrUnavailable, "C_FindObjects", "ambiguous: more than one secret key has object id %x", objectID)
	}
}

func (t *Token) cache(objectID []byte, h pkcs11.ObjectHandle) {
	t.hmu.Lock()
	t.handles[string(objectID)] = h
	t.hmu.Unlock()
}

func (t *Token) uncache(objectID []byte) {
	t.hmu.Lock()
	delete(t.handles, string(objectID))
	t.hmu.Unlock()
}

// withKey runs op with a session and the handle of objectID. If op reports
// an invalid handle (hsm.ErrKeyNotFound from the module), the cached handle
// is dropped and, if it came from the cache, looked up once more: the object
// may have been re-created (other process, re-initialised module).
func (t *Token) withKey(ctx context.Context, objectID []byte, op func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error) error {
	return t.do(ctx, func(s pkcs11.SessionHandle) error {
		for attempt := 0; ; attempt++ {
			h, cached, err := t.resolve(s, objectID)
			if err != nil {
				return err
			}
			err = op(s, h)
			if rv := rvOf(err); rv != pkcs11.CKR_KEY_HANDLE_INVALID && rv != pkcs11.CKR_OBJECT_HANDLE_INVALID {
				return err
			}
			t.uncache(objectID)
			if !cached || attempt > 0 {
				return err
			}
		}
	})
}

// DestroyKey destroys the secret key objectID (C_DestroyObject) and drops
// its cached handle. The lookup always asks the token, not the cache.
//
// Errors: hsm.ErrInvalidInput if objectID is not 1..64 bytes;
// hsm.ErrKeyNotFound if no secret key has this CKA_ID; hsm.ErrUnavailable
// (also when several objects share the id); hsm.ErrBusy (wrapping
// ctx.Err()) if no session frees up before ctx is done. Safe for
// concurrent use.
func (t *Token) DestroyKey(ctx context.Context, objectID []byte) error {
	if err := checkObjectID(objectID); err != nil {
		return err
	}
	if err := t.enter(); err != nil {
		return err
	}
	defer t.mu.RUnlock()
	t.uncache(objectID)
	return t.do(ctx, func(s pkcs11.SessionHandle) error {
		defer t.uncache(objectID)
		h, _, err := t.resolve(s, objectID)
		if err != nil {
			return err
		}
		return classify("C_DestroyObject", t.mod.DestroyObject(s, h))
	})
}

// KeyIDs returns the CKA_ID of every secret key on the token whose
// CKA_LABEL starts with the configured LabelPrefix, sorted bytewise.
// Objects destroyed while the listing runs are skipped.
//
// Errors: hsm.ErrBusy (wrapping ctx.Err()) if no session frees up before
// ctx is done; hsm.ErrUnavailable (also if ctx ends during the listing).
// Safe for concurrent use; it holds one session for the whole listing.
func (t *Token) KeyIDs(ctx context.Context) ([][]byte, error) {
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.mu.RUnlock()
	var ids [][]byte
	err := t.do(ctx, func(s pkcs11.SessionHandle) error {
		ids = nil
		tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)}
		if err := t.mod.FindObjectsInit(s, tmpl); err != nil {
			return classify("C_FindObjectsInit", err)
		}
		var all []pkcs11.ObjectHandle
		var ferr error
		for {
			hs, _, err := t.mod.FindObjects(s, 128)
			if err != nil {
				ferr = classify("C_FindObjects", err)
				break
			}
			if len(hs) == 0 {
				break
			}
			all = append(all, hs...)
		}
		if err := t.mod.FindObjectsFinal(s); err != nil && ferr == nil {
			ferr = classify("C_FindObjectsFinal", err)
		}
		if ferr != nil {
			return ferr
		}
		for _, h := range all {
			if err := ctxErr(ctx); err != nil {
				return err
			}
			attrs, err := t.mod.GetAttributeValue(s, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
			})
			if err != nil {
				if rvOf(classify("", err)) == pkcs11.CKR_OBJECT_HANDLE_INVALID {
					continue // destroyed meanwhile
				}
				return classify("C_GetAttributeValue", err)
			}
			var id, label []byte
			for _, a := range attrs {
				switch a.Type {
				case pkcs11.CKA_ID:
					id = a.Value
				case pkcs11.CKA_LABEL:
					label = a.Value
				}
			}
			if len(id) > 0 && strings.HasPrefix(string(label), t.cfg.LabelPrefix) {
				ids = append(ids, id)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ids, bytes.Compare)
	return ids, nil
}
