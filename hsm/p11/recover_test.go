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
	st := softhsm.NewSoftHSM2Token(t)
	so := faultmod.Build(t)
	ctl := faultmod.NewController(t)
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
	tok, ctl := newFaultToken(t, 1, func(c *Config) { c.HSMGeneratedIV = true })
	ctx := testCtx(t)
	id := []byte("fips")
	mustGenerate(t, tok, id)

	// The token does not write IVs yet: Seal refuses rather than return
	// an all-zero IV.
	if _, _, err := tok.Seal(ctx, id, []byte("x"), testAAD); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Seal on a token that ignores the IV mode: %v", err)
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
