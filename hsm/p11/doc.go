// Package p11 implements the HSM contract (kms.HSM, sentinel errors of
// package hsm) on a PKCS#11 token. It is the only package of the project
// that imports github.com/miekg/pkcs11; nothing outside it sees a session,
// an object handle or a CKR_* code.
//
// # Keys and ciphertexts
//
// A customer master key (CMK) is an AES-256 secret key object on the token:
// CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not CKA_EXTRACTABLE, usable for
// CKA_ENCRYPT and CKA_DECRYPT only, not CKA_MODIFIABLE where the module
// allows it. Keys with a fixed, well-known object id (the credentials key,
// the metadata MAC key) are made by EnsureKey and EnsureMACKey (fixed.go), which never generates an id that
// exists. What modules do differently is listed in vendors.go. Its CKA_ID is the object id chosen by
// the caller (1..64 bytes) and its CKA_LABEL starts with Config.LabelPrefix,
// which is how KeyIDs tells this service's objects from others.
//
// Seal and Open use CKM_AES_GCM with a 12-byte IV drawn from crypto/rand in
// Go (tokens such as SoftHSM2 never generate one), non-empty additional
// authenticated data and a 128-bit tag. The output is ciphertext||tag,
// byte for byte what crypto/cipher's GCM produces. Every length is checked
// before any PKCS#11 call, because SoftHSM2 accepts a zero tag length or an
// empty IV without complaint.
//
// # Sessions and concurrency
//
// A Token is safe for concurrent use. OpenToken opens a fixed set of
// Config.Sessions read/write sessions and logs the user in once (login
// state belongs to the application, not to a session). Every call borrows
// one session from the pool for its duration, so at most Config.Sessions
// PKCS#11 calls run at once and a session is never used by two goroutines
// at the same time (one shared session crashes SoftHSM2). A call that finds
// no free session waits until its context is done and then returns
// hsm.ErrBusy wrapping ctx.Err(); a context already done on entry gives the
// same error without waiting. A waiting call selects on the pool, its
// context's Done channel and the Token's own down and closing signals, so
// it returns as soon as its context ends, the token goes down
// (hsm.ErrUnavailable) or Close starts. Running PKCS#11 calls cannot be
// interrupted.
//
// A session that the module declares dead (CKR_SESSION_HANDLE_INVALID,
// CKR_SESSION_CLOSED, CKR_DEVICE_ERROR), or that is stuck in an active
// operation (CKR_OPERATION_ACTIVE), or whose call panicked, is closed and
// replaced by a fresh logged-in session instead of being put back (the
// dead handle is closed first: modules may reuse the number at once). If the
// replacement cannot be opened, the pool keeps a hole that the next call to
// take it refills, so the pool never shrinks for good. A lost login
// (CKR_USER_NOT_LOGGED_IN) is restored with the configured PIN, which the
// Token keeps in memory for that purpose and never logs. Calls failing with
// one of the codes that mean nothing was done (dead session, active
// operation, lost login) are retried once on a healthy session.
//
// C_EncryptInit, C_Encrypt, C_DecryptInit and C_Decrypt are called
// directly through the module's function list with Go-allocated output
// buffers (direct_unix.go, the package's one cgo shim), because the
// binding's Ctx.Decrypt (miekg/pkcs11 v1.1.2 and upstream master) leaks
// its C output buffer every time C_Decrypt fails, which a client can
// trigger at will with tampered ciphertexts, and because its length
// queries are answered wrongly by NSS softoken. Every other call goes
// through the binding.
//
// Key handles are resolved once per object id (C_FindObjects with CKA_CLASS
// and CKA_ID; more than one match is an error) and cached; Seal and Open do
// no lookup once a key is cached. A cached handle the module rejects is
// dropped and looked up once more.
//
// Close waits for in-flight calls, logs out, closes the sessions, finalises
// the module (only if OpenToken initialised it, i.e. C_Initialize did not
// return CKR_CRYPTOKI_ALREADY_INITIALIZED) and unloads it. SoftHSM2 reads
// SOFTHSM2_CONF at C_Initialize, so a process that switches token
// directories (tests) must Close one Token before opening the next.
//
// # Errors
//
// Every error wraps exactly one sentinel of package hsm; match them with
// errors.Is. Messages name the PKCS#11 function and return code for
// operators' logs and never contain the PIN, key material, plaintext or
// AAD.
//
//   - hsm.ErrInvalidInput: an argument was refused before any PKCS#11 call
//     (object id not 1..64 bytes, IV not 12 bytes, sealed shorter than the
//     tag, empty AAD, bad label, duplicate object id on GenerateKey, bad
//     Config or token URI), or the module refused one (CKR_ARGUMENTS_BAD,
//     CKR_DATA_LEN_RANGE, CKR_DATA_INVALID).
//   - hsm.ErrMisconfigured: the module refused a mechanism, its parameters
//     or its initialisation arguments (CKR_MECHANISM_INVALID,
//     CKR_MECHANISM_PARAM_INVALID, CKR_FUNCTION_NOT_SUPPORTED,
//     CKR_KEY_SIZE_RANGE, CKR_KEY_TYPE_INCONSISTENT, CKR_ARGUMENTS_BAD from
//     C_Initialize), the token did not write an IV in HSM-generated IV
//     mode, or the self-check failed. The message names the setting to
//     change; such errors never count towards re-initialisation.
//   - hsm.ErrKeyNotFound: no secret key has the object id, or the module
//     reports the handle invalid (CKR_OBJECT_HANDLE_INVALID,
//     CKR_KEY_HANDLE_INVALID).
//   - hsm.ErrNotAuthentic: C_Decrypt refused the data (CKR_GENERAL_ERROR,
//     which is how SoftHSM2 reports a bad GCM tag, CKR_ENCRYPTED_DATA_INVALID
//     or CKR_ENCRYPTED_DATA_LEN_RANGE): IV, ciphertext, tag or AAD were
//     altered, or the data belongs to another key. Because SoftHSM2 uses
//     the generic code, a genuine internal fault during C_Decrypt is
//     indistinguishable and is reported the same way; the raw code is kept
//     in the message.
//   - hsm.ErrBusy: the context ended while waiting for a session (wraps
//     ctx.Err(), so errors.Is(err, context.DeadlineExceeded) works too).
//   - hsm.ErrLogin: the token refused the PIN (CKR_PIN_*); after that every
//     call fails with it (the Token is halted).
//   - hsm.ErrTokenNotFound: no initialised token, or more than one, carries
//     Config.TokenLabel.
//   - hsm.ErrUnavailable: everything else: the module cannot be loaded,
//     the token is gone, a session or device error, an unknown return code,
//     a panic recovered from the binding, several keys sharing one object
//     id, or the Token is closed. Retrying later may succeed.
package p11
