package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestCredentialLifecycle(t *testing.T) {
	e := newEnv(t, Config{})
	ro, err := ParsePolicy(`{"version":"2.0","statement":[{"effect":"allow","action":["kms:Encrypt"],"resource":["*"]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	info, key, err := e.svc.CreateCredential(adminCtx, "app1", ro)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(info.SecretID, "AKID") || len(info.SecretID) != 36 || len(key) != 32 {
		t.Fatalf("SecretId %q SecretKey length %d", info.SecretID, len(key))
	}
	c, err := e.svc.LookupCredential(adminCtx, info.SecretID)
	if err != nil || c.SecretKey != key || c.Principal.Name != "app1" {
		t.Fatalf("lookup: %+v %v", c, err)
	}
	// The store never holds the SecretKey in clear.
	rec := e.st.creds[info.SecretID]
	if bytes.Contains(rec.SealedKey, []byte(key)) || strings.Contains(rec.Policy, key) {
		t.Fatal("SecretKey stored in clear")
	}
	// The credential's own policy is enforced.
	ctx := WithPrincipal(context.Background(), c.Principal)
	if _, _, err := e.svc.CreateCredential(ctx, "nope", AdminPolicy()); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("non-admin CreateCredential: %v", err)
	}
	if _, err := e.svc.CreateKey(ctx, CreateKeyInput{Alias: "x"}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("non-admin CreateKey: %v", err)
	}

	// A restart reloads and unseals it.
	e.restart(t)
	if c, err := e.svc.LookupCredential(adminCtx, info.SecretID); err != nil || c.SecretKey != key {
		t.Fatalf("after restart: %v", err)
	}
	// Disabled: stops at once; enabled again: works.
	if err := e.svc.SetCredentialEnabled(adminCtx, info.SecretID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.LookupCredential(adminCtx, info.SecretID); !errors.Is(err, ErrCredentialNotFound) {
		t.Fatalf("disabled: %v", err)
	}
	e.restart(t)
	if _, err := e.svc.LookupCredential(adminCtx, info.SecretID); !errors.Is(err, ErrCredentialNotFound) {
		t.Fatalf("disabled after restart: %v", err)
	}
	if err := e.svc.SetCredentialEnabled(adminCtx, info.SecretID, true); err != nil {
		t.Fatal(err)
	}
	// Policy update takes effect at once.
	if err := e.svc.UpdateCredentialPolicy(adminCtx, info.SecretID, AdminPolicy()); err != nil {
		t.Fatal(err)
	}
	c, _ = e.svc.LookupCredential(adminCtx, info.SecretID)
	if !c.Principal.Policy.Allows("kms:CreateKey", "*") {
		t.Fatal("policy update not visible")
	}
	list, err := e.svc.ListCredentials(adminCtx)
	if err != nil || len(list) != 1 || list[0].SecretID != info.SecretID {
		t.Fatalf("list %+v %v", list, err)
	}
	if err := e.svc.DeleteCredential(adminCtx, info.SecretID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.LookupCredential(adminCtx, info.SecretID); !errors.Is(err, ErrCredentialNotFound) {
		t.Fatalf("deleted: %v", err)
	}
	if err := e.svc.DeleteCredential(adminCtx, info.SecretID); !errors.Is(err, ErrCredentialNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

func TestImportCredential(t *testing.T) {
	e := newEnv(t, Config{})
	tests := []struct {
		name, id, key string
		err           error
	}{
		{"ok", "AKIDdev0000000000000000000000000001", "devsecretkey0000000000000000000a", nil},
		{"duplicate", "AKIDdev0000000000000000000000000001", "devsecretkey0000000000000000000a", ErrCredentialExists},
		{"short id", "AKID1", "devsecretkey0000000000000000000a", ErrInvalidCredential},
		{"id with symbols", "AKID/../../000000000000000", "devsecretkey0000000000000000000a", ErrInvalidCredential},
		{"short key", "AKIDdev0000000000000000000000000002", "short", ErrInvalidCredential},
		{"key with space", "AKIDdev0000000000000000000000000002", "devsecret key000000000000000000", ErrInvalidCredential},
	}
	for _, tt := range tests {
		_, err := e.svc.ImportCredential(adminCtx, "dev", tt.id, tt.key, AdminPolicy())
		if tt.err == nil && err != nil || tt.err != nil && !errors.Is(err, tt.err) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.err)
		}
	}
	if _, err := e.svc.ImportCredential(adminCtx, "bad name!", "AKIDdev0000000000000000000000000003", "devsecretkey0000000000000000000a", AdminPolicy()); !errors.Is(err, ErrInvalidCredential) {
		t.Errorf("bad name: %v", err)
	}
	if _, err := e.svc.ImportCredential(adminCtx, "dev", "AKIDdev0000000000000000000000000003", "devsecretkey0000000000000000000a", Policy{}); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("empty policy: %v", err)
	}
}

func TestSealedKeyCannotMoveBetweenCredentials(t *testing.T) {
	e := newEnv(t, Config{})
	a, _, err := e.svc.CreateCredential(adminCtx, "a", AdminPolicy())
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := e.svc.CreateCredential(adminCtx, "b", AdminPolicy())
	if err != nil {
		t.Fatal(err)
	}
	// Swap b's sealed key for a's in the database: b must no longer load.
	rb := e.st.creds[b.SecretID]
	rb.SealedKey = e.st.creds[a.SecretID].SealedKey
	e.st.creds[b.SecretID] = rb
	e.restart(t)
	if _, err := e.svc.LookupCredential(adminCtx, b.SecretID); !errors.Is(err, ErrCredentialNotFound) {
		t.Fatalf("swapped sealed key authenticates: %v", err)
	}
	if _, err := e.svc.LookupCredential(adminCtx, a.SecretID); err != nil {
		t.Fatalf("untouched credential: %v", err)
	}
}

// A resync of the cache (cluster.go) runs while credentials are created
// and looked up: under -race this finds any read of the credential map
// outside its lock (the resync used to read the live map unlocked, which
// a concurrent CreateCredential writes). Afterwards every credential
// created is served.
func TestResyncRacesCredentialChanges(t *testing.T) {
	e := newEnv(t, Config{})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = e.svc.resyncAll(adminCtx) // "changed during the resync" is expected now and then
		}
	})
	var ids []string
	for i := range 40 {
		info, _, err := e.svc.CreateCredential(adminCtx, fmt.Sprintf("c%d", i), AdminPolicy())
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.SecretID)
		if _, err := e.svc.LookupCredential(adminCtx, info.SecretID); err != nil {
			t.Fatalf("lookup right after create: %v", err)
		}
	}
	close(stop)
	wg.Wait()
	if err := e.svc.resyncAll(adminCtx); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := e.svc.LookupCredential(adminCtx, id); err != nil {
			t.Fatalf("%s after the resyncs: %v", id, err)
		}
	}
}
