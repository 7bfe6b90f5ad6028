package p11

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

func TestMACKey(t *testing.T) {
	tok, _ := newTestToken(t, 2)
	ctx := testCtx(t)
	id := []byte("test/mac/v1")
	if _, err := tok.MAC(ctx, id, []byte("x")); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("MAC before the key exists: %v, want ErrKeyNotFound", err)
	}
	if created, err := tok.EnsureMACKey(ctx, id, "mac"); err != nil || !created {
		t.Fatalf("EnsureMACKey = %v, %v; want a new key", created, err)
	}
	if created, err := tok.EnsureMACKey(ctx, id, "mac"); err != nil || created {
		t.Fatalf("second EnsureMACKey = %v, %v; want the existing key", created, err)
	}
	msg := []byte("hsmkms row v1 ...")
	m1, err := tok.MAC(ctx, id, msg)
	if err != nil || len(m1) != hsm.MACBytes {
		t.Fatalf("MAC: %x, %v", m1, err)
	}
	m2, err := tok.MAC(ctx, id, msg)
	if err != nil || !bytes.Equal(m1, m2) {
		t.Fatalf("MAC is not deterministic: %x %x %v", m1, m2, err)
	}
	if err := tok.VerifyMAC(ctx, id, msg, m1); err != nil {
		t.Fatalf("VerifyMAC of a good MAC: %v", err)
	}
	bad := bytes.Clone(m1)
	bad[5] ^= 1
	for name, c := range map[string]struct{ msg, mac []byte }{
		"flipped MAC bit": {msg, bad},
		"other message":   {[]byte("hsmkms row v1 ..!"), m1},
		"short MAC":       {msg, m1[:16]},
		"empty MAC":       {msg, nil},
	} {
		if err := tok.VerifyMAC(ctx, id, c.msg, c.mac); !errors.Is(err, hsm.ErrNotAuthentic) {
			t.Errorf("%s: VerifyMAC = %v, want ErrNotAuthentic", name, err)
		}
	}
	// The session stays usable after a failed verification.
	if err := tok.VerifyMAC(ctx, id, msg, m1); err != nil {
		t.Fatalf("VerifyMAC after failures: %v", err)
	}
	if _, err := tok.MAC(ctx, id, nil); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Errorf("MAC of an empty message: %v, want ErrInvalidInput", err)
	}
	// The MAC key is sign/verify only, sensitive and not extractable.
	withSession(t, tok, func(s pkcs11.SessionHandle) {
		hs, err := tok.find(s, id, 2)
		if err != nil || len(hs) != 1 {
			t.Fatalf("find: %v %v", hs, err)
		}
		attrs, err := tok.mod.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, nil),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, nil),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, nil),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		})
		if err != nil {
			t.Fatalf("GetAttributeValue: %v", err)
		}
		want := map[uint]bool{pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_SIGN: true,
			pkcs11.CKA_VERIFY: true, pkcs11.CKA_ENCRYPT: false, pkcs11.CKA_DECRYPT: false}
		for _, a := range attrs {
			if a.Type == pkcs11.CKA_KEY_TYPE {
				if a.Value[0] != byte(pkcs11.CKK_GENERIC_SECRET) {
					t.Errorf("key type %x, want CKK_GENERIC_SECRET", a.Value)
				}
				continue
			}
			if got := a.Value[0] == 1; got != want[a.Type] {
				t.Errorf("attribute %#x = %v, want %v", a.Type, got, want[a.Type])
			}
		}
	})
	// An AES CMK cannot MAC (CKA_SIGN false), and the MAC key cannot encrypt.
	cmk := []byte("test/cmk")
	mustGenerate(t, tok, cmk)
	if _, err := tok.MAC(ctx, cmk, msg); err == nil {
		t.Error("MAC under an AES CMK succeeded")
	}
	if _, _, err := tok.Seal(ctx, id, []byte("p"), []byte("aad")); err == nil {
		t.Error("Seal under the MAC key succeeded")
	}
	// KeyIDs lists it, so the service finds it the way it finds the credentials key.
	ids, err := tok.KeyIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range ids {
		found = found || bytes.Equal(x, id)
	}
	if !found {
		t.Errorf("KeyIDs %q does not list the MAC key", ids)
	}
}

// The metadata MAC key is found by its id wherever it is labelled (here
// under another label prefix, so no listing shows it) and never generated
// again: MACs made before still verify.
func TestMACKeyNeverRegenerated(t *testing.T) {
	tok, st := newTestToken(t, 1)
	ctx := testCtx(t)
	id := []byte("hsmkms/metadata-mac/v1")
	if created, err := tok.EnsureMACKey(ctx, id, "metadata-mac/v1"); err != nil || !created {
		t.Fatalf("EnsureMACKey = %v, %v", created, err)
	}
	msg := []byte("a row")
	m, err := tok.MAC(ctx, id, msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(st, 1)
	cfg.LabelPrefix = "other-prefix:"
	tok2, err := OpenToken(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tok2.Close()
	if created, err := tok2.EnsureMACKey(ctx, id, "metadata-mac/v1"); err != nil || created {
		t.Fatalf("EnsureMACKey of an existing id = %v, %v; want the existing key", created, err)
	}
	withSession(t, tok2, func(s pkcs11.SessionHandle) {
		if hs, err := tok2.find(s, id, 3); err != nil || len(hs) != 1 {
			t.Fatalf("%d objects with the MAC key's id (%v), want 1", len(hs), err)
		}
	})
	if err := tok2.VerifyMAC(ctx, id, msg, m); err != nil {
		t.Fatalf("VerifyMAC of a MAC made before: %v; the key was replaced", err)
	}
}

// Creators racing for the MAC key (two Tokens stand for two nodes) end with
// exactly one key, which every creator uses.
func TestMACKeyConcurrentCreators(t *testing.T) {
	tok, st := newTestToken(t, 1)
	tok2, err := OpenToken(context.Background(), testConfig(st, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer tok2.Close()
	ctx := testCtx(t)
	for round := range 3 {
		id := []byte(fmt.Sprintf("hsmkms/metadata-mac/%d", round))
		var made atomic.Int32
		errs := make(chan error, 6)
		var wg sync.WaitGroup
		for i := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				created, err := []*Token{tok, tok2}[i%2].EnsureMACKey(ctx, id, "mac")
				if created {
					made.Add(1)
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: EnsureMACKey: %v", round, err)
			}
		}
		if n := made.Load(); n != 1 {
			t.Fatalf("round %d: %d creators report creating the key, want 1", round, n)
		}
		withSession(t, tok, func(s pkcs11.SessionHandle) {
			if hs, err := tok.find(s, id, 3); err != nil || len(hs) != 1 {
				t.Fatalf("round %d: %d objects with the id (%v), want 1", round, len(hs), err)
			}
		})
		m, err := tok.MAC(ctx, id, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if err := tok2.VerifyMAC(ctx, id, []byte("x"), m); err != nil {
			t.Fatalf("round %d: the two creators use different keys: %v", round, err)
		}
	}
}
