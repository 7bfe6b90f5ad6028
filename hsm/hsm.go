// Package hsm is the contract between the key-management domain and the
// hardware security module: the sentinel errors every HSM implementation
// returns, and the configuration that selects a token.
//
// The implementation lives in hsm/p11, the only package of the project that
// imports PKCS#11 (github.com/miekg/pkcs11). This package is pure Go so that
// the domain (kms/) and the HTTP edge (httpapi/) can reason about HSM
// failures without linking a PKCS#11 module.
//
// # Errors
//
// Every error returned by an HSM implementation wraps exactly one of the
// sentinels below, so callers classify with errors.Is and never look at
// PKCS#11 return codes:
//
//   - ErrKeyNotFound: no token object has the requested identifier.
//   - ErrNotAuthentic: a ciphertext, its IV, its tag or its additional
//     authenticated data has been altered (or belongs to another key).
//   - ErrBusy: no session became free before the caller's deadline.
//   - ErrUnavailable: the module or the token cannot serve requests now
//     (token removed, device error, closed). Retrying later may succeed.
//   - ErrInvalidInput: the caller passed arguments the HSM layer refuses
//     before any PKCS#11 call (wrong IV length, short ciphertext...).
//   - ErrLogin: the PIN was refused or the token could not be logged in.
//   - ErrTokenNotFound: no token carries the configured label.
//   - ErrMisconfigured: the module refused a mechanism, its parameters or
//     its initialisation arguments (no CKM_AES_GCM, a wrong iv_mode, missing
//     init_args). A configuration error: retrying cannot fix it, so it
//     never counts towards re-initialising the token; the message names
//     the mechanism and the setting to change.
package hsm

import (
	"context"
	"errors"
)

// Sentinel errors. See the package documentation for their meaning.
var (
	ErrKeyNotFound   = errors.New("hsm: key not found")
	ErrNotAuthentic  = errors.New("hsm: message authentication failed")
	ErrBusy          = errors.New("hsm: busy: no session available in time")
	ErrUnavailable   = errors.New("hsm: temporarily unavailable")
	ErrInvalidInput  = errors.New("hsm: invalid input")
	ErrLogin         = errors.New("hsm: login failed")
	ErrTokenNotFound = errors.New("hsm: token not found")
	ErrMisconfigured = errors.New("hsm: configuration error")
)

// Sizes of the AES-256-GCM construction used for every CMK.
const (
	KeyBytes = 32 // AES-256
	IVBytes  = 12 // 96-bit IV, the only size NIST SP 800-38D recommends
	TagBytes = 16 // 128-bit tag
)

// MACBytes is the size of a metadata MAC: HMAC-SHA-256.
const MACBytes = 32

// MACer computes and checks HMAC-SHA-256 message authentication codes
// inside the token, under a dedicated generic-secret key that never leaves
// it. The domain uses it to authenticate the metadata it keeps outside the
// HSM (key and credential rows, intents, audit checkpoints), so that whoever
// can write the database cannot forge a row.
//
// Implementations must be safe for concurrent use and keep no reference to
// the slices they are given once a call returns. Errors wrap the sentinels
// of this package: ErrKeyNotFound if the token has no such key,
// ErrNotAuthentic if VerifyMAC finds the MAC wrong, ErrInvalidInput for
// bad arguments, ErrBusy and ErrUnavailable as for every call.
type MACer interface {
	// EnsureMACKey makes sure the token holds exactly one
	// non-extractable, sensitive generic-secret token object of 32 bytes
	// usable only to sign and verify (CKM_SHA256_HMAC), with CKA_ID
	// objectID, creating it (CKA_LABEL label) only if no secret key on
	// the token has that id; created reports whether this call made it.
	// An existing key is never regenerated or replaced, and of several
	// callers starting at once (on one node or several) exactly one
	// creates it.
	EnsureMACKey(ctx context.Context, objectID []byte, label string) (created bool, err error)
	// MAC returns the MACBytes-byte HMAC-SHA-256 of msg under objectID.
	MAC(ctx context.Context, objectID, msg []byte) ([]byte, error)
	// VerifyMAC checks mac against msg under objectID: nil if it matches,
	// an error wrapping ErrNotAuthentic if it does not.
	VerifyMAC(ctx context.Context, objectID, msg, mac []byte) error
}

// ---------------------------------------------------------------------------
// Asymmetric keys

// KeySpec names the kind of an asymmetric key pair.
type KeySpec string

// Key pair kinds.
const (
	SpecRSA2048 KeySpec = "RSA_2048" // RSA, 2048-bit modulus, public exponent 65537
	SpecECP256  KeySpec = "EC_P256"  // ECDSA on NIST P-256 (secp256r1)
	SpecECP384  KeySpec = "EC_P384"  // ECDSA on NIST P-384 (secp384r1)
)

// KeyPairUse is the one use a private key allows.
type KeyPairUse uint8

// Uses of a private key: a key pair either signs or decrypts, never both.
const (
	UseSign KeyPairUse = iota + 1
	UseDecrypt
)

// SignMechanism names how a private key signs a digest.
type SignMechanism uint8

// Signature mechanisms. Every one signs a digest computed by the caller.
const (
	// SignRSAPKCS1SHA256: RSASSA-PKCS1-v1_5 over a SHA-256 digest
	// (CKM_RSA_PKCS over the DER DigestInfo).
	SignRSAPKCS1SHA256 SignMechanism = iota + 1
	// SignRSAPSSSHA256: RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt
	// (CKM_RSA_PKCS_PSS).
	SignRSAPSSSHA256
	// SignECDSA: ECDSA over a digest of any length (CKM_ECDSA); the
	// signature is r||s, each the size of the curve's order.
	SignECDSA
)

// RSAPadding names an RSA encryption padding.
type RSAPadding uint8

// RSA encryption paddings.
const (
	PadPKCS1v15   RSAPadding = iota + 1 // RSAES-PKCS1-v1_5 (CKM_RSA_PKCS)
	PadOAEPSHA1                         // RSAES-OAEP, SHA-1, MGF1-SHA-1, no label
	PadOAEPSHA256                       // RSAES-OAEP, SHA-256, MGF1-SHA-256, no label
)

// AsymSupport says which asymmetric operations a token offers (asked of
// the module with C_GetMechanismInfo).
type AsymSupport struct {
	// Specs lists the key pair kinds the token can generate.
	Specs []KeySpec
	// Sign lists the signature mechanisms it offers (CKF_SIGN).
	Sign []SignMechanism
	// Decrypt lists the RSA paddings it decrypts (CKF_DECRYPT).
	Decrypt []RSAPadding
	// Missing names, for what the token does not offer, the PKCS#11
	// mechanism that is missing, by what it would serve ("RSA_2048",
	// "EC_P256", "SM2", "SM4", "RSA_PSS_SHA_256"...).
	Missing map[string]string
}

// Key import (BYOK): key material wrapped outside the token under an
// RSA-2048 wrapping key the token made, unwrapped inside it (C_UnwrapKey,
// CKM_RSA_PKCS_OAEP) so the plaintext key never exists outside the token.

// OAEPHash selects the hash of RSAES-OAEP (and of its MGF1; the label is
// empty) for unwrapping imported key material.
type OAEPHash int

// OAEP hashes: RSAES_OAEP_SHA_1 and RSAES_OAEP_SHA_256 of Tencent's
// GetParametersForImport.
const (
	OAEPSHA1   OAEPHash = 1
	OAEPSHA256 OAEPHash = 2
)

// WrappingKeyBits is the modulus size of a wrapping key (RSA_2048), and
// WrappedKeyBytes the size of key material wrapped under it.
const (
	WrappingKeyBits = 2048
	WrappedKeyBytes = WrappingKeyBits / 8
)

// KCVBytes is the size of a key check value: AES-256 (ECB) of one zero
// block under the key, computed inside the token.
const KCVBytes = 16
