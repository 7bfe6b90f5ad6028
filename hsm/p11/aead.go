package p11

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

const tagBits = hsm.TagBytes * 8

// Seal encrypts plaintext with AES-256-GCM (CKM_AES_GCM) under the key
// objectID, binding aad. The 12-byte IV is drawn from crypto/rand here, never
// by the token. sealed is ciphertext||16-byte tag, as crypto/cipher's GCM
// Seal produces it.
//
// Errors: hsm.ErrInvalidInput if objectID is not 1..64 bytes, aad is empty
// (always required: SoftHSM2 2.6.1 mishandles empty AAD), or plaintext or
// aad exceed 64 MiB; hsm.ErrKeyNotFound if the token has no such key;
// hsm.ErrBusy (wrapping ctx.Err()) if no session frees up before ctx is
// done; hsm.ErrUnavailable. Safe for concurrent use.
func (t *Token) Seal(ctx context.Context, objectID, plaintext, aad []byte) (iv, sealed []byte, err error) {
	if err := checkObjectID(objectID); err != nil {
		return nil, nil, err
	}
	if len(aad) == 0 || len(aad) > maxMessage || len(plaintext) > maxMessage {
		return nil, nil, fmt.Errorf("%w: seal: aad must be 1..%d bytes and plaintext at most %d bytes (got %d, %d)", hsm.ErrInvalidInput, maxMessage, maxMessage, len(aad), len(plaintext))
	}
	if err := t.enter(); err != nil {
		return nil, nil, err
	}
	defer t.mu.RUnlock()
	defer func(start time.Time) { t.observe("C_Encrypt", start, err) }(time.Now())
	iv = make([]byte, hsm.IVBytes)
	err = t.withKey(ctx, objectID, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		out, err := t.sealWith(s, h, iv, plaintext, aad)
		sealed = out
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return iv, sealed, nil
}

// sealWith encrypts plaintext under the key handle h on session s into an
// output buffer of exactly len(plaintext)+16 bytes: no length query (NSS
// softoken answers one with the plaintext length, and the call that follows
// then fails with CKR_BUFFER_TOO_SMALL and ends the operation). iv is
// filled: from crypto/rand, or by the token in HSM-generated IV mode. A
// fresh IV for every call: a retried call must never reuse one.
func (t *Token) sealWith(s pkcs11.SessionHandle, h pkcs11.ObjectHandle, iv, plaintext, aad []byte) ([]byte, error) {
	if t.cfg.HSMGeneratedIV {
		clear(iv) // the token writes its own IV over the zeros
	} else if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("%w: seal: crypto/rand: %w", hsm.ErrUnavailable, err)
	}
	out := make([]byte, len(plaintext)+hsm.TagBytes)
	n := 0
	if t.directGCM {
		var stage int
		var rv uint
		n, stage, rv = t.direct.gcm(false, s, h, iv, aad, plaintext, out)
		if rv != 0 {
			return nil, classify(map[bool]string{true: "C_EncryptInit", false: "C_Encrypt"}[stage == 1], pkcs11.Error(rv))
		}
	} else {
		p := pkcs11.NewGCMParams(iv, aad, tagBits)
		defer p.Free()
		if err := t.mod.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, p)}, h); err != nil {
			return nil, classify("C_EncryptInit", err)
		}
		var err error
		if t.direct != nil {
			n, err = t.direct.encrypt(s, plaintext, out)
		} else {
			var b []byte // off Unix: the binding, with its length query
			b, err = t.mod.Encrypt(s, plaintext)
			n = copy(out, b)
			if len(b) > len(out) {
				n = len(b)
			}
		}
		if err != nil {
			return nil, classify("C_Encrypt", err)
		}
		if t.cfg.HSMGeneratedIV {
			copy(iv, p.IV())
		}
	}
	if n != len(out) {
		return nil, errf(hsm.ErrUnavailable, "C_Encrypt", "returned %d bytes for %d bytes of plaintext, want plaintext+%d", n, len(plaintext), hsm.TagBytes)
	}
	return out, t.checkHSMIV(iv)
}

// Open decrypts and authenticates sealed (ciphertext||tag from Seal) with the
// key objectID, the iv Seal returned and the same aad.
//
// Errors: hsm.ErrInvalidInput if objectID is not 1..64 bytes, iv is not 12
// bytes, sealed is shorter than the 16-byte tag, aad is empty, or sizes
// exceed 64 MiB; hsm.ErrNotAuthentic if iv, sealed or aad were altered or
// belong to another key (the message keeps the module's raw return code,
// CKR_GENERAL_ERROR on SoftHSM2); hsm.ErrKeyNotFound; hsm.ErrBusy (wrapping
// ctx.Err()) if no session frees up before ctx is done; hsm.ErrUnavailable.
// Safe for concurrent use.
func (t *Token) Open(ctx context.Context, objectID, iv, sealed, aad []byte) ([]byte, error) {
	if err := checkObjectID(objectID); err != nil {
		return nil, err
	}
	if len(iv) != hsm.IVBytes || len(sealed) < hsm.TagBytes || len(aad) == 0 ||
		len(sealed) > maxMessage+hsm.TagBytes || len(aad) > maxMessage {
		return nil, fmt.Errorf("%w: open: want a %d-byte iv, %d..%d bytes of sealed data and 1..%d bytes of aad (got %d, %d, %d)",
			hsm.ErrInvalidInput, hsm.IVBytes, hsm.TagBytes, maxMessage+hsm.TagBytes, maxMessage, len(iv), len(sealed), len(aad))
	}
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.mu.RUnlock()
	start := time.Now()
	var plaintext []byte
	err := t.withKey(ctx, objectID, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		out, err := t.openWith(s, h, iv, sealed, aad)
		plaintext = out
		return err
	})
	t.observe("C_Decrypt", start, err)
	if err != nil {
		return nil, err
	}
	return plaintext, nil
}

// openWith decrypts sealed under the key handle h on session s in one
// C_Decrypt with len(sealed) bytes of room (the plaintext is 16 bytes
// shorter; SoftHSM2 asks for room for the whole input), never a length
// query, and never a second C_Decrypt after CKR_BUFFER_TOO_SMALL: some
// modules (NSS softoken) end the operation there.
func (t *Token) openWith(s pkcs11.SessionHandle, h pkcs11.ObjectHandle, iv, sealed, aad []byte) ([]byte, error) {
	want := len(sealed) - hsm.TagBytes
	var out []byte
	if t.directGCM {
		out = make([]byte, len(sealed))
		n, stage, rv := t.direct.gcm(true, s, h, iv, aad, sealed, out)
		switch {
		case rv != 0 && stage == 1:
			return nil, classify("C_DecryptInit", pkcs11.Error(rv))
		case rv != 0:
			return nil, classify(fnDecrypt, pkcs11.Error(rv))
		}
		out = out[:min(n, len(out))]
		if n != want {
			return nil, errf(hsm.ErrUnavailable, fnDecrypt, "returned %d bytes for %d sealed bytes, want sealed-%d", n, len(sealed), hsm.TagBytes)
		}
		return out, nil
	}
	p := pkcs11.NewGCMParams(iv, aad, tagBits)
	defer p.Free()
	if err := t.mod.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, p)}, h); err != nil {
		return nil, classify("C_DecryptInit", err)
	}
	var err error
	if t.direct != nil {
		out, err = t.direct.decrypt(s, sealed, len(sealed))
	} else {
		out, err = t.mod.Decrypt(s, sealed)
	}
	if err != nil {
		return nil, classify(fnDecrypt, err)
	}
	if len(out) != want {
		return nil, errf(hsm.ErrUnavailable, fnDecrypt, "returned %d bytes for %d sealed bytes, want sealed-%d", len(out), len(sealed), hsm.TagBytes)
	}
	return out, nil
}

// checkHSMIV refuses a seal whose IV the token should have written but did
// not (still all zero): such a ciphertext could not be decrypted, and a
// token that ignores the IV parameter would reuse one.
func (t *Token) checkHSMIV(iv []byte) error {
	if !t.cfg.HSMGeneratedIV {
		return nil
	}
	for _, b := range iv {
		if b != 0 {
			return nil
		}
	}
	return errf(hsm.ErrMisconfigured, "C_Encrypt", "CKM_AES_GCM: iv_mode is hsm but the token did not write an IV into the GCM parameters: set pkcs11.iv_mode to caller for this module")
}
