// Package faultmod builds and drives a fault-injection PKCS#11 module for
// tests and benchmarks (issue 5, items 7 and 8). Like package softhsm it is
// imported only by _test.go files and test tools.
//
// The module (csrc/faultmod.c, compiled by Build with the system C
// compiler) is a pass-through PKCS#11 v2.40 module: it loads the module
// named by $FAULTMOD_TARGET (SoftHSM2), forwards every function of
// CK_FUNCTION_LIST to it, and returns its own function list. A Controller
// switches its behaviour at run time through a shared-memory control file
// ($FAULTMOD_CONTROL), also while another process (kmsd) has the module
// loaded: a switch is visible to the next PKCS#11 call, and a call costs
// the module a few atomic loads when no fault is set.
//
// A process that loads the module needs the entries of Controller.Env and
// of softhsm.Token.Env in its environment at C_Initialize; the module path
// from Build goes where the SoftHSM2 module path would (for kmsd, its
// PKCS#11 module setting).
//
// # Faults
//
// Every call is, in this order: counted (Calls); delayed by the delay of
// the function plus that of "*" (Delay, clock_nanosleep); failed if a
// failure is set for the function or for "*" (Fail, FailN), without
// calling SoftHSM2; refused if the token is removed (RemoveToken) or its
// session invalidated (InvalidateSessions); otherwise forwarded, with
// C_EncryptInit(CKM_AES_GCM) rewritten in HSM-generated IV mode
// (HSMGeneratedIV). The exact return codes are listed on each method.
//
// An injected failure of a call that continues an operation (C_Encrypt,
// C_EncryptUpdate, C_EncryptFinal, the C_Decrypt*, C_Digest*, C_Sign* and
// C_Verify* equivalents, not *Init) also ends SoftHSM2's active operation
// on that session, as a token does when such a call fails (PKCS#11 v2.40
// §5.2), so the session can start a new operation afterwards. This is best
// effort (it calls the target's C_xxxFinal with a scratch buffer) and works
// for every multi-part mechanism, AES-GCM included.
//
// Note that miekg/pkcs11's Ctx.Encrypt and Ctx.Decrypt call C_Encrypt /
// C_Decrypt twice (length query, then the real call), so a per-call delay
// or a FailN count applies to both calls.
//
// # Control file layout (version 1)
//
// Native byte order, all fields naturally aligned; csrc/faultmod.c has the
// same table and both must change together (bump the version):
//
//	offset size  field
//	0      8     magic        0x31304c5254434d46 ("FMCTRL01")
//	8      4     version      1
//	12     4     nslots       number of 32-byte slots after the header (69)
//	16     8     session_gen  +1 per InvalidateSessions and RemoveToken(true)
//	24     8     removed      1 while the token is removed
//	32     8     hsm_iv       1 in HSM-generated IV mode
//	40     8     hide_mech    mechanism type + 1 to hide (0 none)
//	48     8     reuse        1: session handles reused at once
//	56     8     reserved
//	64     32*nslots          slot i = function id i (see Functions):
//	       +0  8 fail_rv      CK_RV injected while fail_count != 0
//	       +8  8 fail_count   int64: 0 off, -1 always, n > 0 the next n calls
//	       +16 8 delay_ns     per-call delay
//	       +24 8 calls        call counter (written by the module)
//
// Slot 0 is "*" (its fail and delay apply to every function except
// C_Initialize, C_Finalize and C_GetFunctionList; its counter counts every
// call); slots 1..68 are the functions in CK_FUNCTION_LIST order.
package faultmod

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"hsmkms/softhsm"
)

//go:embed csrc/faultmod.c csrc/include/*.h csrc/include/NOTICE
var source embed.FS

// Layout constants of the control file; see the package documentation.
const (
	ctlMagic   = 0x31304c5254434d46 // "FMCTRL01" little-endian
	ctlVersion = 1
	headerSize = 64
	slotSize   = 32

	offMagic      = 0
	offVersion    = 8
	offNSlots     = 12
	offSessionGen = 16
	offRemoved    = 24
	offHSMIV      = 32
	offHideMech   = 40
	offReuse      = 48

	slotFailRV    = 0
	slotFailCount = 8
	slotDelay     = 16
	slotCalls     = 24
)

// funcNames[id] is the function of slot id, in CK_FUNCTION_LIST order
// (pkcs11f.h); "*" is slot 0. It must equal fm_names in csrc/faultmod.c
// (TestFunctionTableMatchesC checks).
var funcNames = [...]string{
	"*",
	"C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList",
	"C_GetSlotList", "C_GetSlotInfo", "C_GetTokenInfo",
	"C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken",
	"C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession",
	"C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState",
	"C_SetOperationState", "C_Login", "C_Logout", "C_CreateObject",
	"C_CopyObject", "C_DestroyObject", "C_GetObjectSize",
	"C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit",
	"C_FindObjects", "C_FindObjectsFinal", "C_EncryptInit", "C_Encrypt",
	"C_EncryptUpdate", "C_EncryptFinal", "C_DecryptInit", "C_Decrypt",
	"C_DecryptUpdate", "C_DecryptFinal", "C_DigestInit", "C_Digest",
	"C_DigestUpdate", "C_DigestKey", "C_DigestFinal", "C_SignInit",
	"C_Sign", "C_SignUpdate", "C_SignFinal", "C_SignRecoverInit",
	"C_SignRecover", "C_VerifyInit", "C_Verify", "C_VerifyUpdate",
	"C_VerifyFinal", "C_VerifyRecoverInit", "C_VerifyRecover",
	"C_DigestEncryptUpdate", "C_DecryptDigestUpdate",
	"C_SignEncryptUpdate", "C_DecryptVerifyUpdate", "C_GenerateKey",
	"C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey", "C_DeriveKey",
	"C_SeedRandom", "C_GenerateRandom", "C_GetFunctionStatus",
	"C_CancelFunction", "C_WaitForSlotEvent",
}

var funcIDs = func() map[string]int {
	m := make(map[string]int, len(funcNames))
	for i, n := range funcNames {
		m[n] = i
	}
	return m
}()

// Functions returns the names the Controller accepts: "*" and the 68
// PKCS#11 v2.40 functions, in function-id order.
func Functions() []string { return append([]string(nil), funcNames[:]...) }

// Build compiles the module into a fresh t.TempDir() with the system C
// compiler ($CC if set, else cc or gcc) and returns the path of the shared
// object. It fails the test with installation instructions if there is no
// compiler, and with the compiler's output if compilation fails; warnings
// are logged.
func Build(t testing.TB) string {
	t.Helper()
	so, out, err := BuildIn(t.TempDir())
	if err != nil {
		t.Fatalf("%v", err)
	}
	if len(out) > 0 {
		t.Logf("faultmod: compiler output:\n%s", out)
	}
	return so
}

// BuildIn is Build for programs that are not tests (the benchmark): it
// compiles the module into dir and returns the shared object's path and
// the compiler's output (warnings).
func BuildIn(dir string) (so string, compilerOutput []byte, err error) {
	cc, err := compiler()
	if err != nil {
		return "", nil, fmt.Errorf("faultmod: %v", err)
	}
	err = fs.WalkDir(source, "csrc", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := source.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		return "", nil, fmt.Errorf("faultmod: writing sources: %v", err)
	}
	so = filepath.Join(dir, "faultmod.so")
	args := append(cc[1:len(cc):len(cc)],
		"-Wall", "-Wextra", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread",
		"-I", filepath.Join(dir, "csrc", "include"),
		"-o", so, filepath.Join(dir, "csrc", "faultmod.c"), "-ldl")
	if mod, err := softhsm.FindModule(); err == nil {
		args = append(args, "-DFAULTMOD_DEFAULT_TARGET="+strconv.Quote(mod))
	}
	out, err := exec.Command(cc[0], args...).CombinedOutput()
	if err != nil {
		return "", out, fmt.Errorf("faultmod: compiling the module failed: %s %s: %v\n%s", cc[0], strings.Join(args, " "), err, out)
	}
	return so, out, nil
}

// compiler returns the C compiler command: $CC (split on spaces), cc or gcc.
func compiler() ([]string, error) {
	if f := strings.Fields(os.Getenv("CC")); len(f) > 0 {
		if _, err := exec.LookPath(f[0]); err != nil {
			return nil, fmt.Errorf("CC=%q: %v", os.Getenv("CC"), err)
		}
		return f, nil
	}
	for _, c := range []string{"cc", "gcc"} {
		if p, err := exec.LookPath(c); err == nil {
			return []string{p}, nil
		}
	}
	return nil, fmt.Errorf("no C compiler found (looked for $CC, cc, gcc): the fault-injection PKCS#11 module is compiled by the tests; run `sudo apt-get install -y gcc` (or `make setup`)")
}

// Controller switches the module's behaviour at run time through its
// control file, from the test process, while this or another process has
// the module loaded. Its methods are safe for concurrent use and take
// effect at the next PKCS#11 call. Function names are those of Functions;
// an unknown name fails the test.
type Controller struct {
	t      testing.TB
	path   string
	target string
	mem    []byte // the shared mapping; unmapped at test cleanup
}

// NewController creates a control file in t.TempDir() with every fault
// off, maps it, and returns its Controller. The target is the SoftHSM2
// module (softhsm.FindModule; the test fails if SoftHSM2 is missing).
func NewController(t testing.TB) *Controller {
	t.Helper()
	c, err := NewControllerIn(t.TempDir())
	if err != nil {
		t.Fatalf("%v", err)
	}
	c.t = t
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// NewControllerIn is NewController for programs that are not tests: the
// control file is made in dir, and the caller calls Close when done. An
// unknown function name given to its methods panics.
func NewControllerIn(dir string) (*Controller, error) {
	target, err := softhsm.FindModule()
	if err != nil {
		return nil, fmt.Errorf("faultmod: %v", err)
	}
	path := filepath.Join(dir, "faultmod.ctl")
	size := headerSize + len(funcNames)*slotSize
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		return nil, fmt.Errorf("faultmod: %v", err)
	}
	mem, err := mapFile(path, size)
	if err != nil {
		return nil, fmt.Errorf("faultmod: mapping %s: %v", path, err)
	}
	c := &Controller{path: path, target: target, mem: mem}
	atomic.StoreUint32(c.u32(offVersion), ctlVersion)
	atomic.StoreUint32(c.u32(offNSlots), uint32(len(funcNames)))
	atomic.StoreUint64(c.u64(offMagic), ctlMagic) // last: the file is complete
	return c, nil
}

// Close unmaps the control file (the module keeps its own mapping).
func (c *Controller) Close() error { return unmapFile(c.mem) }

func (c *Controller) helper() {
	if c.t != nil {
		c.t.Helper()
	}
}

// Path is the control file.
func (c *Controller) Path() string { return c.path }

// Env returns the environment entries a process loading the module needs:
// FAULTMOD_CONTROL (this control file) and FAULTMOD_TARGET (the SoftHSM2
// module). SOFTHSM2_CONF comes from softhsm.Token.Env.
func (c *Controller) Env() []string {
	return []string{"FAULTMOD_CONTROL=" + c.path, "FAULTMOD_TARGET=" + c.target}
}

// Fail makes every later call of function return rv without reaching
// SoftHSM2, until Fail(function, 0), FailN or Reset. function "*" means
// every function except C_Initialize, C_Finalize and C_GetFunctionList
// (a function's own setting is checked first). rv 0 clears the failure.
func (c *Controller) Fail(function string, rv uint) {
	c.helper()
	c.setFail(c.slot(function), rv, -1)
}

// FailN is Fail for the next n calls only (counted across all threads and
// processes using the control file); n <= 0 or rv 0 clears the failure.
func (c *Controller) FailN(function string, rv uint, n int) {
	c.helper()
	c.setFail(c.slot(function), rv, int64(n))
}

func (c *Controller) setFail(slot int, rv uint, n int64) {
	if rv == 0 || n == 0 || n < -1 {
		atomic.StoreInt64(c.i64(slot+slotFailCount), 0)
		return
	}
	atomic.StoreUint64(c.u64(slot+slotFailRV), uint64(rv))
	atomic.StoreInt64(c.i64(slot+slotFailCount), n) // after rv: the module reads count, then rv
}

// Delay adds d (slept with clock_nanosleep before the call is forwarded or
// failed) to every call of function; "*" adds d to every function except
// C_Initialize, C_Finalize and C_GetFunctionList, on top of their own
// delays. d <= 0 removes the delay.
func (c *Controller) Delay(function string, d time.Duration) {
	c.helper()
	if d < 0 {
		d = 0
	}
	atomic.StoreUint64(c.u64(c.slot(function)+slotDelay), uint64(d))
}

// InvalidateSessions kills every session open now: from now on each
// function taking one of their handles returns CKR_SESSION_HANDLE_INVALID
// (C_CloseSession too, after closing it in SoftHSM2). Sessions opened
// later work. The dead sessions stay open inside SoftHSM2 until they are
// closed (C_CloseSession, C_CloseAllSessions, C_Finalize), so the
// application's login state survives as long as one of them is not closed,
// unlike on a token that really lost its sessions.
func (c *Controller) InvalidateSessions() {
	atomic.AddUint64(c.u64(offSessionGen), 1)
}

// RemoveToken(true) "removes" the token: C_GetSlotList(tokenPresent=true)
// lists no slot, C_GetSlotInfo clears CKF_TOKEN_PRESENT, C_GetTokenInfo,
// C_OpenSession, C_InitToken, C_GetMechanismList and C_GetMechanismInfo
// return CKR_TOKEN_NOT_PRESENT, and every function taking a session handle
// returns CKR_DEVICE_REMOVED (C_CloseSession after closing the session in
// SoftHSM2). As with a real removal, every session open at that moment is
// also invalidated (InvalidateSessions), so after RemoveToken(false) puts
// the token back those handles return CKR_SESSION_HANDLE_INVALID and the
// application must open new sessions (and log in again if it closed them
// all).
func (c *Controller) RemoveToken(removed bool) {
	if removed {
		atomic.StoreUint64(c.u64(offRemoved), 1)
		atomic.AddUint64(c.u64(offSessionGen), 1)
		return
	}
	atomic.StoreUint64(c.u64(offRemoved), 0)
}

// HSMGeneratedIV switches the emulation of an HSM that writes its own GCM
// IVs (AWS CloudHSM, FIPS-mode Luna). While on, C_EncryptInit with
// CKM_AES_GCM requires CK_GCM_PARAMS with ulIvLen 12 and an all-zero IV
// (else CKR_MECHANISM_PARAM_INVALID), draws a 12-byte IV from SoftHSM2's
// C_GenerateRandom, writes it into the caller's pIv buffer and passes it to
// SoftHSM2; the caller reads it back after the call (miekg/pkcs11:
// GCMParams.IV). If SoftHSM2 refuses the C_EncryptInit, the buffer is
// zeroed again. C_DecryptInit is not affected.
func (c *Controller) HSMGeneratedIV(on bool) {
	var v uint64
	if on {
		v = 1
	}
	atomic.StoreUint64(c.u64(offHSMIV), v)
}

// HideMechanism makes the module pretend it lacks mechanism m, as some
// software tokens and older HSM firmware lack CKM_AES_GCM:
// C_GetMechanismList leaves it out, and C_GetMechanismInfo, C_EncryptInit,
// C_DecryptInit and C_GenerateKey with it return CKR_MECHANISM_INVALID.
func (c *Controller) HideMechanism(m uint) {
	atomic.StoreUint64(c.u64(offHideMech), uint64(m)+1)
}

// ReuseSessionHandles makes the module hand out session handles as the
// lowest free number from 1 up, reused as soon as a session is closed
// (close 1, open: 1), as some modules do. The number of a session
// invalidated by InvalidateSessions counts as free too, as on a module
// that lost the session: the next C_OpenSession may hand it out, and
// closing it then closes the new session. Call it before the first
// C_OpenSession and leave it on while sessions are open.
func (c *Controller) ReuseSessionHandles() {
	atomic.StoreUint64(c.u64(offReuse), 1)
}

// Reset turns every fault off: failures, delays, token removal, the
// hidden mechanism and the HSM-generated IV mode (handle reuse stays). Sessions already invalidated stay dead, and the
// call counters keep counting.
func (c *Controller) Reset() {
	for i := range funcNames {
		slot := headerSize + i*slotSize
		atomic.StoreInt64(c.i64(slot+slotFailCount), 0)
		atomic.StoreUint64(c.u64(slot+slotFailRV), 0)
		atomic.StoreUint64(c.u64(slot+slotDelay), 0)
	}
	atomic.StoreUint64(c.u64(offRemoved), 0)
	atomic.StoreUint64(c.u64(offHSMIV), 0)
	atomic.StoreUint64(c.u64(offHideMech), 0)
}

// Calls returns how many times function was called through the module
// since the control file was created (by every process using it, injected
// failures included; "*" counts all calls of all functions). Calls made
// before the module mapped the control file (at C_Initialize or
// C_GetFunctionList) are not counted.
func (c *Controller) Calls(function string) uint64 {
	c.helper()
	return atomic.LoadUint64(c.u64(c.slot(function) + slotCalls))
}

// slot returns the byte offset of function's slot.
func (c *Controller) slot(function string) int {
	c.helper()
	id, ok := funcIDs[function]
	if !ok {
		msg := fmt.Sprintf("faultmod: unknown PKCS#11 function %q (want \"*\" or a PKCS#11 v2.40 name such as \"C_Encrypt\")", function)
		if c.t == nil {
			panic(msg)
		}
		c.t.Fatal(msg)
	}
	return headerSize + id*slotSize
}

func (c *Controller) u64(off int) *uint64 { return (*uint64)(unsafe.Pointer(&c.mem[off])) }
func (c *Controller) i64(off int) *int64  { return (*int64)(unsafe.Pointer(&c.mem[off])) }
func (c *Controller) u32(off int) *uint32 { return (*uint32)(unsafe.Pointer(&c.mem[off])) }
