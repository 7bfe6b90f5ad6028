package p11

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
	"hsmkms/softhsm"
)

// Conformance tests for the module behaviours that differ between PKCS#11
// implementations (vendors.go). They run on whatever module the environment
// selects (softhsm.EnvKind): make test runs them on SoftHSM2 and on NSS
// softoken.

// A CMK cannot be relabelled or re-purposed: CKA_MODIFIABLE is false,
// unless working copies are on and the module copies no unmodifiable key
// (SoftHSM2), in which case the working copies win (probeUnmodifiableCopies)
// and CMKs made with working copies off are unmodifiable.
func TestCMKNotModifiable(t *testing.T) {
	st := softhsm.NewToken(t)
	ctx := testCtx(t)
	for _, copies := range []bool{false, true} {
		cfg := testConfig(st, 1)
		cfg.NoWorkingCopies = !copies
		tok, err := OpenToken(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		id := []byte(fmt.Sprintf("cmk-unmodifiab-%d", map[bool]int{false: 0, true: 1}[copies]))
		if err := tok.GenerateKey(ctx, id, "cmk"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
			t.Fatal(err)
		}
		if copies && tok.cmkModifiable {
			if len(tok.workingCopies(id)) != 1 {
				t.Fatal("CMKs are modifiable for the sake of working copies, but there is no working copy")
			}
			tok.Close()
			continue
		}
		if copies && len(tok.workingCopies(id)) != 1 {
			t.Fatalf("an unmodifiable CMK has no working copy on a module that copies them")
		}
		withSession(t, tok, func(s pkcs11.SessionHandle) {
			h, _, err := tok.resolve(s, id)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, "someone else's"),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
				pkcs11.NewAttribute(pkcs11.CKA_ID, []byte("stolen-id")),
			} {
				if err := tok.mod.SetAttributeValue(s, h, []*pkcs11.Attribute{a}); err == nil {
					t.Errorf("copies %v: C_SetAttributeValue(0x%x) on a CMK succeeded", copies, a.Type)
				}
			}
		})
		tok.Close()
	}
}

// A key with a fixed object id is never generated again once it exists,
// even when a listing filtered by label prefix misses it (another prefix,
// another node): the existing key and what it sealed survive. On NSS
// softoken a second C_GenerateKey with the id would replace the key's
// material; on SoftHSM2 it would make a second object (ambiguous).
func TestFixedIDNeverRegenerated(t *testing.T) {
	tok, st := newTestToken(t, 1)
	ctx := testCtx(t)
	id := []byte("hsmkms/credentials-kek/v1")
	if err := tok.GenerateKey(ctx, id, "credentials-kek/v1"); err != nil {
		t.Fatal(err)
	}
	iv, sealed, err := tok.Seal(ctx, id, []byte("a SecretKey"), testAAD)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}
	// Another prefix: the listing does not show the key, so the service
	// thinks it is missing and asks for it again.
	cfg := testConfig(st, 1)
	cfg.LabelPrefix = "other-prefix:"
	tok2, err := OpenToken(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tok2.Close()
	ids, err := tok2.KeyIDs(ctx)
	if err != nil || len(ids) != 0 {
		t.Fatalf("KeyIDs under another prefix = %q, %v; want none", ids, err)
	}
	if err := tok2.GenerateKey(ctx, id, "credentials-kek/v1"); err != nil {
		t.Fatalf("GenerateKey of an existing fixed id = %v, want nil (kept)", err)
	}
	created, err := tok2.EnsureKey(ctx, id, "credentials-kek/v1")
	if err != nil || created {
		t.Fatalf("EnsureKey of an existing fixed id = %v, %v; want the existing key", created, err)
	}
	withSession(t, tok2, func(s pkcs11.SessionHandle) {
		if hs, err := tok2.find(s, id, 3); err != nil || len(hs) != 1 {
			t.Fatalf("%d objects with the fixed id (%v), want 1", len(hs), err)
		}
	})
	pt, err := tok2.Open(ctx, id, iv, sealed, testAAD)
	if err != nil || string(pt) != "a SecretKey" {
		t.Fatalf("Open of data sealed before = %q, %v; the key was replaced", pt, err)
	}
}

// Creators racing for one fixed id (two Tokens stand for two nodes) end
// with exactly one key, which every creator uses.
func TestFixedIDConcurrentCreators(t *testing.T) {
	tok, st := newTestToken(t, 1)
	tok2, err := OpenToken(context.Background(), testConfig(st, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer tok2.Close()
	ctx := testCtx(t)
	for round := range 5 {
		id := []byte(fmt.Sprintf("hsmkms/fixed/%d", round))
		var wg sync.WaitGroup
		var mu sync.Mutex
		made := 0
		errs := make(chan error, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tk := []*Token{tok, tok2}[i%2]
				created, err := tk.EnsureKey(ctx, id, "fixed")
				if created {
					mu.Lock()
					made++
					mu.Unlock()
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: EnsureKey: %v", round, err)
			}
		}
		if made != 1 {
			t.Fatalf("round %d: %d creators report creating the key, want 1", round, made)
		}
		withSession(t, tok, func(s pkcs11.SessionHandle) {
			if hs, err := tok.find(s, id, 3); err != nil || len(hs) != 1 {
				t.Fatalf("round %d: %d objects with the id (%v), want 1", round, len(hs), err)
			}
		})
		iv, sealed, err := tok.Seal(ctx, id, []byte("x"), testAAD)
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := tok2.Open(ctx, id, iv, sealed, testAAD); err != nil || string(pt) != "x" {
			t.Fatalf("round %d: the two creators use different keys: %q %v", round, pt, err)
		}
	}
}

// Seal and Open never ask the module for a length (a NULL output buffer):
// NSS softoken answers a GCM encryption's length query with the plaintext
// length, and the call that follows fails with CKR_BUFFER_TOO_SMALL. Both
// the direct path and the binding path size outputs exactly, for every
// size around the tag and block lengths.
func TestExactOutputSizing(t *testing.T) {
	st := softhsm.NewToken(t)
	ctx := testCtx(t)
	for _, direct := range []bool{true, false} {
		cfg := testConfig(st, 1)
		cfg.noDirectGCM = !direct
		tok, err := OpenToken(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		id := []byte("sizing")
		if err := tok.GenerateKey(ctx, id, "sizing"); err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 1000, 64 << 10} {
			pt := bytes.Repeat([]byte{byte(n)}, n)
			iv, sealed, err := tok.Seal(ctx, id, pt, testAAD)
			if err != nil || len(sealed) != n+hsm.TagBytes {
				t.Fatalf("direct %v: Seal(%d bytes) = %d bytes, %v", direct, n, len(sealed), err)
			}
			got, err := tok.Open(ctx, id, iv, sealed, testAAD)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("direct %v: Open(%d bytes) = %d bytes, %v", direct, n, len(got), err)
			}
		}
		if err := tok.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Random asks the module for at most randomChunk bytes per call: NSS
// softoken refuses more than 64 KiB at once.
func TestRandomLarge(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	ctx := testCtx(t)
	for _, n := range []int{randomChunk - 1, randomChunk, randomChunk + 1, 64 << 10, 64<<10 + 1, maxRandom} {
		b, err := tok.Random(ctx, n)
		if err != nil || len(b) != n {
			t.Fatalf("Random(%d) = %d bytes, %v", n, len(b), err)
		}
		if n >= 64 && bytes.Equal(b[:32], b[len(b)-32:]) {
			t.Fatalf("Random(%d): first and last 32 bytes equal", n)
		}
	}
	if _, err := tok.Random(ctx, maxRandom+1); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("Random(maxRandom+1) = %v", err)
	}
}

// A working copy never has CKA_WRAP or CKA_UNWRAP: a CMK made by another
// tool with CKA_WRAP=true is used through the token object, never copied
// into a session object that could wrap keys out.
func TestNoWorkingCopyWithWrap(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	ctx := testCtx(t)
	id := []byte("wrapping-key-16b")
	withSession(t, tok, func(s pkcs11.SessionHandle) {
		tmpl := keyTemplate(id, DefaultLabelPrefix+"made elsewhere")
		for i, a := range tmpl {
			if a.Type == pkcs11.CKA_WRAP {
				tmpl[i] = pkcs11.NewAttribute(pkcs11.CKA_WRAP, true)
			}
		}
		if _, err := tok.mod.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl); err != nil {
			t.Fatal(err)
		}
	})
	iv, sealed, err := tok.Seal(ctx, id, []byte("x"), testAAD)
	if err != nil {
		t.Fatal(err)
	}
	if hs := tok.workingCopies(id); len(hs) != 0 {
		t.Fatalf("%d working copies of a key with CKA_WRAP", len(hs))
	}
	if pt, err := tok.Open(ctx, id, iv, sealed, testAAD); err != nil || string(pt) != "x" {
		t.Fatalf("Open = %q, %v", pt, err)
	}
	if tok.noCopies.Load() {
		t.Fatal("one unsafe key turned copies off for every key")
	}
}

// The self-check passes on the module under test and leaves nothing on the
// token; it can be run again.
func TestSelfCheckPassesAndLeavesNothing(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	ctx := testCtx(t)
	count := func() int {
		n := 0
		withSession(t, tok, func(s pkcs11.SessionHandle) {
			if err := tok.mod.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)}); err != nil {
				t.Fatal(err)
			}
			hs, _, err := tok.mod.FindObjects(s, 1000)
			_ = tok.mod.FindObjectsFinal(s)
			if err != nil {
				t.Fatal(err)
			}
			n = len(hs)
		})
		return n
	}
	before := count() // 0 on a fresh token
	if err := tok.SelfCheck(ctx); err != nil {
		t.Fatalf("SelfCheck: %v", err)
	}
	if after := count(); after != before {
		t.Fatalf("%d secret keys after the self-check, %d before", after, before)
	}
}
