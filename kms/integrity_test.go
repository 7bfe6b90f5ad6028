package kms

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"hsmkms/store"
)

// rawKey changes a stored key behind the service's back, as someone with
// write access to the database would: no new MAC.
func (s *fakeStore) rawKey(id string, f func(*store.Key)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := cloneKey(s.keys[id])
	f(&k)
	s.keys[id] = k
}

func (s *fakeStore) rawCred(id string, f func(*store.Credential)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.creds[id]
	f(&c)
	s.creds[id] = c
}

// integrityEnv is an env whose OnIntegrityFailure hook records failures.
func integrityEnv(t *testing.T, clock func() time.Time) (*env, func() []IntegrityFailure) {
	var mu sync.Mutex
	var got []IntegrityFailure
	e := newEnv(t, Config{Clock: clock, OnIntegrityFailure: func(f IntegrityFailure) {
		mu.Lock()
		got = append(got, f)
		mu.Unlock()
	}})
	return e, func() []IntegrityFailure {
		mu.Lock()
		defer mu.Unlock()
		return append([]IntegrityFailure(nil), got...)
	}
}

func wantFailure(t *testing.T, e *env, hooked []IntegrityFailure, kind, id string) {
	t.Helper()
	found := false
	for _, f := range e.svc.IntegrityFailures() {
		found = found || f.Kind == kind && f.ID == id
	}
	if !found {
		t.Fatalf("IntegrityFailures %+v lacks %s %s", e.svc.IntegrityFailures(), kind, id)
	}
	found = false
	for _, f := range hooked {
		found = found || f.Kind == kind && f.ID == id
	}
	if !found {
		t.Fatalf("OnIntegrityFailure got %+v, lacks %s %s", hooked, kind, id)
	}
	if !strings.Contains(e.log.String(), "INTEGRITY CHECK FAILED") {
		t.Fatal("failure not logged")
	}
}

func TestTamperedCredentialIsNotObeyed(t *testing.T) {
	e, hooked := integrityEnv(t, nil)
	enc, _ := ParsePolicy(`{"version":"2.0","statement":[{"effect":"allow","action":["kms:Encrypt"],"resource":["*"]}]}`)
	cases := []struct {
		name   string
		enable bool // the credential is disabled before tampering
		change func(c *store.Credential)
	}{
		{"policy", false, func(c *store.Credential) {
			c.Policy = `{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]}`
		}},
		{"enabled flag", true, func(c *store.Credential) { c.Enabled = true }},
		{"MAC removed", false, func(c *store.Credential) { c.MAC = nil }},
		{"row of another credential", false, nil},
	}
	other, _, err := e.svc.CreateCredential(adminCtx, "other", AdminPolicy())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			info, _, err := e.svc.CreateCredential(adminCtx, "enc", enc)
			if err != nil {
				t.Fatal(err)
			}
			if c.enable {
				if err := e.svc.SetCredentialEnabled(adminCtx, info.SecretID, false); err != nil {
					t.Fatal(err)
				}
			}
			if c.change != nil {
				e.st.rawCred(info.SecretID, c.change)
			} else { // the admin's row, copied under this SecretId
				src := e.st.creds[other.SecretID]
				e.st.rawCred(info.SecretID, func(r *store.Credential) {
					r.Policy, r.Name, r.MAC, r.Gen = src.Policy, src.Name, src.MAC, src.Gen
				})
			}
			e.restart(t)
			if _, err := e.svc.LookupCredential(adminCtx, info.SecretID); !errors.Is(err, ErrCredentialNotFound) {
				t.Fatalf("tampered credential authenticates: %v", err)
			}
			wantFailure(t, e, hooked(), KindCredential, info.SecretID)
			// An ordinary change does not launder it.
			if err := e.svc.SetCredentialEnabled(adminCtx, info.SecretID, true); !errors.Is(err, ErrIntegrity) {
				t.Fatalf("EnableCredential of a tampered row: %v, want ErrIntegrity", err)
			}
			if c.name == "MAC removed" {
				// Deleting the row ends the failure: nothing obeys it.
				if err := e.svc.DeleteCredential(adminCtx, info.SecretID); err != nil {
					t.Fatal(err)
				}
				if fs := e.svc.IntegrityFailures(); len(fs) != 0 {
					t.Fatalf("failures after deleting the row: %+v", fs)
				}
				return
			}
			// The other credential is untouched.
			if _, err := e.svc.LookupCredential(adminCtx, other.SecretID); err != nil {
				t.Fatal(err)
			}
			// The administrator's reseal accepts the row as it is.
			if err := e.svc.ResealCredential(adminCtx, info.SecretID); err != nil {
				t.Fatal(err)
			}
			if len(e.svc.IntegrityFailures()) != 0 {
				t.Fatalf("failures after reseal: %+v", e.svc.IntegrityFailures())
			}
			e.restart(t)
			if len(e.svc.IntegrityFailures()) != 0 {
				t.Fatalf("failures after reseal and restart: %+v", e.svc.IntegrityFailures())
			}
		})
	}
}

func TestTamperedKeyIsNotObeyed(t *testing.T) {
	now := time.Now().UTC()
	e, hooked := integrityEnv(t, func() time.Time { return now })
	victim := e.create(t, "victim")
	other := e.create(t, "other")
	for _, c := range []struct {
		name   string
		setup  func(id string)
		change func(k *store.Key)
	}{
		{"state Disabled to Enabled", func(id string) { e.svc.DisableKey(adminCtx, id) }, func(k *store.Key) { k.State = StateEnabled }},
		{"past deletion date", func(id string) {
			e.svc.DisableKey(adminCtx, id)
			e.svc.ScheduleKeyDeletion(adminCtx, id, 7)
		}, func(k *store.Key) { k.DeletionDate = now.Add(-time.Hour) }},
		{"token object id", nil, func(k *store.Key) { k.Versions[0].ObjectID = credKEKObjectID }},
		{"row copied from another key", nil, func(k *store.Key) {
			src := e.st.keys[other.KeyID]
			id := k.ID
			*k = cloneKey(src)
			k.ID = id
		}},
		{"generation lowered", nil, func(k *store.Key) { k.Gen = 0 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := e.create(t, strings.ReplaceAll(c.name, " ", "-"))
			if c.setup != nil {
				c.setup(k.KeyID)
			}
			before := e.st.keys[k.KeyID]
			e.st.rawKey(k.KeyID, c.change)
			e.restart(t)
			if _, err := e.svc.Encrypt(adminCtx, EncryptInput{KeyID: k.KeyID, Plaintext: []byte("x")}); !errors.Is(err, ErrKeyDisabled) {
				t.Fatalf("Encrypt with a tampered key: %v", err)
			}
			wantFailure(t, e, hooked(), KindKey, k.KeyID)
			if err := e.svc.EnableKey(adminCtx, k.KeyID); !errors.Is(err, ErrIntegrity) {
				t.Fatalf("EnableKey of a tampered key: %v, want ErrIntegrity", err)
			}
			if _, err := e.svc.Maintain(adminCtx); err != nil {
				t.Logf("Maintain: %v", err)
			}
			for _, v := range before.Versions {
				if !e.h.has(v.ObjectID) {
					t.Fatalf("token object %x destroyed", v.ObjectID)
				}
			}
			if !e.h.has(credKEKObjectID) {
				t.Fatal("credentials key destroyed")
			}
			// The other keys still work.
			e.encrypt(t, victim.KeyID, []byte("x"), "")
			// Put the honest row back and reseal it.
			e.st.rawKey(k.KeyID, func(r *store.Key) { *r = cloneKey(before) })
			if err := e.svc.ResealKey(adminCtx, k.KeyID); err != nil {
				t.Fatal(err)
			}
			if _, err := e.svc.DescribeKey(adminCtx, k.KeyID); err != nil {
				t.Fatal(err)
			}
			if fs := e.svc.IntegrityFailures(); len(fs) != 0 {
				t.Fatalf("failures after reseal: %+v", fs)
			}
		})
	}
}

// TestPurgeRefusesARolledBackRow: a key scheduled for deletion whose row
// is replaced, while the service runs, by an older validly sealed one.
func TestPurgeRefusesARolledBackRow(t *testing.T) {
	now := time.Now().UTC()
	e, hooked := integrityEnv(t, func() time.Time { return now })
	k := e.create(t, "k")
	if err := e.svc.DisableKey(adminCtx, k.KeyID); err != nil {
		t.Fatal(err)
	}
	old := e.st.keys[k.KeyID] // Disabled, gen 2, validly sealed
	if _, err := e.svc.ScheduleKeyDeletion(adminCtx, k.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	e.st.rawKey(k.KeyID, func(r *store.Key) { *r = cloneKey(old) })
	now = now.Add(8 * 24 * time.Hour)
	rep, err := e.svc.Maintain(adminCtx)
	if !errors.Is(err, ErrIntegrity) || len(rep.Purged) != 0 {
		t.Fatalf("Maintain over a rolled-back row: %+v %v", rep, err)
	}
	if !e.h.has(old.Versions[0].ObjectID) {
		t.Fatal("token object destroyed")
	}
	wantFailure(t, e, hooked(), KindKey, k.KeyID)
}

func TestForgedIntentIsNotObeyed(t *testing.T) {
	e, hooked := integrityEnv(t, nil)
	k := e.create(t, "k")
	obj := e.st.keys[k.KeyID].Versions[0].ObjectID
	for _, p := range []store.PendingObject{
		{ObjectID: credKEKObjectID, KeyID: "x", Version: 1},                        // no MAC
		{ObjectID: obj, KeyID: "00000000-0000-4000-8000-000000000000", Version: 1}, // no MAC
	} {
		e.st.AddPendingObject(adminCtx, p)
	}
	e.restart(t)
	if !e.h.has(credKEKObjectID) || !e.h.has(obj) {
		t.Fatal("a forged intent destroyed a token object")
	}
	wantFailure(t, e, hooked(), KindIntent, fmt.Sprintf("%x", credKEKObjectID))
	e.encrypt(t, k.KeyID, []byte("x"), "")
	// A sealed intent naming a reserved object is refused too.
	if err := e.svc.ResealIntent(adminCtx, fmt.Sprintf("%x", credKEKObjectID)); err == nil {
		t.Fatal("reseal of an intent naming the credentials key succeeded")
	}
}

// TestUpgradeSealsOnce: rows written before MACs existed are sealed at the
// start that creates the MAC key, and only then.
func TestUpgradeSealsOnce(t *testing.T) {
	e, hooked := integrityEnv(t, nil)
	k := e.create(t, "k")
	info, _, err := e.svc.CreateCredential(adminCtx, "c", AdminPolicy())
	if err != nil {
		t.Fatal(err)
	}
	// What an older release leaves: no MACs, no MAC key on the token.
	e.st.rawKey(k.KeyID, func(r *store.Key) {
		r.MAC, r.Gen = nil, 0
		for i := range r.Versions {
			r.Versions[i].MAC = nil
		}
	})
	e.st.rawCred(info.SecretID, func(c *store.Credential) { c.MAC, c.Gen = nil, 0 })
	delete(e.h.macKeys, string(macKeyObjectID))
	e.restart(t)
	if !strings.Contains(e.log.String(), "upgrade: computed the MACs") {
		t.Fatal("upgrade sealing not logged")
	}
	if fs := e.svc.IntegrityFailures(); len(fs) != 0 || len(hooked()) != 0 {
		t.Fatalf("failures after an honest upgrade: %+v", fs)
	}
	e.encrypt(t, k.KeyID, []byte("x"), "")
	if _, err := e.svc.LookupCredential(adminCtx, info.SecretID); err != nil {
		t.Fatal(err)
	}
	// Later, a row without a MAC is a failure: erasing a MAC does not
	// get a forged row sealed.
	e.st.rawKey(k.KeyID, func(r *store.Key) { r.MAC = nil; r.State = StateEnabled })
	e.restart(t)
	wantFailure(t, e, hooked(), KindKey, k.KeyID)
}

func TestResealIntent(t *testing.T) {
	e, _ := integrityEnv(t, nil)
	obj := []byte("uncommitted-obj1")
	e.h.GenerateKey(adminCtx, obj, "x/v1")
	p := store.PendingObject{ObjectID: obj, KeyID: "00000000-0000-4000-8000-000000000001", Version: 1}
	e.st.AddPendingObject(adminCtx, p) // no MAC: not obeyed
	e.restart(t)
	if !e.h.has(obj) || e.st.pendingCount() != 1 {
		t.Fatal("an unsealed intent was acted on")
	}
	id := fmt.Sprintf("%x", obj)
	if err := e.svc.ResealIntent(adminCtx, id); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.ResealIntent(adminCtx, "00ff"); err == nil {
		t.Fatal("reseal of an absent intent succeeded")
	}
	e.restart(t) // Recover now rolls the uncommitted object back
	if e.h.has(obj) || e.st.pendingCount() != 0 || len(e.svc.IntegrityFailures()) != 0 {
		t.Fatalf("resealed intent not acted on: object %v, intents %d, failures %+v", e.h.has(obj), e.st.pendingCount(), e.svc.IntegrityFailures())
	}
	// Without kms:Reseal, no reseal.
	ro := WithPrincipal(adminCtx, &Principal{Name: "ro", Policy: Policy{}})
	if err := e.svc.ResealKey(ro, "00000000-0000-4000-8000-000000000001"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("ResealKey without permission: %v", err)
	}
}
