package faultmod

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/softhsm"
)

// rig is one test's module instance: a fresh token, a control file, the
// module built and initialised in this process.
type rig struct {
	ctl  *Controller
	p    *pkcs11.Ctx
	tok  softhsm.Token
	slot uint
}

func setenv(t *testing.T, env []string) {
	t.Helper()
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

func newRig(t *testing.T) *rig {
	t.Helper()
	so := Build(t)
	tok := softhsm.NewSoftHSM2Token(t)
	ctl := NewController(t)
	setenv(t, ctl.Env())
	p := pkcs11.New(so)
	if p == nil {
		t.Fatalf("cannot load %s", so)
	}
	if err := p.Initialize(); err != nil {
		p.Destroy()
		t.Fatalf("C_Initialize: %v", err)
	}
	t.Cleanup(func() {
		ctl.Reset()
		if err := p.Finalize(); err != nil {
			t.Errorf("C_Finalize: %v", err)
		}
		p.Destroy()
	})
	r := &rig{ctl: ctl, p: p, tok: tok}
	r.slot = findSlot(t, p, tok.Label)
	return r
}

func findSlot(t testing.TB, p *pkcs11.Ctx, label string) uint {
	t.Helper()
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatalf("C_GetSlotList: %v", err)
	}
	for _, s := range slots {
		info, err := p.GetTokenInfo(s)
		if err != nil {
			t.Fatalf("C_GetTokenInfo: %v", err)
		}
		if strings.TrimRight(info.Label, " \x00") == label {
			return s
		}
	}
	t.Fatalf("token %q not found among slots %v", label, slots)
	return 0
}

// session opens a R/W session and makes sure the user is logged in.
func (r *rig) session(t *testing.T) pkcs11.SessionHandle {
	t.Helper()
	s, err := r.p.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatalf("C_OpenSession: %v", err)
	}
	if err := r.p.Login(s, pkcs11.CKU_USER, r.tok.PIN); err != nil && !isRV(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		t.Fatalf("C_Login: %v", err)
	}
	return s
}

func genKey(t testing.TB, p *pkcs11.Ctx, s pkcs11.SessionHandle) pkcs11.ObjectHandle {
	t.Helper()
	k, err := p.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
	})
	if err != nil {
		t.Fatalf("C_GenerateKey: %v", err)
	}
	return k
}

var aad = []byte("faultmod aad")

func seal(p *pkcs11.Ctx, s pkcs11.SessionHandle, key pkcs11.ObjectHandle, iv, pt []byte) ([]byte, error) {
	params := pkcs11.NewGCMParams(iv, aad, 128)
	defer params.Free()
	if err := p.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, key); err != nil {
		return nil, fmt.Errorf("C_EncryptInit: %w", err)
	}
	ct, err := p.Encrypt(s, pt)
	if err != nil {
		return nil, fmt.Errorf("C_Encrypt: %w", err)
	}
	return ct, nil
}

func open(p *pkcs11.Ctx, s pkcs11.SessionHandle, key pkcs11.ObjectHandle, iv, ct []byte) ([]byte, error) {
	params := pkcs11.NewGCMParams(iv, aad, 128)
	defer params.Free()
	if err := p.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, key); err != nil {
		return nil, fmt.Errorf("C_DecryptInit: %w", err)
	}
	pt, err := p.Decrypt(s, ct)
	if err != nil {
		return nil, fmt.Errorf("C_Decrypt: %w", err)
	}
	return pt, nil
}

// roundTrip seals and opens a message on s and checks the result.
func roundTrip(t *testing.T, p *pkcs11.Ctx, s pkcs11.SessionHandle, key pkcs11.ObjectHandle) {
	t.Helper()
	iv := bytes.Repeat([]byte{7}, 12)
	pt := []byte("attack at dawn")
	ct, err := seal(p, s, key, iv, pt)
	if err != nil {
		t.Fatal(err)
	}
	if len(ct) != len(pt)+16 {
		t.Fatalf("ciphertext is %d bytes, want %d", len(ct), len(pt)+16)
	}
	got, err := open(p, s, key, iv, ct)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pt) {
		t.Fatalf("round trip gave %q, want %q", got, pt)
	}
}

func isRV(err error, rv uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == rv
}

func wantRV(t *testing.T, what string, err error, rv uint) {
	t.Helper()
	if !isRV(err, rv) {
		t.Fatalf("%s: got %v, want %v", what, err, pkcs11.Error(rv))
	}
}

func TestFunctionTableMatchesC(t *testing.T) {
	src, err := source.ReadFile("csrc/faultmod.c")
	if err != nil {
		t.Fatal(err)
	}
	// fm_names in C.
	m := regexp.MustCompile(`(?s)fm_names\[FM_NFUNCS\] = \{(.*?)\};`).FindSubmatch(src)
	if m == nil {
		t.Fatal("fm_names not found in faultmod.c")
	}
	var cNames []string
	for _, q := range regexp.MustCompile(`"([^"]*)"`).FindAllSubmatch(m[1], -1) {
		cNames = append(cNames, string(q[1]))
	}
	// The FN_ enum in C.
	e := regexp.MustCompile(`(?s)enum \{\s*FN_ANY = 0,(.*?)FM_NFUNCS`).FindSubmatch(src)
	if e == nil {
		t.Fatal("function id enum not found in faultmod.c")
	}
	enum := []string{"*"}
	for _, q := range regexp.MustCompile(`FN_(C_\w+)`).FindAllSubmatch(e[1], -1) {
		enum = append(enum, string(q[1]))
	}
	// CK_FUNCTION_LIST order in the vendored header.
	hdr, err := source.ReadFile("csrc/include/pkcs11f.h")
	if err != nil {
		t.Fatal(err)
	}
	spec := []string{"*"}
	for _, q := range regexp.MustCompile(`CK_PKCS11_FUNCTION_INFO\((C_\w+)\)`).FindAllSubmatch(hdr, -1) {
		spec = append(spec, string(q[1]))
	}
	goNames := Functions()
	if len(goNames) != 69 {
		t.Errorf("Go table has %d entries, want 69", len(goNames))
	}
	for name, other := range map[string][]string{"C fm_names": cNames, "C enum": enum, "pkcs11f.h": spec} {
		if strings.Join(other, ",") != strings.Join(goNames, ",") {
			t.Errorf("%s differs from funcNames:\n%v\n%v", name, other, goNames)
		}
	}
}

func TestPassThrough(t *testing.T) {
	r := newRig(t)
	info, err := r.p.GetInfo()
	if err != nil {
		t.Fatalf("C_GetInfo: %v", err)
	}
	if !strings.Contains(info.ManufacturerID, "SoftHSM") {
		t.Errorf("C_GetInfo manufacturer %q: not forwarded to SoftHSM2?", info.ManufacturerID)
	}
	s := r.session(t)
	key := genKey(t, r.p, s)
	roundTrip(t, r.p, s, key)

	// SoftHSM2's own error behaviour comes through unchanged: a wrong tag
	// is CKR_GENERAL_ERROR.
	iv := make([]byte, 12)
	ct, err := seal(r.p, s, key, iv, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	ct[0] ^= 1
	_, err = open(r.p, s, key, iv, ct)
	wantRV(t, "tampered C_Decrypt", err, pkcs11.CKR_GENERAL_ERROR)
	roundTrip(t, r.p, s, key)

	// Object search, random numbers, session info.
	if err := r.p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := r.p.FindObjects(s, 10)
	if err != nil || len(objs) != 1 || objs[0] != key {
		t.Fatalf("C_FindObjects = %v, %v; want [%d]", objs, err, key)
	}
	if err := r.p.FindObjectsFinal(s); err != nil {
		t.Fatal(err)
	}
	if rnd, err := r.p.GenerateRandom(s, 32); err != nil || len(rnd) != 32 {
		t.Fatalf("C_GenerateRandom = %d bytes, %v", len(rnd), err)
	}
	si, err := r.p.GetSessionInfo(s)
	if err != nil || si.State != pkcs11.CKS_RW_USER_FUNCTIONS {
		t.Fatalf("C_GetSessionInfo = %+v, %v", si, err)
	}
	if err := r.p.CloseSession(s); err != nil {
		t.Fatalf("C_CloseSession: %v", err)
	}
}

func TestFail(t *testing.T) {
	r := newRig(t)
	s := r.session(t)
	key := genKey(t, r.p, s)

	r.ctl.Fail("C_Encrypt", pkcs11.CKR_DEVICE_ERROR)
	for range 3 {
		_, err := seal(r.p, s, key, make([]byte, 12), []byte("x"))
		wantRV(t, "seal with C_Encrypt failing", err, pkcs11.CKR_DEVICE_ERROR)
	}
	// Decryption is not affected.
	if _, err := r.p.GetSessionInfo(s); err != nil {
		t.Fatal(err)
	}
	r.ctl.Fail("C_Encrypt", 0) // cleared
	// The injected failures ended SoftHSM2's encryption operation, so the
	// same session encrypts again.
	roundTrip(t, r.p, s, key)

	// "*" fails everything but C_Initialize/C_Finalize/C_GetFunctionList.
	r.ctl.Fail("*", pkcs11.CKR_GENERAL_ERROR)
	_, err := r.p.GetSessionInfo(s)
	wantRV(t, "C_GetSessionInfo under *", err, pkcs11.CKR_GENERAL_ERROR)
	_, err = r.p.GetSlotList(true)
	wantRV(t, "C_GetSlotList under *", err, pkcs11.CKR_GENERAL_ERROR)
	// A function's own setting comes first.
	r.ctl.Fail("C_GetSessionInfo", pkcs11.CKR_FUNCTION_FAILED)
	_, err = r.p.GetSessionInfo(s)
	wantRV(t, "C_GetSessionInfo under its own and *", err, pkcs11.CKR_FUNCTION_FAILED)
	r.ctl.Reset()
	roundTrip(t, r.p, s, key)

	// C_Finalize and C_Initialize are not failed by "*", but can be by name.
	r.ctl.Fail("*", pkcs11.CKR_GENERAL_ERROR)
	if err := r.p.Finalize(); err != nil {
		t.Fatalf("C_Finalize under *: %v", err)
	}
	r.ctl.FailN("C_Initialize", pkcs11.CKR_FUNCTION_FAILED, 1)
	wantRV(t, "C_Initialize failed by name", r.p.Initialize(), pkcs11.CKR_FUNCTION_FAILED)
	if err := r.p.Initialize(); err != nil {
		t.Fatalf("C_Initialize under *: %v", err)
	}
	r.ctl.Reset()
	s = r.session(t)
	roundTrip(t, r.p, s, genKey(t, r.p, s)) // object handles do not survive C_Finalize
}

func TestFailN(t *testing.T) {
	r := newRig(t)
	s := r.session(t)
	key := genKey(t, r.p, s)

	r.ctl.FailN("C_EncryptInit", pkcs11.CKR_DEVICE_MEMORY, 2)
	for i := range 2 {
		_, err := seal(r.p, s, key, make([]byte, 12), []byte("x"))
		wantRV(t, fmt.Sprintf("seal %d", i), err, pkcs11.CKR_DEVICE_MEMORY)
	}
	roundTrip(t, r.p, s, key) // recovered by itself

	// A failure in the middle of an operation ends it, on the same session.
	for _, fn := range []string{"C_Encrypt", "C_Decrypt"} {
		r.ctl.FailN(fn, pkcs11.CKR_DEVICE_ERROR, 1)
		iv := make([]byte, 12)
		ct, err := seal(r.p, s, key, iv, []byte("payload"))
		if fn == "C_Encrypt" {
			wantRV(t, "seal", err, pkcs11.CKR_DEVICE_ERROR)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		_, err = open(r.p, s, key, iv, ct)
		wantRV(t, "open", err, pkcs11.CKR_DEVICE_ERROR)
		roundTrip(t, r.p, s, key)
	}
	roundTrip(t, r.p, s, key)

	// Exactly n failures across concurrent callers.
	const n, workers, each = 25, 8, 20
	r.ctl.FailN("C_GenerateRandom", pkcs11.CKR_DEVICE_ERROR, n)
	var failed, other atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		ws := r.session(t)
		wg.Go(func() {
			for range each {
				_, err := r.p.GenerateRandom(ws, 16)
				switch {
				case err == nil:
				case isRV(err, pkcs11.CKR_DEVICE_ERROR):
					failed.Add(1)
				default:
					other.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() != n || other.Load() != 0 {
		t.Fatalf("%d calls failed with CKR_DEVICE_ERROR and %d otherwise, want exactly %d and 0", failed.Load(), other.Load(), n)
	}
}

func TestDelay(t *testing.T) {
	r := newRig(t)
	s := r.session(t)
	key := genKey(t, r.p, s)

	const d = 30 * time.Millisecond
	r.ctl.Delay("C_GenerateRandom", d)
	start := time.Now()
	if _, err := r.p.GenerateRandom(s, 8); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < d {
		t.Errorf("C_GenerateRandom took %v with a %v delay", el, d)
	}

	// "*" adds to the function's own delay.
	r.ctl.Delay("*", d)
	start = time.Now()
	if _, err := r.p.GenerateRandom(s, 8); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 2*d {
		t.Errorf("C_GenerateRandom took %v with %v + %v of delay", el, d, d)
	}
	r.ctl.Reset()

	// The benchmark case: every C_Encrypt delayed (miekg calls it twice).
	r.ctl.Delay("C_Encrypt", 2*time.Millisecond)
	before := r.ctl.Calls("C_Encrypt")
	start = time.Now()
	const rounds = 10
	for range rounds {
		if _, err := seal(r.p, s, key, make([]byte, 12), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	calls := r.ctl.Calls("C_Encrypt") - before
	if el := time.Since(start); el < time.Duration(calls)*2*time.Millisecond {
		t.Errorf("%d C_Encrypt calls took %v with 2ms each", calls, el)
	}
	r.ctl.Delay("C_Encrypt", 0)
	roundTrip(t, r.p, s, key)
}

func TestInvalidateSessions(t *testing.T) {
	r := newRig(t)
	old := r.session(t)
	old2 := r.session(t)
	key := genKey(t, r.p, old)
	roundTrip(t, r.p, old, key)

	r.ctl.InvalidateSessions()
	_, err := r.p.GetSessionInfo(old)
	wantRV(t, "C_GetSessionInfo on an invalidated session", err, pkcs11.CKR_SESSION_HANDLE_INVALID)
	_, err = seal(r.p, old, key, make([]byte, 12), []byte("x"))
	wantRV(t, "seal on an invalidated session", err, pkcs11.CKR_SESSION_HANDLE_INVALID)
	_, err = r.p.GenerateRandom(old2, 4)
	wantRV(t, "C_GenerateRandom on an invalidated session", err, pkcs11.CKR_SESSION_HANDLE_INVALID)

	// New sessions work (the login survives: the dead sessions are still
	// open inside SoftHSM2).
	s := r.session(t)
	roundTrip(t, r.p, s, key)
	// Closing a dead session reports it dead, and really closes it.
	wantRV(t, "C_CloseSession on an invalidated session", r.p.CloseSession(old), pkcs11.CKR_SESSION_HANDLE_INVALID)
	_, err = r.p.GetSessionInfo(old)
	wantRV(t, "C_GetSessionInfo on a closed session", err, pkcs11.CKR_SESSION_HANDLE_INVALID)
	// Reset does not revive them.
	r.ctl.Reset()
	_, err = r.p.GetSessionInfo(old2)
	wantRV(t, "C_GetSessionInfo after Reset", err, pkcs11.CKR_SESSION_HANDLE_INVALID)
	roundTrip(t, r.p, s, key)

	// A second invalidation kills the sessions opened after the first.
	r.ctl.InvalidateSessions()
	_, err = r.p.GetSessionInfo(s)
	wantRV(t, "C_GetSessionInfo after the second invalidation", err, pkcs11.CKR_SESSION_HANDLE_INVALID)
	roundTrip(t, r.p, r.session(t), key)
}

func TestRemoveToken(t *testing.T) {
	r := newRig(t)
	s := r.session(t)
	key := genKey(t, r.p, s)

	r.ctl.RemoveToken(true)
	slots, err := r.p.GetSlotList(true)
	if err != nil || len(slots) != 0 {
		t.Fatalf("C_GetSlotList(present) = %v, %v; want no slot", slots, err)
	}
	all, err := r.p.GetSlotList(false)
	if err != nil || !contains(all, r.slot) {
		t.Fatalf("C_GetSlotList(all) = %v, %v; want it to contain %d", all, err, r.slot)
	}
	si, err := r.p.GetSlotInfo(r.slot)
	if err != nil || si.Flags&pkcs11.CKF_TOKEN_PRESENT != 0 {
		t.Fatalf("C_GetSlotInfo = %+v, %v; want CKF_TOKEN_PRESENT clear", si, err)
	}
	_, err = r.p.GetTokenInfo(r.slot)
	wantRV(t, "C_GetTokenInfo", err, pkcs11.CKR_TOKEN_NOT_PRESENT)
	_, err = r.p.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	wantRV(t, "C_OpenSession", err, pkcs11.CKR_TOKEN_NOT_PRESENT)
	_, err = r.p.GetMechanismList(r.slot)
	wantRV(t, "C_GetMechanismList", err, pkcs11.CKR_TOKEN_NOT_PRESENT)
	_, err = r.p.GetSessionInfo(s)
	wantRV(t, "C_GetSessionInfo", err, pkcs11.CKR_DEVICE_REMOVED)
	_, err = seal(r.p, s, key, make([]byte, 12), []byte("x"))
	wantRV(t, "seal", err, pkcs11.CKR_DEVICE_REMOVED)

	r.ctl.RemoveToken(false)
	if got := findSlot(t, r.p, r.tok.Label); got != r.slot {
		t.Fatalf("token came back in slot %d, was %d", got, r.slot)
	}
	if si, err := r.p.GetSlotInfo(r.slot); err != nil || si.Flags&pkcs11.CKF_TOKEN_PRESENT == 0 {
		t.Fatalf("C_GetSlotInfo = %+v, %v; want CKF_TOKEN_PRESENT", si, err)
	}
	// Sessions from before the removal are gone, new ones work.
	_, err = r.p.GetSessionInfo(s)
	wantRV(t, "C_GetSessionInfo on a session from before the removal", err, pkcs11.CKR_SESSION_HANDLE_INVALID)
	roundTrip(t, r.p, r.session(t), key)
}

func contains(list []uint, v uint) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func TestHSMGeneratedIV(t *testing.T) {
	r := newRig(t)
	s := r.session(t)
	key := genKey(t, r.p, s)
	pt := []byte("the HSM chooses the IV")

	r.ctl.HSMGeneratedIV(true)
	// A caller IV is refused, as by AWS CloudHSM.
	_, err := seal(r.p, s, key, bytes.Repeat([]byte{1}, 12), pt)
	wantRV(t, "seal with a non-zero IV", err, pkcs11.CKR_MECHANISM_PARAM_INVALID)
	_, err = seal(r.p, s, key, make([]byte, 16), pt)
	wantRV(t, "seal with a 16-byte IV", err, pkcs11.CKR_MECHANISM_PARAM_INVALID)

	encrypt := func() (iv, ct []byte) {
		t.Helper()
		params := pkcs11.NewGCMParams(make([]byte, 12), aad, 128)
		defer params.Free()
		if err := r.p.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, key); err != nil {
			t.Fatalf("C_EncryptInit with a zero IV: %v", err)
		}
		ct, err := r.p.Encrypt(s, pt)
		if err != nil {
			t.Fatalf("C_Encrypt: %v", err)
		}
		return params.IV(), ct
	}
	iv1, ct1 := encrypt()
	iv2, _ := encrypt()
	if len(iv1) != 12 || bytes.Equal(iv1, make([]byte, 12)) {
		t.Fatalf("IV read back = %x, want 12 bytes written by the module", iv1)
	}
	if bytes.Equal(iv1, iv2) {
		t.Fatalf("two encryptions got the same IV %x", iv1)
	}
	// Decryption is untouched by the mode...
	if got, err := open(r.p, s, key, iv1, ct1); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("open with the HSM's IV in HSM-IV mode = %q, %v", got, err)
	}
	// ...and works the same in normal mode.
	r.ctl.HSMGeneratedIV(false)
	if got, err := open(r.p, s, key, iv1, ct1); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("open with the HSM's IV = %q, %v", got, err)
	}
	// The zero IV really was replaced: it does not open the ciphertext.
	_, err = open(r.p, s, key, make([]byte, 12), ct1)
	wantRV(t, "open with the zero IV", err, pkcs11.CKR_GENERAL_ERROR)

	// If the token refuses C_EncryptInit, the caller's IV is zero again.
	r.ctl.HSMGeneratedIV(true)
	params := pkcs11.NewGCMParams(make([]byte, 12), aad, 128)
	defer params.Free()
	err = r.p.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, 0xdead)
	if err == nil {
		t.Fatal("C_EncryptInit with a bad key handle succeeded")
	}
	if iv := params.IV(); !bytes.Equal(iv, make([]byte, 12)) {
		t.Fatalf("IV after a refused C_EncryptInit = %x, want zero", iv)
	}
	// Other mechanisms are not affected.
	r.ctl.Reset()
	roundTrip(t, r.p, s, key)
}

func TestCalls(t *testing.T) {
	r := newRig(t)
	if r.ctl.Calls("C_Initialize") != 1 {
		t.Errorf("Calls(C_Initialize) = %d, want 1", r.ctl.Calls("C_Initialize"))
	}
	s := r.session(t)
	key := genKey(t, r.p, s)
	all, enc, info := r.ctl.Calls("*"), r.ctl.Calls("C_Encrypt"), r.ctl.Calls("C_GetSessionInfo")
	for range 3 {
		if _, err := r.p.GetSessionInfo(s); err != nil {
			t.Fatal(err)
		}
	}
	// Failed calls count too.
	r.ctl.FailN("C_GetSessionInfo", pkcs11.CKR_DEVICE_ERROR, 2)
	for range 2 {
		_, _ = r.p.GetSessionInfo(s)
	}
	if _, err := seal(r.p, s, key, make([]byte, 12), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := r.ctl.Calls("C_GetSessionInfo") - info; got != 5 {
		t.Errorf("C_GetSessionInfo calls = %d, want 5", got)
	}
	if got := r.ctl.Calls("C_Encrypt") - enc; got != 2 { // miekg: length query + call
		t.Errorf("C_Encrypt calls = %d, want 2", got)
	}
	if got := r.ctl.Calls("*") - all; got != 5+1+2 {
		t.Errorf("all calls = %d, want 8", got)
	}
}

func TestBadControlFile(t *testing.T) {
	so := Build(t)
	softhsm.NewSoftHSM2Token(t)
	ctl := NewController(t)
	setenv(t, ctl.Env())
	*ctl.u64(offMagic) = 0x1234 // as if written by another version
	p := pkcs11.New(so)
	if p == nil {
		t.Fatalf("cannot load %s", so)
	}
	defer p.Destroy()
	wantRV(t, "C_Initialize with a bad control file", p.Initialize(), pkcs11.CKR_GENERAL_ERROR)
}

// TestOtherProcess drives the module loaded by another process, as a
// test drives kmsd: the child (this test binary, TestHelperProcess) loads
// it and seals on request; the parent switches faults in between.
func TestOtherProcess(t *testing.T) {
	so := Build(t)
	tok := softhsm.NewSoftHSM2TokenNoEnv(t)
	ctl := NewController(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(append(append(os.Environ(), tok.Env()...), ctl.Env()...),
		"FAULTMOD_HELPER=1", "FAULTMOD_HELPER_MODULE="+so, "FAULTMOD_HELPER_LABEL="+tok.Label, "FAULTMOD_HELPER_PIN="+tok.PIN)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper: %v\n%s", err, stderr.String())
		}
	}()
	lines := bufio.NewScanner(stdout)
	ask := func(cmd string) string {
		t.Helper()
		if _, err := io.WriteString(stdin, cmd+"\n"); err != nil {
			t.Fatalf("helper: %v\n%s", err, stderr.String())
		}
		for lines.Scan() {
			if l, ok := strings.CutPrefix(lines.Text(), "helper: "); ok {
				return l
			}
		}
		t.Fatalf("helper died: %v\n%s", lines.Err(), stderr.String())
		return ""
	}
	if got := ask("seal"); got != "ok" {
		t.Fatalf("seal before any fault: %s", got)
	}
	ctl.Fail("C_Encrypt", pkcs11.CKR_DEVICE_ERROR)
	if got := ask("seal"); got != fmt.Sprint(pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)) {
		t.Fatalf("seal with C_Encrypt failing: %s", got)
	}
	ctl.Reset()
	if got := ask("seal"); got != "ok" {
		t.Fatalf("seal after Reset: %s", got)
	}
	ctl.InvalidateSessions()
	if got := ask("seal"); got != fmt.Sprint(pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)) {
		t.Fatalf("seal on an invalidated session: %s", got)
	}
	if ctl.Calls("C_Initialize") != 1 || ctl.Calls("C_Encrypt") == 0 {
		t.Fatalf("calls made by the other process not counted: C_Initialize %d, C_Encrypt %d", ctl.Calls("C_Initialize"), ctl.Calls("C_Encrypt"))
	}
}

// TestHelperProcess is the child of TestOtherProcess; it does nothing in a
// normal run.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("FAULTMOD_HELPER") != "1" {
		return // only TestOtherProcess runs it, as a child process
	}
	p := pkcs11.New(os.Getenv("FAULTMOD_HELPER_MODULE"))
	if p == nil {
		t.Fatal("cannot load the module")
	}
	defer p.Destroy()
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer p.Finalize()
	slot := findSlot(t, p, os.Getenv("FAULTMOD_HELPER_LABEL"))
	s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(s, pkcs11.CKU_USER, os.Getenv("FAULTMOD_HELPER_PIN")); err != nil {
		t.Fatal(err)
	}
	key := genKey(t, p, s)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "seal":
			if _, err := seal(p, s, key, make([]byte, 12), []byte("x")); err != nil {
				var e pkcs11.Error
				if errors.As(err, &e) {
					fmt.Printf("helper: %v\n", e)
				} else {
					fmt.Printf("helper: %v\n", err)
				}
				continue
			}
			fmt.Println("helper: ok")
		default:
			fmt.Println("helper: unknown command")
		}
	}
}

func TestHideMechanism(t *testing.T) {
	r := newRig(t)
	s := r.session(t)
	key := genKey(t, r.p, s)
	r.ctl.HideMechanism(pkcs11.CKM_AES_GCM)
	_, err := r.p.GetMechanismInfo(r.slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, nil)})
	wantRV(t, "C_GetMechanismInfo(CKM_AES_GCM) while hidden", err, pkcs11.CKR_MECHANISM_INVALID)
	if _, err := r.p.GetMechanismInfo(r.slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}); err != nil {
		t.Fatalf("C_GetMechanismInfo(CKM_AES_KEY_GEN): %v", err)
	}
	list, err := r.p.GetMechanismList(r.slot)
	if err != nil || len(list) == 0 {
		t.Fatalf("C_GetMechanismList: %d, %v", len(list), err)
	}
	for _, m := range list {
		if m.Mechanism == pkcs11.CKM_AES_GCM {
			t.Fatal("C_GetMechanismList lists the hidden CKM_AES_GCM")
		}
	}
	_, err = seal(r.p, s, key, make([]byte, 12), []byte("x"))
	wantRV(t, "C_EncryptInit(CKM_AES_GCM) while hidden", err, pkcs11.CKR_MECHANISM_INVALID)
	r.ctl.Reset()
	roundTrip(t, r.p, s, key)
	full, err := r.p.GetMechanismList(r.slot)
	if err != nil || len(full) != len(list)+1 {
		t.Fatalf("after Reset: %d mechanisms (%v), want %d", len(full), err, len(list)+1)
	}
}

func TestReuseSessionHandles(t *testing.T) {
	r := newRig(t)
	r.ctl.ReuseSessionHandles()
	s1, s2 := r.session(t), r.session(t)
	if s1 != 1 || s2 != 2 {
		t.Fatalf("sessions %d, %d; want 1, 2", s1, s2)
	}
	key := genKey(t, r.p, s1)
	if err := r.p.CloseSession(s1); err != nil {
		t.Fatal(err)
	}
	_, err := r.p.GetSessionInfo(s1)
	wantRV(t, "C_GetSessionInfo on a closed number", err, pkcs11.CKR_SESSION_HANDLE_INVALID)
	if s := r.session(t); s != 1 {
		t.Fatalf("after closing 1, C_OpenSession = %d, want 1", s)
	}
	roundTrip(t, r.p, 1, key)
	roundTrip(t, r.p, s2, key)
	// The number of a session the module lost is handed out again.
	r.ctl.InvalidateSessions()
	_, err = r.p.GetSessionInfo(s2)
	wantRV(t, "C_GetSessionInfo on an invalidated session", err, pkcs11.CKR_SESSION_HANDLE_INVALID)
	if s := r.session(t); s != 1 {
		t.Fatalf("after invalidation, C_OpenSession = %d, want 1", s)
	}
	roundTrip(t, r.p, 1, key)
	// Closing the old number now closes the new session.
	if err := r.p.CloseSession(1); err != nil {
		t.Fatal(err)
	}
	_, err = r.p.GetSessionInfo(1)
	wantRV(t, "C_GetSessionInfo after closing the reused number", err, pkcs11.CKR_SESSION_HANDLE_INVALID)
}
