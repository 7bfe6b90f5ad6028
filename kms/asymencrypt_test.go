package kms_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"testing"

	"hsmkms/kms"
)

// TestAsymRsaEncrypt: encryption with the stored public key of an RSA
// decryption key, as the AWS API's Encrypt offers it; its ciphertexts
// decrypt inside the token; it is kms:Encrypt, refuses other keys, states,
// algorithms and sizes, and a tampered public key.
func TestAsymRsaEncrypt(t *testing.T) {
	ctx := adminCtx()
	r := newRig(t, kms.Config{})
	dec := r.createAsym("rsa-enc", kms.UsageRSADecrypt)
	pt := []byte("a 32-byte data key, or so.......")
	res, err := r.svc.AsymmetricRsaEncrypt(ctx, dec.KeyID, pt, kms.AlgRSAESOAEPSHA1)
	if err != nil || res.KeyID != dec.KeyID || len(res.Ciphertext) != 256 {
		t.Fatalf("AsymmetricRsaEncrypt: %+v %v", res, err)
	}
	got, err := r.svc.AsymmetricRsaDecrypt(ctx, dec.KeyID, res.Ciphertext, kms.AlgRSAESOAEPSHA1)
	if err != nil || !bytes.Equal(got.Plaintext, pt) {
		t.Fatalf("the token does not decrypt it: %v", err)
	}
	if res2, err := r.svc.AsymmetricRsaEncrypt(ctx, dec.KeyID, pt, kms.AlgRSAESOAEPSHA1); err != nil || bytes.Equal(res2.Ciphertext, res.Ciphertext) {
		t.Fatalf("OAEP is randomised: %v", err)
	}
	if res, err := r.svc.AsymmetricRsaEncrypt(ctx, dec.KeyID, make([]byte, 190), kms.AlgRSAESOAEPSHA256); err != nil || len(res.Ciphertext) != 256 {
		t.Fatalf("OAEP-SHA-256 of 190 bytes: %v", err)
	}
	for _, c := range []struct {
		n    int
		alg  string
		want error
	}{
		{215, kms.AlgRSAESOAEPSHA1, kms.ErrPlaintextTooLong},
		{191, kms.AlgRSAESOAEPSHA256, kms.ErrPlaintextTooLong},
		{0, kms.AlgRSAESOAEPSHA1, kms.ErrPlaintextEmpty},
		{10, kms.AlgRSAESPKCS1v15, kms.ErrInvalidAlgorithm},
		{10, "RSAES_OAEP_SHA_512", kms.ErrInvalidAlgorithm},
	} {
		if _, err := r.svc.AsymmetricRsaEncrypt(ctx, dec.KeyID, make([]byte, c.n), c.alg); !errors.Is(err, c.want) {
			t.Errorf("%d bytes under %s: %v, want %v", c.n, c.alg, err, c.want)
		}
	}
	sign := r.createAsym("rsa-sign", kms.UsageRSASign)
	sym := r.create("symmetric")
	for _, id := range []string{sign.KeyID, sym.KeyID} {
		if _, err := r.svc.AsymmetricRsaEncrypt(ctx, id, pt, kms.AlgRSAESOAEPSHA1); !errors.Is(err, kms.ErrInvalidKeyUsage) {
			t.Errorf("under a %s key: %v", id, err)
		}
	}
	pol, err := kms.ParsePolicy(`{"version":"2.0","statement":[{"effect":"allow","action":["kms:AsymmetricRsaDecrypt","kms:GetPublicKey"],"resource":["*"]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	other := kms.WithPrincipal(context.Background(), &kms.Principal{SecretID: "AKIDdec", Policy: pol})
	if _, err := r.svc.AsymmetricRsaEncrypt(other, dec.KeyID, pt, kms.AlgRSAESOAEPSHA1); !errors.Is(err, kms.ErrUnauthorized) {
		t.Errorf("without kms:Encrypt: %v", err)
	}
	if err := r.svc.DisableKey(ctx, dec.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.AsymmetricRsaEncrypt(ctx, dec.KeyID, pt, kms.AlgRSAESOAEPSHA1); !errors.Is(err, kms.ErrKeyDisabled) {
		t.Errorf("under a disabled key: %v", err)
	}
	if err := r.svc.EnableKey(ctx, dec.KeyID); err != nil {
		t.Fatal(err)
	}

	// A public key written into the row by someone who can write the
	// database (theirs: they would read what is encrypted) is refused.
	attacker := r.createAsym("attacker", kms.UsageRSADecrypt)
	pkA, _ := r.svc.GetPublicKey(ctx, attacker.KeyID)
	r.close()
	db, err := sql.Open("sqlite", r.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE keys SET public_key = ? WHERE id = ?`, pkA.DER, dec.KeyID); err != nil {
		t.Fatal(err)
	}
	db.Close()
	r.open()
	if _, err := r.svc.AsymmetricRsaEncrypt(ctx, dec.KeyID, pt, kms.AlgRSAESOAEPSHA1); !errors.Is(err, kms.ErrKeyDisabled) {
		t.Errorf("under a key whose public key was swapped: %v, want ErrKeyDisabled", err)
	}
}
