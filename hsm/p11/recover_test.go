package p11

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"go.uber.org/goleak"

	"hsmkms/hsm"
	"hsmkms/softhsm"
	"hsmkms/softhsm/faultmod"
)

// Fault recovery, tested for real: the token is opened through the
// fault-injection module (softhsm/faultmod), which forwards to SoftHSM2 and
// fails, delays or removes the token on command.

// newFaultToken opens a throwaway SoftHSM2 token through the fault module.
func newFaultToken(t *testing.T, sessions int, mod func(*Config)) (*Token, *faultmod.Controller) {
	t.Helper()
	return newFaultTokenCtl(t, sessions, mod, nil)
}

// newFaultTokenCtl is newFaultToken with before run on the controller
// before the token is opened.
func newFaultTokenCtl(t *testing.T, sessions int, mod func(*Config), before func(*faultmod.Controller)) (*Token, *faultmod.Controller) {
	t.Helper()
	st := softhsm.NewSoftHSM2Token(t)
	so := faultmod.Build(t)
	ctl := faultmod.NewController(t)
	if before != nil {
		before(ctl)
	}
	for _, kv := range ctl.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	cfg := Config{ModulePath: so, TokenLabel: st.Label, PIN: st.PIN, Sessions: sessions}
	if mod != nil {
		mod(&cfg)
	}
	tok, err := OpenToken(context.Background(), cfg)
	if err != nil {
		t.Fatalf("OpenToken through the fault module: %v", err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok, ctl
}

// eventually retries f until it succeeds or 10 s pass.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after 10 s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// poolSessions returns the open sessions in the pool (for checking that a
// bad one is not reused); the pool must be idle.
func poolSessions(tok *Token) []pkcs11.SessionHandle {
	var out []pkcs11.SessionHandle
	for range tok.cfg.Sessions {
		s := <-tok.pool
		out = append(out, s)
	}
	for _, s := range out {
		tok.pool <- s
	}
	return out
}

func TestBadSessionsAreNotReused(t *testing.T) {
	tests := []struct {
		name  string
		rv    uint
		retry bool // the call itself succeeds on another session
	}{
		{"CKR_SESSION_HANDLE_INVALID", pkcs11.CKR_SESSION_HANDLE_INVALID, true},
		{"CKR_SESSION_CLOSED", pkcs11.CKR_SESSION_CLOSED, true},
		{"CKR_DEVICE_ERROR", pkcs11.CKR_DEVICE_ERROR, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, ctl := newFaultToken(t, 1, nil)
			ctx := testCtx(t)
			id := []byte("bad-session")
			mustGenerate(t, tok, id)
			before := poolSessions(tok)[0]
			closes := ctl.Calls("C_CloseSession")
			ctl.FailN("C_EncryptInit", tt.rv, 1)
			_, _, err := tok.Seal(ctx, id, []byte("x"), testAAD)
			if tt.retry && err != nil {
				t.Fatalf("Seal after %s: %v, want success on a fresh session", tt.name, err)
			}
			if !tt.retry && !errors.Is(err, hsm.ErrUnavailable) {
				t.Fatalf("Seal with %s: %v, want hsm.ErrUnavailable", tt.name, err)
			}
			after := poolSessions(tok)[0]
			if after == before || after == 0 {
				t.Fatalf("pool session %d after %s, want a new session (was %d)", after, tt.name, before)
			}
			if ctl.Calls("C_CloseSession") == closes {
				t.Fatalf("the bad session was not closed")
			}
			if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
				t.Fatalf("Seal afterwards: %v", err)
			}
		})
	}
}

func TestLostLoginIsRestored(t *testing.T) {
	tok, ctl := newFaultToken(t, 1, nil)
	ctx := testCtx(t)
	id := []byte("login")
	mustGenerate(t, tok, id)
	logins := ctl.Calls("C_Login")
	ctl.FailN("C_EncryptInit", pkcs11.CKR_USER_NOT_LOGGED_IN, 1)
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
		t.Fatalf("Seal after CKR_USER_NOT_LOGGED_IN: %v", err)
	}
	if ctl.Calls("C_Login") == logins {
		t.Fatal("no C_Login after CKR_USER_NOT_LOGGED_IN")
	}
}

func TestReinitialisationAfterTokenRemoval(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var obs recordingObserver
	tok, ctl := newFaultToken(t, 2, func(c *Config) { c.Observer = &obs })
	ctx := testCtx(t)
	id := []byte("survivor")
	mustGenerate(t, tok, id)
	iv, sealed, err := tok.Seal(ctx, id, []byte("before the outage"), testAAD)
	if err != nil {
		t.Fatal(err)
	}

	ctl.RemoveToken(true)
	_, _, err = tok.Seal(ctx, id, []byte("x"), testAAD)
	if !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Seal with the token removed: %v, want hsm.ErrUnavailable", err)
	}
	// While down, calls fail at once with "unavailable", never wait for
	// their deadline, and Ping says so.
	eventually(t, "the token is marked down", func() error {
		if tok.Stats().Available {
			return errors.New("still available")
		}
		return nil
	})
	dl, cancel := context.WithTimeout(ctx, 20*time.Second)
	_, _, err = tok.Seal(dl, id, []byte("x"), testAAD)
	cancel()
	if !errors.Is(err, hsm.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Seal while down: %v, want hsm.ErrUnavailable without waiting for the deadline", err)
	}
	if err := tok.Ping(ctx); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Ping while down: %v", err)
	}

	ctl.RemoveToken(false)
	eventually(t, "service resumes", func() error {
		_, _, err := tok.Seal(ctx, id, []byte("after the outage"), testAAD)
		return err
	})
	pt, err := tok.Open(ctx, id, iv, sealed, testAAD)
	if err != nil || !bytes.Equal(pt, []byte("before the outage")) {
		t.Fatalf("Open of a ciphertext made before the outage: %q %v", pt, err)
	}
	if err := tok.Ping(ctx); err != nil {
		t.Fatalf("Ping after recovery: %v", err)
	}
	st := tok.Stats()
	if st.Reinits < 1 || !st.Available {
		t.Fatalf("stats %+v, want a re-initialisation", st)
	}
	if obs.reinitOK() < 1 || obs.calls("C_Encrypt") == 0 {
		t.Fatalf("observer saw %d successful re-initialisations and %d C_Encrypt", obs.reinitOK(), obs.calls("C_Encrypt"))
	}
}

func TestReinitialisationAfterCryptokiLost(t *testing.T) {
	tok, ctl := newFaultToken(t, 2, nil)
	ctx := testCtx(t)
	id := []byte("lost")
	mustGenerate(t, tok, id)
	inits := ctl.Calls("C_Initialize")
	ctl.FailN("C_EncryptInit", pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, 1)
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Seal: %v", err)
	}
	eventually(t, "service resumes", func() error {
		_, _, err := tok.Seal(ctx, id, []byte("x"), testAAD)
		return err
	})
	if ctl.Calls("C_Initialize") == inits {
		t.Fatal("no C_Initialize: the module was not re-initialised")
	}
}

func TestEveryDeadSessionReplacedAtOnce(t *testing.T) {
	tok, ctl := newFaultToken(t, 4, nil)
	ctx := testCtx(t)
	id := []byte("invalidated")
	mustGenerate(t, tok, id)
	ctl.InvalidateSessions() // a network HSM restart: every session is dead
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
		t.Fatalf("Seal after every session died: %v", err)
	}
}

func TestCloseDuringRecovery(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	tok, ctl := newFaultToken(t, 2, nil)
	ctl.RemoveToken(true)
	_, _, _ = tok.Seal(testCtx(t), []byte("k"), []byte("x"), testAAD)
	tok.goDown()
	if err := tok.Close(); err != nil && !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Close: %v", err)
	}
}

func TestHSMGeneratedIV(t *testing.T) {
	// The token does not write IVs at first: open it without the
	// self-check, which would refuse it (TestSelfCheck).
	tok, ctl := newFaultToken(t, 1, func(c *Config) { c.HSMGeneratedIV, c.noSelfCheck = true, true })
	ctx := testCtx(t)
	id := []byte("fips")
	mustGenerate(t, tok, id)

	// The token does not write IVs yet: Seal refuses rather than return
	// an all-zero IV.
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); !errors.Is(err, hsm.ErrMisconfigured) || !strings.Contains(err.Error(), "iv_mode") {
		t.Fatalf("Seal on a token that ignores the IV mode: %v, want hsm.ErrMisconfigured naming iv_mode", err)
	}
	ctl.HSMGeneratedIV(true) // now it behaves like CloudHSM: zero IV in, its own IV out
	iv1, sealed, err := tok.Seal(ctx, id, []byte("hsm iv"), testAAD)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	iv2, _, err := tok.Seal(ctx, id, []byte("hsm iv"), testAAD)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(iv1, make([]byte, hsm.IVBytes)) || bytes.Equal(iv1, iv2) {
		t.Fatalf("IVs %x %x: want non-zero and distinct", iv1, iv2)
	}
	pt, err := tok.Open(ctx, id, iv1, sealed, testAAD)
	if err != nil || string(pt) != "hsm iv" {
		t.Fatalf("Open with the HSM's IV: %q %v", pt, err)
	}
}

type recordingObserver struct {
	mu      sync.Mutex
	byFn    map[string]int
	reinits int
}

func (o *recordingObserver) Call(fn string, _ time.Duration, _ error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.byFn == nil {
		o.byFn = map[string]int{}
	}
	o.byFn[fn]++
}

func (o *recordingObserver) Reinit(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err == nil {
		o.reinits++
	}
}

func (o *recordingObserver) calls(fn string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.byFn[fn]
}

func (o *recordingObserver) reinitOK() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.reinits
}

// waitUntil polls cond every 10 ms for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Configuration errors (a module without CKM_AES_GCM, GCM parameters it
// refuses, a wrong iv_mode) are reported as such and never count towards
// re-initialising the token: no retry can fix them. Each case fails many
// more times in a row than failureThreshold.
func TestConfigurationErrorsDoNotReinitialise(t *testing.T) {
	cases := []struct {
		name   string
		hsmIV  bool                         // Config.HSMGeneratedIV
		fault  func(c *faultmod.Controller) // what the module does
		naming string                       // the message names this
	}{
		{"no CKM_AES_GCM", false, func(c *faultmod.Controller) { c.Fail("C_EncryptInit", pkcs11.CKR_MECHANISM_INVALID) }, "CKM_AES_GCM"},
		{"HSM-generated IVs in caller mode", false, func(c *faultmod.Controller) { c.HSMGeneratedIV(true) }, "iv_mode"},
		{"caller IVs in hsm mode", true, func(c *faultmod.Controller) {}, "iv_mode"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Without the self-check, which refuses these modules at
			// start-up (TestSelfCheck): here they change later.
			tok, ctl := newFaultToken(t, 2, func(cfg *Config) { cfg.HSMGeneratedIV, cfg.noSelfCheck = c.hsmIV, true })
			ctx := testCtx(t)
			id := []byte("misconfigured")
			mustGenerate(t, tok, id)
			c.fault(ctl)
			for i := range 3 * failureThreshold {
				_, _, err := tok.Seal(ctx, id, []byte("x"), testAAD)
				if !errors.Is(err, hsm.ErrMisconfigured) || errors.Is(err, hsm.ErrUnavailable) || !strings.Contains(err.Error(), c.naming) {
					t.Fatalf("Seal %d = %v, want hsm.ErrMisconfigured naming %s", i, err, c.naming)
				}
			}
			if st := tok.Stats(); !st.Available || st.Reinits != 0 || tok.failures.Load() != 0 {
				t.Fatalf("after configuration errors: %+v, %d failures counted; want available, no re-initialisation", st, tok.failures.Load())
			}
			if n := ctl.Calls("C_Finalize"); n != 0 {
				t.Fatalf("C_Finalize called %d times", n)
			}
		})
	}
}

// A PIN the token refuses during recovery stops the recovery loop: the
// Token stays down, says why, and never calls C_Login again (each attempt
// would count towards an HSM's lockout).
func TestWrongPINStopsRecovery(t *testing.T) {
	for _, rv := range []uint{pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED} {
		t.Run(ckrName(rv), func(t *testing.T) {
			obs := &recordingObserver{}
			tok, ctl := newFaultToken(t, 2, func(c *Config) { c.Observer = obs })
			ctx := testCtx(t)
			id := []byte("pin")
			mustGenerate(t, tok, id)
			ctl.Fail("C_Login", rv) // the PIN was changed on the HSM, or the user locked
			ctl.RemoveToken(true)
			_, _, _ = tok.Seal(ctx, id, []byte("x"), testAAD) // CKR_DEVICE_REMOVED: down
			ctl.RemoveToken(false)
			waitUntil(t, "halted", func() bool { return tok.halted.Load() != nil })
			logins := ctl.Calls("C_Login")
			// Longer than recoverMaxBackoff: a loop still running would log in again.
			time.Sleep(2*recoverMaxBackoff + 200*time.Millisecond)
			if n := ctl.Calls("C_Login"); n != logins {
				t.Fatalf("C_Login called %d more times after the token refused the PIN", n-logins)
			}
			_, _, err := tok.Seal(ctx, id, []byte("x"), testAAD)
			if !errors.Is(err, hsm.ErrLogin) || !strings.Contains(err.Error(), ckrName(rv)) || !strings.Contains(err.Error(), "will not be retried") {
				t.Fatalf("Seal while halted = %v, want hsm.ErrLogin saying why and that it will not be retried", err)
			}
			if err := tok.Ping(ctx); !errors.Is(err, hsm.ErrLogin) {
				t.Fatalf("Ping while halted = %v", err)
			}
			if st := tok.Stats(); st.Available {
				t.Fatal("Stats says available")
			}
			if n := ctl.Calls("C_Login"); n != logins {
				t.Fatalf("calls while halted logged in %d times", n-logins)
			}
		})
	}
}

// A lost login that cannot be restored because the PIN is refused halts
// the Token at once instead of logging in again on every call.
func TestWrongPINOnReloginHalts(t *testing.T) {
	tok, ctl := newFaultToken(t, 2, nil)
	ctx := testCtx(t)
	id := []byte("relogin")
	mustGenerate(t, tok, id)
	ctl.Fail("C_Login", pkcs11.CKR_PIN_INCORRECT)
	ctl.FailN("C_EncryptInit", pkcs11.CKR_USER_NOT_LOGGED_IN, 1)
	ctl.FailN("C_FindObjectsInit", pkcs11.CKR_USER_NOT_LOGGED_IN, 1)
	_, _, _ = tok.Seal(ctx, id, []byte("x"), testAAD)
	logins := ctl.Calls("C_Login")
	if logins == 0 || tok.halted.Load() == nil {
		t.Fatalf("%d logins, halted %v: want the refused re-login to halt the Token", logins, tok.halted.Load())
	}
	for range 10 {
		if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); !errors.Is(err, hsm.ErrLogin) {
			t.Fatalf("Seal after the refused re-login = %v, want hsm.ErrLogin", err)
		}
	}
	if n := ctl.Calls("C_Login"); n != logins {
		t.Fatalf("%d more logins after the PIN was refused", n-logins)
	}
}

// On a module that reuses a session number as soon as the session is gone
// (close 1, open: 1), replacing a dead session must not close the fresh
// one: the old handle is closed first and numbers are never compared.
func TestSessionReplacementWithReusedHandles(t *testing.T) {
	tok, ctl := newFaultTokenCtl(t, 2, nil, func(c *faultmod.Controller) { c.ReuseSessionHandles() })
	ctx := testCtx(t)
	id := []byte("reused-handles")
	mustGenerate(t, tok, id)
	before := poolSessions(tok)
	for _, s := range before {
		if s > 2 {
			t.Fatalf("pool %v: the module does not hand out small reused numbers", before)
		}
	}
	for round := range 3 {
		ctl.InvalidateSessions() // the module lost every session
		for i := range 4 {
			if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
				t.Fatalf("round %d, Seal %d after the sessions died: %v", round, i, err)
			}
		}
		for _, s := range poolSessions(tok) {
			if s == 0 {
				t.Fatalf("round %d: a hole in the pool: %v", round, poolSessions(tok))
			}
		}
		if err := tok.Ping(ctx); err != nil {
			t.Fatalf("round %d: Ping: %v", round, err)
		}
	}
	if st := tok.Stats(); st.Reinits != 0 || !st.Available {
		t.Fatalf("stats %+v: dead sessions needed a re-initialisation", st)
	}
}

// OpenToken refuses a module that lacks a mechanism kmsd uses, or whose IV
// handling does not match iv_mode, with one line naming the module, the
// mechanism and the setting to change; a refused PIN is reported as such.
func TestSelfCheck(t *testing.T) {
	cases := []struct {
		name   string
		hsmIV  bool
		fault  func(c *faultmod.Controller)
		want   error
		naming []string
	}{
		{"no CKM_AES_GCM", false, func(c *faultmod.Controller) { c.HideMechanism(pkcs11.CKM_AES_GCM) }, hsm.ErrMisconfigured, []string{"CKM_AES_GCM", "not supported", "pkcs11.module"}},
		{"no CKM_AES_KEY_GEN", false, func(c *faultmod.Controller) { c.HideMechanism(pkcs11.CKM_AES_KEY_GEN) }, hsm.ErrMisconfigured, []string{"CKM_AES_KEY_GEN", "not supported"}},
		{"no CKM_GENERIC_SECRET_KEY_GEN", false, func(c *faultmod.Controller) { c.HideMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN) }, hsm.ErrMisconfigured, []string{"CKM_GENERIC_SECRET_KEY_GEN", "not supported", "metadata MAC key"}},
		{"no CKM_SHA256_HMAC", false, func(c *faultmod.Controller) { c.HideMechanism(pkcs11.CKM_SHA256_HMAC) }, hsm.ErrMisconfigured, []string{"CKM_SHA256_HMAC", "not supported", "HMAC-SHA-256"}},
		{"HMAC refused at C_SignInit", false, func(c *faultmod.Controller) { c.Fail("C_SignInit", pkcs11.CKR_MECHANISM_INVALID) }, hsm.ErrMisconfigured, []string{"CKM_SHA256_HMAC", "round trip", "C_SignInit"}},
		{"GCM refused at C_EncryptInit", false, func(c *faultmod.Controller) { c.Fail("C_EncryptInit", pkcs11.CKR_MECHANISM_INVALID) }, hsm.ErrMisconfigured, []string{"CKM_AES_GCM", "round trip", "C_EncryptInit"}},
		{"HSM-generated IVs in caller mode", false, func(c *faultmod.Controller) { c.HSMGeneratedIV(true) }, hsm.ErrMisconfigured, []string{"CKM_AES_GCM", "iv_mode caller", "pkcs11.iv_mode"}},
		{"caller IVs in hsm mode", true, func(c *faultmod.Controller) {}, hsm.ErrMisconfigured, []string{"CKM_AES_GCM", "iv_mode hsm", "pkcs11.iv_mode"}},
		{"wrong PIN", false, func(c *faultmod.Controller) { c.Fail("C_Login", pkcs11.CKR_PIN_INCORRECT) }, hsm.ErrLogin, []string{"CKR_PIN_INCORRECT", "PIN"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := softhsm.NewSoftHSM2Token(t)
			so := faultmod.Build(t)
			ctl := faultmod.NewController(t)
			for _, kv := range ctl.Env() {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			c.fault(ctl)
			tok, err := OpenToken(testCtx(t), Config{ModulePath: so, TokenLabel: st.Label, PIN: st.PIN, HSMGeneratedIV: c.hsmIV})
			if err == nil {
				tok.Close()
				t.Fatal("OpenToken succeeded")
			}
			msg := err.Error()
			t.Log(msg)
			if !errors.Is(err, c.want) || strings.Contains(msg, "\n") {
				t.Fatalf("OpenToken = %q, want one line wrapping %v", msg, c.want)
			}
			if c.want == hsm.ErrMisconfigured && !strings.Contains(msg, so) {
				t.Errorf("%q does not name the module", msg)
			}
			for _, n := range c.naming {
				if !strings.Contains(msg, n) {
					t.Errorf("%q does not mention %q", msg, n)
				}
			}
		})
	}
}

// On a module that refuses to change CKA_ID, a fixed-id key is generated
// under its id once it was seen absent, and found (not generated again)
// afterwards.
func TestFixedIDWithoutRenaming(t *testing.T) {
	tok, ctl := newFaultToken(t, 1, nil)
	ctx := testCtx(t)
	ctl.Fail("C_SetAttributeValue", pkcs11.CKR_ATTRIBUTE_READ_ONLY)
	id := []byte("hsmkms/fixed/no-rename")
	created, err := tok.EnsureKey(ctx, id, "fixed")
	if err != nil || !created {
		t.Fatalf("EnsureKey = %v, %v", created, err)
	}
	tok.uncache(id)
	if created, err := tok.EnsureKey(ctx, id, "fixed"); err != nil || created {
		t.Fatalf("second EnsureKey = %v, %v; want the existing key", created, err)
	}
	withSession(t, tok, func(s pkcs11.SessionHandle) {
		if hs, err := tok.find(s, id, 3); err != nil || len(hs) != 1 {
			t.Fatalf("%d objects with the id (%v), want 1", len(hs), err)
		}
	})
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); err != nil {
		t.Fatal(err)
	}
}
