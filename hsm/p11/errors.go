package p11

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// p11Error is the one error type of this package for failures reported by
// the module. It wraps exactly one sentinel of package hsm (Unwrap) and
// remembers the PKCS#11 function and return value for operators' logs. Its
// message is built only when Error is called, so failing calls on the hot
// path (a flood of tampered ciphertexts) cost one small allocation.
type p11Error struct {
	kind     error  // sentinel of package hsm
	fn       string // PKCS#11 function, e.g. "C_Decrypt"
	rv       uint   // CKR_* value; 0 when not a return code (panic, Go-side check)
	detail   string // optional extra context; never secret
	panicked bool   // the binding panicked: the session state is unknown
	down     bool   // returned because the Token was down (not a new fault)
}

func (e *p11Error) Error() string {
	var b strings.Builder
	b.WriteString(e.kind.Error())
	b.WriteString(": ")
	b.WriteString(e.fn)
	if e.rv != 0 || !e.panicked && e.detail == "" {
		b.WriteString(": ")
		b.WriteString(ckrName(e.rv))
	}
	if e.detail != "" {
		b.WriteString(": ")
		b.WriteString(e.detail)
	}
	return b.String()
}

func (e *p11Error) Unwrap() error { return e.kind }

// ckrName returns "CKR_NAME (0xN)" for a PKCS#11 return value.
func ckrName(rv uint) string {
	// pkcs11.Error formats as "pkcs11: 0x5: CKR_GENERAL_ERROR".
	s := pkcs11.Error(rv).Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s[i+2:], "CKR_") {
		return fmt.Sprintf("%s (0x%X)", s[i+2:], rv)
	}
	return fmt.Sprintf("CKR_0x%X", rv)
}

// classify turns an error returned by the binding for the PKCS#11 function
// fn into an error wrapping one hsm sentinel. It is the only place where
// return codes are interpreted:
//
//   - CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID: hsm.ErrKeyNotFound
//     (the caller drops its cached handle).
//   - On C_Decrypt only, CKR_GENERAL_ERROR, CKR_ENCRYPTED_DATA_INVALID and
//     CKR_ENCRYPTED_DATA_LEN_RANGE: hsm.ErrNotAuthentic. SoftHSM2 reports a
//     bad GCM tag as CKR_GENERAL_ERROR; inputs were validated and the key
//     handle was accepted by C_DecryptInit, so the remaining cause is the
//     data. The raw code stays in the message.
//   - CKR_PIN_*, CKR_USER_PIN_NOT_INITIALIZED: hsm.ErrLogin.
//   - CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID,
//     CKR_FUNCTION_NOT_SUPPORTED, CKR_KEY_SIZE_RANGE,
//     CKR_KEY_TYPE_INCONSISTENT, and CKR_ARGUMENTS_BAD from C_Initialize:
//     hsm.ErrMisconfigured, with a hint naming the setting to change
//     (misconfigHint). Never counted towards re-initialisation.
//   - CKR_ARGUMENTS_BAD (elsewhere), CKR_DATA_LEN_RANGE, CKR_DATA_INVALID:
//     hsm.ErrInvalidInput (the module refused what we passed, e.g. a
//     message longer than it supports).
//   - everything else, including the CKR_SESSION_*, CKR_DEVICE_*,
//     CKR_TOKEN_*, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_USER_NOT_LOGGED_IN,
//     CKR_GENERAL_ERROR outside C_Decrypt and unknown codes:
//     hsm.ErrUnavailable. Inputs are validated before any call, so an
//     unexpected code is a fault of the module or token, not of the caller;
//     a retryable "unavailable" is the honest answer.
//
// Errors that are not pkcs11.Error (they should not occur) also become
// hsm.ErrUnavailable. classify(fn, nil) is nil.
func classify(fn string, err error) error {
	if err == nil {
		return nil
	}
	var rv pkcs11.Error
	if !errors.As(err, &rv) {
		return &p11Error{kind: hsm.ErrUnavailable, fn: fn, detail: err.Error()}
	}
	e := &p11Error{kind: kindOf(fn, uint(rv)), fn: fn, rv: uint(rv)}
	if e.kind == hsm.ErrMisconfigured {
		e.detail = misconfigHint(fn, uint(rv))
	}
	return e
}

// misconfigHint says which setting a configuration error points at.
func misconfigHint(fn string, rv uint) string {
	switch {
	case fn == "C_Initialize":
		return "the module refused its initialisation arguments: set pkcs11.init_args (KMSD_PKCS11_INIT_ARGS) to the string this module needs (NSS softoken: configdir='sql:DIR' ...), or clear it if the module takes none"
	case rv == pkcs11.CKR_MECHANISM_PARAM_INVALID:
		return "the module refused the CKM_AES_GCM parameters (IV, AAD or tag length): if the HSM generates GCM IVs itself (FIPS mode, AWS CloudHSM) set pkcs11.iv_mode to hsm, otherwise to caller"
	default:
		return "the module or token lacks a mechanism or function kmsd needs (CKM_AES_KEY_GEN, CKM_AES_GCM with 256-bit keys): use a module, firmware or token policy that provides it"
	}
}

func kindOf(fn string, rv uint) error {
	switch rv {
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return hsm.ErrKeyNotFound
	case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE:
		if fn == fnDecrypt {
			return hsm.ErrNotAuthentic
		}
		return hsm.ErrUnavailable
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE,
		pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
		return hsm.ErrLogin
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID,
		pkcs11.CKR_FUNCTION_NOT_SUPPORTED, pkcs11.CKR_KEY_SIZE_RANGE,
		pkcs11.CKR_KEY_TYPE_INCONSISTENT:
		return hsm.ErrMisconfigured
	case pkcs11.CKR_ARGUMENTS_BAD:
		if fn == "C_Initialize" {
			return hsm.ErrMisconfigured
		}
		return hsm.ErrInvalidInput
	case pkcs11.CKR_DATA_LEN_RANGE, pkcs11.CKR_DATA_INVALID:
		return hsm.ErrInvalidInput
	default:
		return hsm.ErrUnavailable
	}
}

// PKCS#11 function names used in messages and by classify.
const (
	fnDecrypt = "C_Decrypt"
)

// rvOf returns the PKCS#11 return value recorded in err, or 0.
func rvOf(err error) uint {
	if err == nil {
		return 0
	}
	var pe *p11Error
	if errors.As(err, &pe) {
		return pe.rv
	}
	return 0
}

// fate says what to do with a session after a call returned err.
type fate uint8

const (
	fateKeep    fate = iota // return the session to the pool
	fateRelogin             // log the application in again, then keep it
	fateReplace             // close it and open a fresh one in its place
)

// sessionFate decides a session's fate from the error of the call that used
// it, and whether that call may be retried once on a healthy session. Only
// codes that mean "nothing was done" are retried: a dead session handle, an
// operation left active by an earlier failure, a lost login.
func sessionFate(err error) (f fate, retry bool) {
	if err == nil {
		return fateKeep, false
	}
	var pe *p11Error
	if !errors.As(err, &pe) {
		return fateKeep, false
	}
	if pe.panicked {
		return fateReplace, false
	}
	switch pe.rv {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_OPERATION_ACTIVE:
		return fateReplace, true
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_MEMORY:
		return fateReplace, false
	case pkcs11.CKR_BUFFER_TOO_SMALL:
		// Outputs are sized exactly, so this is the module's quirk; some
		// modules end the operation there and others keep it active: a
		// fresh session has none.
		return fateReplace, false
	case pkcs11.CKR_USER_NOT_LOGGED_IN:
		return fateRelogin, true
	}
	return fateKeep, false
}

// errf builds an error wrapping kind with a fixed message (no return code).
func errf(kind error, fn, format string, args ...any) error {
	return &p11Error{kind: kind, fn: fn, detail: fmt.Sprintf(format, args...)}
}

// errClosed is returned by every method after Close.
var errClosed error = &p11Error{kind: hsm.ErrUnavailable, fn: "p11", detail: "token closed"}
