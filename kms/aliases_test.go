package kms

import (
	"context"
	"testing"
)

// The AWS API's alias rules in the domain: a key has one alias; a
// placeholder may be replaced, a real alias only when asked; each change
// is authorised as the action it is given.
func TestSetAliasAndPlaceholders(t *testing.T) {
	e := newEnv(t, Config{})
	ph := NewPlaceholderAlias()
	if !IsPlaceholderAlias(ph) || IsPlaceholderAlias("key-"+ph[4:35]) || IsPlaceholderAlias("key-"+ph[4:35]+"G") || IsPlaceholderAlias("billing") {
		t.Fatalf("placeholder recognition: %q", ph)
	}
	if NewPlaceholderAlias() == ph {
		t.Fatal("two placeholders alike")
	}
	a := e.create(t, ph)
	b := e.create(t, "billing")
	if id, err := e.svc.KeyIDForAlias(ph); err != nil || id != a.KeyID {
		t.Fatalf("KeyIDForAlias(placeholder) = %q, %v", id, err)
	}
	if _, err := e.svc.KeyIDForAlias("Billing"); !errIs(err, ErrKeyNotFound) {
		t.Fatalf("aliases compare case-sensitively: %v", err)
	}
	// A placeholder is replaced; a real alias is not, unless asked.
	if err := e.svc.SetAlias(adminCtx, "kms:CreateAlias", a.KeyID, "app", false); err != nil {
		t.Fatalf("SetAlias over a placeholder: %v", err)
	}
	if err := e.svc.SetAlias(adminCtx, "kms:CreateAlias", b.KeyID, "second", false); !errIs(err, ErrKeyHasAlias) {
		t.Fatalf("SetAlias over a real alias: %v", err)
	}
	if err := e.svc.SetAlias(adminCtx, "kms:CreateAlias", b.KeyID, "billing", false); err != nil {
		t.Fatalf("SetAlias to the key's own alias: %v", err)
	}
	if err := e.svc.SetAlias(adminCtx, "kms:CreateAlias", b.KeyID, "app", false); !errIs(err, ErrKeyHasAlias) && !errIs(err, ErrAliasExists) {
		t.Fatalf("SetAlias of another key's alias: %v", err)
	}
	if err := e.svc.SetAlias(adminCtx, "kms:DeleteAlias", b.KeyID, NewPlaceholderAlias(), true); err != nil {
		t.Fatalf("SetAlias replacing a real alias: %v", err)
	}
	if _, err := e.svc.KeyIDForAlias("billing"); !errIs(err, ErrKeyNotFound) {
		t.Fatalf("a replaced alias still resolves: %v", err)
	}
	// Authorisation is the action given, on the key.
	only := func(action, resource string) context.Context {
		return WithPrincipal(context.Background(), &Principal{SecretID: "AKIDx", Policy: mustPolicy(t, pol(`{"effect":"allow","action":"`+action+`","resource":"`+resource+`"}`))})
	}
	if err := e.svc.SetAlias(only("kms:UpdateAlias", a.KeyID), "kms:CreateAlias", b.KeyID, "x", false); !errIs(err, ErrUnauthorized) {
		t.Fatalf("CreateAlias with kms:UpdateAlias only: %v", err)
	}
	if err := e.svc.SetAlias(only("kms:CreateAlias", b.KeyID), "kms:CreateAlias", b.KeyID, "x", false); err != nil {
		t.Fatalf("CreateAlias with kms:CreateAlias: %v", err)
	}
	if _, err := e.svc.ListAliases(only("kms:ListKeys", "*"), ListKeysInput{}); !errIs(err, ErrUnauthorized) {
		t.Fatalf("ListAliases with kms:ListKeys: %v", err)
	}
	if res, err := e.svc.ListAliases(only("kms:ListAliases", "*"), ListKeysInput{}); err != nil || res.TotalCount != 2 {
		t.Fatalf("ListAliases: %+v %v", res, err)
	}
	in := GenerateDataKeyInput{KeyID: a.KeyID, KeySpec: "AES_256"}
	if _, err := e.svc.GenerateDataKeyWithoutPlaintext(only("kms:GenerateDataKey", a.KeyID), in); !errIs(err, ErrUnauthorized) {
		t.Fatalf("GenerateDataKeyWithoutPlaintext with kms:GenerateDataKey: %v", err)
	}
	res, err := e.svc.GenerateDataKeyWithoutPlaintext(only("kms:GenerateDataKeyWithoutPlaintext", a.KeyID), in)
	if err != nil || res.Plaintext != nil || res.CiphertextBlob() == "" {
		t.Fatalf("GenerateDataKeyWithoutPlaintext: %+v %v", res, err)
	}
	if d, err := e.decrypt(res.CiphertextBlob(), ""); err != nil || len(d.Plaintext) != 32 {
		t.Fatalf("Decrypt of a data key made without plaintext: %v", err)
	}
}

// The AWS ScheduleKeyDeletion: an Enabled key is disabled and scheduled in
// one change, with kms:DisableKey as well as kms:ScheduleKeyDeletion.
func TestDisableAndScheduleKeyDeletion(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.create(t, "doomed")
	only := func(actions string) context.Context {
		return WithPrincipal(context.Background(), &Principal{SecretID: "AKIDx", Policy: mustPolicy(t, pol(`{"effect":"allow","action":[`+actions+`],"resource":"*"}`))})
	}
	if _, err := e.svc.DisableAndScheduleKeyDeletion(only(`"kms:ScheduleKeyDeletion"`), k.KeyID, 7); !errIs(err, ErrUnauthorized) {
		t.Fatalf("scheduling an Enabled key without kms:DisableKey: %v", err)
	}
	if md, err := e.svc.DescribeKey(adminCtx, k.KeyID); err != nil || md.KeyState != StateEnabled {
		t.Fatalf("a refused schedule changed the key: %+v %v", md, err)
	}
	if _, err := e.svc.DisableAndScheduleKeyDeletion(adminCtx, k.KeyID, 6); !errIs(err, ErrInvalidPendingWindow) {
		t.Fatalf("6 days: %v", err)
	}
	md, err := e.svc.DisableAndScheduleKeyDeletion(only(`"kms:ScheduleKeyDeletion","kms:DisableKey"`), k.KeyID, 7)
	if err != nil || md.KeyState != StatePendingDelete || md.DeletionDate.IsZero() {
		t.Fatalf("scheduling an Enabled key: %+v %v", md, err)
	}
	if md, err := e.svc.CancelKeyDeletion(adminCtx, k.KeyID); err != nil || md.KeyState != StateDisabled {
		t.Fatalf("cancel: %+v %v", md, err)
	}
	// A Disabled key needs kms:ScheduleKeyDeletion only.
	if _, err := e.svc.DisableAndScheduleKeyDeletion(only(`"kms:ScheduleKeyDeletion"`), k.KeyID, 7); err != nil {
		t.Fatalf("scheduling a Disabled key: %v", err)
	}
}

// MoveAlias moves a key's alias to another key in one store transaction:
// afterwards the alias names the target and the former key holds a
// placeholder; a failed move, at any point, leaves both keys as they were,
// in the store and in memory, and the alias still names its key.
func TestMoveAlias(t *testing.T) {
	e := newEnv(t, Config{})
	a := e.create(t, "app")
	b := e.create(t, NewPlaceholderAlias())
	c := e.create(t, "other")
	holderOf := func(alias string) string {
		id, err := e.svc.KeyIDForAlias(alias)
		if err != nil {
			return ""
		}
		return id
	}
	unchanged := func(t *testing.T) {
		t.Helper()
		if got := holderOf("app"); got != a.KeyID {
			t.Fatalf("app names %q, want %s", got, a.KeyID)
		}
		for _, k := range []KeyMetadata{a, b, c} {
			stored, err := e.st.GetKey(adminCtx, k.KeyID)
			if err != nil || stored.Alias != k.Alias {
				t.Fatalf("stored alias of %s: %q %v, want %q", k.KeyID, stored.Alias, err, k.Alias)
			}
		}
	}
	// The second key's write fails: the first is not written either.
	e.st.failUpdate(2)
	if err := e.svc.MoveAlias(adminCtx, "kms:UpdateAlias", a.KeyID, b.KeyID, "app"); !errIs(err, ErrInternal) && !errIs(err, ErrUnavailable) {
		t.Fatalf("move with a failing second write: %v", err)
	}
	e.st.updateErr = nil
	unchanged(t)
	for _, bad := range []struct {
		name            string
		from, to, name2 string
		want            error
	}{
		{"target has a real alias", a.KeyID, c.KeyID, "app", ErrKeyHasAlias},
		{"source does not hold the alias", c.KeyID, b.KeyID, "app", ErrKeyNotFound},
		{"malformed key id", a.KeyID, "not-a-key", "app", ErrInvalidKeyID},
	} {
		if err := e.svc.MoveAlias(adminCtx, "kms:UpdateAlias", bad.from, bad.to, bad.name2); !errIs(err, bad.want) {
			t.Fatalf("%s: %v, want %v", bad.name, err, bad.want)
		}
		unchanged(t)
	}
	only := WithPrincipal(context.Background(), &Principal{SecretID: "AKIDx", Policy: mustPolicy(t, pol(`{"effect":"allow","action":"kms:UpdateAlias","resource":"`+b.KeyID+`"}`))})
	if err := e.svc.MoveAlias(only, "kms:UpdateAlias", a.KeyID, b.KeyID, "app"); !errIs(err, ErrUnauthorized) {
		t.Fatalf("move authorised on the target only: %v", err)
	}
	unchanged(t)

	if err := e.svc.MoveAlias(adminCtx, "kms:UpdateAlias", a.KeyID, b.KeyID, "app"); err != nil {
		t.Fatalf("move: %v", err)
	}
	if got := holderOf("app"); got != b.KeyID {
		t.Fatalf("app names %q after the move, want %s", got, b.KeyID)
	}
	sa, _ := e.st.GetKey(adminCtx, a.KeyID)
	sb, _ := e.st.GetKey(adminCtx, b.KeyID)
	if !IsPlaceholderAlias(sa.Alias) || sb.Alias != "app" {
		t.Fatalf("stored aliases after the move: %q and %q", sa.Alias, sb.Alias)
	}
	if got := holderOf(b.Alias); got != "" {
		t.Fatalf("the target's old placeholder still names %q", got)
	}
	// Moving an alias to the key it names changes nothing, and is still
	// authorised.
	if err := e.svc.MoveAlias(only, "kms:DisableKey", b.KeyID, b.KeyID, "app"); !errIs(err, ErrUnauthorized) {
		t.Fatalf("move to the same key under another action: %v", err)
	}
	if err := e.svc.MoveAlias(only, "kms:UpdateAlias", b.KeyID, b.KeyID, "app"); err != nil || holderOf("app") != b.KeyID {
		t.Fatalf("move to the same key: %v, app names %q", err, holderOf("app"))
	}
	// The new state survives a restart (the rows verify).
	e.restart(t)
	if got := holderOf("app"); got != b.KeyID {
		t.Fatalf("after a restart app names %q, want %s", got, b.KeyID)
	}
}
