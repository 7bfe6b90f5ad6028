package p11

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/hsm"
)

// RawSealResult is what BenchRawSeal measured.
type RawSealResult struct {
	Ops     int
	Elapsed time.Duration
}

// OpsPerSec is Ops over Elapsed.
func (r RawSealResult) OpsPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// BenchRawSeal measures the raw PKCS#11 ceiling of the token: size-byte
// CKM_AES_GCM encrypts under the key objectID, straight through PKCS#11 on
// one session in one goroutine, for about d. It is a benchmark helper
// (make bench), not part of the service. One operation is what a minimal
// raw client does: a 12-byte IV from crypto/rand, NewGCMParams with aad,
// C_EncryptInit, the binding's Encrypt (a length query and the real
// C_Encrypt), Free. The key handle is resolved once before timing; the
// session is held for the whole run. ctx bounds the wait for a session.
func (t *Token) BenchRawSeal(ctx context.Context, objectID []byte, size int, aad []byte, d time.Duration) (RawSealResult, error) {
	if err := checkObjectID(objectID); err != nil {
		return RawSealResult{}, err
	}
	if size < 0 || size > maxMessage || len(aad) == 0 || d <= 0 {
		return RawSealResult{}, fmt.Errorf("%w: bench: bad size, aad or duration", hsm.ErrInvalidInput)
	}
	if err := t.enter(); err != nil {
		return RawSealResult{}, err
	}
	defer t.mu.RUnlock()
	pt := make([]byte, size)
	iv := make([]byte, hsm.IVBytes)
	var res RawSealResult
	err := t.do(ctx, func(s pkcs11.SessionHandle) error {
		h, _, err := t.resolve(s, objectID)
		if err != nil {
			return err
		}
		one := func() error {
			if _, err := rand.Read(iv); err != nil {
				return err
			}
			p := pkcs11.NewGCMParams(iv, aad, tagBits)
			defer p.Free()
			if err := t.mod.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, p)}, h); err != nil {
				return classify("C_EncryptInit", err)
			}
			out, err := t.mod.Encrypt(s, pt)
			if err != nil {
				return classify("C_Encrypt", err)
			}
			if len(out) != size+hsm.TagBytes {
				return errf(hsm.ErrUnavailable, "C_Encrypt", "returned %d bytes", len(out))
			}
			return nil
		}
		// Warm-up, uncounted.
		for range 200 {
			if err := one(); err != nil {
				return err
			}
		}
		start := time.Now()
		deadline := start.Add(d)
		for {
			for range 64 {
				if err := one(); err != nil {
					return err
				}
				res.Ops++
			}
			if now := time.Now(); !now.Before(deadline) {
				res.Elapsed = now.Sub(start)
				return nil
			}
		}
	})
	return res, err
}
