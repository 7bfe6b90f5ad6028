package kms

import (
	"encoding/json"
	"fmt"
	"strings"
)

// storedPolicyFormat marks a stored policy written since administrative
// actions have their own namespace (kms-admin:). A stored policy without it
// was written before and is read by the upgrade rules of parseStoredPolicy.
// Releases before the namespace refuse the field, so a node that was not
// upgraded does not load such a credential rather than read it with the
// old, wider wildcards.
const storedPolicyFormat = 2

type storedPolicy struct {
	Version   string      `json:"version"`
	Statement []Statement `json:"statement"`
	Format    int         `json:"hsmkms_format,omitempty"`
}

// encodeStoredPolicy returns the stored form of a validated policy.
func encodeStoredPolicy(p Policy) (string, error) {
	b, err := json.Marshal(storedPolicy{Version: p.Version, Statement: p.Statement, Format: storedPolicyFormat})
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidPolicy, err)
	}
	return string(b), nil
}

// parseStoredPolicy reads a policy from the store. A policy in the current
// format must validate. A policy written before the kms-admin: namespace is
// read so that nobody gains a right by the upgrade, and an administrator
// stays one; notes lists what was read differently, for the log:
//
//   - exactly one statement allowing ["kms:*"] on ["*"] (what
//     "credentials create -admin" wrote) is the administrator policy;
//   - in other allow statements, an exact credential action
//     ("kms:CreateCredential") is read as its kms-admin: name; kms:
//     wildcards no longer match credential actions; entries that fail
//     validation (unknown actions, resources that never matched, a qcs
//     resource of another service, whose service used to be ignored) are
//     dropped, and a statement left without actions or resources with them;
//   - deny statements are kept whole, and match both as they do now and as
//     they did before (old wildcards, old resource reading), so a stored
//     deny never denies less than it did.
func parseStoredPolicy(doc string) (p Policy, notes []string, err error) {
	var sp storedPolicy
	if err := decodePolicyJSON(doc, &sp); err != nil {
		return Policy{}, nil, err
	}
	p = Policy{Version: sp.Version, Statement: sp.Statement}
	switch sp.Format {
	case storedPolicyFormat:
		return p, nil, p.Validate()
	case 0:
	default:
		return Policy{}, nil, fmt.Errorf("%w: unknown stored policy format %d", ErrInvalidPolicy, sp.Format)
	}
	if err := p.validateShape(); err != nil {
		return Policy{}, nil, err
	}
	if len(p.Statement) == 1 {
		st := p.Statement[0]
		if st.Effect == "allow" && len(st.Action) == 1 && st.Action[0] == "kms:*" && len(st.Resource) == 1 && st.Resource[0] == "*" {
			return AdminPolicy(), []string{"the administrator policy kms:* on * is read as kms:* and kms-admin:* on *"}, nil
		}
	}
	out := Policy{Version: p.Version}
	for i, st := range p.Statement {
		if st.Effect == "deny" {
			if err := st.validate(); err != nil {
				notes = append(notes, fmt.Sprintf("statement[%d] (deny) is invalid and keeps matching what it matched before: %v", i, err))
			}
			st.legacy = true
			out.Statement = append(out.Statement, st)
			continue
		}
		var ns Statement
		ns.Effect = st.Effect
		for _, a := range st.Action {
			if renamed, ok := legacyAdminName(a); ok {
				notes = append(notes, fmt.Sprintf("statement[%d]: action %q is read as %q", i, a, renamed))
				ns.Action = append(ns.Action, renamed)
				continue
			}
			if err := validateAction(a); err != nil {
				notes = append(notes, fmt.Sprintf("statement[%d] (allow): dropped: %v", i, err))
				continue
			}
			for _, adm := range adminActions {
				if legacyMatchAction(a, legacyActionName(adm)) && !matchAction(a, adm) {
					notes = append(notes, fmt.Sprintf("statement[%d] (allow): action %q no longer grants the credential actions", i, a))
					break
				}
			}
			ns.Action = append(ns.Action, a)
		}
		for _, r := range st.Resource {
			if err := validateResource(r); err != nil {
				notes = append(notes, fmt.Sprintf("statement[%d] (allow): dropped: %v", i, err))
				continue
			}
			ns.Resource = append(ns.Resource, r)
		}
		if len(ns.Action) == 0 || len(ns.Resource) == 0 {
			notes = append(notes, fmt.Sprintf("statement[%d] (allow): dropped: nothing valid is left of it", i))
			continue
		}
		out.Statement = append(out.Statement, ns)
	}
	return out, notes, nil
}

// validateShape checks what policies were always checked for.
func (p Policy) validateShape() error {
	if p.Version != "2.0" {
		return fmt.Errorf("%w: version must be \"2.0\"", ErrInvalidPolicy)
	}
	if len(p.Statement) == 0 {
		return fmt.Errorf("%w: no statement", ErrInvalidPolicy)
	}
	for i, st := range p.Statement {
		if st.Effect != "allow" && st.Effect != "deny" {
			return fmt.Errorf("%w: statement[%d]: effect must be allow or deny", ErrInvalidPolicy, i)
		}
		if len(st.Action) == 0 || len(st.Resource) == 0 {
			return fmt.Errorf("%w: statement[%d]: action and resource are required", ErrInvalidPolicy, i)
		}
	}
	return nil
}

// legacyAdminName returns the kms-admin: name of an exact credential
// action written with the kms: prefix, as policies were before.
func legacyAdminName(a string) (string, bool) {
	for _, adm := range adminActions {
		if strings.EqualFold(a, legacyActionName(adm)) {
			return adm, true
		}
	}
	return "", false
}

// legacyActionName is the name an action had before the kms-admin:
// namespace: kms-admin:X was kms:X.
func legacyActionName(action string) string {
	if rest, ok := strings.CutPrefix(action, adminNS); ok {
		return keyNS + rest
	}
	return action
}

// legacyMatchAction is how actions were matched before the namespaces: a
// trailing "*" matched any action with that prefix.
func legacyMatchAction(pattern, action string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return len(action) >= len(prefix) && strings.EqualFold(action[:len(prefix)], prefix)
	}
	return strings.EqualFold(pattern, action)
}

// legacyMatchResource is how resources were matched before validation: a
// CAM resource was read from its last ":" on, whatever its service.
func legacyMatchResource(pattern, resource string) bool {
	p, ok := legacyKeyPart(pattern)
	if !ok {
		return false
	}
	if prefix, ok := strings.CutSuffix(p, "*"); ok {
		return strings.HasPrefix(resource, prefix)
	}
	return p == resource
}

// legacyKeyPart is the key id (or "*", or prefix*) a resource pattern
// named before validation.
func legacyKeyPart(pattern string) (string, bool) {
	if !strings.HasPrefix(pattern, "qcs:") {
		return pattern, true
	}
	rest := pattern[strings.LastIndex(pattern, ":")+1:]
	if rest == "*" {
		return "*", true
	}
	return strings.CutPrefix(rest, "key/")
}

// keyPart is the key id (or "*", or prefix*) a resource pattern names now.
func keyPart(pattern string) (string, bool) {
	if !strings.HasPrefix(pattern, "qcs:") {
		return pattern, true
	}
	service, res, ok := qcsParts(pattern)
	if !ok || service != "kms" {
		return "", false
	}
	if res == "*" {
		return "*", true
	}
	return strings.CutPrefix(res, "key/")
}
