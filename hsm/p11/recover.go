package p11

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// Fault recovery.
//
// Session-level faults are handled where they happen (token.go, release): a
// session that returns CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED or
// CKR_DEVICE_ERROR is closed and replaced, never reused; CKR_USER_NOT_LOGGED_IN
// logs the application in again.
//
// Token-level faults take the whole Token down and re-initialise it: a call
// that returns CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT or
// CKR_CRYPTOKI_NOT_INITIALIZED, or failureThreshold calls in a row that fail
// with hsm.ErrUnavailable (for example replacement sessions that cannot be
// opened). While the Token is down every call, and every caller waiting for
// a session, fails at once with hsm.ErrUnavailable ("re-initialising");
// nothing waits past its deadline. A background loop then, with exponential
// backoff (recoverMinBackoff up to recoverMaxBackoff), takes every session
// back from the pool (in-flight calls finish first), closes them, finalises
// and initialises the module (when this Token initialised it), finds the
// token by label again, opens and logs in a fresh pool, drops every cached
// object handle and working copy, marks the Token up, and re-resolves the
// handles of every key with one listing. Service resumes by itself.

const (
	failureThreshold  = 3
	recoverMinBackoff = 100 * time.Millisecond
	recoverMaxBackoff = time.Second
)

// errDown is returned while the Token is re-initialising.
var errDown error = &p11Error{kind: hsm.ErrUnavailable, fn: "p11", detail: "the token is unavailable; re-initialising", down: true}

// downError is what calls get while the Token is down: errDown while the
// recovery loop runs, or why the Token was halted (halt).
func (t *Token) downError() error {
	if e := t.halted.Load(); e != nil {
		return e
	}
	return errDown
}

// halt takes the Token down for good because of err (a PIN the token
// refuses): no recovery loop runs, since every attempt would log in again
// with the same PIN, and on HSMs with a lockout counter (Luna, CloudHSM)
// a few wrong attempts lock the crypto user for everyone. Every later call
// fails at once with hsm.ErrLogin and a message saying why; kmsd must be
// restarted with the right PIN. A recovery loop already running stops at
// its next attempt. Safe for concurrent use; the first reason stays.
func (t *Token) halt(err error) {
	t.halted.CompareAndSwap(nil, &p11Error{kind: hsm.ErrLogin, fn: "p11", down: true,
		detail: fmt.Sprintf("the token is down and will not be retried: %v; fix the PIN (pkcs11.pin_file / KMSD_PIN) and restart kmsd", err)})
	t.recMu.Lock()
	defer t.recMu.Unlock()
	if t.down.Load() {
		return
	}
	t.down.Store(true)
	close(*t.downC.Load()) // wakes every call waiting for a session
	if t.cfg.Observer != nil {
		t.cfg.Observer.Reinit(t.halted.Load())
	}
}

// Observer receives what an operator monitors. Its methods are called
// synchronously and must be cheap and safe for concurrent use.
type Observer interface {
	// Call reports one operation with the PKCS#11 function that does its
	// work (C_Encrypt, C_Decrypt, C_GenerateKey, C_GenerateRandom,
	// C_DestroyObject, C_FindObjects, C_GetSessionInfo), its duration
	// (session wait included) and its error (nil on success).
	Call(fn string, d time.Duration, err error)
	// Reinit reports the end of a re-initialisation attempt (err nil: the
	// token is back).
	Reinit(err error)
}

// Stats is a snapshot of the session pool and the token's health.
type Stats struct {
	Sessions  int           // size of the pool
	InUse     int           // sessions lent out now
	Waits     uint64        // calls that had to wait for a session
	WaitTime  time.Duration // total time those calls waited
	Reinits   uint64        // successful re-initialisations
	Available bool          // false while re-initialising
	// WorkingCopies is the number of per-session working copies of CMKs
	// (session objects in the token) in use now.
	WorkingCopies int
}

// Stats returns a snapshot of the pool. Safe for concurrent use.
func (t *Token) Stats() Stats {
	st := Stats{
		Sessions:  t.cfg.Sessions,
		Waits:     t.waits.Load(),
		WaitTime:  time.Duration(t.waitNanos.Load()),
		Reinits:   t.reinits.Load(),
		Available: !t.down.Load(),
	}
	if !st.Available {
		return st
	}
	t.cmu.Lock()
	for _, m := range t.copies {
		for _, e := range m {
			if !e.self {
				st.WorkingCopies++
			}
		}
	}
	t.cmu.Unlock()
	st.InUse = t.cfg.Sessions - len(t.pool)
	if st.InUse < 0 {
		st.InUse = 0
	}
	return st
}

// health is the part of Token that recovery uses.
type health struct {
	down      atomic.Bool                   // set before the down signal is closed
	downC     atomic.Pointer[chan struct{}] // closed when the Token goes down; a fresh one once it is back
	waiting   atomic.Int32                  // calls waiting for a session
	failures  atomic.Int32                  // consecutive unavailable calls
	reinits   atomic.Uint64
	waits     atomic.Uint64
	waitNanos atomic.Int64
	recovery  chan struct{}            // closed when the recovery loop ends; nil when none ran
	halted    atomic.Pointer[p11Error] // set by halt: down for good, and why
}

// fatal reports whether a call's error means the token itself is gone.
func fatal(err error) bool {
	switch rvOf(err) {
	case pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED:
		return true
	}
	return false
}

// noteResult updates the failure count after a call and takes the Token
// down when the call, or the run of calls, says the token is gone. Only
// unavailability counts: a bad tag or a missing key is the caller's.
func (t *Token) noteResult(err error) {
	switch {
	case err == nil:
		t.failures.Store(0)
	case fatal(err):
		t.goDown()
	case errors.Is(err, hsm.ErrUnavailable) && !isDownErr(err) && err != errClosed:
		if t.failures.Add(1) >= failureThreshold {
			t.goDown()
		}
	}
}

// isDownErr reports whether err was returned because the Token was down
// already (it says nothing new about the token's health).
func isDownErr(err error) bool {
	var pe *p11Error
	return errors.As(err, &pe) && pe.down
}

// newDownSignal makes the channel the next goDown closes.
func (h *health) newDownSignal() {
	c := make(chan struct{})
	h.downC.Store(&c)
}

// downSignal returns the channel closed when the Token goes down.
func (h *health) downSignal() <-chan struct{} { return *h.downC.Load() }

// goDown marks the Token down (once) and starts the recovery loop.
func (t *Token) goDown() {
	t.recMu.Lock()
	defer t.recMu.Unlock()
	if t.down.Load() {
		return
	}
	select {
	case <-t.closing:
		return
	default:
	}
	if t.halted.Load() != nil {
		return
	}
	t.down.Store(true)
	close(*t.downC.Load()) // wakes every call waiting for a session
	done := make(chan struct{})
	t.recovery = done
	go t.recoverLoop(done)
}

// recoverLoop re-initialises the token until it succeeds or Close starts.
func (t *Token) recoverLoop(done chan struct{}) {
	defer close(done)
	// Take every pool entry back: in-flight calls return theirs when they
	// finish; waiting callers are turned away by the down flag.
	held := make([]pkcs11.SessionHandle, 0, t.cfg.Sessions)
	for len(held) < t.cfg.Sessions {
		select {
		case s := <-t.pool:
			held = append(held, s)
		case <-t.closing:
			t.putBack(held)
			return
		}
	}
	backoff := recoverMinBackoff
	for {
		sessions, err := t.reinit(held)
		held = held[:0]
		if err == nil {
			t.hmu.Lock()
			t.handles = make(map[string]pkcs11.ObjectHandle)
			t.hmu.Unlock()
			for _, s := range sessions {
				t.pool <- s
			}
			t.failures.Store(0)
			t.reinits.Add(1)
			t.newDownSignal()
			t.down.Store(false)
			if t.cfg.Observer != nil {
				t.cfg.Observer.Reinit(nil)
			}
			// Re-resolve every key's handle with one listing, so the next
			// requests do no C_FindObjects.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, _ = t.KeyIDs(ctx)
			cancel()
			return
		}
		for range t.cfg.Sessions {
			held = append(held, 0)
		}
		if t.halted.Load() != nil {
			// The token refused the PIN (login called halt, which told
			// the Observer): never log in again.
			t.putBack(held)
			return
		}
		if t.cfg.Observer != nil {
			t.cfg.Observer.Reinit(err)
		}
		select {
		case <-t.closing:
			t.putBack(held)
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, recoverMaxBackoff)
	}
}

// putBack returns held entries to the pool so that teardown finds them.
func (t *Token) putBack(held []pkcs11.SessionHandle) {
	for _, s := range held {
		t.pool <- s
	}
}

// reinit closes the held sessions, re-initialises the module when this
// Token owns its initialisation, finds the token again and opens a fresh,
// logged-in pool. On error nothing is left open.
func (t *Token) reinit(held []pkcs11.SessionHandle) (sessions []pkcs11.SessionHandle, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = panicError("reinit", r)
		}
		if err != nil {
			for _, s := range sessions {
				t.closeSession(s)
			}
			sessions = nil
		}
	}()
	for _, s := range held {
		if s != 0 {
			t.closeSession(s)
		}
	}
	t.forgetAllCopies()
	if t.ownsInit {
		_ = t.mod.Finalize() // may fail: the module may already have lost its state
		if err := t.args.initialize(t.mod); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			return nil, t.initError(err)
		}
	}
	slot, err := findSlot(t.mod, t.sel)
	if err != nil {
		return nil, err
	}
	t.slot = slot
	for range t.cfg.Sessions {
		s, err := t.mod.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return sessions, classify("C_OpenSession", err)
		}
		sessions = append(sessions, s)
		if len(sessions) == 1 {
			if err := t.login(s); err != nil {
				return sessions, err
			}
		}
	}
	return sessions, nil
}

// observe reports one operation to the configured Observer.
func (t *Token) observe(fn string, start time.Time, err error) {
	if t.cfg.Observer != nil {
		t.cfg.Observer.Call(fn, time.Since(start), err)
	}
}
