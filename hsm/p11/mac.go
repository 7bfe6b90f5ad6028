package p11

import (
	"context"
	"crypto/hmac"
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
// non-extractable, sensitive, private generic-secret object usable only to
// sign and verify. token says whether it is a token object (the MAC key)
// or a session object (the self-check's throwaway key). It is
// CKA_MODIFIABLE because ensureFixed renames it from its claim id to its
// fixed id.
func macKeyTemplate(objectID []byte, label string, token bool) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, macKeyBytes),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, token),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, true),
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

// generateMAC makes a MAC key (C_GenerateKey, CKM_GENERIC_SECRET_KEY_GEN)
// on session s; a fixedGen when token is true.
func (t *Token) generateMAC(s pkcs11.SessionHandle, objectID []byte, label string, token bool) (pkcs11.ObjectHandle, error) {
	h, err := t.mod.GenerateKey(s,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)},
		macKeyTemplate(objectID, label, token))
	if err != nil {
		return 0, classify("C_GenerateKey", err)
	}
	return h, nil
}

// EnsureMACKey makes sure the token holds exactly one metadata MAC key
// with the fixed object id objectID: 32 bytes of CKK_GENERIC_SECRET,
// CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not extractable, sign/verify only
// (CKM_SHA256_HMAC), labelled LabelPrefix+label. It creates the key only
// if no secret key on the token has that CKA_ID, whatever its label;
// created reports whether this call made it. Creation goes through
// ensureFixed (fixed.go): the key is generated under a random claim id and
// renamed, so two nodes starting at once never both keep one, and no
// module ever sees C_GenerateKey with an id that exists (NSS softoken
// would replace the existing key). The mechanisms were checked by
// OpenToken's self-check.
//
// Errors: hsm.ErrInvalidInput (bad id or label); hsm.ErrUnavailable (also
// if several secret keys already share the id, or racing creators did not
// settle); hsm.ErrBusy. Safe for concurrent use; serialised with
// GenerateKey and EnsureKey.
func (t *Token) EnsureMACKey(ctx context.Context, objectID []byte, label string) (created bool, err error) {
	return t.ensureFixedKey(ctx, objectID, label, func(s pkcs11.SessionHandle, claimID []byte, claimLabel string) (pkcs11.ObjectHandle, error) {
		return t.generateMAC(s, claimID, claimLabel, true)
	})
}

// hmacRoundTrip signs messages under a throwaway session MAC key and
// checks the MAC's length, that it is deterministic, and that another
// message gets another MAC.
func (t *Token) hmacRoundTrip(s pkcs11.SessionHandle) error {
	h, err := t.generateMAC(s, []byte("hsmkms self-check"), "hsmkms self-check", false)
	if err != nil {
		return err
	}
	defer func() { _ = t.mod.DestroyObject(s, h) }()
	m1, err := t.signHMAC(s, h, []byte("hsmkms self-check"))
	if err != nil {
		return err
	}
	m2, err := t.signHMAC(s, h, []byte("hsmkms self-check"))
	if err != nil {
		return err
	}
	m3, err := t.signHMAC(s, h, []byte("hsmkms self-check!"))
	if err != nil {
		return err
	}
	if !hmac.Equal(m1, m2) || hmac.Equal(m1, m3) {
		return errf(hsm.ErrMisconfigured, "C_Sign", "HMAC-SHA-256 is not a function of the message (same message: equal %v; other message: equal %v)", hmac.Equal(m1, m2), hmac.Equal(m1, m3))
	}
	return nil
}

// signHMAC is C_SignInit and C_Sign with CKM_SHA256_HMAC: exactly
// hsm.MACBytes bytes, copied out of the binding's buffer.
func (t *Token) signHMAC(s pkcs11.SessionHandle, h pkcs11.ObjectHandle, msg []byte) ([]byte, error) {
	if err := t.mod.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, h); err != nil {
		return nil, classify("C_SignInit", err)
	}
	out, err := t.mod.Sign(s, msg)
	if err != nil {
		return nil, classify("C_Sign", err)
	}
	if len(out) != hsm.MACBytes {
		return nil, errf(hsm.ErrUnavailable, "C_Sign", "returned a %d-byte HMAC-SHA-256, want %d", len(out), hsm.MACBytes)
	}
	return slices.Clone(out), nil
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
		var err error
		mac, err = t.signHMAC(s, h, msg)
		return err
	})
	if err != nil {
		return nil, err
	}
	return mac, nil
}

// VerifyMAC checks mac, an HMAC-SHA-256 of msg under the MAC key objectID:
// the token computes the MAC (C_Sign) and it is compared with mac in
// constant time (crypto/hmac.Equal). C_Verify is not used because modules
// report a wrong MAC differently: SoftHSM2 with CKR_SIGNATURE_INVALID, NSS
// softoken with CKR_DEVICE_ERROR or CKR_ARGUMENTS_BAD, which cannot be told
// from a failing token (vendors.go).
//
// Errors: hsm.ErrNotAuthentic if mac is wrong (any length other than
// hsm.MACBytes included); hsm.ErrInvalidInput, hsm.ErrKeyNotFound,
// hsm.ErrBusy, hsm.ErrUnavailable as for MAC. Safe for concurrent use.
func (t *Token) VerifyMAC(ctx context.Context, objectID, msg, mac []byte) (err error) {
	if err := checkMACArgs(objectID, msg); err != nil {
		return err
	}
	if len(mac) != hsm.MACBytes {
		return fmt.Errorf("%w: MAC is %d bytes, want %d", hsm.ErrNotAuthentic, len(mac), hsm.MACBytes)
	}
	if err := t.enter(); err != nil {
		return err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_Sign", start, err) }(time.Now())
	return t.withTokenKey(ctx, objectID, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		want, err := t.signHMAC(s, h, msg)
		if err != nil {
			return err
		}
		if !hmac.Equal(want, mac) {
			return fmt.Errorf("%w: HMAC-SHA-256 does not match", hsm.ErrNotAuthentic)
		}
		return nil
	})
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
