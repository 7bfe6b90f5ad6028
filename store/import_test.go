package store_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"hsmkms/kms"
	"hsmkms/store"
	"hsmkms/store/pgtest"
)

type importStore interface {
	kms.Store
	kms.ImportStore
}

// Imported key material: the material columns of keys and the import
// parameters, on both engines.
func TestImportConformance(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) importStore{
		"SQLite":   func(t *testing.T) importStore { return openSQLite(t, filepath.Join(t.TempDir(), "kms.db")) },
		"Postgres": func(t *testing.T) importStore { return openPostgres(t, pgtest.Shared(t).NewDatabase(t)) },
	} {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			k := newKey(1, "ext", 1)
			k.Origin, k.State = "EXTERNAL", "PendingImport"
			mustCreate(t, s, k)
			got, err := s.GetKey(ctx, k.ID)
			if err != nil || got.MaterialLoaded || got.MaterialCheck != nil || !got.MaterialValidTo.IsZero() {
				t.Fatalf("fresh EXTERNAL key %+v, %v", got, err)
			}
			k.State, k.Gen, k.MAC = "Enabled", 2, []byte("mac-2")
			k.MaterialLoaded, k.MaterialCheck, k.MaterialValidTo = true, bytes.Repeat([]byte{7}, 32), baseTime.Add(time.Hour)
			if err := s.UpdateKey(ctx, k); err != nil {
				t.Fatal(err)
			}
			got, err = s.GetKey(ctx, k.ID)
			if err != nil {
				t.Fatal(err)
			}
			assertKey(t, got, k)
			all, err := s.ListKeys(ctx)
			if err != nil || len(all) != 1 || !all[0].MaterialLoaded || !all[0].MaterialValidTo.Equal(k.MaterialValidTo) {
				t.Fatalf("ListKeys %+v, %v", all, err)
			}

			p := store.ImportParams{TokenHash: bytes.Repeat([]byte{1}, 32), KeyID: k.ID, Algorithm: "RSAES_OAEP_SHA_1",
				WrappingObjectID: []byte("wrap-1"), CreatedAt: baseTime, ValidTo: baseTime.Add(24 * time.Hour), MAC: []byte("m")}
			if err := s.AddPendingObject(ctx, store.PendingObject{ObjectID: p.WrappingObjectID, KeyID: k.ID, Version: 1, CreatedAt: baseTime}); err != nil {
				t.Fatal(err)
			}
			if err := s.AddImportParams(ctx, p); err != nil {
				t.Fatal(err)
			}
			if pend := mustPending(t, s); len(pend) != 0 {
				t.Fatalf("the wrapping key's intent survived its commit: %+v", pend)
			}
			if err := s.AddImportParams(ctx, p); err == nil {
				t.Fatal("duplicate import parameters accepted")
			}
			bad := p
			bad.TokenHash = []byte("short")
			if err := s.AddImportParams(ctx, bad); err == nil {
				t.Fatal("a token hash of 5 bytes accepted")
			}
			gp, err := s.GetImportParams(ctx, p.TokenHash)
			if err != nil || gp.KeyID != k.ID || gp.Algorithm != p.Algorithm || !bytes.Equal(gp.WrappingObjectID, p.WrappingObjectID) ||
				!gp.CreatedAt.Equal(p.CreatedAt) || !gp.ValidTo.Equal(p.ValidTo) || string(gp.MAC) != "m" {
				t.Fatalf("GetImportParams %+v, %v", gp, err)
			}
			if err := s.SetImportParamsMAC(ctx, p.TokenHash, []byte("m2")); err != nil {
				t.Fatal(err)
			}
			list, err := s.ListImportParams(ctx)
			if err != nil || len(list) != 1 || string(list[0].MAC) != "m2" {
				t.Fatalf("ListImportParams %+v, %v", list, err)
			}
			if err := s.DeleteImportParams(ctx, p.TokenHash); err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteImportParams(ctx, p.TokenHash); err != nil {
				t.Fatalf("second delete: %v", err)
			}
			if _, err := s.GetImportParams(ctx, p.TokenHash); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("deleted import parameters: %v, want ErrNotFound", err)
			}
		})
	}
}
