package p11

// What PKCS#11 modules do differently, and what this package does about it.
// This is the one place in the code that lists them; OPERATIONS.md ("Module
// differences") has the same table for operators. The conformance suite
// (every test of this package that uses newTestToken, and kmsd's end-to-end
// tests) runs on SoftHSM2 and on NSS softoken (make test; the module is
// chosen by KMS_TEST_PKCS11, see softhsm/modules.go); the behaviours of other
// modules are emulated by the fault-injection module (softhsm/faultmod:
// hidden mechanisms, reused session handles, HSM-generated IVs, token
// removal) in the tests that say they need SoftHSM2.
//
// Modules tested: SoftHSM 2.6.1 and NSS softoken 3.87 (libsoftokn3.so,
// Debian bookworm).
//
// Mechanisms used (checked at start-up, selfcheck.go): CKM_AES_KEY_GEN
// (CKF_GENERATE, 256-bit keys) and CKM_AES_GCM (CKF_ENCRYPT, CKF_DECRYPT,
// 256-bit keys, 12-byte IV, 128-bit tag, CK_GCM_PARAMS with ulIvBits),
// CKM_GENERIC_SECRET_KEY_GEN (CKF_GENERATE) and CKM_SHA256_HMAC (CKF_SIGN,
// CKF_VERIFY; only C_Sign is called) for the metadata MAC key;
// functions C_GenerateRandom, C_FindObjects, C_GetAttributeValue,
// C_SetAttributeValue (fixed-id keys only), C_CopyObject (optional),
// C_DestroyObject. Asymmetric CMKs (asym.go), when used, and asked with
// C_GetMechanismInfo first: CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_EC_KEY_PAIR_GEN,
// CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_RSA_PKCS_OAEP, CKM_ECDSA
// (C_GenerateKeyPair, C_Sign, C_Decrypt).
// Key import (import.go), checked when used, never at
// start-up: CKM_RSA_PKCS_KEY_PAIR_GEN (CKF_GENERATE_KEY_PAIR, 2048 bits),
// CKM_RSA_PKCS_OAEP (CKF_UNWRAP; each hash probed), CKM_AES_ECB or
// CKM_AES_CBC (key check value), CKM_AES_KEY_WRAP_PAD or CKM_AES_KEY_WRAP
// (only where CKA_VALUE_LEN of an unwrapped key reads 0).
//
//	behaviour                      SoftHSM2              NSS softoken            elsewhere                    here
//	C_Initialize pReserved         refused (ARGS_BAD)    required: configdir=... -                            Config.InitArgs, both at start-up and re-initialisation
//	exported symbols               every C_*             C_GetFunctionList only  -                            direct calls through the function list
//	GCM IV                         caller's              caller's                CloudHSM, FIPS Luna: own IV  Config.HSMGeneratedIV; the self-check tries the mode
//	no CKM_AES_GCM                 -                     -                       some tokens, old firmware    self-check refuses to start; ErrMisconfigured, never a re-init
//	session handle numbers         1, 2, 3... rising     0x1000001... rising     some reuse at once           close the old handle before opening; never compare numbers
//	C_GenerateKey, existing CKA_ID second object         REPLACES the key        ?                            fixed ids looked up first, claimed under a random id (fixed.go)
//	C_SetAttributeValue(CKA_ID)    second object         second object           ?                            the claim step of fixed.go; losers destroy theirs
//	GCM encrypt length query       plaintext+16          plaintext (wrong), then BUFFER_TOO_SMALL ends the op  never query: exact buffers (plaintext+16)
//	GCM decrypt output room        len(ciphertext+tag)   plaintext length        -                            room = len(sealed); never a second call after BUFFER_TOO_SMALL
//	bad GCM tag                    CKR_GENERAL_ERROR     ENCRYPTED_DATA_INVALID  -                            both hsm.ErrNotAuthentic on C_Decrypt
//	wrong HMAC at C_Verify         SIGNATURE_INVALID     DEVICE_ERROR or ARGUMENTS_BAD  -                     no C_Verify: C_Sign, then hmac.Equal in Go (VerifyMAC)
//	C_GenerateRandom size          no limit seen         <= 64 KiB per call      HSM limits                   calls of randomChunk (32 KiB)
//	CKA_MODIFIABLE=false           accepted, final;      accepted, final;        some refuse it               CMKs, unless working copies are on and the module copies
//	                               no copy of it at all  copies work                                          no unmodifiable key (probeUnmodifiableCopies); a refusal is
//	                                                                                                          remembered (modifiableAttr); uncopyable keys used directly
//	copy: CKA_WRAP in template     ATTRIBUTE_READ_ONLY   accepted                -                            attributes of each copy read back (copyIsSafe)
//	copy: ALWAYS_SENSITIVE,        true                  false (copy is still    -                            not relied on; SENSITIVE/EXTRACTABLE checked
//	      NEVER_EXTRACTABLE                              sensitive)
//	parallel C_GenerateKey         CKR_GENERAL_ERROR now and then across processes  -                         retried in the fixed-id claim
//	sessions (MaxRwSessionCount)   0 (unlimited)         0 (unlimited)           Luna, CloudHSM: limited      Config.Sessions, set explicitly
//	wrong PIN                      CKR_PIN_INCORRECT     CKR_PIN_INCORRECT       Luna, CloudHSM lock the user halt: never C_Login again with that PIN
//	slots                          ids change on init    2 (crypto + database)   -                            token by label or RFC 7512 URI, never slot id
//	tokens                         label per token       label from dbTokenDescription, serial 0000000000000000   URI with token= (serial not unique on NSS)
//	OAEP with SHA-256 (C_DecryptInit) ARGUMENTS_BAD (SHA-1  works                   ?                            hsm.ErrMisconfigured naming the mechanism (asym.go);
//	                               only)                                                                       kmsd answers UnsupportedOperation
//	bad PKCS#1 v1.5 padding        an error              implicit rejection: a   ?                            every C_Decrypt failure is hsm.ErrNotAuthentic, one answer
//	(C_Decrypt, CKM_RSA_PKCS)                            synthetic plaintext                                  (asym.go); no padding oracle in either case
//	C_UnwrapKey OAEP hash (import) SHA-1 only (SHA-256:  SHA-1 and SHA-256      ?                            probed once per hash (OAEPSupported); RSAES_OAEP_SHA_256
//	                               CKR_ARGUMENTS_BAD)                                                         refused by GetParametersForImport with UnsupportedOperation
//	C_UnwrapKey CKA_VALUE_LEN      READ_ONLY in template;  accepted; reports 32   ?                            left out of the template; a 0 read back is measured by
//	                               reads 0 afterwards                                                         AES-key-wrapping a session copy (lengthByWrap, import.go)
//	bad OAEP / wrong-size material GENERAL_ERROR or        WRAPPED_KEY_INVALID,    ?                            all hsm.ErrNotAuthentic (unwrapRefused): the material is wrong
//	                               WRAPPED_KEY_INVALID     ENCRYPTED_DATA_INVALID
