package kms_test

// Asymmetric CMKs over the real SQLite store and a real token (package
// hsm/p11): the domain's rules, crash recovery, purge and the integrity of
// the stored public key and usage.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"hsmkms/hsm"
	"hsmkms/kms"
	"hsmkms/store"
)

func (r *rig) createAsym(alias, usage string) kms.KeyMetadata {
	r.t.Helper()
	md, err := r.svc.CreateKey(adminCtx(), kms.CreateKeyInput{Alias: alias, KeyUsage: usage})
	if err != nil {
		r.t.Fatalf("CreateKey(%q, %s): %v", alias, usage, err)
	}
	if md.KeyUsage != usage || md.KeyState != kms.StateEnabled {
		r.t.Fatalf("CreateKey: %+v", md)
	}
	return md
}

// TestAsymSignVerifyDecrypt: each usage signs or decrypts, only as its
// usage allows, and every symmetric action refuses it.
func TestAsymSignVerifyDecrypt(t *testing.T) {
	ctx := adminCtx()
	r := newRig(t, kms.Config{})
	for _, c := range []struct {
		usage, alg string
		hash       crypto.Hash
	}{
		{kms.UsageRSASign, kms.AlgRSAPKCS1SHA256, crypto.SHA256},
		{kms.UsageRSASign, kms.AlgRSAPSSSHA256, crypto.SHA256},
		{kms.UsageECCSign, kms.AlgECCP256, crypto.SHA256},
		{kms.UsageECDSA384Sign, kms.AlgECCP384, crypto.SHA384},
	} {
		md := r.createAsym("k-"+strings.ToLower(c.alg), c.usage)
		pk, err := r.svc.GetPublicKey(ctx, md.KeyID)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := x509.ParsePKIXPublicKey(pk.DER)
		if err != nil || !strings.HasPrefix(pk.PEM, "-----BEGIN PUBLIC KEY-----\n") {
			t.Fatalf("public key: %v\n%s", err, pk.PEM)
		}
		msg := []byte("message for " + c.alg)
		var digest []byte
		if c.hash == crypto.SHA384 {
			d := sha512.Sum384(msg)
			digest = d[:]
		} else {
			d := sha256.Sum256(msg)
			digest = d[:]
		}
		for _, in := range []kms.SignInput{
			{KeyID: md.KeyID, Algorithm: c.alg, Message: msg},
			{KeyID: md.KeyID, Algorithm: c.alg, Message: digest, MessageType: kms.MessageTypeDigest},
		} {
			sig, err := r.svc.SignByAsymmetricKey(ctx, in)
			if err != nil {
				t.Fatalf("%s %s: %v", c.alg, in.MessageType, err)
			}
			var ok bool
			switch p := pub.(type) {
			case *rsa.PublicKey:
				if c.alg == kms.AlgRSAPSSSHA256 {
					ok = rsa.VerifyPSS(p, crypto.SHA256, digest, sig, &rsa.PSSOptions{SaltLength: 32}) == nil
				} else {
					ok = rsa.VerifyPKCS1v15(p, crypto.SHA256, digest, sig) == nil
				}
			case *ecdsa.PublicKey:
				ok = ecdsa.VerifyASN1(p, digest, sig)
			}
			if !ok {
				t.Errorf("%s %s: the standard library refuses the signature", c.alg, in.MessageType)
			}
			in.Signature = sig
			if v, err := r.svc.VerifyByAsymmetricKey(ctx, in); err != nil || !v {
				t.Errorf("%s: Verify of its own signature: %v %v", c.alg, v, err)
			}
			in.Message = append(bytes.Clone(in.Message[1:]), in.Message[0]^1)
			if v, err := r.svc.VerifyByAsymmetricKey(ctx, in); err != nil || v {
				t.Errorf("%s: Verify of another message: %v %v", c.alg, v, err)
			}
		}
		// The symmetric actions refuse the key; rotation too.
		if _, err := r.svc.Encrypt(ctx, kms.EncryptInput{KeyID: md.KeyID, Plaintext: []byte("x")}); !errors.Is(err, kms.ErrInvalidKeyUsage) {
			t.Errorf("Encrypt: %v", err)
		}
		if _, err := r.svc.GenerateDataKey(ctx, kms.GenerateDataKeyInput{KeyID: md.KeyID, KeySpec: "AES_256"}); !errors.Is(err, kms.ErrInvalidKeyUsage) {
			t.Errorf("GenerateDataKey: %v", err)
		}
		if _, err := r.svc.RotateKey(ctx, md.KeyID); !errors.Is(err, kms.ErrRotateNotSupported) {
			t.Errorf("RotateKey: %v", err)
		}
		if err := r.svc.EnableKeyRotation(ctx, md.KeyID, 30); !errors.Is(err, kms.ErrRotateNotSupported) {
			t.Errorf("EnableKeyRotation: %v", err)
		}
		if _, err := r.svc.AsymmetricRsaDecrypt(ctx, md.KeyID, make([]byte, 256), kms.AlgRSAESOAEPSHA1); !errors.Is(err, kms.ErrInvalidKeyUsage) {
			t.Errorf("AsymmetricRsaDecrypt with a signing key: %v", err)
		}
	}

	dec := r.createAsym("decrypter", kms.UsageRSADecrypt)
	pk, _ := r.svc.GetPublicKey(ctx, dec.KeyID)
	pub, _ := x509.ParsePKIXPublicKey(pk.DER)
	ct, _ := rsa.EncryptPKCS1v15(rand.Reader, pub.(*rsa.PublicKey), []byte("to the token"))
	if res, err := r.svc.AsymmetricRsaDecrypt(ctx, dec.KeyID, ct, kms.AlgRSAESPKCS1v15); err != nil || string(res.Plaintext) != "to the token" || res.KeyID != dec.KeyID {
		t.Fatalf("AsymmetricRsaDecrypt: %+v %v", res, err)
	}
	for _, bad := range [][]byte{ct[:255], append(bytes.Clone(ct), 0), make([]byte, 256)} {
		if _, err := r.svc.AsymmetricRsaDecrypt(ctx, dec.KeyID, bad, kms.AlgRSAESOAEPSHA1); !errors.Is(err, kms.ErrAsymDecrypt) {
			t.Errorf("bad ciphertext of %d bytes: %v, want ErrAsymDecrypt", len(bad), err)
		}
	}
	if _, err := r.svc.SignByAsymmetricKey(ctx, kms.SignInput{KeyID: dec.KeyID, Algorithm: kms.AlgRSAPKCS1SHA256, Message: []byte("m")}); !errors.Is(err, kms.ErrInvalidKeyUsage) {
		t.Errorf("Sign with a decryption key: %v", err)
	}
	sym := r.create("symmetric")
	if _, err := r.svc.GetPublicKey(ctx, sym.KeyID); !errors.Is(err, kms.ErrInvalidKeyUsage) {
		t.Errorf("GetPublicKey of a symmetric key: %v", err)
	}

	// The public keys and usages survive a restart (they are in the
	// store, under the row MAC).
	r.restart()
	if pk2, err := r.svc.GetPublicKey(ctx, dec.KeyID); err != nil || !bytes.Equal(pk2.DER, pk.DER) {
		t.Fatalf("after a restart: %v", err)
	}
	algs, err := r.svc.ListAlgorithms(ctx)
	if err != nil || len(algs.Symmetric) != 1 || len(algs.Asymmetric) != 1 || len(algs.AsymmetricSignVerify) != 3 {
		t.Fatalf("ListAlgorithms: %+v %v", algs, err)
	}
}

// TestAsymMessageRules: the checks of Sign and Verify's inputs.
func TestAsymMessageRules(t *testing.T) {
	ctx := adminCtx()
	r := newRig(t, kms.Config{})
	ecc := r.createAsym("ecc", kms.UsageECCSign)
	p384 := r.createAsym("p384", kms.UsageECDSA384Sign)
	for _, c := range []struct {
		name string
		in   kms.SignInput
		want error
	}{
		{"empty RAW", kms.SignInput{KeyID: ecc.KeyID, Algorithm: kms.AlgECCP256}, kms.ErrInvalidMessage},
		{"RAW of 4097", kms.SignInput{KeyID: ecc.KeyID, Algorithm: kms.AlgECCP256, Message: make([]byte, 4097)}, kms.ErrInvalidMessage},
		{"DIGEST of 31", kms.SignInput{KeyID: ecc.KeyID, Algorithm: kms.AlgECCP256, Message: make([]byte, 31), MessageType: "DIGEST"}, kms.ErrInvalidMessage},
		{"DIGEST of 32 for P-384", kms.SignInput{KeyID: p384.KeyID, Algorithm: kms.AlgECCP384, Message: make([]byte, 32), MessageType: "DIGEST"}, kms.ErrInvalidMessage},
		{"type", kms.SignInput{KeyID: ecc.KeyID, Algorithm: kms.AlgECCP256, Message: []byte("m"), MessageType: "raw"}, kms.ErrInvalidMessage},
		{"algorithm of another key", kms.SignInput{KeyID: ecc.KeyID, Algorithm: kms.AlgECCP384, Message: []byte("m")}, kms.ErrInvalidAlgorithm},
		{"SM2DSA", kms.SignInput{KeyID: ecc.KeyID, Algorithm: kms.AlgSM2DSA, Message: []byte("m")}, kms.ErrInvalidAlgorithm},
		{"bad key id", kms.SignInput{KeyID: "nope", Algorithm: kms.AlgECCP256, Message: []byte("m")}, kms.ErrInvalidKeyID},
		{"unknown key", kms.SignInput{KeyID: uuid.NewString(), Algorithm: kms.AlgECCP256, Message: []byte("m")}, kms.ErrKeyNotFound},
	} {
		if _, err := r.svc.SignByAsymmetricKey(ctx, c.in); !errors.Is(err, c.want) {
			t.Errorf("Sign, %s: %v, want %v", c.name, err, c.want)
		}
		if _, err := r.svc.VerifyByAsymmetricKey(ctx, c.in); !errors.Is(err, c.want) {
			t.Errorf("Verify, %s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := r.svc.SignByAsymmetricKey(ctx, kms.SignInput{KeyID: ecc.KeyID, Algorithm: kms.AlgECCP256, Message: make([]byte, 4096)}); err != nil {
		t.Errorf("RAW of 4096: %v", err)
	}
	for _, u := range []string{kms.UsageSM2Decrypt, kms.UsageSM2Sign} {
		if _, err := r.svc.CreateKey(ctx, kms.CreateKeyInput{Alias: "sm2", KeyUsage: u}); !errors.Is(err, kms.ErrUnsupported) || !strings.Contains(err.Error(), "SM2") {
			t.Errorf("CreateKey %s: %v", u, err)
		}
	}
}

// TestAsymRecoverAndPurge: a key pair whose key was never committed is
// destroyed by Recover; one without an intent is an orphan; the purge of
// an asymmetric key destroys its private key.
func TestAsymRecoverAndPurge(t *testing.T) {
	ctx := adminCtx()
	clock := newTestClock()
	r := newRig(t, kms.Config{Clock: clock.Now})
	ah := any(r.h).(kms.AsymHSM)

	crashed := make([]byte, 16)
	rand.Read(crashed)
	if err := r.st.AddPendingObject(ctx, sealIntent(t, r.h, store.PendingObject{ObjectID: crashed, KeyID: uuid.NewString(), Version: 1, CreatedAt: time.Now()})); err != nil {
		t.Fatal(err)
	}
	if _, err := ah.GenerateKeyPair(ctx, crashed, "crashed/v1", hsm.SpecECP256, hsm.UseSign); err != nil {
		t.Fatal(err)
	}
	orphan := make([]byte, 16)
	rand.Read(orphan)
	if _, err := ah.GenerateKeyPair(ctx, orphan, "orphan/v1", hsm.SpecRSA2048, hsm.UseDecrypt); err != nil {
		t.Fatal(err)
	}
	rep, err := r.svc.Recover(ctx)
	if err != nil || len(rep.RolledBack) != 1 || !bytes.Equal(rep.RolledBack[0], crashed) ||
		len(rep.Orphans) != 1 || !bytes.Equal(rep.Orphans[0], orphan) {
		t.Fatalf("Recover: %+v %v", rep, err)
	}
	if r.tokenHas(crashed) || !r.tokenHas(orphan) {
		t.Fatal("Recover left the uncommitted private key or destroyed the orphan")
	}
	if err := r.h.DestroyKey(ctx, orphan); err != nil {
		t.Fatal(err)
	}

	md := r.createAsym("doomed", kms.UsageRSASign)
	obj := r.objectOf(md.KeyID)
	if !r.tokenHas(obj) {
		t.Fatal("the private key is not on the token")
	}
	if err := r.svc.DisableKey(ctx, md.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.ScheduleKeyDeletion(ctx, md.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	clock.Advance(7 * day)
	if rep, err := r.svc.Maintain(ctx); err != nil || len(rep.Purged) != 1 {
		t.Fatalf("Maintain: %+v %v", rep, err)
	}
	if r.tokenHas(obj) {
		t.Fatal("the purge left the private key on the token")
	}
	if rep, err := r.svc.Recover(ctx); err != nil || len(rep.Orphans) != 0 || len(rep.Missing) != 0 {
		t.Fatalf("Recover after the purge: %+v %v", rep, err)
	}
}

// TestAsymTamperedRow: the public key and the usage of an asymmetric key
// are covered by the row MAC.
func TestAsymTamperedRow(t *testing.T) {
	ctx := adminCtx()
	r := newRig(t, kms.Config{})
	a := r.createAsym("a", kms.UsageECCSign)
	b := r.createAsym("b", kms.UsageRSASign)
	c := r.createAsym("c", kms.UsageECCSign)
	pkC, _ := r.svc.GetPublicKey(ctx, c.KeyID)
	r.close()

	db, err := sql.Open("sqlite", r.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`UPDATE keys SET public_key = ? WHERE id = ?`, []any{pkC.DER, a.KeyID}},
		{`UPDATE keys SET usage = ? WHERE id = ?`, []any{kms.UsageRSADecrypt, b.KeyID}},
	} {
		if _, err := db.Exec(q.sql, q.args...); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	r.open()
	for _, id := range []string{a.KeyID, b.KeyID} {
		if _, err := r.svc.GetPublicKey(ctx, id); !errors.Is(err, kms.ErrKeyDisabled) {
			t.Errorf("GetPublicKey of a tampered key: %v, want ErrKeyDisabled", err)
		}
	}
	if _, err := r.svc.AsymmetricRsaDecrypt(ctx, b.KeyID, make([]byte, 256), kms.AlgRSAESOAEPSHA1); !errors.Is(err, kms.ErrKeyDisabled) {
		t.Errorf("decrypt with a key whose usage was changed: %v", err)
	}
	if got := len(r.svc.IntegrityFailures()); got != 2 {
		t.Errorf("%d integrity failures, want 2", got)
	}
	if _, err := r.svc.GetPublicKey(ctx, c.KeyID); err != nil {
		t.Errorf("untouched key: %v", err)
	}
}
