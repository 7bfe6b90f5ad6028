package p11

import (
	"context"
	"crypto/ecdh"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// Asymmetric customer master keys: RSA-2048 (sign or decrypt) and ECDSA
// P-256 / P-384 (sign) key pairs generated inside the token.
//
// The private half is a token object (CKA_TOKEN, CKA_PRIVATE,
// CKA_SENSITIVE, CKA_EXTRACTABLE false, CKA_MODIFIABLE false where the
// module allows it) allowed exactly one use: CKA_SIGN or CKA_DECRYPT. Its
// CKA_ID is the object id the service chose, like an AES CMK's, so the
// lookups, DestroyKey and KeyIDs treat both alike. The public half is made
// as a session object, read once (modulus and exponent, or the EC point)
// and destroyed at once: the caller keeps it as a DER SubjectPublicKeyInfo
// (in the store, covered by the row MAC), so no public token object exists
// to be orphaned or substituted.
//
// Mechanisms: CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_EC_KEY_PAIR_GEN,
// CKM_RSA_PKCS (PKCS #1 v1.5 signatures over a DigestInfo, and v1.5
// decryption), CKM_RSA_PKCS_PSS, CKM_RSA_PKCS_OAEP, CKM_ECDSA. Every
// signature is over a digest the caller computed: the module never hashes.

// DER encodings of the named curves' OIDs (CKA_EC_PARAMS).
var (
	oidP256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384 = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
)

// sha256DigestInfo is the DER prefix of a PKCS #1 DigestInfo for SHA-256
// (RFC 8017, section 9.2, note 1); the 32-byte digest follows.
var sha256DigestInfo = []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}

// rsaModulusBits is the modulus size of every RSA key pair.
const rsaModulusBits = 2048

// mechNeed is one mechanism an asymmetric operation needs.
type mechNeed struct {
	mech  uint
	name  string
	flags uint
	bits  uint // a key size (bits) the mechanism must allow; 0: any
}

// AsymSupport asks the module (C_GetMechanismInfo) which key pairs it can
// generate, which signatures it makes and which RSA paddings it decrypts.
// SM2 and SM4 have no standard PKCS#11 mechanism: they are always reported
// missing (a vendor mapping would be needed).
//
// Errors: hsm.ErrUnavailable if the module cannot be asked. Safe for
// concurrent use.
func (t *Token) AsymSupport(ctx context.Context) (hsm.AsymSupport, error) {
	if err := t.enter(); err != nil {
		return hsm.AsymSupport{}, err
	}
	defer t.mu.RUnlock()
	if err := ctx.Err(); err != nil {
		return hsm.AsymSupport{}, fmt.Errorf("%w: %w", hsm.ErrBusy, err)
	}
	sup := hsm.AsymSupport{Missing: map[string]string{
		"SM2": "an SM2 key-pair mechanism (PKCS#11 defines none; vendor mechanisms are not mapped)",
		"SM4": "an SM4 key mechanism (PKCS#11 defines none; vendor mechanisms are not mapped)",
	}}
	has := func(n mechNeed) (bool, error) {
		info, err := t.mod.GetMechanismInfo(t.slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(n.mech, nil)})
		if err != nil {
			if rvOf(classify("C_GetMechanismInfo", err)) == pkcs11.CKR_MECHANISM_INVALID {
				return false, nil
			}
			return false, classify("C_GetMechanismInfo", err)
		}
		if info.Flags&n.flags != n.flags {
			return false, nil
		}
		if n.bits != 0 && info.MaxKeySize != 0 && (n.bits < info.MinKeySize || n.bits > info.MaxKeySize) {
			return false, nil
		}
		return true, nil
	}
	type row struct {
		what string
		need mechNeed
		add  func()
	}
	rows := []row{
		{string(hsm.SpecRSA2048), mechNeed{pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN", pkcs11.CKF_GENERATE_KEY_PAIR, rsaModulusBits},
			func() { sup.Specs = append(sup.Specs, hsm.SpecRSA2048) }},
		{string(hsm.SpecECP256), mechNeed{pkcs11.CKM_EC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN", pkcs11.CKF_GENERATE_KEY_PAIR, 256},
			func() { sup.Specs = append(sup.Specs, hsm.SpecECP256) }},
		{string(hsm.SpecECP384), mechNeed{pkcs11.CKM_EC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN", pkcs11.CKF_GENERATE_KEY_PAIR, 384},
			func() { sup.Specs = append(sup.Specs, hsm.SpecECP384) }},
		{"RSA_PKCS1_SHA_256", mechNeed{pkcs11.CKM_RSA_PKCS, "CKM_RSA_PKCS", pkcs11.CKF_SIGN, 0},
			func() { sup.Sign = append(sup.Sign, hsm.SignRSAPKCS1SHA256) }},
		{"RSA_PSS_SHA_256", mechNeed{pkcs11.CKM_RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS", pkcs11.CKF_SIGN, 0},
			func() { sup.Sign = append(sup.Sign, hsm.SignRSAPSSSHA256) }},
		{"ECDSA", mechNeed{pkcs11.CKM_ECDSA, "CKM_ECDSA", pkcs11.CKF_SIGN, 0},
			func() { sup.Sign = append(sup.Sign, hsm.SignECDSA) }},
		{"RSAES_PKCS1_V1_5", mechNeed{pkcs11.CKM_RSA_PKCS, "CKM_RSA_PKCS", pkcs11.CKF_DECRYPT, 0},
			func() { sup.Decrypt = append(sup.Decrypt, hsm.PadPKCS1v15) }},
		{"RSAES_OAEP", mechNeed{pkcs11.CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", pkcs11.CKF_DECRYPT, 0},
			func() { sup.Decrypt = append(sup.Decrypt, hsm.PadOAEPSHA1, hsm.PadOAEPSHA256) }},
	}
	for _, r := range rows {
		ok, err := has(r.need)
		if err != nil {
			return hsm.AsymSupport{}, err
		}
		if ok {
			r.add()
		} else {
			sup.Missing[r.what] = r.need.name
		}
	}
	return sup, nil
}

// keyPairTemplates returns the public (session object) and private (token
// object) templates of a key pair of spec, allowed use.
func keyPairTemplates(objectID []byte, label string, spec hsm.KeySpec, use hsm.KeyPairUse) (pub, priv []*pkcs11.Attribute, mech uint, err error) {
	sign, dec := use == hsm.UseSign, use == hsm.UseDecrypt
	if !sign && !dec {
		return nil, nil, 0, fmt.Errorf("%w: unknown key pair use %d", hsm.ErrInvalidInput, use)
	}
	var keyType uint
	pub = []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, sign),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, dec),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
	}
	switch spec {
	case hsm.SpecRSA2048:
		keyType, mech = pkcs11.CKK_RSA, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN
		pub = append(pub, rsaSizeAttrs()...)
	case hsm.SpecECP256, hsm.SpecECP384:
		if dec {
			return nil, nil, 0, fmt.Errorf("%w: EC key pairs only sign", hsm.ErrInvalidInput)
		}
		oid := oidP256
		if spec == hsm.SpecECP384 {
			oid = oidP384
		}
		params, _ := asn1.Marshal(oid) // cannot fail for a valid OID
		keyType, mech = pkcs11.CKK_EC, pkcs11.CKM_EC_KEY_PAIR_GEN
		pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params))
	default:
		return nil, nil, 0, fmt.Errorf("%w: unknown key spec %q", hsm.ErrInvalidInput, spec)
	}
	pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType))
	priv = tokenPrivateTemplate(keyType, objectID, label,
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, sign),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, dec),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false))
	return pub, priv, mech, nil
}

// GenerateKeyPair creates the key pair objectID on the token
// (C_GenerateKeyPair): the private key a token object as described at the
// top of this file, usable only for use, labelled LabelPrefix+label; the
// public key a session object destroyed before the call returns. It
// returns the public key as a DER SubjectPublicKeyInfo (PKIX). The private
// key's handle is cached.
//
// objectID must be a random 16-byte id (as GenerateKey's): it is checked
// against the handle cache only.
//
// Errors: hsm.ErrInvalidInput for a bad objectID, label, spec or use (EC
// pairs only sign), or a known objectID; hsm.ErrMisconfigured if the
// module lacks the key-pair mechanism; hsm.ErrBusy; hsm.ErrUnavailable
// (also if the public key read back is malformed: the private key is then
// destroyed). Safe for concurrent use; serialised with GenerateKey.
func (t *Token) GenerateKeyPair(ctx context.Context, objectID []byte, label string, spec hsm.KeySpec, use hsm.KeyPairUse) (spki []byte, err error) {
	if len(objectID) != randomIDLen {
		return nil, fmt.Errorf("%w: a key pair's object id must be %d random bytes", hsm.ErrInvalidInput, randomIDLen)
	}
	if len(label) > maxLabel || !printable(label) {
		return nil, fmt.Errorf("%w: key label must be printable UTF-8 of at most %d bytes", hsm.ErrInvalidInput, maxLabel)
	}
	pubT, privT, mech, err := keyPairTemplates(objectID, t.cfg.LabelPrefix+label, spec, use)
	if err != nil {
		return nil, err
	}
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_GenerateKeyPair", start, err) }(time.Now())
	select {
	case t.genMu <- struct{}{}:
		defer func() { <-t.genMu }()
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", hsm.ErrBusy, ctx.Err())
	}
	t.hmu.RLock()
	_, dup := t.handles[string(objectID)]
	t.hmu.RUnlock()
	if dup {
		return nil, fmt.Errorf("%w: a key with object id %x already exists", hsm.ErrInvalidInput, objectID)
	}
	err = t.do(ctx, func(s pkcs11.SessionHandle) error {
		m := []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}
		mod := t.modifiableAttr(false)
		pubH, privH, err := t.mod.GenerateKeyPair(s, m, pubT, append(privT, mod...))
		if err != nil && mod != nil && templateRefused(classify("C_GenerateKeyPair", err)) {
			pubH, privH, err = t.mod.GenerateKeyPair(s, m, pubT, privT)
		}
		if err != nil {
			return classify("C_GenerateKeyPair", err)
		}
		defer func() { _ = t.mod.DestroyObject(s, pubH) }()
		spki, err = t.readPublic(s, pubH, spec)
		if err != nil {
			_ = t.mod.DestroyObject(s, privH)
			return err
		}
		t.cache(objectID, privH)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return spki, nil
}

// readPublic reads a public key object and encodes it as a PKIX
// SubjectPublicKeyInfo.
func (t *Token) readPublic(s pkcs11.SessionHandle, h pkcs11.ObjectHandle, spec hsm.KeySpec) ([]byte, error) {
	bad := func(format string, args ...any) error {
		return errf(hsm.ErrUnavailable, "C_GetAttributeValue", "public key read back: "+format, args...)
	}
	var pk any
	switch spec {
	case hsm.SpecRSA2048:
		n, e, err := t.readRSAParts(s, h)
		if err != nil {
			return nil, err
		}
		bn, be := new(big.Int).SetBytes(n), new(big.Int).SetBytes(e)
		if bn.BitLen() != rsaModulusBits || !be.IsInt64() || be.Int64() != 65537 {
			return nil, bad("RSA modulus of %d bits, exponent %v", bn.BitLen(), be)
		}
		pk = &rsa.PublicKey{N: bn, E: 65537}
	default:
		attrs, err := t.mod.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err != nil {
			return nil, classify("C_GetAttributeValue", err)
		}
		curve := ecdh.P256()
		if spec == hsm.SpecECP384 {
			curve = ecdh.P384()
		}
		ecpk, perr := ecPoint(curve, attrValue(attrs, pkcs11.CKA_EC_POINT))
		if perr != nil {
			return nil, bad("%v", perr)
		}
		pk = ecpk
	}
	der, err := x509.MarshalPKIXPublicKey(pk)
	if err != nil {
		return nil, bad("%v", err)
	}
	return der, nil
}

// ecPoint decodes CKA_EC_POINT: a DER OCTET STRING holding the
// uncompressed point (the standard), or the bare point (some modules).
func ecPoint(curve ecdh.Curve, v []byte) (*ecdh.PublicKey, error) {
	if pk, err := curve.NewPublicKey(v); err == nil {
		return pk, nil
	}
	var inner []byte
	if rest, err := asn1.Unmarshal(v, &inner); err != nil || len(rest) != 0 {
		return nil, errors.New("CKA_EC_POINT is neither a point nor a DER OCTET STRING holding one")
	}
	return curve.NewPublicKey(inner)
}

// SignDigest signs digest with the private key objectID (C_Sign):
//   - hsm.SignRSAPKCS1SHA256: digest is a SHA-256 digest (32 bytes);
//     CKM_RSA_PKCS over its DigestInfo; the signature is 256 bytes.
//   - hsm.SignRSAPSSSHA256: digest is 32 bytes; CKM_RSA_PKCS_PSS with
//     SHA-256, MGF1-SHA-256 and a 32-byte salt.
//   - hsm.SignECDSA: digest of 32 or 48 bytes; CKM_ECDSA; the signature
//     is r||s as the module returns it (the caller checks its length).
//
// Errors: hsm.ErrInvalidInput for a bad objectID, mechanism or digest
// length; hsm.ErrKeyNotFound; hsm.ErrMisconfigured if the module refuses
// the mechanism or the key does not allow it; hsm.ErrBusy;
// hsm.ErrUnavailable. Safe for concurrent use.
func (t *Token) SignDigest(ctx context.Context, objectID []byte, mech hsm.SignMechanism, digest []byte) (sig []byte, err error) {
	if err := checkObjectID(objectID); err != nil {
		return nil, err
	}
	var m *pkcs11.Mechanism
	var data []byte
	switch mech {
	case hsm.SignRSAPKCS1SHA256:
		if len(digest) != 32 {
			return nil, fmt.Errorf("%w: a SHA-256 digest is 32 bytes, not %d", hsm.ErrInvalidInput, len(digest))
		}
		m = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)
		data = append(append(make([]byte, 0, len(sha256DigestInfo)+32), sha256DigestInfo...), digest...)
	case hsm.SignRSAPSSSHA256:
		if len(digest) != 32 {
			return nil, fmt.Errorf("%w: a SHA-256 digest is 32 bytes, not %d", hsm.ErrInvalidInput, len(digest))
		}
		m = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, 32))
		data = digest
	case hsm.SignECDSA:
		if len(digest) != 32 && len(digest) != 48 {
			return nil, fmt.Errorf("%w: an ECDSA digest here is 32 or 48 bytes, not %d", hsm.ErrInvalidInput, len(digest))
		}
		m = pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)
		data = digest
	default:
		return nil, fmt.Errorf("%w: unknown signature mechanism %d", hsm.ErrInvalidInput, mech)
	}
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_Sign", start, err) }(time.Now())
	err = t.withTokenKey(ctx, objectID, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		if err := t.mod.SignInit(s, []*pkcs11.Mechanism{m}, h); err != nil {
			return classify("C_SignInit", err)
		}
		// miekg/pkcs11 asks the length first (C_Sign with no buffer), then
		// signs into a buffer of exactly that length.
		out, err := t.mod.Sign(s, data)
		if err != nil {
			return classify("C_Sign", err)
		}
		sig = out
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// rsaCiphertextBytes is the size of every RSA-2048 ciphertext.
const rsaCiphertextBytes = rsaModulusBits / 8

// DecryptRSA decrypts an RSA-2048 ciphertext with the private key objectID
// (C_Decrypt, CKM_RSA_PKCS or CKM_RSA_PKCS_OAEP with the hash and MGF1 of
// pad, no label).
//
// Every failure of the decryption itself (wrong length, bad padding,
// whatever return code the module picks for it) is the one error
// hsm.ErrNotAuthentic, with no detail, so that answers do not tell
// paddings apart (no padding oracle in what is returned; the module's
// timing is its own). Such a failure never counts towards re-initialising
// the token.
//
// Errors: hsm.ErrNotAuthentic as above; hsm.ErrInvalidInput for a bad
// objectID or pad; hsm.ErrKeyNotFound; hsm.ErrMisconfigured if the module
// refuses the mechanism; hsm.ErrBusy; hsm.ErrUnavailable. Safe for
// concurrent use.
func (t *Token) DecryptRSA(ctx context.Context, objectID []byte, pad hsm.RSAPadding, ciphertext []byte) (pt []byte, err error) {
	if err := checkObjectID(objectID); err != nil {
		return nil, err
	}
	var m *pkcs11.Mechanism
	switch pad {
	case hsm.PadPKCS1v15:
		m = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)
	case hsm.PadOAEPSHA1:
		m = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil))
	case hsm.PadOAEPSHA256:
		m = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.NewOAEPParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, pkcs11.CKZ_DATA_SPECIFIED, nil))
	default:
		return nil, fmt.Errorf("%w: unknown RSA padding %d", hsm.ErrInvalidInput, pad)
	}
	if len(ciphertext) != rsaCiphertextBytes {
		return nil, notAuthenticRSA(0)
	}
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_Decrypt", start, err) }(time.Now())
	err = t.withTokenKey(ctx, objectID, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		if err := t.mod.DecryptInit(s, []*pkcs11.Mechanism{m}, h); err != nil {
			e := classify("C_DecryptInit", err)
			switch rvOf(e) {
			case pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_MECHANISM_INVALID:
				// SoftHSM 2.6 takes OAEP with SHA-1 only (CKR_ARGUMENTS_BAD).
				return errf(hsm.ErrMisconfigured, "C_DecryptInit", "the module refuses %s (%s)", padName(pad), ckrName(rvOf(e)))
			}
			return e
		}
		// miekg/pkcs11 asks the length first (C_Decrypt with no buffer:
		// the modulus size), then decrypts into that buffer.
		out, err := t.mod.Decrypt(s, ciphertext)
		if err != nil {
			e := classify(fnDecrypt, err)
			switch rv := rvOf(e); rv {
			case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_OPERATION_ACTIVE,
				pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID,
				pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED:
				return e
			default:
				return notAuthenticRSA(rv)
			}
		}
		pt = out
		return nil
	})
	if err != nil {
		return nil, err
	}
	return pt, nil
}

// notAuthenticRSA is the one answer to a failed RSA decryption. rv is
// kept for the session's fate (a CKR_DEVICE_ERROR replaces the session)
// but not shown.
func notAuthenticRSA(rv uint) error {
	return &p11Error{kind: hsm.ErrNotAuthentic, fn: fnDecrypt, detail: "RSA decryption failed", rv: rv}
}

// padName names an RSA padding and the mechanism that serves it.
func padName(pad hsm.RSAPadding) string {
	switch pad {
	case hsm.PadPKCS1v15:
		return "CKM_RSA_PKCS"
	case hsm.PadOAEPSHA1:
		return "CKM_RSA_PKCS_OAEP with CKM_SHA_1 and CKG_MGF1_SHA1"
	case hsm.PadOAEPSHA256:
		return "CKM_RSA_PKCS_OAEP with CKM_SHA256 and CKG_MGF1_SHA256"
	}
	return "an unknown padding"
}
