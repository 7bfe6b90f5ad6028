package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"hsmkms/kms"
	"hsmkms/store"
	"hsmkms/store/pgtest"
)

// storeHarness adapts one kms.Store implementation to the conformance suite
// testStore, so that every implementation (SQLite today, PostgreSQL later)
// runs the same tests unchanged.
type storeHarness struct {
	// NewStorage creates fresh, empty storage scoped to t and returns a
	// function that opens a new handle on it. Handles implement io.Closer;
	// a handle opened after another was closed sees the same data. The
	// harness closes handles still open when the test ends.
	NewStorage func(t *testing.T) (open func(t *testing.T) kms.Store)
	// SetState changes a stored key's State and DeletionDate out of band
	// (the Store interface has no update method yet).
	SetState func(t *testing.T, s kms.Store, id, state string, deletionDate time.Time)
}

// testStore is the conformance suite for kms.Store implementations.
func testStore(t *testing.T, h storeHarness) {
	// fresh returns a handle on new, empty storage.
	fresh := func(t *testing.T) kms.Store { return h.NewStorage(t)(t) }

	t.Run("CreateGetRoundTrip", func(t *testing.T) {
		t.Parallel()
		loc := time.FixedZone("UTC+5:30", 5*3600+1800)
		tests := []struct {
			name string
			key  store.Key
			// want defaults to key.
			want *store.Key
		}{
			{name: "minimal", key: store.Key{
				ID: keyID(1), State: "Enabled", CreatedAt: baseTime,
				Versions: []store.Version{{Number: 1, ObjectID: []byte{0x01}, CreatedAt: baseTime}},
			}},
			{name: "all fields, several versions, non-UTC zone", key: store.Key{
				ID: keyID(2), Alias: "payments/primary", Description: "clé de paiement ✓ 'quoted' \"x\"; DROP TABLE keys;--",
				Usage: "ENCRYPT_DECRYPT", State: "PendingDelete", Origin: "TENCENT_KMS",
				CreatedAt:    baseTime.In(loc),
				DeletionDate: baseTime.Add(7 * 24 * time.Hour).In(loc),
				Versions: []store.Version{
					{Number: 1, ObjectID: bytes.Repeat([]byte{0xAB}, 16), CreatedAt: baseTime.In(loc)},
					{Number: 2, ObjectID: []byte{0x00, 0x00, 0x01}, CreatedAt: baseTime.Add(time.Hour)},
					{Number: 3, ObjectID: []byte("third"), CreatedAt: baseTime.Add(2*time.Hour + time.Nanosecond)},
				},
			}},
			{name: "versions given out of order are returned ascending", key: store.Key{
				ID: keyID(3), Alias: "ooo", State: "Enabled", CreatedAt: baseTime,
				Versions: []store.Version{
					{Number: 3, ObjectID: []byte("v3"), CreatedAt: baseTime.Add(3 * time.Second)},
					{Number: 1, ObjectID: []byte("v1"), CreatedAt: baseTime.Add(1 * time.Second)},
					{Number: 4294967295, ObjectID: []byte("vmax"), CreatedAt: baseTime.Add(4 * time.Second)},
				},
			}, want: &store.Key{
				ID: keyID(3), Alias: "ooo", State: "Enabled", CreatedAt: baseTime,
				Versions: []store.Version{
					{Number: 1, ObjectID: []byte("v1"), CreatedAt: baseTime.Add(1 * time.Second)},
					{Number: 3, ObjectID: []byte("v3"), CreatedAt: baseTime.Add(3 * time.Second)},
					{Number: 4294967295, ObjectID: []byte("vmax"), CreatedAt: baseTime.Add(4 * time.Second)},
				},
			}},
			{name: "asymmetric key with its public key", key: store.Key{
				ID: keyID(5), Alias: "signer", Usage: "ASYMMETRIC_SIGN_VERIFY_ECC", State: "Enabled", CreatedAt: baseTime,
				PublicKey: append([]byte{0x30, 0x59, 0x00}, bytes.Repeat([]byte{0xEC}, 88)...),
				Versions:  []store.Version{{Number: 1, ObjectID: []byte("private"), CreatedAt: baseTime}},
			}},
			{name: "time at the edges of the storable range", key: store.Key{
				ID: keyID(4), State: "Enabled", CreatedAt: time.Date(1700, 1, 1, 0, 0, 0, 1, time.UTC),
				DeletionDate: time.Date(2262, 1, 1, 0, 0, 0, 999999999, time.UTC),
				Versions:     []store.Version{{Number: 1, ObjectID: []byte("edge"), CreatedAt: time.Unix(0, 1)}},
			}},
		}
		s := fresh(t)
		ctx := t.Context()
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				if err := s.CreateKey(ctx, tc.key); err != nil {
					t.Fatalf("CreateKey: %v", err)
				}
				got, err := s.GetKey(ctx, tc.key.ID)
				if err != nil {
					t.Fatalf("GetKey: %v", err)
				}
				want := tc.key
				if tc.want != nil {
					want = *tc.want
				}
				assertKey(t, got, want)
				if got.CreatedAt.Location() != time.UTC {
					t.Errorf("CreatedAt location = %v, want UTC", got.CreatedAt.Location())
				}
			})
		}
	})

	t.Run("GetKeyNotFound", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		mustCreate(t, s, newKey(1, "a", 1))
		for _, id := range []string{"", keyID(2), keyID(1) + " ", "00000000-0000-4000-8000-00000000000%"} {
			_, err := s.GetKey(ctx, id)
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("GetKey(%q) error = %v, want ErrNotFound", id, err)
			}
		}
	})

	t.Run("AliasExists", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			holderState string
			newState    string
			wantErr     error
		}{
			{"Enabled", "Enabled", store.ErrAliasExists},
			{"Disabled", "Enabled", store.ErrAliasExists},
			{"PendingDelete", "Enabled", store.ErrAliasExists},
			{"Archived", "Enabled", store.ErrAliasExists},
			{"Deleted", "Enabled", nil},
			{"Enabled", "Deleted", nil}, // a Deleted key holds no alias
		}
		for _, tc := range tests {
			t.Run(tc.holderState+"/"+tc.newState, func(t *testing.T) {
				t.Parallel()
				s := fresh(t)
				ctx := t.Context()
				holder := newKey(1, "shared", 1)
				mustCreate(t, s, holder)
				if tc.holderState != holder.State {
					h.SetState(t, s, holder.ID, tc.holderState, baseTime.Add(time.Hour))
				}
				k := newKey(2, "shared", 2)
				k.State = tc.newState
				mustAddPending(t, s, k)
				err := s.CreateKey(ctx, k)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("CreateKey error = %v, want %v", err, tc.wantErr)
				}
				_, getErr := s.GetKey(ctx, k.ID)
				pending := mustPending(t, s)
				if tc.wantErr != nil {
					// Nothing of the failed transaction may remain.
					if !errors.Is(getErr, store.ErrNotFound) {
						t.Errorf("GetKey after failed create: %v, want ErrNotFound", getErr)
					}
					if len(pending) != len(k.Versions) {
						t.Errorf("pending objects after failed create = %d, want %d (untouched)", len(pending), len(k.Versions))
					}
				} else {
					if getErr != nil {
						t.Errorf("GetKey: %v", getErr)
					}
					if len(pending) != 0 {
						t.Errorf("pending objects after create = %d, want 0", len(pending))
					}
				}
			})
		}
	})

	t.Run("AliasReusableAfterDeleted", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		first := newKey(1, "rotating", 1)
		mustCreate(t, s, first)
		if err := s.CreateKey(ctx, newKey(2, "rotating", 1)); !errors.Is(err, store.ErrAliasExists) {
			t.Fatalf("second holder: %v, want ErrAliasExists", err)
		}
		h.SetState(t, s, first.ID, "Deleted", baseTime.Add(time.Hour))
		mustCreate(t, s, newKey(2, "rotating", 1))
		// The alias is now held again.
		if err := s.CreateKey(ctx, newKey(3, "rotating", 1)); !errors.Is(err, store.ErrAliasExists) {
			t.Fatalf("third holder: %v, want ErrAliasExists", err)
		}
		// Aliases are case-sensitive and the empty alias is not unique.
		mustCreate(t, s, newKey(4, "Rotating", 1))
		mustCreate(t, s, newKey(5, "", 1))
		mustCreate(t, s, newKey(6, "", 1))
	})

	t.Run("DuplicateKeyID", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		orig := newKey(1, "orig", 1)
		mustCreate(t, s, orig)
		tests := []struct {
			name  string
			state string
		}{
			{"live", "Enabled"},
			{"deleted", "Deleted"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				h.SetState(t, s, orig.ID, tc.state, time.Time{})
				dup := newKey(1, "other-alias", 7) // same ID, new object ids
				dup.Versions[0].ObjectID = []byte("dup-object")
				err := s.CreateKey(ctx, dup)
				if !errors.Is(err, store.ErrKeyExists) {
					t.Fatalf("CreateKey duplicate: %v, want ErrKeyExists", err)
				}
				if errors.Is(err, store.ErrAliasExists) {
					t.Errorf("duplicate id reported as alias conflict: %v", err)
				}
				got, err := s.GetKey(ctx, orig.ID)
				if err != nil {
					t.Fatal(err)
				}
				want := orig
				want.State = tc.state
				assertKey(t, got, want)
			})
		}
	})

	t.Run("DuplicateObjectIDIsAtomic", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		a := newKey(1, "a", 2)
		mustCreate(t, s, a)
		b := newKey(2, "b", 2)
		b.Versions[1].ObjectID = a.Versions[1].ObjectID
		mustAddPending(t, s, b)
		err := s.CreateKey(ctx, b)
		if err == nil || errors.Is(err, store.ErrKeyExists) || errors.Is(err, store.ErrAliasExists) {
			t.Fatalf("CreateKey with used object id: %v, want an unclassified error", err)
		}
		if _, err := s.GetKey(ctx, b.ID); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("key of failed create: %v, want ErrNotFound", err)
		}
		if got := mustPending(t, s); len(got) != 2 {
			t.Errorf("pending objects = %d, want 2 (rollback)", len(got))
		}
		if n, err := s.CountKeys(ctx); err != nil || n != 1 {
			t.Errorf("CountKeys = %d, %v; want 1", n, err)
		}
		// b's alias was not consumed by the failed transaction.
		b.Versions[1].ObjectID = []byte("fresh")
		mustCreate(t, s, b)
	})

	t.Run("InvalidKey", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		tests := []struct {
			name   string
			mutate func(k *store.Key)
		}{
			{"empty id", func(k *store.Key) { k.ID = "" }},
			{"no versions", func(k *store.Key) { k.Versions = nil }},
			{"zero created", func(k *store.Key) { k.CreatedAt = time.Time{} }},
			{"created out of range", func(k *store.Key) { k.CreatedAt = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }},
			{"deletion out of range", func(k *store.Key) { k.DeletionDate = time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC) }},
			{"version 0", func(k *store.Key) { k.Versions[0].Number = 0 }},
			{"duplicate version", func(k *store.Key) { k.Versions[1].Number = k.Versions[0].Number }},
			{"empty object id", func(k *store.Key) { k.Versions[1].ObjectID = nil }},
			{"duplicate object id within key", func(k *store.Key) { k.Versions[1].ObjectID = k.Versions[0].ObjectID }},
			{"zero version created", func(k *store.Key) { k.Versions[1].CreatedAt = time.Time{} }},
		}
		for i, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				k := newKey(i+1, fmt.Sprintf("alias-%d", i), 2)
				tc.mutate(&k)
				if err := s.CreateKey(ctx, k); err == nil {
					t.Fatal("CreateKey succeeded, want error")
				}
				if k.ID != "" {
					if _, err := s.GetKey(ctx, k.ID); !errors.Is(err, store.ErrNotFound) {
						t.Errorf("GetKey after rejected create: %v, want ErrNotFound", err)
					}
				}
			})
		}
		if n, err := s.CountKeys(ctx); err != nil || n != 0 {
			t.Errorf("CountKeys = %d, %v; want 0", n, err)
		}
	})

	t.Run("PendingObjects", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		if got := mustPending(t, s); got == nil || len(got) != 0 {
			t.Fatalf("PendingObjects on empty store = %#v, want empty non-nil", got)
		}
		ps := []store.PendingObject{
			{ObjectID: []byte("p-late"), KeyID: keyID(1), Version: 2, CreatedAt: baseTime.Add(2 * time.Second), MAC: []byte("mac-late")},
			{ObjectID: []byte("p-early"), KeyID: keyID(1), Version: 1, CreatedAt: baseTime.In(time.FixedZone("W", -7*3600))},
			{ObjectID: []byte{0xff, 0x00}, KeyID: keyID(2), Version: 4294967295, CreatedAt: baseTime.Add(time.Second + 1)},
		}
		for _, p := range ps {
			if err := s.AddPendingObject(ctx, p); err != nil {
				t.Fatalf("AddPendingObject(%x): %v", p.ObjectID, err)
			}
		}
		want := []store.PendingObject{ps[1], ps[2], ps[0]} // oldest first
		assertPending(t, mustPending(t, s), want)
		// An administrator's reseal replaces a MAC.
		if err := s.SetPendingMAC(ctx, ps[1].ObjectID, []byte("resealed")); err != nil {
			t.Fatal(err)
		}
		if err := s.SetPendingMAC(ctx, []byte("absent"), []byte("x")); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("SetPendingMAC of an absent intent: %v, want ErrNotFound", err)
		}
		want[0].MAC = []byte("resealed")
		ps[1].MAC = want[0].MAC
		assertPending(t, mustPending(t, s), want)

		if err := s.AddPendingObject(ctx, ps[0]); err == nil {
			t.Error("AddPendingObject duplicate succeeded, want error")
		}
		for _, bad := range []store.PendingObject{
			{KeyID: keyID(1), Version: 1, CreatedAt: baseTime},
			{ObjectID: []byte("x"), Version: 1, CreatedAt: baseTime},
			{ObjectID: []byte("x"), KeyID: keyID(1), CreatedAt: baseTime},
			{ObjectID: []byte("x"), KeyID: keyID(1), Version: 1},
		} {
			if err := s.AddPendingObject(ctx, bad); err == nil {
				t.Errorf("AddPendingObject(%+v) succeeded, want error", bad)
			}
		}

		for range 2 { // idempotent
			if err := s.DeletePendingObject(ctx, ps[2].ObjectID); err != nil {
				t.Fatalf("DeletePendingObject: %v", err)
			}
		}
		if err := s.DeletePendingObject(ctx, []byte("never-added")); err != nil {
			t.Fatalf("DeletePendingObject(unknown): %v", err)
		}
		assertPending(t, mustPending(t, s), []store.PendingObject{ps[1], ps[0]})
	})

	t.Run("CreateKeyDeletesItsPendingObjects", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		k := newKey(1, "k", 3)
		mustAddPending(t, s, k)
		unrelated := store.PendingObject{ObjectID: []byte("unrelated"), KeyID: keyID(9), Version: 1, CreatedAt: baseTime}
		if err := s.AddPendingObject(ctx, unrelated); err != nil {
			t.Fatal(err)
		}
		mustCreate(t, s, k)
		assertPending(t, mustPending(t, s), []store.PendingObject{unrelated})
	})

	t.Run("ListKeys", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		if got, err := s.ListKeys(ctx); err != nil || got == nil || len(got) != 0 {
			t.Fatalf("ListKeys on empty store = %#v, %v; want empty non-nil", got, err)
		}
		const n = 120
		rng := rand.New(rand.NewPCG(1, 2))
		var want []store.Key
		for i := range n {
			k := newKey(i+1, fmt.Sprintf("list-%d", i), 1+rng.IntN(4))
			// Many ties on CreatedAt, to exercise the ID tie-break.
			k.CreatedAt = baseTime.Add(time.Duration(rng.IntN(10)) * time.Second)
			if i%7 == 0 {
				k.State = "Deleted"
			}
			want = append(want, k)
		}
		// Create in random order.
		for _, i := range rng.Perm(n) {
			mustCreate(t, s, want[i])
		}
		slices.SortFunc(want, func(a, b store.Key) int {
			if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
				return c
			}
			return strings.Compare(a.ID, b.ID)
		})
		got, err := s.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("ListKeys returned %d keys, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i].ID != want[i].ID {
				t.Fatalf("ListKeys[%d].ID = %s, want %s (order by created, id)", i, got[i].ID, want[i].ID)
			}
			assertKey(t, got[i], want[i])
		}
	})

	t.Run("CountKeys", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		count := func() int {
			t.Helper()
			n, err := s.CountKeys(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		if n := count(); n != 0 {
			t.Fatalf("CountKeys empty = %d", n)
		}
		for i := range 5 {
			mustCreate(t, s, newKey(i+1, "", 1))
		}
		created := newKey(6, "", 1)
		created.State = "Deleted"
		mustCreate(t, s, created)
		if n := count(); n != 5 {
			t.Fatalf("CountKeys = %d, want 5", n)
		}
		for _, st := range []struct {
			id    int
			state string
		}{{1, "Deleted"}, {2, "Deleted"}, {3, "PendingDelete"}, {4, "Disabled"}} {
			h.SetState(t, s, keyID(st.id), st.state, baseTime)
		}
		if n := count(); n != 3 {
			t.Fatalf("CountKeys = %d, want 3 (Deleted ignored, PendingDelete/Disabled counted)", n)
		}
	})

	t.Run("ObjectIDs", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		if got, err := s.ObjectIDs(ctx); err != nil || got == nil || len(got) != 0 {
			t.Fatalf("ObjectIDs on empty store = %#v, %v; want empty non-nil", got, err)
		}
		var want [][]byte
		for i := range 10 {
			k := newKey(i+1, "", 1+i%3)
			mustCreate(t, s, k)
			for _, v := range k.Versions {
				want = append(want, v.ObjectID)
			}
		}
		h.SetState(t, s, keyID(1), "Deleted", baseTime) // still listed
		// Pending objects are not key versions.
		if err := s.AddPendingObject(ctx, store.PendingObject{ObjectID: []byte("pending"), KeyID: keyID(99), Version: 1, CreatedAt: baseTime}); err != nil {
			t.Fatal(err)
		}
		got, err := s.ObjectIDs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(got, bytes.Compare)
		slices.SortFunc(want, bytes.Compare)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ObjectIDs = %q, want %q", got, want)
		}
	})

	t.Run("ConcurrentCreate", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		const n = 32
		var wg sync.WaitGroup
		errs := make(chan error, 3*n)
		for i := range n {
			wg.Go(func() {
				k := newKey(i+1, fmt.Sprintf("c-%d", i), 2)
				for _, v := range k.Versions {
					if err := s.AddPendingObject(ctx, store.PendingObject{ObjectID: v.ObjectID, KeyID: k.ID, Version: v.Number, CreatedAt: baseTime}); err != nil {
						errs <- fmt.Errorf("key %d: add pending: %w", i, err)
						return
					}
				}
				if err := s.CreateKey(ctx, k); err != nil {
					errs <- fmt.Errorf("key %d: create: %w", i, err)
					return
				}
				if _, err := s.GetKey(ctx, k.ID); err != nil {
					errs <- fmt.Errorf("key %d: get: %w", i, err)
				}
			})
			// Concurrent readers.
			wg.Go(func() {
				if _, err := s.ListKeys(ctx); err != nil {
					errs <- fmt.Errorf("reader %d: list: %w", i, err)
				}
				if _, err := s.CountKeys(ctx); err != nil {
					errs <- fmt.Errorf("reader %d: count: %w", i, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n2, err := s.CountKeys(ctx); err != nil || n2 != n {
			t.Fatalf("CountKeys = %d, %v; want %d", n2, err, n)
		}
		if p := mustPending(t, s); len(p) != 0 {
			t.Fatalf("pending objects left: %d", len(p))
		}
		// Concurrent creators of one alias: exactly one wins.
		var wins, conflicts int
		var mu sync.Mutex
		for i := range n {
			wg.Go(func() {
				err := s.CreateKey(ctx, newKey(1000+i, "contended", 1))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					wins++
				case errors.Is(err, store.ErrAliasExists):
					conflicts++
				default:
					t.Errorf("contended create %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if wins != 1 || conflicts != n-1 {
			t.Fatalf("contended alias: %d wins, %d conflicts; want 1, %d", wins, conflicts, n-1)
		}
	})

	t.Run("CanceledContext", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		k := newKey(1, "x", 1)
		if err := s.CreateKey(ctx, k); err == nil {
			t.Fatal("CreateKey with canceled context succeeded")
		}
		if _, err := s.GetKey(t.Context(), k.ID); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetKey after canceled create: %v, want ErrNotFound", err)
		}
	})

	t.Run("Durability", func(t *testing.T) {
		t.Parallel()
		open := h.NewStorage(t)
		s := open(t)
		ctx := t.Context()
		keys := []store.Key{newKey(1, "durable", 2), newKey(2, "", 1)}
		for _, k := range keys {
			mustCreate(t, s, k)
		}
		p := store.PendingObject{ObjectID: []byte("survivor"), KeyID: keyID(3), Version: 1, CreatedAt: baseTime}
		if err := s.AddPendingObject(ctx, p); err != nil {
			t.Fatal(err)
		}
		if err := s.(io.Closer).Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}

		s = open(t)
		for _, k := range keys {
			got, err := s.GetKey(ctx, k.ID)
			if err != nil {
				t.Fatalf("GetKey after reopen: %v", err)
			}
			assertKey(t, got, k)
		}
		assertPending(t, mustPending(t, s), []store.PendingObject{p})
		// The reopened store keeps enforcing constraints.
		if err := s.CreateKey(ctx, newKey(5, "durable", 1)); !errors.Is(err, store.ErrAliasExists) {
			t.Fatalf("CreateKey after reopen: %v, want ErrAliasExists", err)
		}
	})

	t.Run("Credentials", func(t *testing.T) {
		t.Parallel()
		open := h.NewStorage(t)
		s := open(t)
		ctx := t.Context()
		c1 := store.Credential{SecretID: "AKIDone", Name: "one", SealedKey: []byte("sealed-1"), KEKObjectID: []byte("kek"),
			Policy: `{"version":"2.0"}`, Enabled: true, CreatedAt: baseTime}
		c2 := c1
		c2.SecretID, c2.Name, c2.SealedKey, c2.CreatedAt = "AKIDtwo", "two", []byte("sealed-2"), baseTime.Add(time.Second)
		for _, c := range []store.Credential{c1, c2} {
			if err := s.CreateCredential(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.CreateCredential(ctx, c1); !errors.Is(err, store.ErrCredentialExists) {
			t.Fatalf("duplicate: %v, want ErrCredentialExists", err)
		}
		u1 := c1
		u1.Enabled, u1.Gen, u1.MAC = false, 1, []byte("mac-1")
		if err := s.UpdateCredential(ctx, u1); err != nil {
			t.Fatal(err)
		}
		u2 := c2
		u2.Policy, u2.Name, u2.Gen, u2.MAC = `{"version":"2.0","statement":[]}`, "two-b", 5, []byte("mac-2")
		if err := s.UpdateCredential(ctx, u2); err != nil {
			t.Fatal(err)
		}
		// A generation that is not higher than the stored one is refused.
		stale := u2
		stale.Policy, stale.Gen = "{}", 5
		if err := s.UpdateCredential(ctx, stale); !errors.Is(err, store.ErrStale) {
			t.Fatalf("stale generation: %v, want ErrStale", err)
		}
		none := c1
		none.SecretID, none.Gen = "AKIDnone", 1
		for _, err := range []error{
			s.UpdateCredential(ctx, none),
			s.DeleteCredential(ctx, "AKIDnone"),
		} {
			if !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("absent credential: %v, want ErrNotFound", err)
			}
		}
		s.(io.Closer).Close()
		s = open(t)
		got, err := s.ListCredentials(ctx)
		if err != nil || len(got) != 2 {
			t.Fatalf("list: %d %v", len(got), err)
		}
		for i, want := range []store.Credential{u1, u2} {
			g := got[i]
			if g.SecretID != want.SecretID || g.Name != want.Name || !bytes.Equal(g.SealedKey, want.SealedKey) ||
				!bytes.Equal(g.KEKObjectID, want.KEKObjectID) || g.Policy != want.Policy || g.Enabled != want.Enabled || !g.CreatedAt.Equal(want.CreatedAt) ||
				g.Gen != want.Gen || !bytes.Equal(g.MAC, want.MAC) {
				t.Fatalf("credential %d\n got %+v\nwant %+v", i, g, want)
			}
		}
		if err := s.DeleteCredential(ctx, "AKIDone"); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.ListCredentials(ctx); len(got) != 1 || got[0].SecretID != "AKIDtwo" {
			t.Fatalf("after delete: %+v", got)
		}
	})
}

// testLifecycle is the conformance suite of the methods that change
// stored keys: UpdateKey, AddVersion and ReserveUsage.
func testLifecycle(t *testing.T, h storeHarness) {
	fresh := func(t *testing.T) kms.Store { return h.NewStorage(t)(t) }

	t.Run("UpdateKey", func(t *testing.T) {
		t.Parallel()
		open := h.NewStorage(t)
		s := open(t)
		ctx := t.Context()
		a, b := newKey(1, "a", 2), newKey(2, "b", 1)
		mustCreate(t, s, a)
		mustCreate(t, s, b)
		tests := []struct {
			name    string
			change  func(k *store.Key)
			wantErr error
		}{
			{"state and deletion date", func(k *store.Key) {
				k.State, k.DeletionDate = "PendingDelete", baseTime.Add(7*24*time.Hour)
			}, nil},
			{"back, clearing the date", func(k *store.Key) { k.State, k.DeletionDate = "Disabled", time.Time{} }, nil},
			{"alias and description", func(k *store.Key) { k.Alias, k.Description = "a2", "new ✓" }, nil},
			{"rotation settings", func(k *store.Key) {
				k.RotationEnabled, k.RotateDays, k.LastRotatedAt = true, 30, baseTime.Add(time.Hour)
			}, nil},
			{"alias held by another live key", func(k *store.Key) { k.Alias = "b" }, store.ErrAliasExists},
			{"immutable fields are ignored", func(k *store.Key) {
				k.Usage, k.Origin, k.CreatedAt, k.Versions = "OTHER", "EXTERNAL", baseTime.Add(time.Hour), nil
			}, nil},
		}
		want := a
		for i, tt := range tests {
			k := want
			tt.change(&k)
			k.Gen, k.MAC = uint64(i+2), []byte(tt.name)
			err := s.UpdateKey(ctx, k)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("%s: %v, want %v", tt.name, err, tt.wantErr)
			}
			if err == nil {
				k.Usage, k.Origin, k.CreatedAt, k.Versions = want.Usage, want.Origin, want.CreatedAt, want.Versions
				want = k
			}
			got, _ := s.GetKey(ctx, a.ID)
			assertKey(t, got, want)
		}
		if err := s.UpdateKey(ctx, newKey(9, "", 1)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("absent key: %v", err)
		}
		// A generation that is not higher than the stored one is refused,
		// and nothing changes.
		old := want
		old.State = "Enabled"
		if err := s.UpdateKey(ctx, old); !errors.Is(err, store.ErrStale) {
			t.Fatalf("stale generation: %v, want ErrStale", err)
		}
		if got, _ := s.GetKey(ctx, a.ID); got.State != want.State {
			t.Fatalf("stale write changed the state to %s", got.State)
		}
		// A Deleted key frees its alias.
		bd := b
		bd.State = "Deleted"
		bd.Gen = 2
		if err := s.UpdateKey(ctx, bd); err != nil {
			t.Fatal(err)
		}
		k := want
		k.Alias = "b"
		k.Gen++
		if err := s.UpdateKey(ctx, k); err != nil {
			t.Fatalf("alias of a Deleted key: %v", err)
		}
		s.(io.Closer).Close()
		s = open(t)
		got, _ := s.GetKey(ctx, a.ID)
		assertKey(t, got, k)
	})

	t.Run("UpdateKeys", func(t *testing.T) {
		t.Parallel()
		open := h.NewStorage(t)
		s := open(t)
		ctx := t.Context()
		a, b, c := newKey(1, "x", 1), newKey(2, "placeholder-b", 1), newKey(3, "c", 1)
		for _, k := range []store.Key{a, b, c} {
			mustCreate(t, s, k)
		}
		next := func(k store.Key, alias string) store.Key {
			k.Alias, k.Gen, k.MAC = alias, k.Gen+1, []byte("mac-"+alias)
			return k
		}
		// The alias moves from a to b: a gives it up first, in the same
		// transaction. Taking it first is refused, and changes nothing.
		if err := s.UpdateKeys(ctx, next(b, "x"), next(a, "placeholder-a")); !errors.Is(err, store.ErrAliasExists) {
			t.Fatalf("alias taken before it is given up: %v, want ErrAliasExists", err)
		}
		for _, k := range []store.Key{a, b} {
			got, _ := s.GetKey(ctx, k.ID)
			assertKey(t, got, k)
		}
		a2, b2 := next(a, "placeholder-a"), next(b, "x")
		if err := s.UpdateKeys(ctx, a2, b2); err != nil {
			t.Fatalf("alias moved: %v", err)
		}
		// All or nothing: a stale second key undoes the first change.
		a3, staleC := next(a2, "a3"), c
		staleC.Description = "stale"
		if err := s.UpdateKeys(ctx, a3, staleC); !errors.Is(err, store.ErrStale) {
			t.Fatalf("stale second key: %v, want ErrStale", err)
		}
		s.(io.Closer).Close()
		s = open(t)
		for _, k := range []store.Key{a2, b2, c} {
			got, _ := s.GetKey(ctx, k.ID)
			assertKey(t, got, k)
		}
	})

	t.Run("AddVersion", func(t *testing.T) {
		t.Parallel()
		open := h.NewStorage(t)
		s := open(t)
		ctx := t.Context()
		k := newKey(1, "a", 1)
		mustCreate(t, s, k)
		v2 := store.Version{Number: 2, ObjectID: []byte("obj-v2"), CreatedAt: baseTime.Add(time.Hour), MAC: []byte("v2-mac")}
		kNext := k
		kNext.Gen, kNext.MAC = k.Gen+1, []byte("key-mac-2")
		if err := s.AddPendingObject(ctx, store.PendingObject{ObjectID: v2.ObjectID, KeyID: k.ID, Version: 2, CreatedAt: baseTime}); err != nil {
			t.Fatal(err)
		}
		for _, bad := range []store.Version{
			{Number: 3, ObjectID: []byte("obj-v3"), CreatedAt: baseTime}, // skips 2
			{Number: 1, ObjectID: []byte("obj-x"), CreatedAt: baseTime},  // exists
			{Number: 2, ObjectID: k.Versions[0].ObjectID, CreatedAt: baseTime},
			{Number: 2, CreatedAt: baseTime},
			{Number: 2, ObjectID: []byte("z")},
		} {
			if err := s.AddVersion(ctx, kNext, bad); err == nil {
				t.Fatalf("AddVersion(%+v) succeeded", bad)
			}
		}
		absent := kNext
		absent.ID = keyID(9)
		if err := s.AddVersion(ctx, absent, v2); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("absent key: %v", err)
		}
		if err := s.AddVersion(ctx, k, v2); !errors.Is(err, store.ErrStale) {
			t.Fatalf("same generation: %v, want ErrStale", err)
		}
		if err := s.AddVersion(ctx, kNext, v2); err != nil {
			t.Fatal(err)
		}
		if err := s.SetVersionMAC(ctx, k.ID, 1, []byte("v1-resealed")); err != nil {
			t.Fatal(err)
		}
		if err := s.SetVersionMAC(ctx, k.ID, 3, []byte("x")); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("SetVersionMAC of an absent version: %v, want ErrNotFound", err)
		}
		k.Versions[0].MAC = []byte("v1-resealed")
		if p := mustPending(t, s); len(p) != 0 {
			t.Fatalf("pending object not deleted: %+v", p)
		}
		s.(io.Closer).Close()
		s = open(t)
		got, _ := s.GetKey(ctx, k.ID)
		k.Versions = append(k.Versions, v2)
		k.LastRotatedAt = v2.CreatedAt
		k.Gen, k.MAC = kNext.Gen, kNext.MAC
		assertKey(t, got, k)
		if ids, _ := s.ObjectIDs(ctx); len(ids) != 2 {
			t.Fatalf("ObjectIDs %d", len(ids))
		}
	})

	t.Run("ReserveUsage", func(t *testing.T) {
		t.Parallel()
		s := fresh(t)
		ctx := t.Context()
		k := newKey(1, "a", 2)
		k.Versions[1].UsageReserved = 7
		mustCreate(t, s, k)
		for _, step := range []struct {
			version uint32
			upTo    uint64
			want    [2]uint64
		}{
			{1, 100, [2]uint64{100, 7}},
			{1, 50, [2]uint64{100, 7}}, // never backwards
			{2, 1 << 62, [2]uint64{100, 1 << 62}},
		} {
			if err := s.ReserveUsage(ctx, k.ID, step.version, step.upTo); err != nil {
				t.Fatal(err)
			}
			got, _ := s.GetKey(ctx, k.ID)
			if got.Versions[0].UsageReserved != step.want[0] || got.Versions[1].UsageReserved != step.want[1] {
				t.Fatalf("after %+v: %d, %d", step, got.Versions[0].UsageReserved, got.Versions[1].UsageReserved)
			}
		}
		if err := s.ReserveUsage(ctx, k.ID, 3, 1); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("absent version: %v", err)
		}
		if err := s.ReserveUsage(ctx, keyID(9), 1, 1); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("absent key: %v", err)
		}
		if err := s.ReserveUsage(ctx, k.ID, 1, 1<<63); err == nil {
			t.Fatal("reservation above 2^63-1 accepted")
		}
	})
}

// baseTime has a non-UTC zone and sub-second precision on purpose.
var baseTime = time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.FixedZone("CET", 3600))

func keyID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

// newKey returns a valid Enabled key number i with the given alias and
// nversions versions whose object IDs are unique to (i, version).
func newKey(i int, alias string, nversions int) store.Key {
	k := store.Key{
		ID: keyID(i), Alias: alias, Description: fmt.Sprintf("key %d", i),
		Usage: "ENCRYPT_DECRYPT", State: "Enabled", Origin: "TENCENT_KMS",
		CreatedAt: baseTime.Add(time.Duration(i) * time.Millisecond),
		Gen:       1, MAC: fmt.Appendf(nil, "mac-%d", i),
	}
	for v := range nversions {
		k.Versions = append(k.Versions, store.Version{
			Number:    uint32(v + 1),
			ObjectID:  fmt.Appendf(nil, "obj-%d-%d", i, v+1),
			CreatedAt: k.CreatedAt.Add(time.Duration(v) * time.Hour),
			MAC:       fmt.Appendf(nil, "mac-%d-%d", i, v+1),
		})
	}
	return k
}

func mustCreate(t *testing.T, s kms.Store, k store.Key) {
	t.Helper()
	if err := s.CreateKey(t.Context(), k); err != nil {
		t.Fatalf("CreateKey(%s): %v", k.ID, err)
	}
}

func mustAddPending(t *testing.T, s kms.Store, k store.Key) {
	t.Helper()
	for _, v := range k.Versions {
		p := store.PendingObject{ObjectID: v.ObjectID, KeyID: k.ID, Version: v.Number, CreatedAt: v.CreatedAt}
		if err := s.AddPendingObject(t.Context(), p); err != nil {
			t.Fatalf("AddPendingObject: %v", err)
		}
	}
}

func mustPending(t *testing.T, s kms.Store) []store.PendingObject {
	t.Helper()
	p, err := s.PendingObjects(t.Context())
	if err != nil {
		t.Fatalf("PendingObjects: %v", err)
	}
	return p
}

// normTime drops location and monotonic reading: what a store keeps.
func normTime(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return time.Unix(0, t.UnixNano()).UTC()
}

func normKey(k store.Key) store.Key {
	k.CreatedAt = normTime(k.CreatedAt)
	k.DeletionDate = normTime(k.DeletionDate)
	k.LastRotatedAt = normTime(k.LastRotatedAt)
	k.MaterialValidTo = normTime(k.MaterialValidTo)
	k.Versions = slices.Clone(k.Versions)
	for i := range k.Versions {
		k.Versions[i].CreatedAt = normTime(k.Versions[i].CreatedAt)
	}
	return k
}

func assertKey(t *testing.T, got, want store.Key) {
	t.Helper()
	if g, w := normKey(got), normKey(want); !reflect.DeepEqual(g, w) {
		t.Errorf("key mismatch\n got: %+v\nwant: %+v", g, w)
	}
	for i, v := range got.Versions {
		if v.CreatedAt.Location() != time.UTC {
			t.Errorf("version %d CreatedAt location = %v, want UTC", i, v.CreatedAt.Location())
		}
	}
}

func assertPending(t *testing.T, got, want []store.PendingObject) {
	t.Helper()
	norm := func(ps []store.PendingObject) []store.PendingObject {
		out := slices.Clone(ps)
		for i := range out {
			out[i].CreatedAt = normTime(out[i].CreatedAt)
		}
		return out
	}
	if g, w := norm(got), norm(want); !reflect.DeepEqual(g, w) {
		t.Errorf("pending objects mismatch\n got: %+v\nwant: %+v", g, w)
	}
}

func TestAuditAnchorConformance(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) anchorStore{
		"SQLite":   func(t *testing.T) anchorStore { return openSQLite(t, filepath.Join(t.TempDir(), "kms.db")) },
		"Postgres": func(t *testing.T) anchorStore { return openPostgres(t, pgtest.Shared(t).NewDatabase(t)) },
	} {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			if _, err := s.AuditAnchor(ctx, "n1"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("absent anchor: %v", err)
			}
			a := store.AuditAnchor{Node: "n1", Seq: 10, Hash: "h10", Time: baseTime, MAC: []byte("m10")}
			for _, x := range []store.AuditAnchor{a, {Node: "n2", Seq: 3, Hash: "x", Time: baseTime}} {
				if err := s.SetAuditAnchor(ctx, x); err != nil {
					t.Fatal(err)
				}
			}
			back := a
			back.Seq, back.Hash = 9, "h9"
			if err := s.SetAuditAnchor(ctx, back); !errors.Is(err, store.ErrStale) {
				t.Fatalf("anchor going back: %v, want ErrStale", err)
			}
			a.Seq, a.Hash, a.MAC = 12, "h12", []byte("m12")
			if err := s.SetAuditAnchor(ctx, a); err != nil {
				t.Fatal(err)
			}
			got, err := s.AuditAnchor(ctx, "n1")
			if err != nil || got.Seq != 12 || got.Hash != "h12" || !got.Time.Equal(baseTime) || string(got.MAC) != "m12" {
				t.Fatalf("anchor %+v %v", got, err)
			}
			if err := s.SetAuditAnchor(ctx, store.AuditAnchor{Seq: 1, Time: baseTime}); err == nil {
				t.Fatal("anchor without a node accepted")
			}
		})
	}
}

type anchorStore interface {
	AuditAnchor(ctx context.Context, node string) (store.AuditAnchor, error)
	SetAuditAnchor(ctx context.Context, a store.AuditAnchor) error
}
