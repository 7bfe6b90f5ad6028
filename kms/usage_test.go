package kms

import (
	"errors"
	"testing"

	"hsmkms/hsm"
)

// Narrow unit tests of usage accounting with failure injection (the real
// token cannot be made to fail on demand).

func TestUsageLimitRefusedWhenRotationImpossible(t *testing.T) {
	e := newEnv(t, Config{VersionUsageLimit: 3, UsageBatch: 10})
	k := e.create(t, "a")
	for range 3 {
		e.encrypt(t, k.KeyID, []byte("x"), "")
	}
	e.h.genErr = func() error { return hsm.ErrUnavailable }
	objects := e.h.count()
	_, err := e.svc.Encrypt(adminCtx, EncryptInput{KeyID: k.KeyID, Plaintext: []byte("x")})
	if !errors.Is(err, ErrUsageLimit) {
		t.Fatalf("Encrypt past the limit without a new version: %v, want ErrUsageLimit", err)
	}
	if md, _ := e.svc.DescribeKey(adminCtx, k.KeyID); md.CurrentVersion != 1 || e.h.count() != objects || e.st.pendingCount() != 0 {
		t.Fatalf("a failed rotation left something behind: %+v", md)
	}
	e.h.genErr = nil
	if r := e.encrypt(t, k.KeyID, []byte("x"), ""); r.KeyVersion != 2 {
		t.Fatalf("after the HSM recovered: version %d", r.KeyVersion)
	}
}

func TestUsageReservationBatched(t *testing.T) {
	e := newEnv(t, Config{UsageBatch: 100})
	k := e.create(t, "a")
	for range 250 {
		e.encrypt(t, k.KeyID, []byte("x"), "")
	}
	if e.st.reserveCalls != 3 {
		t.Fatalf("%d store writes for 250 encryptions with batches of 100, want 3", e.st.reserveCalls)
	}
	// A reservation that cannot be written refuses the encryption.
	e.st.reserveErr = func() error { return errors.New("disk full") }
	for range 50 {
		e.encrypt(t, k.KeyID, []byte("x"), "")
	}
	if _, err := e.svc.Encrypt(adminCtx, EncryptInput{KeyID: k.KeyID, Plaintext: []byte("x")}); !errors.Is(err, ErrInternal) {
		t.Fatalf("Encrypt beyond the reservation: %v, want ErrInternal", err)
	}
}
