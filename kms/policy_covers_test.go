package kms

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// covers against brute force: random policies over patterns that overlap
// (ids sharing long prefixes, nested prefixes, CAM forms, denies, action
// wildcards), checked on many key ids made to fall into every class.
func TestCoversAgainstBruteForce(t *testing.T) {
	ids := []string{
		"aaaaaaaa-1111-4111-8111-111111111111",
		"aaaaaaaa-1111-4111-8111-111111111112",
		"aaaaaaaa-2222-4222-8222-222222222222",
		"abcdef01-2345-4678-9abc-def012345678",
		"b0000000-0000-4000-8000-000000000000",
		// The first completions covers tries of "" and of "aaaaaaaa-":
		// it must step past them.
		"00000000-0000-0000-0000-000000000000",
		"aaaaaaaa-0000-0000-0000-000000000000",
	}
	prefixes := []string{"a", "aa", "aaaaaaaa-", "aaaaaaaa-1111-4111-8111-11111111111", "ab", "b", "f"}
	var resources []string
	for _, id := range ids {
		resources = append(resources, id, "qcs::kms:gz:uin/1:key/"+id)
	}
	for _, p := range prefixes {
		resources = append(resources, p+"*", "qcs::kms:::key/"+p+"*")
	}
	resources = append(resources, "*", "qcs::kms:::key/*", "qcs::kms:gz:uin/1:*")
	actions := []string{"*", "kms:*", "kms-admin:*", "kms:Encrypt", "kms:Decrypt", "kms:D*", "kms:Describe*",
		"kms:Create*", "kms:CreateKey", "kms-admin:Create*", "kms-admin:ListCredentials", "kms:ReEncrypt", "kms:List*"}

	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(from []string) stringList {
		n := 1 + rng.IntN(3)
		out := make(stringList, n)
		for i := range out {
			out[i] = from[rng.IntN(len(from))]
		}
		return out
	}
	policy := func() Policy {
		p := Policy{Version: "2.0"}
		for range 1 + rng.IntN(4) {
			effect := "allow"
			if rng.IntN(3) == 0 {
				effect = "deny"
			}
			p.Statement = append(p.Statement, Statement{Effect: effect, Action: pick(actions), Resource: pick(resources)})
		}
		return p
	}
	// Key ids to try: every named id and its neighbours, and random
	// completions of every prefix and of nothing.
	points := []string{}
	complete := func(prefix string) string {
		b := []byte(prefix)
		for len(b) < 36 {
			if i := len(b); i == 8 || i == 13 || i == 18 || i == 23 {
				b = append(b, '-')
			} else {
				b = append(b, "0123456789abcdef"[rng.IntN(16)])
			}
		}
		return string(b)
	}
	for _, id := range ids {
		points = append(points, id, id[:35]+"0", id[:35]+"f", id[:20]+strings.Repeat("9", 16))
	}
	for _, p := range append(prefixes, "") {
		for range 30 {
			points = append(points, complete(p))
		}
	}
	found, refused := 0, 0
	for i := range 3000 {
		p, q := policy(), policy()
		a, r, ok, err := covers(p, q)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			refused++
			if !q.Allows(a, r) || p.Allows(a, r) {
				t.Fatalf("case %d: wrong witness %s on %s\np=%+v\nq=%+v", i, a, r, p, q)
			}
			continue
		}
		for _, act := range keyActionsOnKeys {
			for _, id := range points {
				if q.Allows(act, id) && !p.Allows(act, id) {
					t.Fatalf("case %d: covers said yes, but q allows %s on %s and p does not\np=%+v\nq=%+v", i, act, id, p, q)
				}
			}
		}
		for _, act := range append(append([]string(nil), keyActionsNoKey...), adminActions...) {
			if q.Allows(act, "*") && !p.Allows(act, "*") {
				t.Fatalf("case %d: covers said yes, but q allows %s on * and p does not", i, act)
			}
		}
		found++
	}
	// Both answers must be common, or the test proves little.
	if found < 300 || refused < 300 {
		t.Fatalf("covered %d, not covered %d: the generator is lopsided", found, refused)
	}
	t.Logf("covered %d, not covered %d", found, refused)
}

// BenchmarkPolicyAllows is the authorisation of an Encrypt request under a
// typical application policy and under the administrator policy.
func BenchmarkPolicyAllows(b *testing.B) {
	const k = "2f0b1d7c-5a0e-4d0b-9a51-4f8e3c2b7a10"
	for _, tc := range []struct{ name, doc string }{
		{"app", `{"version":"2.0","statement":[
			{"effect":"allow","action":["kms:Encrypt","kms:Decrypt","kms:GenerateDataKey"],"resource":["qcs::kms:ap-guangzhou:uin/1:key/` + k + `"]},
			{"effect":"allow","action":["kms:Describe*"],"resource":["*"]},
			{"effect":"deny","action":["kms:Decrypt"],"resource":["qcs::kms:ap-guangzhou:uin/1:key/9999aed0-4956-11e9-bc70-5254005e86b4"]}]}`},
		{"admin", `{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]}`},
	} {
		p, err := ParsePolicy(tc.doc)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if !p.Allows("kms:Encrypt", k) {
					b.Fatal(fmt.Sprint("refused"))
				}
			}
		})
	}
}
