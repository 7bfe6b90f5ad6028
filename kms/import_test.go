package kms

import (
	"errors"
	"testing"
	"time"

	"hsmkms/store"
)

// An EXTERNAL key without material: no token object, PendingImport, every
// use refused; rotation refused as Tencent refuses it; deletion scheduled
// and cancelled back to PendingImport.
func TestExternalKeyWithoutMaterial(t *testing.T) {
	e := newEnv(t, Config{})
	md, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "ext", Type: KeyTypeExternal})
	if err != nil || md.KeyState != StatePendingImport || md.Origin != OriginExternal || !md.ValidTo.IsZero() {
		t.Fatalf("CreateKey Type 2 = %+v, %v", md, err)
	}
	if _, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "bad", Type: 3}); !errors.Is(err, ErrInvalidType) {
		t.Fatalf("CreateKey Type 3: %v", err)
	}
	rec := e.st.keys[md.KeyID]
	if e.h.has(rec.Versions[0].ObjectID) {
		t.Fatal("a token object was made for a key awaiting material")
	}
	if _, err := e.svc.Encrypt(adminCtx, EncryptInput{KeyID: md.KeyID, Plaintext: []byte("x")}); !errors.Is(err, ErrKeyStateNotSupported) {
		t.Fatalf("Encrypt: %v", err)
	}
	if _, err := e.svc.GenerateDataKey(adminCtx, GenerateDataKeyInput{KeyID: md.KeyID, NumberOfBytes: 32}); !errors.Is(err, ErrKeyStateNotSupported) {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	if err := e.svc.EnableKeyRotation(adminCtx, md.KeyID, 30); !errors.Is(err, ErrExternalCannotRotate) {
		t.Fatalf("EnableKeyRotation: %v", err)
	}
	if _, err := e.svc.RotateKey(adminCtx, md.KeyID); !errors.Is(err, ErrKeyStateNotSupported) {
		t.Fatalf("RotateKey: %v", err)
	}
	if err := e.svc.EnableKey(adminCtx, md.KeyID); !errors.Is(err, ErrKeyStateNotSupported) {
		t.Fatalf("EnableKey: %v", err)
	}
	// The fake HSM has no key import: refused clearly, nothing made.
	if _, err := e.svc.GetParametersForImport(adminCtx, md.KeyID, WrapRSAESOAEPSHA256, WrappingKeySpecRSA); !errors.Is(err, ErrWrappingUnsupported) {
		t.Fatalf("GetParametersForImport without import support: %v", err)
	}
	if _, err := e.svc.GetParametersForImport(adminCtx, md.KeyID, WrapRSAESPKCS1V15, WrappingKeySpecRSA); !errors.Is(err, ErrWrappingUnsupported) {
		t.Fatalf("PKCS#1 v1.5: %v", err)
	}
	if _, err := e.svc.GetParametersForImport(adminCtx, md.KeyID, WrapRSAESOAEPSHA1, "RSA_4096"); !errors.Is(err, ErrInvalidWrapping) {
		t.Fatalf("RSA_4096: %v", err)
	}
	normal := e.create(t, "normal")
	if _, err := e.svc.DeleteImportedKeyMaterial(adminCtx, normal.KeyID); !errors.Is(err, ErrNotExternalKey) {
		t.Fatalf("DeleteImportedKeyMaterial of a TENCENT_KMS key: %v", err)
	}
	if got, err := e.svc.DeleteImportedKeyMaterial(adminCtx, md.KeyID); err != nil || got.KeyState != StatePendingImport {
		t.Fatalf("DeleteImportedKeyMaterial without material = %+v, %v", got, err)
	}
	if _, err := e.svc.ScheduleKeyDeletion(adminCtx, md.KeyID, 7); err != nil {
		t.Fatalf("ScheduleKeyDeletion of a PendingImport key: %v", err)
	}
	if got, err := e.svc.CancelKeyDeletion(adminCtx, md.KeyID); err != nil || got.KeyState != StatePendingImport {
		t.Fatalf("CancelKeyDeletion = %+v, %v; want PendingImport", got, err)
	}
	// Recover finds nothing missing: the key owns no object yet.
	e.restart(t)
	rep, err := e.svc.Recover(adminCtx)
	if err != nil || len(rep.Missing) != 0 || len(rep.Orphans) != 0 {
		t.Fatalf("Recover = %+v, %v", rep, err)
	}
}

// The imported-material fields are covered by the key's MAC: changed in
// the store, the key is not obeyed.
func TestTamperedImportFieldsAreNotObeyed(t *testing.T) {
	now := time.Now().UTC()
	e, hooked := integrityEnv(t, func() time.Time { return now })
	for _, c := range []struct {
		name   string
		change func(k *store.Key)
	}{
		{"material said loaded", func(k *store.Key) { k.MaterialLoaded, k.State = true, StateEnabled }},
		{"valid to moved", func(k *store.Key) { k.MaterialValidTo = now.Add(1000 * time.Hour) }},
		{"check value replaced", func(k *store.Key) { k.MaterialCheck = make([]byte, 32) }},
		{"origin changed", func(k *store.Key) { k.Origin = OriginTencentKMS }},
	} {
		t.Run(c.name, func(t *testing.T) {
			md, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "t" + string(rune('a'+len(e.st.keys))), Type: KeyTypeExternal})
			if err != nil {
				t.Fatal(err)
			}
			e.st.rawKey(md.KeyID, c.change)
			e.restart(t)
			wantFailure(t, e, hooked(), KindKey, md.KeyID)
			got, err := e.svc.DescribeKey(adminCtx, md.KeyID)
			if err != nil || got.KeyState != StateDisabled {
				t.Fatalf("a tampered key is served as %+v, %v; want Disabled", got, err)
			}
			if _, err := e.svc.DeleteImportedKeyMaterial(adminCtx, md.KeyID); !errors.Is(err, ErrIntegrity) {
				t.Fatalf("DeleteImportedKeyMaterial of a tampered key: %v, want ErrIntegrity", err)
			}
		})
	}
}
