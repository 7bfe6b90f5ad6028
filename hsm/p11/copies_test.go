package p11

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
	"hsmkms/softhsm"
)

// A working copy is a session object that stays sensitive and not
// extractable, and Seal/Open through it interoperate with the token object.
func TestWorkingCopyAttributes(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	ctx := testCtx(t)
	id := []byte("copy-attrs")
	mustGenerate(t, tok, id)
	iv, sealed, err := tok.Seal(ctx, id, []byte("hello"), testAAD)
	if err != nil {
		t.Fatal(err)
	}
	hs := tok.workingCopies(id)
	if len(hs) != 1 {
		t.Fatalf("%d working copies after one Seal on one session, want 1 (copies on: %v)", len(hs), !tok.noCopies.Load())
	}
	withSession(t, tok, func(s pkcs11.SessionHandle) {
		_, err := tok.mod.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if !errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE)) {
			t.Fatalf("reading CKA_VALUE of the copy: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
		}
		for _, a := range []struct {
			name string
			typ  uint
			want byte
		}{
			{"CKA_TOKEN", pkcs11.CKA_TOKEN, 0},
			{"CKA_PRIVATE", pkcs11.CKA_PRIVATE, 1},
			{"CKA_SENSITIVE", pkcs11.CKA_SENSITIVE, 1},
			{"CKA_EXTRACTABLE", pkcs11.CKA_EXTRACTABLE, 0},
			{"CKA_WRAP", pkcs11.CKA_WRAP, 0},
			{"CKA_UNWRAP", pkcs11.CKA_UNWRAP, 0},
			// CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE of a copy are
			// not checked: NSS softoken reports them false on every copy
			// (SoftHSM2 true), although the copy is sensitive and not
			// extractable (checked above and below). The token object
			// has both (TestGeneratedKeyIsSensitive).
		} {
			attrs, err := tok.mod.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(a.typ, nil)})
			if err != nil || len(attrs[0].Value) != 1 || attrs[0].Value[0] != a.want {
				t.Errorf("copy %s = %v (%v), want %d", a.name, attrs, err, a.want)
			}
		}
		// Lookups by object id and listings see the token object only.
		found, err := tok.find(s, id, 2)
		if err != nil || len(found) != 1 || found[0] == hs[0] {
			t.Fatalf("find = %v, %v; want the token object only", found, err)
		}
	})
	ids, err := tok.KeyIDs(ctx)
	if err != nil || len(ids) != 1 || !bytes.Equal(ids[0], id) {
		t.Fatalf("KeyIDs = %q, %v", ids, err)
	}
	// The copy decrypts what it encrypted; so does the token object.
	pt, err := tok.Open(ctx, id, iv, sealed, testAAD)
	if err != nil || string(pt) != "hello" {
		t.Fatalf("Open = %q, %v", pt, err)
	}
	tok.noCopies.Store(true)
	pt, err = tok.Open(ctx, id, iv, sealed, testAAD)
	if err != nil || string(pt) != "hello" {
		t.Fatalf("Open with the token object = %q, %v", pt, err)
	}
}

// After DestroyKey, no session encrypts or decrypts with the key, and the
// copies themselves are destroyed.
func TestDestroyKeyDropsCopies(t *testing.T) {
	const sessions = 4
	tok, _ := newTestToken(t, sessions)
	ctx := testCtx(t)
	id := []byte("copy-destroy")
	mustGenerate(t, tok, id)
	// Hold every session once so that each makes its copy.
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 4 * sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for range 50 {
				if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	copies := tok.workingCopies(id)
	if len(copies) < 2 {
		t.Fatalf("%d working copies after concurrent use of %d sessions, want >= 2", len(copies), sessions)
	}
	iv, sealed, err := tok.Seal(ctx, id, []byte("x"), testAAD)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.DestroyKey(ctx, id); err != nil {
		t.Fatal(err)
	}
	if hs := tok.workingCopies(id); len(hs) != 0 {
		t.Fatalf("%d copies remain after DestroyKey", len(hs))
	}
	withSession(t, tok, func(s pkcs11.SessionHandle) {
		for _, h := range copies {
			if _, err := tok.mod.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)}); err == nil {
				t.Errorf("copy %d still exists after DestroyKey", h)
			}
		}
	})
	// Every session, not only the one DestroyKey used.
	for range 4 * sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Errorf("Seal after DestroyKey: %v, want hsm.ErrKeyNotFound", err)
			}
			if _, err := tok.Open(ctx, id, iv, sealed, testAAD); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Errorf("Open after DestroyKey: %v, want hsm.ErrKeyNotFound", err)
			}
		}()
	}
	wg.Wait()
}

// DestroyKey racing with Seal on other sessions never leaves a usable copy.
func TestDestroyKeyRacingSeal(t *testing.T) {
	tok, _ := newTestToken(t, 3)
	ctx := testCtx(t)
	for round := range 5 {
		id := []byte{'r', byte(round)}
		mustGenerate(t, tok, id)
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					// While the token object is being destroyed SoftHSM2 may
					// also answer CKR_KEY_TYPE_INCONSISTENT (unavailable);
					// what matters is the state afterwards.
					_, _, _ = tok.Seal(ctx, id, []byte("x"), testAAD)
				}
			}()
		}
		if err := tok.DestroyKey(ctx, id); err != nil {
			t.Fatal(err)
		}
		close(stop)
		wg.Wait()
		if hs := tok.workingCopies(id); len(hs) != 0 {
			t.Fatalf("round %d: %d copies survive DestroyKey", round, len(hs))
		}
		if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Fatalf("round %d: Seal after DestroyKey: %v", round, err)
		}
	}
}

// A replaced session takes its copies with it; DropWorkingCopies drops all.
func TestCopiesDroppedWithSession(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	ctx := testCtx(t)
	id := []byte("copy-session")
	mustGenerate(t, tok, id)
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
		t.Fatal(err)
	}
	if n := len(tok.workingCopies(id)); n != 1 {
		t.Fatalf("%d copies, want 1", n)
	}
	s, err := tok.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok.release(s, fateReplace)
	if n := len(tok.workingCopies(id)); n != 0 {
		t.Fatalf("%d copies after the session was replaced, want 0", n)
	}
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
		t.Fatalf("Seal on the fresh session: %v", err)
	}
	if n := len(tok.workingCopies(id)); n != 1 {
		t.Fatalf("%d copies, want 1", n)
	}
	if err := tok.DropWorkingCopies(ctx, id); err != nil {
		t.Fatal(err)
	}
	if n := len(tok.workingCopies(id)); n != 0 {
		t.Fatalf("%d copies after DropWorkingCopies, want 0", n)
	}
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
		t.Fatalf("Seal after DropWorkingCopies: %v", err)
	}
}

// KeyIDs caches the handles it lists: the first Seal does no lookup.
func TestKeyIDsPrefillsHandles(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	ctx := testCtx(t)
	id := []byte("prefill")
	mustGenerate(t, tok, id)
	tok.uncache(id)
	if _, err := tok.KeyIDs(ctx); err != nil {
		t.Fatal(err)
	}
	tok.hmu.RLock()
	_, ok := tok.handles[string(id)]
	tok.hmu.RUnlock()
	if !ok {
		t.Fatal("KeyIDs did not cache the handle")
	}
}

// A CMK destroyed behind the service's back (another process) stops
// working through a copy once the copy's check interval has passed.
func TestStaleCopyNoticed(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	tok.copyMaxAge = time.Hour
	var ahead atomic.Int64 // how far the fake clock is ahead of time.Now
	tok.now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	ctx := testCtx(t)
	id := []byte("stale-copy")
	mustGenerate(t, tok, id)
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
		t.Fatal(err)
	}
	withSession(t, tok, func(s pkcs11.SessionHandle) {
		hs, err := tok.find(s, id, 2)
		if err != nil || len(hs) != 1 {
			t.Fatalf("find: %v, %v", hs, err)
		}
		if err := tok.mod.DestroyObject(s, hs[0]); err != nil {
			t.Fatal(err)
		}
	})
	// Within the check interval the copy is used unchecked.
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
		t.Fatalf("Seal through the copy within the check interval: %v", err)
	}
	ahead.Store(int64(time.Hour + time.Second))
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("Seal after out-of-band destruction and the check interval: %v, want hsm.ErrKeyNotFound", err)
	}
	if n := len(tok.workingCopies(id)); n != 0 {
		t.Fatalf("%d copies of a vanished key remain", n)
	}
}

// The binding path (no direct GCM call, no copies) still round-trips and
// interoperates with the direct path.
func TestBindingPathInterop(t *testing.T) {
	st := softhsm.NewToken(t)
	ctx := testCtx(t)
	open := func(direct bool) *Token {
		cfg := testConfig(st, 1)
		cfg.noDirectGCM, cfg.NoWorkingCopies = !direct, !direct
		tok, err := OpenToken(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tok := open(true)
	id := []byte("binding")
	mustGenerate(t, tok, id)
	iv, sealed, err := tok.Seal(ctx, id, []byte("direct"), testAAD)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}
	tok = open(false)
	defer tok.Close()
	if tok.directGCM {
		t.Fatal("direct GCM loaded although disabled")
	}
	pt, err := tok.Open(ctx, id, iv, sealed, testAAD)
	if err != nil || string(pt) != "direct" {
		t.Fatalf("binding Open of a direct Seal = %q, %v", pt, err)
	}
	iv, sealed, err = tok.Seal(ctx, id, nil, testAAD)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := tok.Open(ctx, id, iv, sealed, testAAD); err != nil || len(pt) != 0 {
		t.Fatalf("binding round trip of an empty plaintext = %q, %v", pt, err)
	}
}

// GenerateKey refuses an object id it knows, without a token scan.
func TestGenerateKeyDuplicate(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	ctx := testCtx(t)
	id := []byte("dup-random-16byt") // 16 bytes: a random id (fixed ids: TestFixedIDNeverRegenerated)
	mustGenerate(t, tok, id)
	if err := tok.GenerateKey(ctx, id, "again"); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("second GenerateKey: %v, want hsm.ErrInvalidInput", err)
	}
	// Listed keys count too (a restarted service).
	tok.uncache(id)
	if _, err := tok.KeyIDs(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tok.GenerateKey(ctx, id, "again"); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("GenerateKey of a listed id: %v, want hsm.ErrInvalidInput", err)
	}
}
