package p11

import (
	"context"
	"crypto/subtle"
	"fmt"
	"slices"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// macKeyBytes is the length of a metadata MAC key (HMAC-SHA-256 wants at
// least the hash's output size).
const macKeyBytes = 32

// macKeyTemplate is the attribute set of a metadata MAC key: a
// non-extractable, sensitive, private generic-secret token object usable
// only to sign and verify.
func macKeyTemplate(objectID []byte, label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, macKeyBytes),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, objectID),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// checkMACMechanisms makes sure the slot offers key generation and
// HMAC-SHA-256 signing and verification, so an unsuitable module fails
// with a clear message instead of an obscure return code.
func (t *Token) checkMACMechanisms() error {
	for _, m := range []struct {
		mech  uint
		name  string
		flags uint
	}{
		{pkcs11.CKM_GENERIC_SECRET_KEY_GEN, "CKM_GENERIC_SECRET_KEY_GEN", pkcs11.CKF_GENERATE},
		{pkcs11.CKM_SHA256_HMAC, "CKM_SHA256_HMAC", pkcs11.CKF_SIGN | pkcs11.CKF_VERIFY},
	} {
		info, err := t.mod.GetMechanismInfo(t.slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.mech, nil)})
		if err != nil {
			return errf(hsm.ErrUnavailable, "C_GetMechanismInfo", "the token does not offer %s: %v", m.name, err)
		}
		if info.Flags&m.flags != m.flags {
			return errf(hsm.ErrUnavailable, "C_GetMechanismInfo", "the token's %s lacks the needed flags (%#x of %#x)", m.name, info.Flags, m.flags)
		}
	}
	return nil
}

// GenerateMACKey creates the metadata MAC key objectID (C_GenerateKey,
// CKM_GENERIC_SECRET_KEY_GEN): 32 bytes, CKA_TOKEN, CKA_PRIVATE,
// CKA_SENSITIVE, not extractable, sign/verify only, CKA_LABEL
// LabelPrefix+label. Before generating, it asks the token (not the cache)
// whether a secret key with this CKA_ID exists, and refuses with
// hsm.ErrInvalidInput if one does: an existing MAC key is never replaced.
//
// Errors: hsm.ErrInvalidInput (bad id or label, id taken);
// hsm.ErrUnavailable (also when the module lacks the mechanisms);
// hsm.ErrBusy. Safe for concurrent use; serialised with GenerateKey.
func (t *Token) GenerateMACKey(ctx context.Context, objectID []byte, label string) (err error) {
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
	defer func(start time.Time) { t.observe("C_GenerateKey", start, err) }(time.Now())
	select {
	case t.genMu <- struct{}{}:
		defer func() { <-t.genMu }()
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", hsm.ErrBusy, ctx.Err())
	}
	if err := t.checkMACMechanisms(); err != nil {
		return err
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
			[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)},
			macKeyTemplate(objectID, t.cfg.LabelPrefix+label))
		if err != nil {
			return classify("C_GenerateKey", err)
		}
		t.cache(objectID, h)
		return nil
	})
}

// withTokenKey is withKey without working copies: MACs are computed on
// load and refresh, not per request, so the token object is used directly.
func (t *Token) withTokenKey(ctx context.Context, objectID []byte, op func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error) error {
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

// MAC returns the HMAC-SHA-256 (CKM_SHA256_HMAC, C_Sign) of msg under the
// MAC key objectID: exactly hsm.MACBytes bytes.
//
// Errors: hsm.ErrInvalidInput if objectID is not 1..64 bytes or msg is
// empty or over 64 MiB; hsm.ErrKeyNotFound; hsm.ErrBusy; hsm.ErrUnavailable
// (also if the token returns a MAC of another length). Safe for concurrent
// use.
func (t *Token) MAC(ctx context.Context, objectID, msg []byte) (mac []byte, err error) {
	if err := checkMACArgs(objectID, msg); err != nil {
		return nil, err
	}
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_Sign", start, err) }(time.Now())
	err = t.withTokenKey(ctx, objectID, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		if err := t.mod.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, h); err != nil {
			return classify("C_SignInit", err)
		}
		out, err := t.mod.Sign(s, msg)
		if err != nil {
			return classify("C_Sign", err)
		}
		if len(out) != hsm.MACBytes {
			return errf(hsm.ErrUnavailable, "C_Sign", "returned a %d-byte HMAC-SHA-256, want %d", len(out), hsm.MACBytes)
		}
		mac = slices.Clone(out)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return mac, nil
}

// VerifyMAC checks mac, an HMAC-SHA-256 of msg under the MAC key objectID:
// the token computes the MAC (C_Sign, as MAC does) and it is compared here
// in constant time. C_Verify is not used because modules disagree on how it
// reports a wrong MAC (NSS softoken answers CKR_DEVICE_ERROR, which would
// read as a failing device; see vendors.go); the key never leaves the
// token either way.
//
// Errors: hsm.ErrNotAuthentic if mac is wrong (any length other than
// hsm.MACBytes included); hsm.ErrInvalidInput, hsm.ErrKeyNotFound,
// hsm.ErrBusy, hsm.ErrUnavailable as for MAC. Safe for concurrent use.
func (t *Token) VerifyMAC(ctx context.Context, objectID, msg, mac []byte) error {
	if err := checkMACArgs(objectID, msg); err != nil {
		return err
	}
	if len(mac) != hsm.MACBytes {
		return fmt.Errorf("%w: MAC is %d bytes, want %d", hsm.ErrNotAuthentic, len(mac), hsm.MACBytes)
	}
	want, err := t.MAC(ctx, objectID, msg)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(want, mac) != 1 {
		return fmt.Errorf("%w: HMAC-SHA-256 does not match", hsm.ErrNotAuthentic)
	}
	return nil
}

func checkMACArgs(objectID, msg []byte) error {
	if err := checkObjectID(objectID); err != nil {
		return err
	}
	if len(msg) == 0 || len(msg) > maxMessage {
		return fmt.Errorf("%w: MAC message must be 1..%d bytes (got %d)", hsm.ErrInvalidInput, maxMessage, len(msg))
	}
	return nil
}
