package p11

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// Key import (BYOK).
//
// A wrapping key is an RSA-2048 key pair made per GetParametersForImport
// (C_GenerateKeyPair, CKM_RSA_PKCS_KEY_PAIR_GEN): the private half is a
// token object (CKA_PRIVATE, CKA_SENSITIVE, not extractable, CKA_UNWRAP
// only) labelled LabelPrefix+wrapLabel+label; the public half is a session
// object, read (modulus, exponent) and destroyed at once, and leaves as DER.
// Imported material is unwrapped (C_UnwrapKey, CKM_RSA_PKCS_OAEP with
// MGF1 of the same hash and an empty label) straight into an AES-256
// object with the attributes of every CMK (keyTemplate): it never exists
// outside the token. Its key check value (KCV) is AES-ECB of one zero
// block under it, computed inside the token; a module without CKM_AES_ECB
// gets AES-CBC of one zero block with a zero IV, which is the same value.
// PKCS#1 v1.5 unwrapping is not offered (a padding oracle).

// wrapLabel starts the label (after the configured LabelPrefix) of every
// wrapping key, so WrappingKeyIDs finds them and nothing else.
const wrapLabel = "import-wrapping/"

// importMechanisms is what key import needs, checked (C_GetMechanismInfo)
// before each use: a module without one fails with hsm.ErrMisconfigured
// naming it, and kmsd's other functions are unaffected.
var (
	needRSAKeyGen  = mechanismNeed{pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN", pkcs11.CKF_GENERATE_KEY_PAIR, 0, "to generate the RSA-2048 wrapping keys of GetParametersForImport"}
	needOAEPUnwrap = mechanismNeed{pkcs11.CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", pkcs11.CKF_UNWRAP, 0, "to unwrap imported key material (ImportKeyMaterial)"}
)

// checkImportMechanism is checkMechanism with RSA key sizes (bits) checked.
func (t *Token) checkImportMechanism(m mechanismNeed) error {
	if err := t.checkMechanism(m); err != nil {
		return err
	}
	info, err := t.mod.GetMechanismInfo(t.slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.mech, nil)})
	if err != nil {
		return classify("C_GetMechanismInfo", err)
	}
	if info.MaxKeySize != 0 && (info.MinKeySize > hsm.WrappingKeyBits || info.MaxKeySize < hsm.WrappingKeyBits) {
		return t.selfCheckError(m.name, "key size", errf(hsm.ErrMisconfigured, "C_GetMechanismInfo",
			"RSA key sizes %d..%d exclude 2048-bit keys; kmsd needs them %s", info.MinKeySize, info.MaxKeySize, m.use))
	}
	return nil
}

// oaepParams returns the CK_RSA_PKCS_OAEP_PARAMS of h: MGF1 of the same
// hash, an empty label.
func oaepParams(h hsm.OAEPHash) (*pkcs11.OAEPParams, error) {
	switch h {
	case hsm.OAEPSHA1:
		return pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil), nil
	case hsm.OAEPSHA256:
		return pkcs11.NewOAEPParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, pkcs11.CKZ_DATA_SPECIFIED, nil), nil
	}
	return nil, fmt.Errorf("%w: unknown OAEP hash %d", hsm.ErrInvalidInput, h)
}

// unwrapRefused reports whether rv, from C_UnwrapKey, means the wrapped
// material is wrong (it does not decrypt under the wrapping key, or is
// not an AES-256 key), not that the token failed. Modules differ:
// SoftHSM2 reports a bad OAEP decoding as CKR_GENERAL_ERROR or
// CKR_WRAPPED_KEY_INVALID, NSS as CKR_WRAPPED_KEY_INVALID or
// CKR_ENCRYPTED_DATA_INVALID; a key of the wrong length as
// CKR_WRAPPED_KEY_LEN_RANGE, CKR_KEY_SIZE_RANGE, CKR_ATTRIBUTE_VALUE_INVALID
// or CKR_TEMPLATE_INCONSISTENT (see vendors.go).
func unwrapRefused(rv uint) bool {
	switch rv {
	case pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE,
		pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_DATA_LEN_RANGE, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_GENERAL_ERROR,
		pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_TEMPLATE_INCONSISTENT:
		return true
	}
	return false
}

// ImportKey unwraps wrapped (RSAES-OAEP with hash h under the wrapping key
// wrappingID) into an AES-256 key with the attributes of a CMK and returns
// its key check value (hsm.KCVBytes, computed inside the token). With
// persist it is the token object objectID (CKA_LABEL LabelPrefix+label),
// left in place; without, it is a session object destroyed before
// ImportKey returns (used to compare material with what a key holds).
// On any error nothing is left on the token.
//
// Never call it with a persist objectID that exists: the caller (the
// domain's intent protocol) guarantees it does not.
//
// Errors: hsm.ErrInvalidInput for bad arguments (wrapped is not
// hsm.WrappedKeyBytes bytes); hsm.ErrKeyNotFound if there is no wrapping
// key wrappingID; hsm.ErrNotAuthentic if the material does not decrypt
// under it or is not a 32-byte key; hsm.ErrMisconfigured if the module
// lacks CKM_RSA_PKCS_OAEP with CKF_UNWRAP or both CKM_AES_ECB and
// CKM_AES_CBC; hsm.ErrBusy; hsm.ErrUnavailable. Safe for concurrent use.
func (t *Token) ImportKey(ctx context.Context, wrappingID []byte, h hsm.OAEPHash, wrapped, objectID []byte, label string, persist bool) (kcv []byte, err error) {
	if err := checkObjectID(wrappingID); err != nil {
		return nil, err
	}
	if err := checkObjectID(objectID); err != nil {
		return nil, err
	}
	if len(wrapped) != hsm.WrappedKeyBytes {
		return nil, fmt.Errorf("%w: wrapped key material is %d bytes, want %d", hsm.ErrInvalidInput, len(wrapped), hsm.WrappedKeyBytes)
	}
	if len(label) > maxLabel || !printable(label) {
		return nil, fmt.Errorf("%w: key label must be printable UTF-8 of at most %d bytes", hsm.ErrInvalidInput, maxLabel)
	}
	params, err := oaepParams(h)
	if err != nil {
		return nil, err
	}
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_UnwrapKey", start, err) }(time.Now())
	if err := t.checkImportMechanism(needOAEPUnwrap); err != nil {
		return nil, err
	}
	err = t.do(ctx, func(s pkcs11.SessionHandle) error {
		hs, err := t.findPrivate(s, wrappingID, 2)
		if err != nil {
			return err
		}
		switch len(hs) {
		case 0:
			return fmt.Errorf("%w: no wrapping key with object id %x", hsm.ErrKeyNotFound, wrappingID)
		case 2:
			return errf(hsm.ErrUnavailable, "C_FindObjects", "ambiguous: more than one wrapping key has object id %x", wrappingID)
		}
		base := keyTemplate(objectID, t.cfg.LabelPrefix+label)
		if !persist {
			base = sessionAESTemplate()
		}
		tmpl := unwrapTemplate(base)
		mod := t.modifiableAttr(t.cmkModifiable)
		if persist {
			tmpl = append(tmpl, mod...)
		}
		mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}
		k, err := t.mod.UnwrapKey(s, mech, hs[0], wrapped, tmpl)
		if err != nil && persist && mod != nil && !t.cmkModifiable && templateRefused(classify("C_UnwrapKey", err)) {
			// As generateAES: a module refusing CKA_MODIFIABLE=false.
			k, err = t.mod.UnwrapKey(s, mech, hs[0], wrapped, unwrapTemplate(base))
		}
		if err != nil {
			e := classify("C_UnwrapKey", err)
			if unwrapRefused(rvOf(e)) {
				return &p11Error{kind: hsm.ErrNotAuthentic, fn: "C_UnwrapKey", rv: rvOf(e),
					detail: "the key material does not decrypt under the wrapping key or is not a 256-bit key"}
			}
			return e
		}
		keep := false
		defer func() {
			if !keep {
				_ = t.mod.DestroyObject(s, k)
			}
		}()
		if err := t.checkUnwrapped(s, k, mech, hs[0], wrapped); err != nil {
			return err
		}
		kcv, err = t.kcv(s, k)
		if err != nil {
			return err
		}
		if persist {
			keep = true
			t.cache(objectID, k)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return kcv, nil
}

// unwrapTemplate is tmpl without CKA_VALUE_LEN, which C_UnwrapKey takes
// from the material (SoftHSM2 refuses it: CKR_ATTRIBUTE_READ_ONLY);
// checkUnwrapped reads the length back.
func unwrapTemplate(tmpl []*pkcs11.Attribute) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, 0, len(tmpl))
	for _, a := range tmpl {
		if a.Type != pkcs11.CKA_VALUE_LEN {
			out = append(out, a)
		}
	}
	return out
}

// checkUnwrapped reads back what the module made: sensitive and not
// extractable (a module that ignored the template would otherwise hold
// imported material in the clear), and an AES key of 32 bytes. Modules
// that do not report CKA_VALUE_LEN for an unwrapped key (SoftHSM2 reads
// 0) have the length measured by lengthByWrap.
func (t *Token) checkUnwrapped(s pkcs11.SessionHandle, k pkcs11.ObjectHandle, mech []*pkcs11.Mechanism, wrapping pkcs11.ObjectHandle, wrapped []byte) error {
	attrs, err := t.mod.GetAttributeValue(s, k, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
	})
	if err != nil {
		return classify("C_GetAttributeValue", err)
	}
	var n uint64
	for _, a := range attrs {
		switch a.Type {
		case pkcs11.CKA_VALUE_LEN:
			n = ulongAttr(a.Value)
		case pkcs11.CKA_SENSITIVE:
			if !attrTrue(a.Value) {
				return errf(hsm.ErrUnavailable, "C_UnwrapKey", "the module made the imported key not sensitive")
			}
		case pkcs11.CKA_EXTRACTABLE:
			if attrTrue(a.Value) {
				return errf(hsm.ErrUnavailable, "C_UnwrapKey", "the module made the imported key extractable")
			}
		}
	}
	if n == 0 {
		if n, err = t.lengthByWrap(s, mech, wrapping, wrapped); err != nil {
			return err
		}
	}
	if n != hsm.KeyBytes {
		return &p11Error{kind: hsm.ErrNotAuthentic, fn: "C_UnwrapKey", detail: fmt.Sprintf("the key material is %d bytes, want %d", n, hsm.KeyBytes)}
	}
	return nil
}

// lengthByWrap measures the length of the material in wrapped for a module
// that does not report CKA_VALUE_LEN of unwrapped keys: it is unwrapped
// once more into a session object that may be wrapped (and nothing else),
// which is wrapped (CKM_AES_KEY_WRAP_PAD, RFC 5649, else CKM_AES_KEY_WRAP,
// RFC 3394) under a throwaway session AES key; both objects are destroyed
// at once. The material never leaves the token in the clear: only its
// length is learnt, from the size of the wrapped output.
func (t *Token) lengthByWrap(s pkcs11.SessionHandle, mech []*pkcs11.Mechanism, wrapping pkcs11.ObjectHandle, wrapped []byte) (uint64, error) {
	probe := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
	e, err := t.mod.UnwrapKey(s, mech, wrapping, wrapped, probe)
	if err != nil {
		return 0, classify("C_UnwrapKey", err)
	}
	defer func() { _ = t.mod.DestroyObject(s, e) }()
	kek, err := t.mod.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
		sessionAESTemplate(pkcs11.NewAttribute(pkcs11.CKA_WRAP, true)))
	if err != nil {
		return 0, classify("C_GenerateKey", err)
	}
	defer func() { _ = t.mod.DestroyObject(s, kek) }()
	var lastErr error
	for _, m := range []uint{pkcs11.CKM_AES_KEY_WRAP_PAD, pkcs11.CKM_AES_KEY_WRAP} {
		out, err := t.mod.WrapKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(m, nil)}, kek, e)
		if err != nil {
			lastErr = classify("C_WrapKey", err)
			continue
		}
		if len(out) < 16 {
			return 0, errf(hsm.ErrUnavailable, "C_WrapKey", "wrapped output of %d bytes", len(out))
		}
		return uint64(len(out) - 8), nil
	}
	return 0, errf(hsm.ErrMisconfigured, "C_WrapKey", "the module reports no CKA_VALUE_LEN for unwrapped keys and cannot AES-key-wrap one to measure it (%v)", lastErr)
}

// ulongAttr decodes a CK_ULONG attribute (native byte order); a value of
// an unexpected size gives 0.
func ulongAttr(b []byte) uint64 {
	switch len(b) {
	case 8:
		return binary.NativeEndian.Uint64(b)
	case 4:
		return uint64(binary.NativeEndian.Uint32(b))
	}
	return 0
}

func attrTrue(v []byte) bool { return len(v) > 0 && v[0] != 0 }

// kcv computes the key check value of k: AES-ECB of one zero block, or
// AES-CBC of one zero block with a zero IV (the same value) where the
// module has no CKM_AES_ECB.
func (t *Token) kcv(s pkcs11.SessionHandle, k pkcs11.ObjectHandle) ([]byte, error) {
	zero := make([]byte, hsm.KCVBytes)
	var lastErr error
	for _, m := range []*pkcs11.Mechanism{
		pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil),
		pkcs11.NewMechanism(pkcs11.CKM_AES_CBC, make([]byte, 16)),
	} {
		if err := t.mod.EncryptInit(s, []*pkcs11.Mechanism{m}, k); err != nil {
			lastErr = classify("C_EncryptInit", err)
			if rv := rvOf(lastErr); rv == pkcs11.CKR_MECHANISM_INVALID || rv == pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED || rv == pkcs11.CKR_MECHANISM_PARAM_INVALID {
				continue
			}
			return nil, lastErr
		}
		out, err := t.mod.Encrypt(s, zero)
		if err != nil {
			return nil, classify("C_Encrypt", err)
		}
		if len(out) != hsm.KCVBytes {
			return nil, errf(hsm.ErrUnavailable, "C_Encrypt", "key check value is %d bytes, want %d", len(out), hsm.KCVBytes)
		}
		return out, nil
	}
	return nil, errf(hsm.ErrMisconfigured, "C_EncryptInit", "neither CKM_AES_ECB nor CKM_AES_CBC is usable for the key check value of imported material (%v): use a module that offers one", lastErr)
}
