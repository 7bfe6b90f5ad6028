package kms

import (
	"encoding/json"
	"testing"
)

func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{
		`{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]}`,
		`{"version":"2.0","statement":[{"effect":"deny","action":"kms:Decrypt","resource":"qcs::kms:gz:uin/1:key/*"}]}`,
		`{}`, `[]`, `{"version":"2.0","statement":[{"effect":"allow","action":[],"resource":["*"]}]}`,
	} {
		f.Add(s, "kms:Encrypt", "11111111-1111-4111-8111-111111111111")
	}
	f.Fuzz(func(t *testing.T, doc, action, resource string) {
		p, err := ParsePolicy(doc)
		if err != nil {
			return
		}
		// The administrator covers every valid policy, and a policy
		// covers itself.
		for _, c := range [][2]Policy{{AdminPolicy(), p}, {p, p}} {
			if a, r, ok, err := covers(c[0], c[1]); !ok || err != nil {
				t.Fatalf("covers: %s on %s, %v", a, r, err)
			}
		}
		allowed := p.Allows(action, resource)
		// Deny wins: adding a matching deny never allows more.
		p.Statement = append(p.Statement, Statement{Effect: "deny", Action: stringList{"*"}, Resource: stringList{"*"}})
		if p.Allows(action, resource) {
			t.Fatalf("a deny-all statement still allows %s on %s (was %v)", action, resource, allowed)
		}
	})
}

// A policy stored before the kms-admin: namespace never allows more after
// the upgrade than it did before, except the administrator's exact kms:*
// on *, which stays an administrator.
func FuzzStoredPolicyNeverWidens(f *testing.F) {
	for _, s := range []string{
		`{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]},{"effect":"deny","action":["kms:Update*"],"resource":["*"]}]}`,
		`{"version":"2.0","statement":[{"effect":"allow","action":["*"],"resource":["qcs::cos:gz:uin/1:*"]},{"effect":"deny","action":["kms:Decrypt"],"resource":["qcs::cos::key/b*"]}]}`,
		`{"version":"2.0","statement":[{"effect":"allow","action":["kms:CreateCredential","kms:Encrypt"],"resource":["key/x","aaaa*"]}]}`,
	} {
		f.Add(s, "aaaaaaaa-1111-4111-8111-111111111111")
	}
	f.Fuzz(func(t *testing.T, doc, resource string) {
		if !validKeyID(resource) {
			resource = "*"
		}
		p, _, err := parseStoredPolicy(doc)
		if err != nil {
			return
		}
		var raw Policy
		if json.Unmarshal([]byte(doc), &raw) != nil {
			t.Fatalf("parseStoredPolicy accepted what JSON refuses: %q", doc)
		}
		var format struct {
			F int `json:"hsmkms_format"`
		}
		_ = json.Unmarshal([]byte(doc), &format)
		if format.F != 0 {
			return
		}
		st := raw.Statement
		if len(st) == 1 && st[0].Effect == "allow" && len(st[0].Action) == 1 && st[0].Action[0] == "kms:*" && len(st[0].Resource) == 1 && st[0].Resource[0] == "*" {
			return
		}
		for _, a := range append(KeyActions(), AdminActions()...) {
			if !p.Allows(a, resource) {
				continue
			}
			// As the release before read it.
			before, denied := false, false
			for _, s := range raw.Statement {
				if matchAny(s.Action, legacyActionName(a), legacyMatchAction) && matchAny(s.Resource, resource, legacyMatchResource) {
					if s.Effect == "deny" {
						denied = true
					}
					before = true
				}
			}
			if !before || denied {
				t.Fatalf("%s on %s: allowed after the upgrade, not before; doc %s", a, resource, doc)
			}
		}
	})
}
