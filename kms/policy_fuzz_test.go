package kms

import "testing"

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
		allowed := p.Allows(action, resource)
		// Deny wins: adding a matching deny never allows more.
		p.Statement = append(p.Statement, Statement{Effect: "deny", Action: stringList{"*"}, Resource: stringList{"*"}})
		if p.Allows(action, resource) {
			t.Fatalf("a deny-all statement still allows %s on %s (was %v)", action, resource, allowed)
		}
	})
}
