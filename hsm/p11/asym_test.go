package p11

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

func randomID(t *testing.T) []byte {
	t.Helper()
	id := make([]byte, randomIDLen)
	if _, err := rand.Read(id); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestAsymSupport: the conformance modules (SoftHSM2, NSS softoken) offer
// every standard mechanism the asymmetric CMKs use, and SM2/SM4 are
// reported missing with the reason.
func TestAsymSupport(t *testing.T) {
	tok, _ := newTestToken(t, 2)
	sup, err := tok.AsymSupport(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []hsm.KeySpec{hsm.SpecRSA2048, hsm.SpecECP256, hsm.SpecECP384} {
		if !slices.Contains(sup.Specs, s) {
			t.Errorf("spec %s missing (%s)", s, sup.Missing[string(s)])
		}
	}
	for _, m := range []hsm.SignMechanism{hsm.SignRSAPKCS1SHA256, hsm.SignRSAPSSSHA256, hsm.SignECDSA} {
		if !slices.Contains(sup.Sign, m) {
			t.Errorf("sign mechanism %d missing: %v", m, sup.Missing)
		}
	}
	for _, p := range []hsm.RSAPadding{hsm.PadPKCS1v15, hsm.PadOAEPSHA1, hsm.PadOAEPSHA256} {
		if !slices.Contains(sup.Decrypt, p) {
			t.Errorf("padding %d missing: %v", p, sup.Missing)
		}
	}
	if sup.Missing["SM2"] == "" || sup.Missing["SM4"] == "" {
		t.Errorf("SM2/SM4 not reported missing: %v", sup.Missing)
	}
}

// privateAttrs reads the security attributes of the private key objectID.
func privateAttrs(t *testing.T, tok *Token, objectID []byte) map[uint]bool {
	t.Helper()
	got := map[uint]bool{}
	withSession(t, tok, func(s pkcs11.SessionHandle) {
		hs, err := tok.findClass(s, pkcs11.CKO_PRIVATE_KEY, objectID, 2)
		if err != nil || len(hs) != 1 {
			t.Fatalf("find private key: %v, %d handles", err, len(hs))
		}
		types := []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
			pkcs11.CKA_SIGN, pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE}
		var q []*pkcs11.Attribute
		for _, ty := range types {
			q = append(q, pkcs11.NewAttribute(ty, nil))
		}
		attrs, err := tok.mod.GetAttributeValue(s, hs[0], q)
		if err != nil {
			t.Fatalf("GetAttributeValue: %v", err)
		}
		for _, a := range attrs {
			got[a.Type] = len(a.Value) == 1 && a.Value[0] == 1
		}
		// The secret part cannot be read.
		secret := uint(pkcs11.CKA_PRIVATE_EXPONENT)
		kt, _ := tok.mod.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
		if len(kt) == 1 && new(big.Int).SetBytes(reverse(kt[0].Value)).Uint64() == pkcs11.CKK_EC {
			secret = pkcs11.CKA_VALUE
		}
		if v, err := tok.mod.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(secret, nil)}); err == nil && len(v) == 1 && len(v[0].Value) > 0 {
			t.Errorf("the private key's secret attribute 0x%x was readable", secret)
		}
		// No public key object is left behind: the public half was a
		// session object, destroyed at once.
		if err := tok.mod.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY)}); err != nil {
			t.Fatal(err)
		}
		pubs, _, err := tok.mod.FindObjects(s, 10)
		_ = tok.mod.FindObjectsFinal(s)
		if err != nil || len(pubs) != 0 {
			t.Errorf("public key objects left: %d (%v)", len(pubs), err)
		}
	})
	return got
}

// reverse turns a little-endian CK_ULONG attribute into big-endian bytes.
func reverse(b []byte) []byte {
	out := slices.Clone(b)
	slices.Reverse(out)
	return out
}

// TestKeyPairAttributesAndUse generates each kind of key pair, checks the
// private key's attributes through PKCS#11 (token, private, sensitive,
// not extractable, only its one use), and uses it: signatures verified by
// the Go standard library, ciphertexts of the standard library decrypted,
// a wrong use refused, bad ciphertexts answered with one error.
func TestKeyPairAttributesAndUse(t *testing.T) {
	tok, st := newTestToken(t, 2)
	ctx := testCtx(t)
	cases := []struct {
		name string
		spec hsm.KeySpec
		use  hsm.KeyPairUse
	}{
		{"rsa-sign", hsm.SpecRSA2048, hsm.UseSign},
		{"rsa-decrypt", hsm.SpecRSA2048, hsm.UseDecrypt},
		{"p256", hsm.SpecECP256, hsm.UseSign},
		{"p384", hsm.SpecECP384, hsm.UseSign},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := randomID(t)
			der, err := tok.GenerateKeyPair(ctx, id, "asym-"+c.name, c.spec, c.use)
			if err != nil {
				t.Fatalf("GenerateKeyPair: %v", err)
			}
			pub, err := x509.ParsePKIXPublicKey(der)
			if err != nil {
				t.Fatalf("public key: %v", err)
			}
			attrs := privateAttrs(t, tok, id)
			want := map[uint]bool{pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true,
				pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_SIGN: c.use == hsm.UseSign, pkcs11.CKA_DECRYPT: c.use == hsm.UseDecrypt,
				pkcs11.CKA_UNWRAP: false, pkcs11.CKA_DERIVE: false}
			for a, w := range want {
				if attrs[a] != w {
					t.Errorf("attribute 0x%x = %v, want %v", a, attrs[a], w)
				}
			}
			msg := []byte("message of " + c.name)
			switch c.use {
			case hsm.UseSign:
				checkSignatures(t, tok, id, pub, msg)
				if _, err := tok.DecryptRSA(ctx, id, hsm.PadPKCS1v15, make([]byte, 256)); err == nil {
					t.Error("a signing key decrypted")
				}
			case hsm.UseDecrypt:
				rk := pub.(*rsa.PublicKey)
				checkDecrypt(t, tok, id, rk, msg, st.SoftHSM2())
				if _, err := tok.SignDigest(ctx, id, hsm.SignRSAPKCS1SHA256, make([]byte, 32)); err == nil {
					t.Error("a decryption key signed")
				}
			}
			ids, err := tok.KeyIDs(ctx)
			if err != nil || !slices.ContainsFunc(ids, func(x []byte) bool { return bytes.Equal(x, id) }) {
				t.Errorf("KeyIDs does not list the private key: %v", err)
			}
			if err := tok.DestroyKey(ctx, id); err != nil {
				t.Fatalf("DestroyKey: %v", err)
			}
			if err := tok.DestroyKey(ctx, id); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Errorf("second DestroyKey: %v, want ErrKeyNotFound", err)
			}
		})
	}
}

func checkSignatures(t *testing.T, tok *Token, id []byte, pub any, msg []byte) {
	t.Helper()
	ctx := testCtx(t)
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		sig, err := tok.SignDigest(ctx, id, hsm.SignRSAPKCS1SHA256, d[:])
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPKCS1v15(pk, crypto.SHA256, d[:], sig); err != nil {
			t.Errorf("PKCS #1 v1.5 signature: %v", err)
		}
		sig, err = tok.SignDigest(ctx, id, hsm.SignRSAPSSSHA256, d[:])
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPSS(pk, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: 32}); err != nil {
			t.Errorf("PSS signature: %v", err)
		}
	case *ecdsa.PublicKey:
		var d []byte
		if pk.Curve.Params().BitSize == 384 {
			h := sha512.Sum384(msg)
			d = h[:]
		} else {
			h := sha256.Sum256(msg)
			d = h[:]
		}
		sig, err := tok.SignDigest(ctx, id, hsm.SignECDSA, d)
		if err != nil {
			t.Fatal(err)
		}
		n := (pk.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*n {
			t.Fatalf("ECDSA signature of %d bytes, want r||s of %d", len(sig), 2*n)
		}
		der, _ := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])})
		if !ecdsa.VerifyASN1(pk, d, der) {
			t.Error("ECDSA signature does not verify")
		}
	default:
		t.Fatalf("public key of type %T", pub)
	}
}

func checkDecrypt(t *testing.T, tok *Token, id []byte, pk *rsa.PublicKey, msg []byte, noOAEP256 bool) {
	t.Helper()
	ctx := testCtx(t)
	ct15, err := rsa.EncryptPKCS1v15(rand.Reader, pk, msg)
	if err != nil {
		t.Fatal(err)
	}
	ct1, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pk, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ct256, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pk, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pad hsm.RSAPadding
		ct  []byte
	}{{hsm.PadPKCS1v15, ct15}, {hsm.PadOAEPSHA1, ct1}, {hsm.PadOAEPSHA256, ct256}} {
		pt, err := tok.DecryptRSA(ctx, id, c.pad, c.ct)
		if c.pad == hsm.PadOAEPSHA256 && noOAEP256 {
			// SoftHSM 2.6: OAEP with SHA-1 only (vendors.go).
			if !errors.Is(err, hsm.ErrMisconfigured) || !strings.Contains(err.Error(), "CKM_SHA256") {
				t.Errorf("OAEP-SHA-256 on a module without it: %v, want ErrMisconfigured naming the mechanism", err)
			}
			continue
		}
		if err != nil || !bytes.Equal(pt, msg) {
			t.Errorf("padding %d: %q, %v", c.pad, pt, err)
		}
		// A ciphertext of another padding, a flipped bit and a short
		// ciphertext all give the one error.
		bad := slices.Clone(c.ct)
		bad[len(bad)-1] ^= 1
		other := ct256
		if c.pad == hsm.PadOAEPSHA256 {
			other = ct1
		}
		for i, b := range [][]byte{bad, other, c.ct[:100]} {
			pt, err := tok.DecryptRSA(ctx, id, c.pad, b)
			if c.pad == hsm.PadPKCS1v15 && i < 2 && err == nil && !bytes.Equal(pt, msg) {
				// NSS softoken: implicit rejection, a synthetic
				// plaintext instead of an error (vendors.go).
				continue
			}
			if !errors.Is(err, hsm.ErrNotAuthentic) {
				t.Errorf("padding %d, bad ciphertext %d: %v, want ErrNotAuthentic", c.pad, i, err)
			}
		}
	}
	// The token still works after the failures (none counted as a fault).
	if pt, err := tok.DecryptRSA(ctx, id, hsm.PadOAEPSHA1, ct1); err != nil || !bytes.Equal(pt, msg) {
		t.Errorf("after failures: %q, %v", pt, err)
	}
}
