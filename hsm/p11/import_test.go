package p11

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"hash"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// wrapFor wraps material under the DER public key pubDER with RSAES-OAEP
// (hash h, empty label), as an importer does with the stdlib.
func wrapFor(t *testing.T, pubDER []byte, h hsm.OAEPHash, material []byte) []byte {
	t.Helper()
	pk, err := x509.ParsePKIXPublicKey(pubDER)
	if err != nil {
		t.Fatalf("ParsePKIXPublicKey: %v", err)
	}
	rpk, ok := pk.(*rsa.PublicKey)
	if !ok || rpk.N.BitLen() != 2048 {
		t.Fatalf("public key is %T, want a 2048-bit RSA key", pk)
	}
	var hf hash.Hash = sha256.New()
	if h == hsm.OAEPSHA1 {
		hf = sha1.New()
	}
	out, err := rsa.EncryptOAEP(hf, rand.Reader, rpk, material, nil)
	if err != nil {
		t.Fatalf("EncryptOAEP: %v", err)
	}
	return out
}

// objectAttrs reads boolean attributes of the object of class class with
// CKA_ID id.
func objectAttrs(t *testing.T, tok *Token, class uint, id []byte, types ...uint) map[uint]bool {
	t.Helper()
	out := map[uint]bool{}
	withSession(t, tok, func(s pkcs11.SessionHandle) {
		if err := tok.mod.FindObjectsInit(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}); err != nil {
			t.Fatalf("FindObjectsInit: %v", err)
		}
		hs, _, err := tok.mod.FindObjects(s, 2)
		_ = tok.mod.FindObjectsFinal(s)
		if err != nil || len(hs) != 1 {
			t.Fatalf("FindObjects: %d objects, %v", len(hs), err)
		}
		var req []*pkcs11.Attribute
		for _, ty := range types {
			req = append(req, pkcs11.NewAttribute(ty, nil))
		}
		attrs, err := tok.mod.GetAttributeValue(s, hs[0], req)
		if err != nil {
			t.Fatalf("GetAttributeValue: %v", err)
		}
		for _, a := range attrs {
			out[a.Type] = attrTrue(a.Value)
		}
	})
	return out
}

func TestImportKeyMaterialRoundTrip(t *testing.T) {
	tok, st := newTestToken(t, 2)
	ctx := testCtx(t)
	supported := map[hsm.OAEPHash]bool{}
	for _, h := range []hsm.OAEPHash{hsm.OAEPSHA1, hsm.OAEPSHA256} {
		err := tok.OAEPSupported(ctx, h)
		switch {
		case err == nil:
			supported[h] = true
		case h == hsm.OAEPSHA256 && st.SoftHSM2() && errors.Is(err, hsm.ErrMisconfigured):
			// SoftHSM2 2.6 unwraps OAEP with SHA-1 only (vendors.go):
			// the probe must say so, and say it again from memory.
			if err2 := tok.OAEPSupported(ctx, h); !errors.Is(err2, hsm.ErrMisconfigured) {
				t.Fatalf("second OAEPSupported(SHA-256) = %v", err2)
			}
			t.Logf("as documented for SoftHSM2: %v", err)
		default:
			t.Fatalf("OAEPSupported(%d) = %v", h, err)
		}
	}
	if !supported[hsm.OAEPSHA1] {
		t.Fatal("every module tested unwraps OAEP with SHA-1")
	}
	material := bytes.Repeat([]byte{0x5a}, 32)
	material[0] = 1
	block, _ := aes.NewCipher(material)
	wantKCV := make([]byte, 16)
	block.Encrypt(wantKCV, make([]byte, 16))

	for _, h := range []hsm.OAEPHash{hsm.OAEPSHA1, hsm.OAEPSHA256} {
		if !supported[h] {
			continue
		}
		wrapID := []byte{byte(h), 'w', 'r', 'a', 'p', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
		pub, err := tok.GenerateWrappingKey(ctx, wrapID, "test")
		if err != nil {
			t.Fatalf("GenerateWrappingKey: %v", err)
		}
		// The private half: sensitive, never extractable, unwrap only.
		pa := objectAttrs(t, tok, pkcs11.CKO_PRIVATE_KEY, wrapID, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
			pkcs11.CKA_UNWRAP, pkcs11.CKA_DECRYPT, pkcs11.CKA_SIGN, pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE)
		if !pa[pkcs11.CKA_SENSITIVE] || pa[pkcs11.CKA_EXTRACTABLE] || !pa[pkcs11.CKA_UNWRAP] || pa[pkcs11.CKA_DECRYPT] ||
			pa[pkcs11.CKA_SIGN] || !pa[pkcs11.CKA_TOKEN] || !pa[pkcs11.CKA_PRIVATE] {
			t.Fatalf("wrapping key attributes: %v", pa)
		}
		ids, err := tok.WrappingKeyIDs(ctx)
		if err != nil || !slices.ContainsFunc(ids, func(id []byte) bool { return bytes.Equal(id, wrapID) }) {
			t.Fatalf("WrappingKeyIDs = %x, %v; want it to list %x", ids, err, wrapID)
		}

		wrapped := wrapFor(t, pub, h, material)
		// A comparison import leaves nothing behind.
		kcv, err := tok.ImportKey(ctx, wrapID, h, wrapped, []byte("session-only-000"), "x", false)
		if err != nil || !bytes.Equal(kcv, wantKCV) {
			t.Fatalf("ImportKey(session) = %x, %v; want KCV %x", kcv, err, wantKCV)
		}
		objectID := []byte{byte(h), 'i', 'm', 'p', 'o', 'r', 't', 0, 0, 0, 0, 0, 0, 0, 0, 1}
		kcv, err = tok.ImportKey(ctx, wrapID, h, wrapped, objectID, "imported/v1", true)
		if err != nil || !bytes.Equal(kcv, wantKCV) {
			t.Fatalf("ImportKey = %x, %v; want KCV %x", kcv, err, wantKCV)
		}
		// The imported object: AES-256, sensitive, never extractable,
		// encrypt/decrypt only.
		ka := objectAttrs(t, tok, pkcs11.CKO_SECRET_KEY, objectID, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
			pkcs11.CKA_TOKEN, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_SIGN)
		if !ka[pkcs11.CKA_SENSITIVE] || ka[pkcs11.CKA_EXTRACTABLE] || !ka[pkcs11.CKA_TOKEN] || !ka[pkcs11.CKA_ENCRYPT] ||
			!ka[pkcs11.CKA_DECRYPT] || ka[pkcs11.CKA_WRAP] || ka[pkcs11.CKA_UNWRAP] || ka[pkcs11.CKA_SIGN] {
			t.Fatalf("imported key attributes: %v", ka)
		}
		keyIDs, err := tok.KeyIDs(ctx)
		if err != nil || !slices.ContainsFunc(keyIDs, func(id []byte) bool { return bytes.Equal(id, objectID) }) ||
			slices.ContainsFunc(keyIDs, func(id []byte) bool { return bytes.Equal(id, []byte("session-only-000")) }) {
			t.Fatalf("KeyIDs = %x, %v", keyIDs, err)
		}
		// The token encrypts with exactly the imported key.
		iv, sealed, err := tok.Seal(ctx, objectID, []byte("hello"), []byte("aad"))
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		gcm, _ := cipher.NewGCM(block)
		if pt, err := gcm.Open(nil, iv, sealed, []byte("aad")); err != nil || string(pt) != "hello" {
			t.Fatalf("stdlib GCM open = %q, %v", pt, err)
		}

		// Wrong hash, garbage, a 16-byte key: ErrNotAuthentic, nothing made.
		other := hsm.OAEPSHA256
		if h == other {
			other = hsm.OAEPSHA1
		}
		short := wrapFor(t, pub, h, material[:16])
		garbage := bytes.Repeat([]byte{7}, hsm.WrappedKeyBytes)
		for name, c := range map[string]struct {
			h hsm.OAEPHash
			w []byte
		}{"other hash": {other, wrapped}, "garbage": {h, garbage}, "16-byte key": {h, short}} {
			if !supported[c.h] {
				continue
			}
			bad := []byte("bad-import-00000")
			if _, err := tok.ImportKey(ctx, wrapID, c.h, c.w, bad, "bad", true); !errors.Is(err, hsm.ErrNotAuthentic) {
				t.Errorf("%s: ImportKey = %v, want ErrNotAuthentic", name, err)
			}
			if err := tok.DestroyKey(ctx, bad); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Errorf("%s: an object was left behind (DestroyKey = %v)", name, err)
			}
		}

		if err := tok.DestroyWrappingKey(ctx, wrapID); err != nil {
			t.Fatalf("DestroyWrappingKey: %v", err)
		}
		if _, err := tok.ImportKey(ctx, wrapID, h, wrapped, []byte("after-destroy-00"), "x", true); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Fatalf("ImportKey after destroy = %v, want ErrKeyNotFound", err)
		}
		if err := tok.DestroyWrappingKey(ctx, wrapID); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Fatalf("second DestroyWrappingKey = %v, want ErrKeyNotFound", err)
		}
		// A CMK's id is never destroyed as a wrapping key.
		if err := tok.DestroyWrappingKey(ctx, objectID); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Fatalf("DestroyWrappingKey(CMK id) = %v, want ErrKeyNotFound", err)
		}
	}
}

// A module without the mechanisms of key import: each call fails with
// hsm.ErrMisconfigured naming the mechanism (C_GetMechanismInfo is asked
// first), and nothing is left on the token. Needs SoftHSM2 (the fault
// module wraps it).
func TestImportMechanismsChecked(t *testing.T) {
	tok, ctl := newFaultToken(t, 2, nil)
	ctx := testCtx(t)
	ctl.HideMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN)
	if _, err := tok.GenerateWrappingKey(ctx, []byte("wrap-hidden-0001"), "x"); !errors.Is(err, hsm.ErrMisconfigured) ||
		!strings.Contains(err.Error(), "CKM_RSA_PKCS_KEY_PAIR_GEN") {
		t.Fatalf("GenerateWrappingKey without CKM_RSA_PKCS_KEY_PAIR_GEN = %v", err)
	}
	ctl.HideMechanism(pkcs11.CKM_RSA_PKCS_OAEP)
	pub, err := tok.GenerateWrappingKey(ctx, []byte("wrap-ok-00000001"), "x")
	if err != nil {
		t.Fatal(err)
	}
	wrapped := wrapFor(t, pub, hsm.OAEPSHA1, make([]byte, 32))
	if _, err := tok.ImportKey(ctx, []byte("wrap-ok-00000001"), hsm.OAEPSHA1, wrapped, []byte("import-hidden-01"), "x", true); !errors.Is(err, hsm.ErrMisconfigured) ||
		!strings.Contains(err.Error(), "CKM_RSA_PKCS_OAEP") {
		t.Fatalf("ImportKey without CKM_RSA_PKCS_OAEP = %v", err)
	}
	if err := tok.OAEPSupported(ctx, hsm.OAEPSHA1); !errors.Is(err, hsm.ErrMisconfigured) || !strings.Contains(err.Error(), "CKM_RSA_PKCS_OAEP") {
		t.Fatalf("OAEPSupported without CKM_RSA_PKCS_OAEP = %v", err)
	}
	if ids, err := tok.KeyIDs(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("KeyIDs = %x, %v: something was unwrapped", ids, err)
	}
	if ids, err := tok.WrappingKeyIDs(ctx); err != nil || len(ids) != 1 {
		t.Fatalf("WrappingKeyIDs = %x, %v; want only the one made", ids, err)
	}
}
