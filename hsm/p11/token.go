package p11

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// Token is a logged-in PKCS#11 token with a fixed pool of sessions. It is
// safe for concurrent use; see the package documentation for the model.
type Token struct {
	cfg       Config    // with defaults applied; holds the PIN for re-login
	sel       TokenURI  // the token cfg selects
	args      *initArgs // C_Initialize's library parameters; nil: none
	mod       *pkcs11.Ctx
	slot      uint
	ownsInit  bool       // our C_Initialize succeeded, so Close calls C_Finalize
	direct    *directP11 // AES-GCM without the binding (direct_unix.go); nil: use the binding
	directGCM bool       // direct != nil and init+operation run in one cgo call (not noDirectGCM)

	// pool holds exactly cfg.Sessions entries while no call is in flight:
	// open, logged-in sessions, or 0 (CK_INVALID_HANDLE) for a hole left
	// when a replacement session could not be opened. A hole is refilled
	// by the next acquire.
	pool chan pkcs11.SessionHandle

	// mu is read-locked by every method for its whole duration and
	// write-locked by Close, which therefore waits for in-flight calls.
	mu      sync.RWMutex
	closed  bool
	closing chan struct{} // closed when Close starts

	closeOnce sync.Once
	closeErr  error

	hmu     sync.RWMutex
	handles map[string]pkcs11.ObjectHandle // objectID -> key handle

	genMu chan struct{} // 1-slot semaphore serialising GenerateKey

	// Working copies (copies.go): per session, a CKA_TOKEN=false copy of
	// each CMK it has used, so the hot path does not pay the token
	// object's file refresh on every C_EncryptInit/C_DecryptInit.
	cmu      sync.Mutex
	copies   map[pkcs11.SessionHandle]map[string]workCopy
	cgen     map[string]uint64 // objectID -> generation, bumped when its copies are dropped
	noCopies atomic.Bool       // the module refused C_CopyObject: use token objects
	// noUnmodifiable: the module refused CKA_MODIFIABLE=false in a key
	// template; CMKs are made without it.
	noUnmodifiable atomic.Bool
	// cmkModifiable: CMKs are made CKA_MODIFIABLE because the module
	// copies no unmodifiable key and working copies are on
	// (probeUnmodifiableCopies). Set by OpenToken.
	cmkModifiable bool
	copyMaxAge    time.Duration    // re-check the token object of a copy older than this
	now           func() time.Time // clock of the copy checks: time.Now; tests set a fake

	// hookNewSession, when set by a test, runs before a replacement session
	// is opened; an error fails the replacement.
	hookNewSession func() error

	health            // fault recovery (recover.go)
	recMu  sync.Mutex // serialises goDown and Close's wait for recovery
}

// OpenToken loads the module, initialises it (tolerating
// CKR_CRYPTOKI_ALREADY_INITIALIZED), finds the initialised token labelled
// cfg.TokenLabel, opens cfg.Sessions R/W sessions and logs the user in
// (tolerating CKR_USER_ALREADY_LOGGED_IN).
//
// It then runs the self-check (selfcheck.go): the mechanisms kmsd uses and
// an AES-256-GCM round trip in the configured IV mode on a throwaway
// session key; a module that fails it is refused with
// hsm.ErrMisconfigured, one line naming the module, the mechanism and the
// setting to change.
//
// Errors: hsm.ErrInvalidInput (cfg.Validate failed), hsm.ErrMisconfigured
// (init args refused, self-check failed), hsm.ErrTokenNotFound
// (no initialised token, or more than one, carries the label; the message
// lists the labels seen), hsm.ErrLogin (PIN refused, locked...), and
// hsm.ErrUnavailable (module cannot be loaded or initialised, session
// cannot be opened, ctx done). On error everything opened is released.
// ctx is checked between steps; the PKCS#11 calls themselves cannot be
// interrupted.
func OpenToken(ctx context.Context, cfg Config) (tok *Token, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	t := &Token{
		cfg:     cfg,
		sel:     cfg.selector(),
		args:    newInitArgs(cfg.InitArgs),
		pool:    make(chan pkcs11.SessionHandle, cfg.Sessions),
		closing: make(chan struct{}),
		handles: make(map[string]pkcs11.ObjectHandle),
		genMu:   make(chan struct{}, 1),

		copies:     make(map[pkcs11.SessionHandle]map[string]workCopy),
		cgen:       make(map[string]uint64),
		copyMaxAge: cfg.copyMaxAge(),
		now:        time.Now,
	}
	t.noCopies.Store(cfg.NoWorkingCopies)
	t.newDownSignal()
	defer func() {
		if r := recover(); r != nil {
			err = panicError("OpenToken", r)
		}
		if err != nil {
			_ = t.teardown()
			tok = nil
		}
	}()
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	t.mod = pkcs11.New(cfg.ModulePath)
	if t.mod == nil {
		return nil, errf(hsm.ErrUnavailable, "dlopen", "cannot load PKCS#11 module %q (missing file or not a PKCS#11 library)", cfg.ModulePath)
	}
	t.direct = loadDirect(cfg.ModulePath)
	t.directGCM = t.direct != nil && !cfg.noDirectGCM
	switch err := t.args.initialize(t.mod); {
	case err == nil:
		t.ownsInit = true
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)):
		// Another user of the module in this process initialised it; it
		// also owns C_Finalize.
	default:
		return nil, t.initError(err)
	}
	if t.slot, err = findSlot(t.mod, t.sel); err != nil {
		return nil, err
	}
	for range cfg.Sessions {
		if err := ctxErr(ctx); err != nil {
			return nil, err
		}
		s, err := t.mod.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return nil, classify("C_OpenSession", err)
		}
		t.pool <- s
		if len(t.pool) == 1 {
			// Login state is per application: one C_Login covers every
			// session, including those opened afterwards.
			if err := t.login(s); err != nil {
				return nil, err
			}
		}
	}
	if !cfg.noSelfCheck {
		if err := t.selfCheck(ctx); err != nil {
			return nil, err
		}
	}
	if err := t.probeUnmodifiableCopies(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: p11: %w", hsm.ErrUnavailable, err)
	}
	return nil
}

// findSlot returns the slot of the one initialised token that sel selects.
func findSlot(mod *pkcs11.Ctx, sel TokenURI) (uint, error) {
	if sel.LibraryManufacturer != "" || sel.LibraryDescription != "" || sel.LibraryVersion != "" {
		info, err := mod.GetInfo()
		if err != nil {
			return 0, classify("C_GetInfo", err)
		}
		if !sel.libraryMatches(info.ManufacturerID, info.LibraryDescription, info.LibraryVersion.Major, info.LibraryVersion.Minor) {
			return 0, errf(hsm.ErrTokenNotFound, "C_GetInfo", "the module is %q by %q, version %d.%d; the token URI %s wants another library",
				trimPad(info.LibraryDescription), trimPad(info.ManufacturerID), info.LibraryVersion.Major, info.LibraryVersion.Minor, sel)
		}
	}
	slots, err := mod.GetSlotList(true)
	if err != nil {
		return 0, classify("C_GetSlotList", err)
	}
	var seen []string
	var found []uint
	for _, slot := range slots {
		info, err := mod.GetTokenInfo(slot)
		if err != nil {
			return 0, classify("C_GetTokenInfo", err)
		}
		if info.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		seen = append(seen, TokenURI{Token: trimPad(info.Label), Manufacturer: trimPad(info.ManufacturerID), Model: trimPad(info.Model), Serial: trimPad(info.SerialNumber)}.String())
		if sel.tokenMatches(info.Label, info.ManufacturerID, info.Model, info.SerialNumber) {
			found = append(found, slot)
		}
	}
	want := fmt.Sprintf("labelled %q", sel.Token)
	if sel != (TokenURI{Token: sel.Token}) {
		want = "matching " + sel.String()
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		lst := "none"
		if len(seen) > 0 {
			lst = strings.Join(seen, ", ")
		}
		return 0, errf(hsm.ErrTokenNotFound, "C_GetTokenInfo", "no initialised token %s; initialised tokens present: %s", want, lst)
	default:
		return 0, errf(hsm.ErrTokenNotFound, "C_GetTokenInfo", "%d initialised tokens are %s; select one token (labels must be unique, or add serial=)", len(found), want)
	}
}

// initError classifies a failed C_Initialize. The init args themselves are
// never put in the message.
func (t *Token) initError(err error) error {
	e := classify("C_Initialize", err)
	if pe, ok := e.(*p11Error); ok {
		given := "no init args were given"
		if t.args != nil {
			given = "init args were given (pkcs11.init_args)"
		}
		pe.detail = fmt.Sprintf("module %s: %s; %s", t.cfg.ModulePath, given, pe.detail)
	}
	return e
}

// login logs the application in as CKU_USER through s. An already logged in
// application is fine.
func (t *Token) login(s pkcs11.SessionHandle) error {
	if e := t.halted.Load(); e != nil {
		return e // never try a refused PIN again
	}
	err := t.mod.Login(s, pkcs11.CKU_USER, t.cfg.PIN)
	if err == nil || errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		return nil
	}
	e := classify("C_Login", err)
	if errors.Is(e, hsm.ErrLogin) {
		e.(*p11Error).detail = fmt.Sprintf("token %s refused the configured user PIN", t.sel)
		// Logging in again with the same PIN cannot succeed and, on HSMs
		// with a lockout counter (Luna, CloudHSM), locks the user: stop.
		t.halt(e)
	}
	return e
}

// newSession opens a R/W session and makes sure the application is logged
// in (closing the last session of an application logs it out).
func (t *Token) newSession() (s pkcs11.SessionHandle, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = panicError("C_OpenSession", r)
		}
	}()
	if t.hookNewSession != nil {
		if err := t.hookNewSession(); err != nil {
			return 0, err
		}
	}
	s, err = t.mod.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return 0, classify("C_OpenSession", err)
	}
	info, err := t.mod.GetSessionInfo(s)
	if err == nil && info.State == pkcs11.CKS_RW_USER_FUNCTIONS {
		return s, nil
	}
	if err := t.login(s); err != nil {
		_ = t.mod.CloseSession(s)
		return 0, err
	}
	return s, nil
}

// acquire takes a session from the pool, waiting until ctx is done.
// A hole is refilled first; if that fails the hole goes back.
func (t *Token) acquire(ctx context.Context) (pkcs11.SessionHandle, error) {
	var s pkcs11.SessionHandle
	if t.down.Load() {
		return 0, t.downError()
	}
	select {
	case s = <-t.pool:
	default:
		start := time.Now()
		t.waiting.Add(1)
		err := t.waitForSession(ctx, &s)
		t.waiting.Add(-1)
		if err != nil {
			return 0, err
		}
		t.waits.Add(1)
		t.waitNanos.Add(int64(time.Since(start)))
	}
	if t.down.Load() {
		// Recovery started while we waited: it needs every session.
		t.pool <- s
		return 0, t.downError()
	}
	if s == 0 {
		ns, err := t.newSession()
		if err != nil {
			t.pool <- 0
			return 0, err
		}
		s = ns
	}
	return s, nil
}

// waitForSession waits for a session from the pool into *s until ctx is
// done, the Token goes down or Close starts, whichever comes first, and
// says why it stopped waiting (nil: *s is a session).
func (t *Token) waitForSession(ctx context.Context, s *pkcs11.SessionHandle) error {
	for {
		// The down signal is loaded before the down flag is looked at:
		// goDown sets the flag before it closes the signal, and recovery
		// makes a fresh signal before it clears the flag, so a wait never
		// misses the Token going down.
		down := t.downSignal()
		if err := t.waitErr(ctx); err != nil {
			return err
		}
		select {
		case *s = <-t.pool:
			return nil
		case <-ctx.Done():
		case <-down:
		case <-t.closing:
		}
		// Why we woke is decided by waitErr; a closed signal of a past
		// outage only loops once more.
	}
}

// waitErr is why a call waiting for a session must stop waiting, or nil.
func (t *Token) waitErr(ctx context.Context) error {
	select {
	case <-t.closing:
		return errClosed
	default:
	}
	if t.down.Load() {
		return t.downError()
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", hsm.ErrBusy, err)
	}
	return nil
}

// release returns s to the pool according to f.
func (t *Token) release(s pkcs11.SessionHandle, f fate) {
	switch f {
	case fateRelogin:
		if t.login(s) != nil {
			f = fateReplace
		}
	}
	if f != fateKeep {
		// A replaced session takes its session objects with it; after a
		// lost login the private copies are gone or unusable.
		t.forgetSession(s)
	}
	if f == fateReplace {
		// Close first, then open: a module may hand the closed number out
		// again at once (close 1, open: 1), so the new session must never
		// be opened before, or compared with, the old handle. Closing the
		// last session logs the application out; newSession logs in again.
		t.closeSession(s)
		ns, err := t.newSession()
		if err != nil {
			ns = 0
		}
		s = ns
	}
	t.pool <- s
}

func (t *Token) closeSession(s pkcs11.SessionHandle) {
	t.forgetSession(s)
	defer func() { _ = recover() }()
	_ = t.mod.CloseSession(s)
}

// enter registers a call; it fails once Close has started. Every successful
// enter is paired with t.mu.RUnlock.
func (t *Token) enter() error {
	t.mu.RLock()
	if t.closed {
		t.mu.RUnlock()
		return errClosed
	}
	return nil
}

// do runs fn with a session of the pool. A session that fn reports dead is
// replaced; fn is retried once on another session when the failure means
// nothing was done (see sessionFate). A panic in fn becomes
// hsm.ErrUnavailable. The caller holds enter.
func (t *Token) do(ctx context.Context, fn func(s pkcs11.SessionHandle) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", hsm.ErrBusy, err)
	}
	// A call that failed because its session was dead is retried on
	// another session; after a fault that killed every session (a network
	// HSM's restart) the pool may hold several dead ones, so the retries
	// go up to the pool size.
	for attempt := 0; ; attempt++ {
		s, err := t.acquire(ctx)
		if err != nil {
			if !errors.Is(err, hsm.ErrBusy) {
				t.noteResult(err)
			}
			return err
		}
		err = call(s, fn)
		f, retry := sessionFate(err)
		t.release(s, f)
		if !retry || attempt >= t.cfg.Sessions || t.down.Load() {
			// A dead session that was replaced and retried is a
			// session-level fault; only what is left counts towards
			// re-initialising the token.
			t.noteResult(err)
			return err
		}
	}
}

func call(s pkcs11.SessionHandle, fn func(s pkcs11.SessionHandle) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = panicError("pkcs11", r)
		}
	}()
	return fn(s)
}

func panicError(fn string, r any) error {
	return &p11Error{kind: hsm.ErrUnavailable, fn: fn, detail: fmt.Sprintf("panic in PKCS#11 binding: %v", r), panicked: true}
}

// Close waits for in-flight calls to finish (calls waiting for a session
// return hsm.ErrUnavailable at once), logs out, closes the sessions,
// finalises the module if OpenToken initialised it, and unloads it. It is
// idempotent and safe for concurrent use: later calls return nil after the
// first has finished. After Close every method returns hsm.ErrUnavailable.
// The error, if any, wraps hsm.ErrUnavailable and is informational: the
// Token is closed regardless.
func (t *Token) Close() error {
	first := false
	t.closeOnce.Do(func() {
		first = true
		t.recMu.Lock()
		close(t.closing)
		recovery := t.recovery
		t.recMu.Unlock()
		if recovery != nil {
			<-recovery // the loop puts its sessions back and stops
		}
		t.mu.Lock()
		t.closed = true
		t.mu.Unlock()
		t.closeErr = t.teardown()
	})
	if first {
		return t.closeErr
	}
	return nil
}

// teardown releases whatever OpenToken built. No call may be in flight.
func (t *Token) teardown() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = panicError("Close", r)
		}
	}()
	if t.mod == nil {
		t.args.free()
		return nil
	}
	var sessions []pkcs11.SessionHandle
	for len(t.pool) > 0 {
		if s := <-t.pool; s != 0 {
			sessions = append(sessions, s)
		}
	}
	var errs []error
	if len(sessions) > 0 {
		if err := t.mod.Logout(sessions[0]); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)) {
			errs = append(errs, classify("C_Logout", err))
		}
	}
	for _, s := range sessions {
		if err := t.mod.CloseSession(s); err != nil {
			errs = append(errs, classify("C_CloseSession", err))
		}
	}
	if t.ownsInit {
		if err := t.mod.Finalize(); err != nil {
			errs = append(errs, classify("C_Finalize", err))
		}
	}
	t.mod.Destroy()
	t.mod = nil
	t.args.free()
	t.args = nil
	t.direct.close()
	t.direct = nil
	t.directGCM = false
	return errors.Join(errs...)
}

// randomChunk is the most Random asks of one C_GenerateRandom.
const randomChunk = 32 << 10

// Random returns n bytes from the token's generator (C_GenerateRandom, in
// calls of at most 32 KiB).
//
// Errors: hsm.ErrInvalidInput unless 1 <= n <= 1 MiB; hsm.ErrBusy (wrapping
// ctx.Err()) if no session frees up before ctx is done; hsm.ErrUnavailable.
// Safe for concurrent use.
func (t *Token) Random(ctx context.Context, n int) ([]byte, error) {
	if n < 1 || n > maxRandom {
		return nil, fmt.Errorf("%w: random length %d, want 1..%d", hsm.ErrInvalidInput, n, maxRandom)
	}
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.mu.RUnlock()
	start := time.Now()
	var out []byte
	err := t.do(ctx, func(s pkcs11.SessionHandle) error {
		out = make([]byte, 0, n)
		// In chunks: NSS softoken refuses more than 64 KiB per call
		// (CKR_ARGUMENTS_BAD), and HSMs have their own limits.
		for len(out) < n {
			c := min(n-len(out), randomChunk)
			b, err := t.mod.GenerateRandom(s, c)
			if err != nil {
				return classify("C_GenerateRandom", err)
			}
			if len(b) != c {
				return errf(hsm.ErrUnavailable, "C_GenerateRandom", "returned %d bytes, want %d", len(b), c)
			}
			out = append(out, b...)
		}
		return nil
	})
	t.observe("C_GenerateRandom", start, err)
	return out, err
}

// Ping checks that a session of the pool is alive and logged in
// (C_GetSessionInfo), within ctx. A dead session is replaced and a lost
// login restored on the way.
//
// Errors: hsm.ErrBusy (wrapping ctx.Err()) if no session frees up before
// ctx is done; hsm.ErrUnavailable. Safe for concurrent use.
func (t *Token) Ping(ctx context.Context) (err error) {
	if t.down.Load() {
		return t.downError()
	}
	if err := t.enter(); err != nil {
		return err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_GetSessionInfo", start, err) }(time.Now())
	return t.do(ctx, func(s pkcs11.SessionHandle) error {
		info, err := t.mod.GetSessionInfo(s)
		if err != nil {
			return classify("C_GetSessionInfo", err)
		}
		if info.State != pkcs11.CKS_RW_USER_FUNCTIONS {
			return classify("C_GetSessionInfo", pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN))
		}
		return nil
	})
}
