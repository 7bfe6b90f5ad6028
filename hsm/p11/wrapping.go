package p11

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"hash"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// RSA-2048 wrapping key pairs of key import (import.go): generation, lookup,
// destruction, listing, and the probe of the OAEP hashes a module unwraps.
// GenerateWrappingKey makes a fresh RSA-2048 wrapping key pair whose
// private half is the token object objectID (see the comment above) and
// returns the public half as DER (X.509 SubjectPublicKeyInfo).
//
// Errors: hsm.ErrInvalidInput if objectID is not 1..64 bytes or label is
// not printable UTF-8 of at most 100 bytes; hsm.ErrMisconfigured if the
// module lacks CKM_RSA_PKCS_KEY_PAIR_GEN for 2048-bit keys;
// hsm.ErrBusy; hsm.ErrUnavailable. Safe for concurrent use.
func (t *Token) GenerateWrappingKey(ctx context.Context, objectID []byte, label string) (publicDER []byte, err error) {
	if err := checkObjectID(objectID); err != nil {
		return nil, err
	}
	if len(label) > maxLabel-len(wrapLabel) || !printable(label) {
		return nil, fmt.Errorf("%w: wrapping key label must be printable UTF-8 of at most %d bytes", hsm.ErrInvalidInput, maxLabel-len(wrapLabel))
	}
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_GenerateKeyPair", start, err) }(time.Now())
	if err := t.checkImportMechanism(needRSAKeyGen); err != nil {
		return nil, err
	}
	public := append(append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
	}, rsaSizeAttrs()...),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false))
	private := tokenPrivateTemplate(pkcs11.CKK_RSA, objectID, t.cfg.LabelPrefix+wrapLabel+label,
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false))
	err = t.do(ctx, func(s pkcs11.SessionHandle) error {
		pub, _, err := t.generateRSAPair(s, public, private)
		if err != nil {
			return err
		}
		defer func() { _ = t.mod.DestroyObject(s, pub) }()
		pk, err := t.readRSAPublic(s, pub)
		if err != nil {
			return err
		}
		publicDER, err = x509.MarshalPKIXPublicKey(pk)
		if err != nil {
			return errf(hsm.ErrUnavailable, "C_GenerateKeyPair", "public key: %v", err)
		}
		return nil
	})
	if err != nil {
		// A failure after the pair was made (reading the public half)
		// leaves the private half: destroy it, best effort.
		_ = t.destroyWrapping(context.WithoutCancel(ctx), objectID)
		return nil, err
	}
	return publicDER, nil
}

// readRSAPublic reads an RSA-2048 public key object.
func (t *Token) readRSAPublic(s pkcs11.SessionHandle, pub pkcs11.ObjectHandle) (*rsa.PublicKey, error) {
	n, e, err := t.readRSAParts(s, pub)
	if err != nil {
		return nil, err
	}
	pk := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if pk.N.BitLen() != hsm.WrappingKeyBits || pk.E < 3 || len(e) > 4 {
		return nil, errf(hsm.ErrUnavailable, "C_GenerateKeyPair", "the module returned a %d-bit modulus (exponent %d), want %d bits", pk.N.BitLen(), pk.E, hsm.WrappingKeyBits)
	}
	return pk, nil
}

// oaepProbes remembers, per Token, the answer of OAEPSupported for each
// hash: *Token -> *sync.Map of hsm.OAEPHash -> error (nil: supported).
var oaepProbes sync.Map

// OAEPSupported says whether the module unwraps RSAES-OAEP material with
// hash h (MGF1 of the same hash): nil if it does. C_GetMechanismInfo cannot
// tell (the hash is a parameter), so the first call for each hash tries
// it: a throwaway session RSA-2048 key pair, 32 random bytes wrapped under
// its public half with the stdlib, C_UnwrapKey into a session AES key. The
// answer is remembered for the Token's life. SoftHSM2 2.6 unwraps OAEP
// with SHA-1 only (CKR_ARGUMENTS_BAD for SHA-256; vendors.go).
//
// Errors: hsm.ErrMisconfigured (naming the mechanism and the hash) if the
// module lacks it; hsm.ErrBusy, hsm.ErrUnavailable (not remembered).
func (t *Token) OAEPSupported(ctx context.Context, h hsm.OAEPHash) (err error) {
	params, err := oaepParams(h)
	if err != nil {
		return err
	}
	m, _ := oaepProbes.LoadOrStore(t, new(sync.Map))
	probes := m.(*sync.Map)
	if v, ok := probes.Load(h); ok {
		if v == nil {
			return nil
		}
		return v.(error)
	}
	if err := t.enter(); err != nil {
		return err
	}
	defer t.mu.RUnlock()
	for _, need := range []mechanismNeed{needRSAKeyGen, needOAEPUnwrap} {
		if err := t.checkImportMechanism(need); err != nil {
			probes.Store(h, err)
			return err
		}
	}
	var verdict error
	err = t.do(ctx, func(s pkcs11.SessionHandle) error {
		pub, priv, err := t.generateRSAPair(s,
			append(append([]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			}, rsaSizeAttrs()...),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, true)),
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
				pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			})
		if err != nil {
			return err
		}
		defer func() { _ = t.mod.DestroyObject(s, pub); _ = t.mod.DestroyObject(s, priv) }()
		pk, err := t.readRSAPublic(s, pub)
		if err != nil {
			return err
		}
		var hf hash.Hash = sha256.New()
		if h == hsm.OAEPSHA1 {
			hf = sha1.New()
		}
		secret := make([]byte, hsm.KeyBytes)
		if _, err := rand.Read(secret); err != nil {
			return errf(hsm.ErrUnavailable, "probe", "random: %v", err)
		}
		wrapped, err := rsa.EncryptOAEP(hf, rand.Reader, pk, secret, nil)
		if err != nil {
			return errf(hsm.ErrUnavailable, "probe", "EncryptOAEP: %v", err)
		}
		k, err := t.mod.UnwrapKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}, priv, wrapped,
			unwrapTemplate(sessionAESTemplate()))
		if err != nil {
			e := classify("C_UnwrapKey", err)
			switch rvOf(e) {
			case pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_MECHANISM_INVALID:
				verdict = t.selfCheckError("CKM_RSA_PKCS_OAEP", "with "+hashName(h), errf(hsm.ErrMisconfigured, "C_UnwrapKey",
					"%s: the module does not unwrap RSAES-OAEP with %s (MGF1 %s); use another WrappingAlgorithm or a module that offers it", ckrName(rvOf(e)), hashName(h), hashName(h)))
				return nil
			}
			return e
		}
		_ = t.mod.DestroyObject(s, k)
		return nil
	})
	if err != nil {
		return err
	}
	if verdict != nil {
		probes.Store(h, verdict)
		return verdict
	}
	probes.Store(h, nil)
	return nil
}

func hashName(h hsm.OAEPHash) string {
	if h == hsm.OAEPSHA1 {
		return "SHA-1"
	}
	return "SHA-256"
}

// findPrivate returns the handles of the wrapping keys (private keys)
// whose CKA_ID is objectID, up to max.
func (t *Token) findPrivate(s pkcs11.SessionHandle, objectID []byte, max int) ([]pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, objectID),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
	}
	return t.findUpTo(s, tmpl, max)
}

// DestroyWrappingKey destroys the wrapping key objectID (every private key
// with that CKA_ID and CKA_UNWRAP; never a secret key, so a CMK's id
// destroys nothing).
//
// Errors: hsm.ErrInvalidInput (objectID not 1..64 bytes); hsm.ErrKeyNotFound
// if there is none; hsm.ErrBusy; hsm.ErrUnavailable. Safe for concurrent use.
func (t *Token) DestroyWrappingKey(ctx context.Context, objectID []byte) (err error) {
	if err := checkObjectID(objectID); err != nil {
		return err
	}
	if err := t.enter(); err != nil {
		return err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_DestroyObject", start, err) }(time.Now())
	return t.destroyWrapping(ctx, objectID)
}

func (t *Token) destroyWrapping(ctx context.Context, objectID []byte) error {
	return t.do(ctx, func(s pkcs11.SessionHandle) error {
		hs, err := t.findPrivate(s, objectID, 8)
		if err != nil {
			return err
		}
		if len(hs) == 0 {
			return fmt.Errorf("%w: no wrapping key with object id %x", hsm.ErrKeyNotFound, objectID)
		}
		for _, h := range hs {
			if err := t.mod.DestroyObject(s, h); err != nil {
				return classify("C_DestroyObject", err)
			}
		}
		return nil
	})
}

// WrappingKeyIDs returns the CKA_ID of every wrapping key on the token (a
// private key with CKA_UNWRAP whose label starts with the configured
// LabelPrefix followed by the wrapping-key prefix). Errors: hsm.ErrBusy,
// hsm.ErrUnavailable. Safe for concurrent use.
func (t *Token) WrappingKeyIDs(ctx context.Context) (_ [][]byte, err error) {
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_FindObjects", start, err) }(time.Now())
	var ids [][]byte
	err = t.do(ctx, func(s pkcs11.SessionHandle) error {
		ids = nil
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		}
		all, err := t.findEvery(s, tmpl, nil)
		if err != nil {
			return err
		}
		for _, h := range all {
			id, label, gone, err := t.idAndLabel(s, h)
			if err != nil {
				return err
			}
			if gone {
				continue
			}
			if len(id) > 0 && strings.HasPrefix(string(label), t.cfg.LabelPrefix+wrapLabel) {
				ids = append(ids, id)
			}
		}
		return nil
	})
	return ids, err
}
