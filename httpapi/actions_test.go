package httpapi

import (
	"slices"
	"testing"

	"hsmkms/kms"
)

// The action table names, for each action, a policy action the domain
// knows, and every policy action of the domain is served by some action.
func TestActionTableMatchesPolicy(t *testing.T) {
	tab := newActionTable()
	known := append(append(kms.KeyActions(), kms.AdminActions()...), kms.TagActions()...)
	used := map[string]bool{}
	for _, a := range tab.all {
		if !slices.Contains(known, a.policy) {
			t.Errorf("%s/%s: policy action %q is not one the domain checks", a.api3Name, a.legacyName, a.policy)
		}
		used[a.policy] = true
		if a.api3Name == "" && a.legacyName == "" && a.awsName == "" && a.tagName == "" {
			t.Errorf("%s: served by no protocol", a.policy)
		}
		if (a.api3Name != "" || a.tagName != "") != (a.api3.serve != nil) || (a.legacyName != "") != (a.legacy != nil) || (a.awsName != "") != (a.aws.serve != nil) {
			t.Errorf("%s/%s: a protocol name without a handler, or the reverse", a.api3Name, a.legacyName)
		}
		if a.bodyLimit(64<<10) > 64<<10 {
			t.Errorf("%s: body limit above the server's", a.api3Name)
		}
	}
	// kms-admin:Reseal is granted to `kmsd reseal`, run locally by whoever
	// holds the token PIN; no API action serves it.
	used["kms-admin:Reseal"] = true
	for _, p := range known {
		if !used[p] {
			t.Errorf("policy action %s is served by no action", p)
		}
	}
	if len(tab.api3) != 41 || len(tab.legacy) != 11 || len(tab.aws) != 27 || len(tab.tag) != 5 {
		t.Fatalf("%d API 3.0, %d legacy, %d AWS and %d Tag actions, want 41, 11, 27 and 5", len(tab.api3), len(tab.legacy), len(tab.aws), len(tab.tag))
	}
}
