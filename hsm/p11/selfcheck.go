package p11

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// Start-up self-check.
//
// OpenToken does not trust that a module can do what kmsd needs: it asks
// (C_GetMechanismInfo for every mechanism in requiredMechanisms) and then
// tries (every entry of selfChecks, on a throwaway session key). A module
// without AES-GCM, or an iv_mode the HSM does not follow, would otherwise
// start, say ready, and fail every request. A failure is one line naming
// the module, the mechanism and the setting to change, wrapping
// hsm.ErrMisconfigured (or the error that stopped the check: a refused
// PIN is hsm.ErrLogin). kmsd check-config runs the same check.
//
// Every key type has its mechanisms in requiredMechanisms and its round
// trip in selfChecks: AES-256-GCM for CMKs and the credentials key,
// HMAC-SHA-256 for the metadata MAC key (mac.go).

// mechanismNeed is one mechanism kmsd uses.
type mechanismNeed struct {
	mech    uint   // CKM_*
	name    string // "CKM_AES_GCM"
	flags   uint   // CKF_* the mechanism must support (CKF_ENCRYPT|CKF_DECRYPT, CKF_GENERATE, CKF_SIGN...)
	keyBits uint   // key size it must accept, in bits; 0 any
	use     string // what kmsd uses it for, in messages
}

// requiredMechanisms is what OpenToken checks with C_GetMechanismInfo.
var requiredMechanisms = []mechanismNeed{
	{pkcs11.CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN", pkcs11.CKF_GENERATE, 256, "to generate AES-256 keys (CMKs, the credentials key)"},
	{pkcs11.CKM_AES_GCM, "CKM_AES_GCM", pkcs11.CKF_ENCRYPT | pkcs11.CKF_DECRYPT, 256, "for Encrypt and Decrypt (AES-256-GCM)"},
	{pkcs11.CKM_GENERIC_SECRET_KEY_GEN, "CKM_GENERIC_SECRET_KEY_GEN", pkcs11.CKF_GENERATE, 0, "to generate the metadata MAC key (32-byte generic secret)"},
	{pkcs11.CKM_SHA256_HMAC, "CKM_SHA256_HMAC", pkcs11.CKF_SIGN | pkcs11.CKF_VERIFY, 0, "to authenticate stored metadata (HMAC-SHA-256)"},
}

// selfCheck is a round trip OpenToken runs on a session of the pool.
type selfCheck struct {
	mech string // the mechanism it exercises, for messages
	run  func(t *Token, s pkcs11.SessionHandle) error
}

// selfChecks is what OpenToken runs after the mechanism check.
var selfChecks = []selfCheck{
	{"CKM_AES_GCM", (*Token).gcmRoundTrip},
	{"CKM_SHA256_HMAC", (*Token).hmacRoundTrip},
}

// SelfCheck runs the start-up self-check again (OpenToken already ran it):
// C_GetMechanismInfo for every mechanism kmsd uses, then every round trip.
// Safe for concurrent use; it borrows one session.
//
// Errors: hsm.ErrMisconfigured (one line naming the module, the mechanism
// and the setting to change); hsm.ErrBusy; hsm.ErrUnavailable;
// hsm.ErrLogin.
func (t *Token) SelfCheck(ctx context.Context) error {
	if err := t.enter(); err != nil {
		return err
	}
	defer t.mu.RUnlock()
	return t.selfCheck(ctx)
}

func (t *Token) selfCheck(ctx context.Context) error {
	for _, m := range requiredMechanisms {
		if err := t.checkMechanism(m); err != nil {
			return err
		}
	}
	for _, c := range selfChecks {
		if err := t.do(ctx, func(s pkcs11.SessionHandle) error { return c.run(t, s) }); err != nil {
			return t.selfCheckError(c.mech, "round trip ("+t.ivModeName()+")", err)
		}
	}
	return nil
}

func (t *Token) ivModeName() string {
	if t.cfg.HSMGeneratedIV {
		return "iv_mode hsm"
	}
	return "iv_mode caller"
}

// checkMechanism asks the token about m.
func (t *Token) checkMechanism(m mechanismNeed) error {
	info, err := t.mod.GetMechanismInfo(t.slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.mech, nil)})
	if err != nil {
		e := classify("C_GetMechanismInfo", err)
		if rvOf(e) == pkcs11.CKR_MECHANISM_INVALID {
			return t.selfCheckError(m.name, "not supported", errf(hsm.ErrMisconfigured, "C_GetMechanismInfo", "%s; kmsd needs it %s: use a module, firmware or token policy (pkcs11.module) that provides it", ckrName(pkcs11.CKR_MECHANISM_INVALID), m.use))
		}
		return t.selfCheckError(m.name, "C_GetMechanismInfo", e)
	}
	if info.Flags&m.flags != m.flags {
		return t.selfCheckError(m.name, "not usable", errf(hsm.ErrMisconfigured, "C_GetMechanismInfo", "flags 0x%x lack 0x%x; kmsd needs it %s: use a module, firmware or token policy (pkcs11.module) that allows it", info.Flags, m.flags, m.use))
	}
	// AES sizes are in bytes per the standard; some modules give bits.
	if m.keyBits != 0 && info.MaxKeySize != 0 {
		bytesOK := info.MinKeySize <= m.keyBits/8 && m.keyBits/8 <= info.MaxKeySize
		bitsOK := info.MinKeySize <= m.keyBits && m.keyBits <= info.MaxKeySize
		if !bytesOK && !bitsOK {
			return t.selfCheckError(m.name, "key size", errf(hsm.ErrMisconfigured, "C_GetMechanismInfo", "key sizes %d..%d exclude %d-bit keys; kmsd needs them %s", info.MinKeySize, info.MaxKeySize, m.keyBits, m.use))
		}
	}
	return nil
}

// selfCheckError makes the one-line message of a failed check: module,
// token, mechanism, what failed and why (with the setting to change).
// Configuration errors and unknown failures wrap hsm.ErrMisconfigured; a
// refused PIN, a busy pool or a token that went away keep their kind.
func (t *Token) selfCheckError(mech, what string, err error) error {
	kind := hsm.ErrMisconfigured
	for _, k := range []error{hsm.ErrLogin, hsm.ErrBusy, hsm.ErrUnavailable, hsm.ErrTokenNotFound} {
		if errors.Is(err, k) && !errors.Is(err, hsm.ErrMisconfigured) {
			kind = k
		}
	}
	why := err.Error()
	for _, k := range []error{hsm.ErrMisconfigured, hsm.ErrLogin, hsm.ErrBusy, hsm.ErrUnavailable, hsm.ErrTokenNotFound} {
		why = strings.TrimPrefix(why, k.Error()+": ")
	}
	msg := fmt.Sprintf("module %s, token %s: %s %s: %s", t.cfg.ModulePath, t.sel, mech, what, why)
	return &p11Error{kind: kind, fn: "self-check", detail: oneLine(msg), rv: 0}
}

func oneLine(s string) string {
	return string(bytes.Join(bytes.Fields([]byte(s)), []byte(" ")))
}

// gcmRoundTrip seals and opens a message under a throwaway AES-256 session
// key, in the configured IV mode, through the same code as Seal and Open,
// and checks that a changed tag is refused.
func (t *Token) gcmRoundTrip(s pkcs11.SessionHandle) error {
	tmpl := sessionAESTemplate(pkcs11.NewAttribute(pkcs11.CKA_LABEL, "hsmkms self-check"))
	h, err := t.mod.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl)
	if err != nil {
		return classify("C_GenerateKey", err)
	}
	defer func() { _ = t.mod.DestroyObject(s, h) }()
	pt := []byte("hsmkms self-check: 33 bytes long.")
	aad := []byte("hsmkms self-check")
	iv := make([]byte, hsm.IVBytes)
	sealed, err := t.sealWith(s, h, iv, pt, aad)
	if err != nil {
		return err
	}
	got, err := t.openWith(s, h, iv, sealed, aad)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, pt) {
		return errf(hsm.ErrMisconfigured, fnDecrypt, "the round trip returned other bytes than were sealed")
	}
	sealed[len(sealed)-1] ^= 1
	if _, err := t.openWith(s, h, iv, sealed, aad); err == nil {
		return errf(hsm.ErrMisconfigured, fnDecrypt, "a changed tag was accepted: the module does not authenticate GCM")
	}
	return nil
}
