package kms

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrUnauthorized means the caller's policy does not allow the action on the
// resource; nothing was changed.
var ErrUnauthorized = errors.New("kms: unauthorized operation")

// ErrInvalidPolicy means a policy document is malformed.
var ErrInvalidPolicy = errors.New("kms: invalid policy")

// Policy is an access policy in the shape of Tencent Cloud CAM:
//
//	{"version":"2.0","statement":[{"effect":"allow","action":["kms:Encrypt"],"resource":["<keyId>"]}]}
//
// An action is allowed when some allow statement matches it and no deny
// statement does: deny wins, and nothing is allowed by default.
//
// Actions are "kms:<Action>" (the API 3.0 names: kms:Encrypt,
// kms:CreateKey, kms:CreateCredential...), matched case-insensitively, with
// a trailing "*" as a wildcard ("kms:*", "kms:Describe*", "*").
// Resources are a key id, "*", or a CAM resource ending in "key/<keyId>" or
// "key/*" (e.g. "qcs::kms:ap-guangzhou:uin/1:key/<keyId>"); a trailing "*"
// is a wildcard. Actions that address no key (CreateKey, GenerateRandom,
// the credential actions) are checked against the resource "*", so they
// need a statement whose resource is "*".
type Policy struct {
	Version   string      `json:"version"`
	Statement []Statement `json:"statement"`
}

// Statement is one rule of a Policy.
type Statement struct {
	Effect   string     `json:"effect"`
	Action   stringList `json:"action"`
	Resource stringList `json:"resource"`
}

// stringList accepts a JSON string or an array of strings, as CAM does.
type stringList []string

func (l *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*l = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("want a string or an array of strings")
	}
	*l = many
	return nil
}

// AdminPolicy allows every action on every resource.
func AdminPolicy() Policy {
	return Policy{Version: "2.0", Statement: []Statement{{Effect: "allow", Action: stringList{"kms:*"}, Resource: stringList{"*"}}}}
}

// ParsePolicy parses and validates a policy document. Errors wrap
// ErrInvalidPolicy.
func ParsePolicy(doc string) (Policy, error) {
	var p Policy
	dec := json.NewDecoder(bytes.NewReader([]byte(doc)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, fmt.Errorf("%w: %v", ErrInvalidPolicy, err)
	}
	if dec.More() {
		return Policy{}, fmt.Errorf("%w: data after the policy object", ErrInvalidPolicy)
	}
	return p, p.Validate()
}

// Validate checks a policy's structure. Errors wrap ErrInvalidPolicy.
func (p Policy) Validate() error {
	if p.Version != "2.0" {
		return fmt.Errorf("%w: version must be \"2.0\"", ErrInvalidPolicy)
	}
	if len(p.Statement) == 0 {
		return fmt.Errorf("%w: no statement", ErrInvalidPolicy)
	}
	for i, st := range p.Statement {
		if st.Effect != "allow" && st.Effect != "deny" {
			return fmt.Errorf("%w: statement %d: effect must be allow or deny", ErrInvalidPolicy, i)
		}
		if len(st.Action) == 0 || len(st.Resource) == 0 {
			return fmt.Errorf("%w: statement %d: action and resource are required", ErrInvalidPolicy, i)
		}
		for _, a := range st.Action {
			if a != "*" && !strings.HasPrefix(strings.ToLower(a), "kms:") {
				return fmt.Errorf("%w: statement %d: action %q is not a kms: action", ErrInvalidPolicy, i, a)
			}
		}
		for _, r := range st.Resource {
			if r == "" {
				return fmt.Errorf("%w: statement %d: empty resource", ErrInvalidPolicy, i)
			}
		}
	}
	return nil
}

// Allows reports whether the policy allows action ("kms:Encrypt") on
// resource (a key id, or "*" for actions that address no key).
func (p Policy) Allows(action, resource string) bool {
	allowed := false
	for _, st := range p.Statement {
		if !matchAny(st.Action, action, matchAction) || !matchAny(st.Resource, resource, matchResource) {
			continue
		}
		if st.Effect == "deny" {
			return false
		}
		allowed = true
	}
	return allowed
}

func matchAny(patterns []string, v string, match func(p, v string) bool) bool {
	for _, p := range patterns {
		if match(p, v) {
			return true
		}
	}
	return false
}

func matchAction(pattern, action string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return len(action) >= len(prefix) && strings.EqualFold(action[:len(prefix)], prefix)
	}
	return strings.EqualFold(pattern, action)
}

func matchResource(pattern, resource string) bool {
	if strings.HasPrefix(pattern, "qcs:") {
		i := strings.LastIndex(pattern, ":")
		rest := pattern[i+1:]
		if rest == "*" {
			pattern = "*"
		} else if id, ok := strings.CutPrefix(rest, "key/"); ok {
			pattern = id
		} else {
			return false
		}
	}
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(resource, prefix)
	}
	return pattern == resource
}

// Principal is an authenticated caller.
type Principal struct {
	SecretID string
	Name     string
	Policy   Policy
}

type principalKey struct{}

// WithPrincipal returns a context carrying the authenticated caller; every
// Service operation authorises against it.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the caller carried by ctx, or nil.
func PrincipalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// authorize checks that the caller in ctx may perform action on resource.
// A context without a principal is refused: there is no anonymous access.
func authorize(ctx context.Context, action, resource string) error {
	p := PrincipalFrom(ctx)
	if p == nil {
		return fmt.Errorf("%w: no authenticated caller", ErrUnauthorized)
	}
	if !p.Policy.Allows(action, resource) {
		return fmt.Errorf("%w: %s on %s", ErrUnauthorized, action, resource)
	}
	return nil
}
