package kms

import (
	"context"
	"errors"
	"fmt"
	"hsmkms/store"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const (
	keyA = "aaaaaaaa-1111-4111-8111-111111111111"
	keyB = "bbbbbbbb-2222-4222-8222-222222222222"
	keyC = "cccccccc-3333-4333-8333-333333333333"
)

func mustPolicy(t *testing.T, doc string) Policy {
	t.Helper()
	p, err := ParsePolicy(doc)
	if err != nil {
		t.Fatalf("ParsePolicy(%s): %v", doc, err)
	}
	return p
}

func pol(statements string) string { return `{"version":"2.0","statement":[` + statements + `]}` }

// Key-action wildcards never match an administrative action; only the
// kms-admin: names, kms-admin:* and the bare * do.
func TestPolicyAdminNamespace(t *testing.T) {
	tests := []struct {
		action    string
		wantAdmin bool // allows every administrative action (else none)
		wantKeys  bool // allows every key action (else none)
	}{
		{`"kms:*"`, false, true},
		{`"kms:Update*"`, false, false},
		{`"kms:Create*"`, false, false},
		{`"kms:Enable*"`, false, false},
		{`"kms:Disable*"`, false, false},
		{`"kms:Delete*"`, false, false},
		{`"kms:List*"`, false, false},
		{`"KMS:*"`, false, true},
		{`"kms-admin:*"`, true, false},
		{`"KMS-Admin:*"`, true, false},
		{`"*"`, true, true},
		{`["kms:*","kms-admin:*"]`, true, true},
	}
	for _, tt := range tests {
		// Matching, whether or not validation would accept the pattern.
		var actions stringList
		if err := actions.UnmarshalJSON([]byte(tt.action)); err != nil {
			t.Fatal(err)
		}
		p := Policy{Version: "2.0", Statement: []Statement{{Effect: "allow", Action: actions, Resource: stringList{"*"}}}}
		for _, a := range AdminActions() {
			if got := p.Allows(a, "*"); got != tt.wantAdmin {
				t.Errorf("%s: Allows(%s) = %v, want %v", tt.action, a, got, tt.wantAdmin)
			}
		}
		for _, a := range keyActionsOnKeys {
			if got := p.Allows(a, keyA); got != tt.wantKeys && (tt.wantKeys || !matchAction(strings.Trim(tt.action, `"`), a)) {
				t.Errorf("%s: Allows(%s) = %v, want %v", tt.action, a, got, tt.wantKeys)
			}
		}
	}
	admin := AdminPolicy()
	for _, a := range append(AdminActions(), keyActionsNoKey...) {
		if !admin.Allows(a, "*") {
			t.Errorf("AdminPolicy refuses %s", a)
		}
	}
	for _, a := range keyActionsOnKeys {
		if !admin.Allows(a, keyA) {
			t.Errorf("AdminPolicy refuses %s", a)
		}
	}
	// The old names of the credential actions are not actions any more.
	if err := mustFail(pol(`{"effect":"allow","action":"kms:CreateCredential","resource":"*"}`)); !strings.Contains(err, `write "kms-admin:CreateCredential"`) {
		t.Errorf("kms:CreateCredential: %s", err)
	}
}

func mustFail(doc string) string {
	_, err := ParsePolicy(doc)
	if err == nil {
		return "<accepted>"
	}
	if !errors.Is(err, ErrInvalidPolicy) {
		return "<not ErrInvalidPolicy: " + err.Error() + ">"
	}
	return err.Error()
}

// Policies that could never match, or that name another service, are
// refused when saved, naming the statement and the value.
func TestPolicyValidation(t *testing.T) {
	up := strings.ToUpper(keyB)
	refused := []struct {
		name, stmt, want string
	}{
		{"misspelt action", `{"effect":"deny","action":"kms:Decrpyt","resource":"` + keyB + `"}`, `action "kms:Decrpyt" is not an action`},
		{"wildcard matching nothing", `{"effect":"deny","action":"kms:Decrpyt*","resource":"` + keyB + `"}`, `matches no action`},
		{"kms:Destroy* (no key action is Destroy...)", `{"effect":"allow","action":"kms:Destroy*","resource":"*"}`, `matches no action`},
		{"wildcard in the middle", `{"effect":"deny","action":"kms:*crypt","resource":"` + keyB + `"}`, `only a trailing *`},
		{"wildcard across namespaces", `{"effect":"allow","action":"kms*","resource":"*"}`, `the namespace must be`},
		{"short wildcard", `{"effect":"allow","action":"k*","resource":"*"}`, `the namespace must be`},
		{"other service action", `{"effect":"allow","action":"cvm:*","resource":"*"}`, `the namespace must be`},
		{"key/ without qcs", `{"effect":"deny","action":"kms:Decrypt","resource":"key/` + keyB + `"}`, `write the key id alone`},
		{"upper-case key id", `{"effect":"deny","action":"kms:Decrypt","resource":"` + up + `"}`, `lower case`},
		{"upper-case key id in qcs", `{"effect":"deny","action":"kms:Decrypt","resource":"qcs::kms:gz:uin/1:key/` + up + `"}`, `lower case`},
		{"upper-case prefix", `{"effect":"deny","action":"kms:Decrypt","resource":"BBBB*"}`, `lower case`},
		{"QCS", `{"effect":"deny","action":"kms:Decrypt","resource":"QCS::kms:gz:uin/1:key/` + keyB + `"}`, `write qcs in lower case`},
		{"Key/", `{"effect":"deny","action":"kms:Decrypt","resource":"qcs::kms:gz:uin/1:Key/` + keyB + `"}`, `the last part must be key/`},
		{"trailing slash", `{"effect":"deny","action":"kms:Decrypt","resource":"qcs::kms:gz:uin/1:key/` + keyB + `/"}`, `trailing /`},
		{"trailing slash alone", `{"effect":"deny","action":"kms:Decrypt","resource":"` + keyB + `/"}`, `trailing /`},
		{"empty key", `{"effect":"deny","action":"kms:Decrypt","resource":"qcs::kms:gz:uin/1:key/"}`, `the last part must be key/`},
		{"other service resource", `{"effect":"allow","action":"kms:*","resource":"qcs::cos:gz:uin/1:*"}`, `the service must be kms, not "cos"`},
		{"short qcs", `{"effect":"allow","action":"kms:*","resource":"qcs::kms:key/` + keyB + `"}`, `want qcs:<project>:kms`},
		{"not a key id", `{"effect":"allow","action":"kms:Encrypt","resource":"my-key"}`, `is not "*", a key id`},
		{"not a key prefix", `{"effect":"allow","action":"kms:Encrypt","resource":"alias/*"}`, `is not "*", a key id`},
		{"empty resource", `{"effect":"allow","action":"kms:Encrypt","resource":""}`, `is not "*"`},
		{"no-key action on a key", `{"effect":"allow","action":["kms:CreateKey","kms-admin:*"],"resource":"` + keyA + `"}`, `address no key`},
	}
	for _, tt := range refused {
		// Behind a valid statement, so the index counts.
		doc := pol(`{"effect":"allow","action":"kms:Encrypt","resource":"*"},` + tt.stmt)
		got := mustFail(doc)
		if !strings.Contains(got, tt.want) || !strings.Contains(got, "statement[1]") {
			t.Errorf("%s: %s; want statement[1] and %q", tt.name, got, tt.want)
		}
	}
	accepted := []string{
		`{"effect":"allow","action":["kms:Encrypt","kms:decrypt","KMS:Describe*","kms:ReEncrypt"],"resource":["` + keyA + `","aaaa*","qcs::kms:ap-guangzhou:uin/1:key/` + keyB + `","qcs::kms:::key/bb*"]}`,
		`{"effect":"deny","action":"*","resource":"qcs::kms:ap-guangzhou:uin/1:*"}`,
		`{"effect":"allow","action":["kms-admin:CreateCredential","kms-admin:List*"],"resource":"qcs::kms:::key/*"}`,
		`{"effect":"allow","action":["kms:CreateKey","kms:Encrypt"],"resource":"` + keyA + `"}`, // Encrypt can match
		`{"effect":"allow","action":"kms:Encrypt","resource":"` + keyA[:9] + `*"}`,
	}
	for _, st := range accepted {
		if _, err := ParsePolicy(pol(st)); err != nil {
			t.Errorf("refused %s: %v", st, err)
		}
	}
}

// The never-matching forms of before are refused; the forms that match
// do match, and the service of a qcs resource counts.
func TestPolicyResourceMatching(t *testing.T) {
	tests := []struct {
		resource string
		key      string
		want     bool
	}{
		{keyB, keyB, true},
		{keyB, keyA, false},
		{"bbbb*", keyB, true},
		{"bbbb*", "*", false},
		{"*", "*", true},
		{"qcs::kms:gz:uin/1:key/" + keyB, keyB, true},
		{"qcs::kms:gz:uin/1:key/bb*", keyB, true},
		{"qcs::kms:gz:uin/1:key/*", "*", true},
		{"qcs::kms:gz:uin/1:*", keyA, true},
		{"qcs::cos:gz:uin/1:*", keyA, false}, // before: true, the service was ignored
		{"qcs::cos:gz:uin/1:key/" + keyB, keyB, false},
	}
	for _, tt := range tests {
		if got := matchResource(tt.resource, tt.key); got != tt.want {
			t.Errorf("matchResource(%s, %s) = %v, want %v", tt.resource, tt.key, got, tt.want)
		}
	}
}

// covers: the caller's policy must allow everything the new policy allows,
// with wildcards and denies on both sides.
func TestPolicyCovers(t *testing.T) {
	allowAll := `{"effect":"allow","action":["kms:*","kms-admin:*"],"resource":"*"}`
	credAdmin := `{"effect":"allow","action":"kms-admin:*","resource":"*"}`
	tests := []struct {
		name, caller, grant string
		want                bool
	}{
		{"admin grants admin", allowAll, allowAll, true},
		{"admin grants bare *", allowAll, `{"effect":"allow","action":"*","resource":"*"}`, true},
		{"admin grants anything", allowAll, `{"effect":"allow","action":"kms:Encrypt","resource":"` + keyA + `"}`, true},
		{"credential admin grants keys", credAdmin, `{"effect":"allow","action":"kms:Encrypt","resource":"` + keyA + `"}`, false},
		{"credential admin grants itself", credAdmin, credAdmin, true},
		{"credential admin grants a part", credAdmin, `{"effect":"allow","action":"kms-admin:List*","resource":"*"}`, true},
		{"key admin grants admin", `{"effect":"allow","action":"kms:*","resource":"*"}`, allowAll, false},
		{"same key", credAdmin + `,{"effect":"allow","action":"kms:Encrypt","resource":"` + keyA + `"}`, `{"effect":"allow","action":"kms:Encrypt","resource":"` + keyA + `"}`, true},
		{"other key", credAdmin + `,{"effect":"allow","action":"kms:Encrypt","resource":"` + keyA + `"}`, `{"effect":"allow","action":"kms:Encrypt","resource":"` + keyB + `"}`, false},
		{"exact under prefix", `{"effect":"allow","action":"kms:Encrypt","resource":"aaaa*"}`, `{"effect":"allow","action":"kms:Encrypt","resource":"` + keyA + `"}`, true},
		{"prefix under exact", `{"effect":"allow","action":"kms:Encrypt","resource":"` + keyA + `"}`, `{"effect":"allow","action":"kms:Encrypt","resource":"aaaa*"}`, false},
		{"longer prefix under shorter", `{"effect":"allow","action":"kms:Encrypt","resource":"aa*"}`, `{"effect":"allow","action":"kms:Encrypt","resource":"qcs::kms:::key/aaaa*"}`, true},
		{"shorter prefix under longer", `{"effect":"allow","action":"kms:Encrypt","resource":"aaaa*"}`, `{"effect":"allow","action":"kms:Encrypt","resource":"aa*"}`, false},
		{"action wildcard under wildcard", `{"effect":"allow","action":"kms:*","resource":"*"}`, `{"effect":"allow","action":"kms:Describe*","resource":"*"}`, true},
		{"wildcard under narrower wildcard", `{"effect":"allow","action":"kms:Describe*","resource":"*"}`, `{"effect":"allow","action":"kms:D*","resource":"*"}`, false},
		{"no-key action needs *", `{"effect":"allow","action":"kms:*","resource":"` + keyA + `"}`, `{"effect":"allow","action":"kms:CreateKey","resource":"*"}`, false},
		{"caller deny respected", allowAll + `,{"effect":"deny","action":"kms:Decrypt","resource":"` + keyB + `"}`, allowAll, false},
		{"caller deny copied", allowAll + `,{"effect":"deny","action":"kms:Decrypt","resource":"` + keyB + `"}`, allowAll + `,{"effect":"deny","action":"kms:Decrypt","resource":"` + keyB + `"}`, true},
		{"caller deny widened by grant deny", allowAll + `,{"effect":"deny","action":"kms:Decrypt","resource":"` + keyB + `"}`, allowAll + `,{"effect":"deny","action":"kms:D*","resource":"bb*"}`, true},
		{"caller prefix deny, grant exact deny", allowAll + `,{"effect":"deny","action":"kms:Decrypt","resource":"bb*"}`, allowAll + `,{"effect":"deny","action":"kms:Decrypt","resource":"` + keyB + `"}`, false},
		{"caller deny on admin action", allowAll + `,{"effect":"deny","action":"kms-admin:DeleteCredential","resource":"*"}`, allowAll, false},
		{"caller deny everything on a key, grant elsewhere", allowAll + `,{"effect":"deny","action":"*","resource":"` + keyC + `"}`, `{"effect":"allow","action":"kms:*","resource":["` + keyA + `","bb*"]}`, true},
		{"caller deny on key prefix, grant all keys", allowAll + `,{"effect":"deny","action":"kms:Encrypt","resource":"cc*"}`, `{"effect":"allow","action":"kms:Encrypt","resource":"` + keyA + `"}`, true},
		{"fresh key not covered", `{"effect":"allow","action":"kms:Encrypt","resource":["` + keyA + `","bb*"]}`, `{"effect":"allow","action":"kms:Encrypt","resource":"*"}`, false},
		{"grant deny everything", `{"effect":"allow","action":"kms:Encrypt","resource":"` + keyA + `"}`, `{"effect":"allow","action":"*","resource":"*"},{"effect":"deny","action":"*","resource":"*"}`, true},
		{"grant deny all but one prefix", `{"effect":"allow","action":"kms:Encrypt","resource":"aa*"}`, `{"effect":"allow","action":"kms:Encrypt","resource":"*"},{"effect":"deny","action":"kms:Encrypt","resource":["0*","1*","2*","3*","4*","5*","6*","7*","8*","9*","a0*","a1*","a2*","a3*","a4*","a5*","a6*","a7*","a8*","a9*","ab*","ac*","ad*","ae*","af*","b*","c*","d*","e*","f*"]}`, true},
		{"grant deny all but two prefixes", `{"effect":"allow","action":"kms:Encrypt","resource":"aa*"}`, `{"effect":"allow","action":"kms:Encrypt","resource":"*"},{"effect":"deny","action":"kms:Encrypt","resource":["0*","1*","2*","3*","4*","5*","6*","7*","8*","9*","a0*","a1*","a2*","a3*","a4*","a5*","a6*","a7*","a8*","a9*","ac*","ad*","ae*","af*","b*","c*","d*","e*","f*"]}`, false},
	}
	for _, tt := range tests {
		caller, grant := mustPolicy(t, pol(tt.caller)), mustPolicy(t, pol(tt.grant))
		a, r, ok, err := covers(caller, grant)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if ok != tt.want {
			t.Errorf("%s: covers = %v (%s on %s), want %v", tt.name, ok, a, r, tt.want)
		}
		if !ok && (!grant.Allows(a, r) || caller.Allows(a, r)) {
			t.Errorf("%s: the witness %s on %s is wrong", tt.name, a, r)
		}
	}
}

// Every action the service authorises is a listed action, so covers and
// validation know it.
func TestEveryAuthorizedActionIsListed(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	known := append(KeyActions(), AdminActions()...)
	re := regexp.MustCompile(`"(kms(?:-admin)?:[A-Za-z]+)"`)
	seen := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || strings.HasPrefix(f, "policy") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			seen++
			if !slices.Contains(known, m[1]) {
				t.Errorf("%s: %s is authorised but not listed in policy.go", f, m[1])
			}
		}
	}
	if seen < 20 {
		t.Fatalf("found only %d action names: the scan is broken", seen)
	}
}

// A credential cannot change its own policy or state, nor grant or manage
// more than it holds; administrators can do everything else.
func TestCredentialAdministrationLimits(t *testing.T) {
	e := newEnv(t, Config{})
	mk := func(name, doc string) (CredentialInfo, context.Context) {
		t.Helper()
		info, _, err := e.svc.CreateCredential(adminCtx, name, mustPolicy(t, doc))
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		c, err := e.svc.LookupCredential(adminCtx, info.SecretID)
		if err != nil {
			t.Fatal(err)
		}
		return info, WithPrincipal(context.Background(), c.Principal)
	}
	admin, adminC := mk("admin2", pol(`{"effect":"allow","action":["kms:*","kms-admin:*"],"resource":"*"}`))
	keyAdmin, keyAdminC := mk("keyadmin", pol(`{"effect":"allow","action":["kms:Update*","kms:Create*","kms:Enable*","kms:Disable*","kms:List*","kms:Describe*"],"resource":"*"}`))
	mgr, mgrC := mk("manager", pol(`{"effect":"allow","action":"kms-admin:*","resource":"*"},{"effect":"allow","action":["kms:Encrypt","kms:Decrypt"],"resource":"aa*"},{"effect":"deny","action":"kms:Decrypt","resource":"`+keyA+`"}`))
	app, _ := mk("app", pol(`{"effect":"allow","action":"kms:Encrypt","resource":"`+keyA+`"}`))
	off, _ := mk("off", pol(`{"effect":"allow","action":"kms:Encrypt","resource":"`+keyA+`"}`))
	if err := e.svc.SetCredentialEnabled(adminCtx, off.SecretID, false); err != nil {
		t.Fatal(err)
	}
	full := AdminPolicy()
	narrow := mustPolicy(t, pol(`{"effect":"allow","action":"kms:Encrypt","resource":"`+keyA+`"}`))
	wider := mustPolicy(t, pol(`{"effect":"allow","action":["kms:Encrypt","kms:Decrypt"],"resource":"aa*"}`)) // Decrypt on keyA: mgr is denied it

	tests := []struct {
		name string
		do   func() error
		want error // nil: allowed
	}{
		// Key-action wildcards grant nothing administrative.
		{"kms:Update* updates its own policy", func() error { return e.svc.UpdateCredentialPolicy(keyAdminC, keyAdmin.SecretID, full) }, ErrUnauthorized},
		{"kms:Update* updates another's policy", func() error { return e.svc.UpdateCredentialPolicy(keyAdminC, app.SecretID, full) }, ErrUnauthorized},
		{"kms:Create* creates a credential", func() error { _, _, err := e.svc.CreateCredential(keyAdminC, "x", narrow); return err }, ErrUnauthorized},
		{"kms:Enable* enables a credential", func() error { return e.svc.SetCredentialEnabled(keyAdminC, off.SecretID, true) }, ErrUnauthorized},
		{"kms:Disable* disables an administrator", func() error { return e.svc.SetCredentialEnabled(keyAdminC, admin.SecretID, false) }, ErrUnauthorized},
		{"kms:Describe* deletes an administrator", func() error { return e.svc.DeleteCredential(keyAdminC, admin.SecretID) }, ErrUnauthorized},
		{"kms:List* lists credentials", func() error { _, err := e.svc.ListCredentials(keyAdminC); return err }, ErrUnauthorized},
		// A credential manager cannot grant or touch more than it holds.
		{"manager creates a wider credential", func() error { _, _, err := e.svc.CreateCredential(mgrC, "x", wider); return err }, ErrExceedsCaller},
		{"manager creates an administrator", func() error { _, _, err := e.svc.CreateCredential(mgrC, "x", full); return err }, ErrExceedsCaller},
		{"manager widens app", func() error { return e.svc.UpdateCredentialPolicy(mgrC, app.SecretID, wider) }, ErrExceedsCaller},
		{"manager disables an administrator", func() error { return e.svc.SetCredentialEnabled(mgrC, admin.SecretID, false) }, ErrExceedsCaller},
		{"manager deletes an administrator", func() error { return e.svc.DeleteCredential(mgrC, admin.SecretID) }, ErrExceedsCaller},
		{"manager narrows an administrator", func() error { return e.svc.UpdateCredentialPolicy(mgrC, admin.SecretID, narrow) }, ErrExceedsCaller},
		{"manager changes itself", func() error { return e.svc.UpdateCredentialPolicy(mgrC, mgr.SecretID, narrow) }, ErrSelfChange},
		{"manager creates a narrower credential", func() error { _, _, err := e.svc.CreateCredential(mgrC, "y", narrow); return err }, nil},
		{"manager disables app", func() error { return e.svc.SetCredentialEnabled(mgrC, app.SecretID, false) }, nil},
		{"manager enables app", func() error { return e.svc.SetCredentialEnabled(mgrC, app.SecretID, true) }, nil},
		// Nobody changes itself, administrators included.
		{"admin disables itself", func() error { return e.svc.SetCredentialEnabled(adminC, admin.SecretID, false) }, ErrSelfChange},
		{"admin deletes itself", func() error { return e.svc.DeleteCredential(adminC, admin.SecretID) }, ErrSelfChange},
		{"admin updates its own policy", func() error { return e.svc.UpdateCredentialPolicy(adminC, admin.SecretID, narrow) }, ErrSelfChange},
		// Administrators do everything else.
		{"admin disables the manager", func() error { return e.svc.SetCredentialEnabled(adminC, mgr.SecretID, false) }, nil},
		{"admin enables the manager", func() error { return e.svc.SetCredentialEnabled(adminC, mgr.SecretID, true) }, nil},
		{"admin makes app an administrator", func() error { return e.svc.UpdateCredentialPolicy(adminC, app.SecretID, full) }, nil},
		{"manager cannot touch app now", func() error { return e.svc.DeleteCredential(mgrC, app.SecretID) }, ErrExceedsCaller},
		{"admin deletes app", func() error { return e.svc.DeleteCredential(adminC, app.SecretID) }, nil},
		{"admin creates an administrator", func() error { _, _, err := e.svc.CreateCredential(adminC, "z", full); return err }, nil},
	}
	for _, tt := range tests {
		err := tt.do()
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	// The refused changes changed nothing.
	if c, err := e.svc.LookupCredential(adminCtx, admin.SecretID); err != nil || !slices.Equal(c.Principal.Policy.Statement[0].Action, []string{"kms:*", "kms-admin:*"}) {
		t.Fatalf("the administrator was changed: %v", err)
	}
	if _, err := e.svc.LookupCredential(adminCtx, off.SecretID); !errors.Is(err, ErrCredentialNotFound) {
		t.Fatalf("the disabled credential was enabled: %v", err)
	}
	if c, _ := e.svc.LookupCredential(adminCtx, keyAdmin.SecretID); c.Principal.Policy.Allows(actUpdateCredentialPolicy, "*") {
		t.Fatal("the key administrator changed its own policy")
	}
	// Invalid policies are refused on create and update.
	bad := Policy{Version: "2.0", Statement: []Statement{{Effect: "deny", Action: stringList{"kms:Decrpyt"}, Resource: stringList{keyB}}}}
	if _, _, err := e.svc.CreateCredential(adminCtx, "bad", bad); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("create with an invalid policy: %v", err)
	}
	if err := e.svc.UpdateCredentialPolicy(adminCtx, mgr.SecretID, bad); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("update with an invalid policy: %v", err)
	}
}

// ReEncrypt needs Decrypt on the source and Encrypt on the destination.
func TestReEncryptNeedsDecryptAndEncrypt(t *testing.T) {
	e := newEnv(t, Config{})
	a, b := e.create(t, "a").KeyID, e.create(t, "b").KeyID
	blobB := e.encrypt(t, b, []byte("secret"), "").CiphertextBlob()
	all := `{"effect":"allow","action":"kms:*","resource":"*"}`
	tests := []struct {
		name, policy string
		dst          string
		ok           bool
	}{
		{"deny Decrypt on the source", all + `,{"effect":"deny","action":"kms:Decrypt","resource":"` + b + `"}`, a, false},
		{"deny Encrypt on the destination", all + `,{"effect":"deny","action":"kms:Encrypt","resource":"` + a + `"}`, a, false},
		{"deny Encrypt on the source, in place", all + `,{"effect":"deny","action":"kms:Encrypt","resource":"` + b + `"}`, b, false},
		{"ReEncrypt only", `{"effect":"allow","action":"kms:ReEncrypt","resource":"*"}`, a, false},
		{"deny ReEncrypt on the destination", all + `,{"effect":"deny","action":"kms:ReEncrypt","resource":"` + a + `"}`, a, false},
		{"everything needed", `{"effect":"allow","action":"kms:ReEncrypt","resource":"*"},{"effect":"allow","action":"kms:Decrypt","resource":"` + b + `"},{"effect":"allow","action":"kms:Encrypt","resource":"` + a + `"}`, a, true},
	}
	for _, tt := range tests {
		ctx := WithPrincipal(context.Background(), &Principal{SecretID: "AKIDre", Policy: mustPolicy(t, pol(tt.policy))})
		_, err := e.svc.ReEncrypt(ctx, ReEncryptInput{CiphertextBlob: blobB, DestinationKeyID: tt.dst})
		if tt.ok && err != nil || !tt.ok && !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

// Policies stored before the kms-admin: namespace: an administrator stays
// one, nobody else gains anything, and stored denies deny no less.
func TestStoredPolicyUpgrade(t *testing.T) {
	e := newEnv(t, Config{})
	type check struct {
		action, resource string
		want             bool
	}
	tests := []struct {
		name   string
		doc    string
		loads  bool
		checks []check
	}{
		{"old administrator", `{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]}`, true,
			[]check{{actCreateCredential, "*", true}, {actUpdateCredentialPolicy, "*", true}, {"kms:Decrypt", keyB, true}}},
		{"current format kms:* on *", `{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}],"hsmkms_format":2}`, true,
			[]check{{actCreateCredential, "*", false}, {"kms:Decrypt", keyB, true}}},
		{"old kms:* with a deny", pol(`{"effect":"allow","action":"kms:*","resource":"*"},{"effect":"deny","action":"kms:Decrypt","resource":"` + keyB + `"}`), true,
			[]check{{actCreateCredential, "*", false}, {actDisableCredential, "*", false}, {"kms:Decrypt", keyB, false}, {"kms:Decrypt", keyA, true}}},
		{"old explicit credential action", pol(`{"effect":"allow","action":["kms:ListCredentials","kms:Encrypt"],"resource":"*"}`), true,
			[]check{{actListCredentials, "*", true}, {actCreateCredential, "*", false}, {"kms:Encrypt", keyA, true}}},
		{"old wildcard deny on credential actions", pol(`{"effect":"allow","action":"*","resource":"*"},{"effect":"deny","action":["kms:Update*","kms:Delete*"],"resource":"*"}`), true,
			[]check{{actUpdateCredentialPolicy, "*", false}, {actDeleteCredential, "*", false}, {actCreateCredential, "*", true}, {"kms:UpdateAlias", keyA, false}}},
		{"old deny on another service's resource", pol(`{"effect":"allow","action":"kms:*","resource":"*"},{"effect":"deny","action":"kms:Decrypt","resource":"qcs::cos:gz:uin/1:*"}`), true,
			[]check{{"kms:Decrypt", keyA, false}, {"kms:Encrypt", keyA, true}}},
		{"old invalid deny", pol(`{"effect":"allow","action":"kms:*","resource":"*"},{"effect":"deny","action":"kms:Decrpyt","resource":"key/` + keyB + `"}`), true,
			[]check{{"kms:Decrypt", keyB, true}}}, // did nothing before, does nothing now
		{"old allow on another service's resource", pol(`{"effect":"allow","action":"kms:Encrypt","resource":["qcs::cos:gz:uin/1:*","` + keyA + `"]}`), true,
			[]check{{"kms:Encrypt", keyA, true}, {"kms:Encrypt", keyB, false}}},
		{"old allow with a misspelt action", pol(`{"effect":"allow","action":["kms:Encrypt","kms:Decrpyt"],"resource":"` + keyA + `"}`), true,
			[]check{{"kms:Encrypt", keyA, true}, {"kms:Decrypt", keyA, false}}},
		{"old allow left empty", pol(`{"effect":"allow","action":["k*"],"resource":"*"}`), true,
			[]check{{actCreateCredential, "*", false}, {"kms:Encrypt", keyA, false}}},
		{"current format, invalid", `{"version":"2.0","statement":[{"effect":"allow","action":["kms:Decrpyt"],"resource":["*"]}],"hsmkms_format":2}`, false, nil},
		{"unknown format", `{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}],"hsmkms_format":3}`, false, nil},
	}
	ids := make([]string, len(tests))
	for i, tt := range tests {
		info, _, err := e.svc.CreateCredential(adminCtx, fmt.Sprintf("c%d", i), mustPolicy(t, pol(`{"effect":"allow","action":"kms:Encrypt","resource":"*"}`)))
		if err != nil {
			t.Fatal(err)
		}
		if doc := e.st.creds[info.SecretID].Policy; !strings.Contains(doc, `"hsmkms_format":2`) {
			t.Fatalf("stored without the format: %s", doc)
		}
		ids[i] = info.SecretID
		rec := e.st.creds[info.SecretID]
		rec.Policy = tt.doc
		e.st.creds[info.SecretID] = rec
	}
	// As the release before left them: no MACs, no MAC key on the token.
	for id, rec := range e.st.creds {
		rec.MAC, rec.Gen = nil, 0
		e.st.creds[id] = rec
	}
	for id := range e.st.keys {
		e.st.rawKey(id, func(r *store.Key) {
			r.MAC, r.Gen = nil, 0
			for i := range r.Versions {
				r.Versions[i].MAC = nil
			}
		})
	}
	delete(e.h.macKeys, string(macKeyObjectID))
	e.restart(t)
	for i, tt := range tests {
		c, err := e.svc.LookupCredential(adminCtx, ids[i])
		if !tt.loads {
			if err == nil {
				t.Errorf("%s: loaded", tt.name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		for _, ck := range tt.checks {
			if got := c.Principal.Policy.Allows(ck.action, ck.resource); got != ck.want {
				t.Errorf("%s: Allows(%s, %s) = %v, want %v", tt.name, ck.action, ck.resource, got, ck.want)
			}
		}
	}
	// The old administrator is still an administrator through the service.
	adm, _ := e.svc.LookupCredential(adminCtx, ids[0])
	if _, _, err := e.svc.CreateCredential(WithPrincipal(context.Background(), adm.Principal), "new-admin", AdminPolicy()); err != nil {
		t.Fatalf("the upgraded administrator cannot create an administrator: %v", err)
	}
	if log := e.log.String(); !strings.Contains(log, "predates the kms-admin: namespace") || !strings.Contains(log, `kms:Decrpyt`) {
		t.Fatalf("the upgrade was not logged:\n%s", log)
	}
	// Re-reading an unchanged credential (a cluster resync every few
	// seconds) neither parses nor logs it again.
	logged := strings.Count(e.log.String(), "predates the kms-admin: namespace")
	e.svc.credMu.RLock()
	old := e.svc.creds[ids[2]]
	e.svc.credMu.RUnlock()
	again, err := e.svc.credEntryFor(adminCtx, e.st.creds[ids[2]], old)
	if err != nil || again.cred.Principal.Policy.Allows("kms:Decrypt", keyB) {
		t.Fatalf("re-read: %v", err)
	}
	if n := strings.Count(e.log.String(), "predates the kms-admin: namespace"); n != logged {
		t.Fatalf("re-reading an unchanged credential logged %d more lines", n-logged)
	}
}

// The README's example policy is valid and means what the README says.
func TestReadmePolicyExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "A policy has the shape of Tencent Cloud CAM.")
	if !ok {
		t.Fatal("the README has no policy section")
	}
	_, rest, _ = strings.Cut(rest, "```json\n")
	doc, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("no example policy in the README")
	}
	p := mustPolicy(t, doc)
	const k, denied = "2f0b1d7c-5a0e-4d0b-9a51-4f8e3c2b7a10", "9999aed0-4956-11e9-bc70-5254005e86b4"
	if !p.Allows("kms:Decrypt", k) || !p.Allows("kms:DescribeKey", denied) || p.Allows("kms:Decrypt", denied) || p.Allows(actListCredentials, "*") {
		t.Fatal("the README's example policy does not do what the README says")
	}
}
