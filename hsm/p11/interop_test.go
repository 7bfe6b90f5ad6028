package p11

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
	"hsmkms/softhsm"
)

// Test 4a: crypto11 is an independent oracle. It opens what Seal made, and
// Open opens what crypto11 sealed. The two never have the module loaded at
// the same time: the Token is closed (C_Finalize) before crypto11 is
// configured, and crypto11 closed before the Token is opened again.
//
// Needs SoftHSM2 whatever KMS_TEST_PKCS11 says: crypto11 v1.6.2 cannot pass
// C_Initialize arguments, which NSS softoken requires.
func TestInteropCrypto11(t *testing.T) {
	st := softhsm.NewSoftHSM2Token(t)
	tok, err := OpenToken(context.Background(), testConfig(st, 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	ctx := testCtx(t)
	id := []byte("interop")
	mustGenerate(t, tok, id)
	pt := []byte("sealed by hsm/p11, opened by crypto11")
	aad := []byte("interop header")
	iv, sealed, err := tok.Seal(ctx, id, pt, aad)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}

	pt2 := []byte("sealed by crypto11, opened by hsm/p11")
	iv2 := make([]byte, hsm.IVBytes)
	if _, err := rand.Read(iv2); err != nil {
		t.Fatal(err)
	}
	sealed2 := func() []byte {
		c11, err := crypto11.Configure(&crypto11.Config{
			Path:        st.Module,
			TokenLabel:  st.Label,
			Pin:         st.PIN,
			MaxSessions: 2,
			GCMIVLength: hsm.IVBytes,
		})
		if err != nil {
			t.Fatalf("crypto11.Configure: %v", err)
		}
		defer func() {
			if err := c11.Close(); err != nil {
				t.Errorf("crypto11 Close: %v", err)
			}
		}()
		key, err := c11.FindKey(id, nil)
		if err != nil || key == nil {
			t.Fatalf("crypto11 FindKey: %v, %v", key, err)
		}
		aead, err := key.NewGCM()
		if err != nil {
			t.Fatal(err)
		}
		if aead.NonceSize() != hsm.IVBytes || aead.Overhead() != hsm.TagBytes {
			t.Fatalf("crypto11 GCM nonce %d overhead %d", aead.NonceSize(), aead.Overhead())
		}
		got, err := aead.Open(nil, iv, sealed, aad)
		if err != nil {
			t.Fatalf("crypto11 Open of our ciphertext: %v", err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("crypto11 Open = %q, want %q", got, pt)
		}
		tampered := bytes.Clone(sealed)
		tampered[0] ^= 1
		if _, err := aead.Open(nil, iv, tampered, aad); err == nil {
			t.Fatal("crypto11 opened a tampered ciphertext")
		}
		var out []byte
		func() {
			defer func() {
				if r := recover(); r != nil { // crypto11 Seal panics on errors
					t.Fatalf("crypto11 Seal panicked: %v", r)
				}
			}()
			out = aead.Seal(nil, iv2, pt2, aad)
		}()
		return out
	}()

	tok2, err := OpenToken(ctx, Config{ModulePath: st.Module, TokenLabel: st.Label, PIN: st.PIN, Sessions: 1})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer tok2.Close()
	got, err := tok2.Open(ctx, id, iv2, sealed2, aad)
	if err != nil {
		t.Fatalf("Open of crypto11's ciphertext: %v", err)
	}
	if !bytes.Equal(got, pt2) {
		t.Fatalf("Open = %q, want %q", got, pt2)
	}
}

// Test 4b: known answer against crypto/cipher. A session key with a known,
// readable value (CKA_SENSITIVE=false, extractable, not a token object) is
// put on the token under an object id; Seal's output must be exactly Go's
// GCM Seal, and Open must accept Go's output.
func TestKnownAnswerVsStdlib(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	ctx := testCtx(t)
	id := []byte("kat")
	key := make([]byte, hsm.KeyBytes)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	withSession(t, tok, func(s pkcs11.SessionHandle) {
		_, err := tok.mod.CreateObject(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, key),
		})
		if err != nil {
			t.Fatalf("CreateObject: %v", err)
		}
	})
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 16, 33, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			pt := make([]byte, n)
			if _, err := rand.Read(pt); err != nil {
				t.Fatal(err)
			}
			aad := fmt.Appendf(nil, "aad for %d", n)
			iv, sealed, err := tok.Seal(ctx, id, pt, aad)
			if err != nil {
				t.Fatal(err)
			}
			if want := gcm.Seal(nil, iv, pt, aad); !bytes.Equal(sealed, want) {
				t.Fatalf("Seal = %x, crypto/cipher = %x", sealed, want)
			}
			iv2 := make([]byte, hsm.IVBytes)
			if _, err := rand.Read(iv2); err != nil {
				t.Fatal(err)
			}
			got, err := tok.Open(ctx, id, iv2, gcm.Seal(nil, iv2, pt, aad), aad)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Open of crypto/cipher output = %x, %v; want %x", got, err, pt)
			}
		})
	}
}
