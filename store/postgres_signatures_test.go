package store_test

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"hsmkms/store"
	"hsmkms/store/pgtest"
)

// TestPostgresSignatures: TC3 signatures published by one node are read by
// the others (not by itself), a signature recorded with one action is
// reported when published or claimed with another, concurrent claims agree,
// and PurgeNonces removes expired rows.
func TestPostgresSignatures(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	a, b := openPostgres(t, dsn), openPostgres(t, dsn)
	nodeA, nodeB := []byte("node-a"), []byte("node-b")
	exp := time.Unix(1_800_000_300, 0)
	sig := func(i byte) []byte { return bytes.Repeat([]byte{i}, 32) }

	_, startB, err := b.SignaturesSince(t.Context(), nodeB, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	conflicts, err := a.PublishSignatures(t.Context(), nodeA, []store.SignatureUse{
		{Sig: sig(1), Action: "Encrypt", Expiry: exp},
		{Sig: sig(2), Action: "Decrypt", Expiry: exp},
		{Sig: sig(2), Action: "Decrypt", Expiry: exp}, // duplicate in one batch
	})
	if err != nil || len(conflicts) != 0 {
		t.Fatalf("publish: %v, %v", conflicts, err)
	}
	// B reads A's two signatures; A reads none of its own.
	got, next, err := b.SignaturesSince(t.Context(), nodeB, startB, 100)
	if err != nil || len(got) != 2 || !bytes.Equal(got[0].Sig, sig(1)) || got[0].Action != "Encrypt" || !got[1].Expiry.Equal(exp) {
		t.Fatalf("B reads %+v, %v", got, err)
	}
	if more, _, err := b.SignaturesSince(t.Context(), nodeB, next, 100); err != nil || len(more) != 0 {
		t.Fatalf("B reads again past the end: %+v, %v", more, err)
	}
	if own, _, err := a.SignaturesSince(t.Context(), nodeA, startB, 100); err != nil || len(own) != 0 {
		t.Fatalf("A reads its own: %+v, %v", own, err)
	}
	// Published again by B: same action, nothing to report; another
	// action: reported with the recorded one.
	conflicts, err = b.PublishSignatures(t.Context(), nodeB, []store.SignatureUse{
		{Sig: sig(1), Action: "Encrypt", Expiry: exp},
		{Sig: sig(2), Action: "ReEncrypt", Expiry: exp},
		{Sig: sig(3), Action: "Encrypt", Expiry: exp},
	})
	if err != nil || len(conflicts) != 1 || !bytes.Equal(conflicts[0].Sig, sig(2)) || conflicts[0].Action != "Decrypt" {
		t.Fatalf("conflicts %+v, %v", conflicts, err)
	}
	// Claims: the recorded action, or the claimed one when new.
	for _, tc := range []struct {
		s    *store.Postgres
		sig  []byte
		act  string
		want string
	}{
		{b, sig(1), "DisableKey", "Encrypt"},
		{a, sig(4), "DisableCredential", "DisableCredential"},
		{b, sig(4), "EnableCredential", "DisableCredential"},
	} {
		if got, err := tc.s.ClaimSignature(t.Context(), nodeB, store.SignatureUse{Sig: tc.sig, Action: tc.act, Expiry: exp}); err != nil || got != tc.want {
			t.Fatalf("claim %x as %s: %q, %v; want %q", tc.sig[0], tc.act, got, err, tc.want)
		}
	}
	// Concurrent claims of one signature with different actions agree.
	var wg sync.WaitGroup
	results := make([]string, 20)
	for i := range results {
		wg.Go(func() {
			s, act := []*store.Postgres{a, b}[i%2], []string{"EnableKey", "DisableKey"}[i%2]
			got, err := s.ClaimSignature(t.Context(), nodeA, store.SignatureUse{Sig: sig(5), Action: act, Expiry: exp})
			if err != nil {
				t.Error(err)
			}
			results[i] = got
		})
	}
	wg.Wait()
	for _, r := range results {
		if r != results[0] {
			t.Fatalf("concurrent claims disagree: %q", results)
		}
	}
	// Purged once expired.
	if err := a.PurgeNonces(t.Context(), exp.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if got, err := a.ClaimSignature(t.Context(), nodeA, store.SignatureUse{Sig: sig(1), Action: "Decrypt", Expiry: exp.Add(time.Hour)}); err != nil || got != "Decrypt" {
		t.Fatalf("after the purge: %q, %v", got, err)
	}
}
