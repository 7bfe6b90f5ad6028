package kms_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"hsmkms/kms"
)

func wrapSHA1(t *testing.T, p kms.ImportParameters, material []byte) string {
	t.Helper()
	pk, err := x509.ParsePKIXPublicKey(p.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	w, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pk.(*rsa.PublicKey), material, nil)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(w)
}

// Key import over a real token and SQLite, with an injected clock: the
// material and the parameters expire by the maintenance job; import
// parameters changed in the store are not obeyed.
func TestIntegrationImportExpiryAndTamper(t *testing.T) {
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	r := newRig(t, kms.Config{Clock: clock})
	ctx := adminCtx()
	md, err := r.svc.CreateKey(ctx, kms.CreateKeyInput{Alias: "byok", Type: kms.KeyTypeExternal})
	if err != nil {
		t.Fatal(err)
	}
	object := r.objectOf(md.KeyID)
	material := bytes.Repeat([]byte{0x42}, 32)
	params := func() kms.ImportParameters {
		p, err := r.svc.GetParametersForImport(ctx, md.KeyID, kms.WrapRSAESOAEPSHA1, kms.WrappingKeySpecRSA)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := params()
	validTo := uint64(clock().Add(time.Hour).Unix())
	if _, err := r.svc.ImportKeyMaterial(ctx, kms.ImportKeyMaterialInput{KeyID: md.KeyID, EncryptedKeyMaterial: wrapSHA1(t, p, material),
		ImportToken: p.ImportToken, ValidTo: validTo}); err != nil {
		t.Fatal(err)
	}
	if !r.tokenHas(object) {
		t.Fatal("no token object after the import")
	}
	blob := r.encrypt(md.KeyID, []byte("secret"), "")

	// Import parameters moved to another key and given a longer life in
	// the store: the token is refused and the row reported.
	other, err := r.svc.CreateKey(ctx, kms.CreateKeyInput{Alias: "other", Type: kms.KeyTypeExternal})
	if err != nil {
		t.Fatal(err)
	}
	p2 := params()
	rows, err := r.st.ListImportParams(ctx)
	if err != nil || len(rows) != 1 {
		t.Fatalf("ListImportParams %+v %v", rows, err)
	}
	honest := rows[0]
	forged := honest
	forged.KeyID, forged.ValidTo = other.KeyID, honest.ValidTo.Add(240*time.Hour)
	if err := r.st.DeleteImportParams(ctx, honest.TokenHash); err != nil {
		t.Fatal(err)
	}
	if err := r.st.AddImportParams(ctx, forged); err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.ImportKeyMaterial(ctx, kms.ImportKeyMaterialInput{KeyID: other.KeyID, EncryptedKeyMaterial: wrapSHA1(t, p2, material),
		ImportToken: p2.ImportToken}); !errors.Is(err, kms.ErrImportTokenInvalid) || !errors.Is(err, kms.ErrIntegrity) {
		t.Fatalf("ImportKeyMaterial with forged parameters: %v", err)
	}
	if fs := r.svc.IntegrityFailures(); !slices.ContainsFunc(fs, func(f kms.IntegrityFailure) bool { return f.Kind == kms.KindImport }) {
		t.Fatalf("IntegrityFailures %+v lacks the import parameters", fs)
	}
	// Honest again: left unused, to expire.
	if err := r.st.DeleteImportParams(ctx, forged.TokenHash); err != nil {
		t.Fatal(err)
	}
	if err := r.st.AddImportParams(ctx, honest); err != nil {
		t.Fatal(err)
	}

	// Two hours on: the material is destroyed, the key PendingImport.
	offset.Store(int64(2 * time.Hour))
	rep, err := r.svc.Maintain(ctx)
	if err != nil || !slices.Equal(rep.MaterialExpired, []string{md.KeyID}) || rep.WrappingKeysDestroyed != 0 {
		t.Fatalf("Maintain = %+v, %v", rep, err)
	}
	if got, _ := r.svc.DescribeKey(ctx, md.KeyID); got.KeyState != kms.StatePendingImport {
		t.Fatalf("state after expiry %s", got.KeyState)
	}
	if r.tokenHas(object) {
		t.Fatal("expired material still on the token")
	}
	if _, err := r.decrypt(blob, ""); !errors.Is(err, kms.ErrKeyStateNotSupported) {
		t.Fatalf("Decrypt after expiry: %v", err)
	}
	// A day on: the unused parameters are expired (refused as such) and
	// their wrapping key destroyed.
	offset.Store(int64(25 * time.Hour))
	if _, err := r.svc.ImportKeyMaterial(ctx, kms.ImportKeyMaterialInput{KeyID: md.KeyID, EncryptedKeyMaterial: wrapSHA1(t, p2, material),
		ImportToken: p2.ImportToken}); !errors.Is(err, kms.ErrImportTokenExpired) {
		t.Fatalf("expired parameters: %v", err)
	}
	if rep, err := r.svc.Maintain(ctx); err != nil || rep.WrappingKeysDestroyed != 1 {
		t.Fatalf("Maintain = %+v, %v", rep, err)
	}
	if ids, err := r.h.WrappingKeyIDs(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("wrapping keys left: %x %v", ids, err)
	}
	// The same material brings the key and its ciphertexts back.
	p3 := params()
	if _, err := r.svc.ImportKeyMaterial(ctx, kms.ImportKeyMaterialInput{KeyID: md.KeyID, EncryptedKeyMaterial: wrapSHA1(t, p3, material),
		ImportToken: p3.ImportToken}); err != nil {
		t.Fatal(err)
	}
	if pt, err := r.decrypt(blob, ""); err != nil || string(pt) != "secret" {
		t.Fatalf("Decrypt after the re-import: %q %v", pt, err)
	}
	r.restart()
	if rep, err := r.svc.Recover(ctx); err != nil || len(rep.Orphans) != 0 || len(rep.Missing) != 0 {
		t.Fatalf("Recover = %+v, %v", rep, err)
	}
}

// A wrapping key on the token that no import parameters and no intent name
// (left by hand, or by a store restored from an older backup) is reported
// by Recover as an orphan and left in place.
func TestIntegrationOrphanWrappingKeyReported(t *testing.T) {
	r := newRig(t, kms.Config{})
	ctx := adminCtx()
	stray := []byte("stray-wrapping-1")
	if _, err := r.h.GenerateWrappingKey(ctx, stray, "stray"); err != nil {
		t.Fatal(err)
	}
	rep, err := r.svc.Recover(ctx)
	if err != nil || !slices.ContainsFunc(rep.Orphans, func(id []byte) bool { return bytes.Equal(id, stray) }) {
		t.Fatalf("Recover = %+v, %v; want the stray wrapping key among the orphans", rep, err)
	}
	if ids, err := r.h.WrappingKeyIDs(ctx); err != nil || len(ids) != 1 {
		t.Fatalf("WrappingKeyIDs = %x, %v: an orphan was destroyed", ids, err)
	}
}

// Import parameters whose MAC is wrong are refused until an administrator
// reseals them; then the import works.
func TestIntegrationResealImportParams(t *testing.T) {
	r := newRig(t, kms.Config{})
	ctx := adminCtx()
	md, err := r.svc.CreateKey(ctx, kms.CreateKeyInput{Alias: "byok", Type: kms.KeyTypeExternal})
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.svc.GetParametersForImport(ctx, md.KeyID, kms.WrapRSAESOAEPSHA1, kms.WrappingKeySpecRSA)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := r.st.ListImportParams(ctx)
	if err != nil || len(rows) != 1 {
		t.Fatalf("ListImportParams %+v %v", rows, err)
	}
	if err := r.st.SetImportParamsMAC(ctx, rows[0].TokenHash, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	in := kms.ImportKeyMaterialInput{KeyID: md.KeyID, EncryptedKeyMaterial: wrapSHA1(t, p, bytes.Repeat([]byte{9}, 32)), ImportToken: p.ImportToken}
	if _, err := r.svc.ImportKeyMaterial(ctx, in); !errors.Is(err, kms.ErrIntegrity) {
		t.Fatalf("ImportKeyMaterial with a bad MAC: %v", err)
	}
	id := hex.EncodeToString(rows[0].WrappingObjectID)
	keysOnly, err := kms.ParsePolicy(`{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.svc.ResealImportParams(kms.WithPrincipal(context.Background(), &kms.Principal{Name: "app", Policy: keysOnly}), id); !errors.Is(err, kms.ErrUnauthorized) {
		t.Fatalf("ResealImportParams without kms-admin:Reseal: %v", err)
	}
	if err := r.svc.ResealImportParams(ctx, id); err != nil {
		t.Fatal(err)
	}
	if fs := r.svc.IntegrityFailures(); len(fs) != 0 {
		t.Fatalf("failures after the reseal: %+v", fs)
	}
	if got, err := r.svc.ImportKeyMaterial(ctx, in); err != nil || got.KeyState != kms.StateEnabled {
		t.Fatalf("ImportKeyMaterial after the reseal = %+v, %v", got, err)
	}
}
