package kms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrUnauthorized means the caller's policy does not allow the action on the
// resource; nothing was changed.
var ErrUnauthorized = errors.New("kms: unauthorized operation")

// ErrInvalidPolicy means a policy document is malformed, or names an action
// or a resource that can never match.
var ErrInvalidPolicy = errors.New("kms: invalid policy")

// Policy is an access policy in the shape of Tencent Cloud CAM:
//
//	{"version":"2.0","statement":[{"effect":"allow","action":["kms:Encrypt"],"resource":["<keyId>"]}]}
//
// An action is allowed when some allow statement matches it and no deny
// statement does: deny wins, and nothing is allowed by default.
//
// Actions live in two namespaces. Key actions are "kms:<API 3.0 action>"
// (kms:Encrypt, kms:CreateKey...; KeyActions lists them). Administrative
// actions, the credential actions, are "kms-admin:<action>"
// (kms-admin:CreateCredential...; AdminActions lists them). Names are
// matched case-insensitively; a trailing "*" after the namespace is a
// wildcard within that namespace only ("kms:*", "kms:Update*",
// "kms-admin:*"), so no kms: pattern ever matches an administrative action.
// The bare action "*" matches every action of both namespaces: it grants
// administration.
//
// Resources are "*" (everything), a key id in canonical form (36 lower-case
// characters), a prefix of one followed by "*", or a CAM resource
// "qcs:<project>:kms:<region>:<account>:key/<keyId>" (or key/<prefix>*,
// key/*, or "*" as the last part; project, region and account are not
// checked). Actions that address no key (kms:CreateKey, kms:GenerateRandom,
// kms:ListKeys, kms:ListKeyDetail and every administrative action) are
// checked against the resource "*", which only "*", "key/*" and a last part
// "*" match.
//
// ParsePolicy and Validate refuse unknown actions and resources that could
// never match (see Validate).
type Policy struct {
	Version   string      `json:"version"`
	Statement []Statement `json:"statement"`
}

// Statement is one rule of a Policy.
type Statement struct {
	Effect   string     `json:"effect"`
	Action   stringList `json:"action"`
	Resource stringList `json:"resource"`

	// legacy marks a deny statement of a policy stored before
	// administrative actions had their own namespace: it also matches
	// whatever it matched then (see parseStoredPolicy), so that upgrading
	// never makes a stored deny deny less.
	legacy bool
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

// Action namespaces.
const (
	keyNS   = "kms:"
	adminNS = "kms-admin:"
)

// The administrative actions.
const (
	actCreateCredential       = "kms-admin:CreateCredential"
	actListCredentials        = "kms-admin:ListCredentials"
	actEnableCredential       = "kms-admin:EnableCredential"
	actDisableCredential      = "kms-admin:DisableCredential"
	actUpdateCredentialPolicy = "kms-admin:UpdateCredentialPolicy"
	actDeleteCredential       = "kms-admin:DeleteCredential"
	actReseal                 = "kms-admin:Reseal"
)

// keyActionsOnKeys are the key actions checked against a key id;
// keyActionsNoKey those checked against "*".
var (
	keyActionsOnKeys = []string{
		"kms:ArchiveKey", "kms:CancelKeyArchive", "kms:CancelKeyDeletion", "kms:Decrypt",
		"kms:DescribeKey", "kms:DescribeKeys", "kms:DisableKey", "kms:DisableKeyRotation",
		"kms:DisableKeys", "kms:EnableKey", "kms:EnableKeyRotation", "kms:EnableKeys",
		"kms:Encrypt", "kms:GenerateDataKey", "kms:GetKeyRotationStatus", "kms:ReEncrypt",
		"kms:RotateKey", "kms:ScheduleKeyDeletion", "kms:UpdateAlias", "kms:UpdateKeyDescription",
		// Asymmetric keys (asym.go).
		"kms:AsymmetricRsaDecrypt", "kms:GetPublicKey", "kms:SignByAsymmetricKey", "kms:VerifyByAsymmetricKey",
		// The AWS KMS API's own actions (httpapi/aws*.go).
		"kms:CreateAlias", "kms:DeleteAlias", "kms:GenerateDataKeyWithoutPlaintext",
		"kms:GetParametersForImport", "kms:ImportKeyMaterial", "kms:DeleteImportedKeyMaterial",
	}
	keyActionsNoKey = []string{"kms:CreateKey", "kms:GenerateRandom", "kms:ListKeyDetail", "kms:ListKeys", "kms:ListAlgorithms", "kms:ListAliases", "kms:GetRegions", "kms:GetServiceStatus"}
	adminActions    = []string{
		actCreateCredential, actDeleteCredential, actDisableCredential,
		actEnableCredential, actListCredentials, actReseal, actUpdateCredentialPolicy,
	}
)

// KeyActions returns every key action, "kms:<Action>".
func KeyActions() []string {
	return append(append([]string(nil), keyActionsOnKeys...), keyActionsNoKey...)
}

// AdminActions returns every administrative action, "kms-admin:<Action>".
func AdminActions() []string { return append([]string(nil), adminActions...) }

// addressesKey reports whether action is checked against a key id (true)
// or against "*" (false).
func addressesKey(action string) bool {
	for _, a := range keyActionsOnKeys {
		if a == action {
			return true
		}
	}
	for _, a := range tagActions {
		if a == action {
			return true
		}
	}
	return false
}

// AdminPolicy allows every action of both namespaces on every resource
// (kms:* includes the tag: actions, see matchAction).
func AdminPolicy() Policy {
	return Policy{Version: "2.0", Statement: []Statement{{Effect: "allow", Action: stringList{"kms:*", "kms-admin:*"}, Resource: stringList{"*"}}}}
}

// ParsePolicy parses and validates a policy document. Errors wrap
// ErrInvalidPolicy and name the statement (counted from 0) and the value at
// fault.
func ParsePolicy(doc string) (Policy, error) {
	var p Policy
	if err := decodePolicyJSON(doc, &p); err != nil {
		return Policy{}, err
	}
	return p, p.Validate()
}

// Validate checks a policy: version "2.0", at least one statement, each
// with effect allow or deny, and with actions and resources that exist and
// can match:
//   - an action is "*", or a known action of kms: or kms-admin: (any case),
//     or "<namespace>:<prefix>*" where the prefix starts at least one
//     action of that namespace; "*" anywhere else is refused;
//   - a resource is one of the forms Policy describes; key ids must be in
//     canonical lower-case form, "qcs" lower case, the service kms;
//   - a statement must be able to match something: actions that address
//     no key need a resource that matches "*".
//
// Errors wrap ErrInvalidPolicy.
func (p Policy) Validate() error {
	if p.Version != "2.0" {
		return fmt.Errorf("%w: version must be \"2.0\"", ErrInvalidPolicy)
	}
	if len(p.Statement) == 0 {
		return fmt.Errorf("%w: no statement", ErrInvalidPolicy)
	}
	for i, st := range p.Statement {
		if err := st.validate(); err != nil {
			return fmt.Errorf("%w: statement[%d]: %v", ErrInvalidPolicy, i, err)
		}
	}
	return nil
}

func (st Statement) validate() error {
	if st.Effect != "allow" && st.Effect != "deny" {
		return fmt.Errorf("effect %q must be allow or deny", st.Effect)
	}
	if len(st.Action) == 0 || len(st.Resource) == 0 {
		return errors.New("action and resource are required")
	}
	for _, a := range st.Action {
		if err := validateAction(a); err != nil {
			return err
		}
	}
	noKeyResource := false
	for _, r := range st.Resource {
		if err := validateResource(r); err != nil {
			return err
		}
		if matchResource(r, "*") {
			noKeyResource = true
		}
	}
	if noKeyResource {
		return nil
	}
	for _, a := range st.Action {
		for _, k := range keyActionsOnKeys {
			if matchAction(a, k) {
				return nil
			}
		}
		for _, k := range tagActions {
			if matchAction(a, k) {
				return nil
			}
		}
	}
	return fmt.Errorf("actions %q address no key and are checked against the resource \"*\", which no resource %q matches", []string(st.Action), []string(st.Resource))
}

func validateAction(a string) error {
	if a == "*" {
		return nil
	}
	lower := strings.ToLower(a)
	var known []string
	switch {
	case strings.HasPrefix(lower, keyNS):
		known = KeyActions()
	case strings.HasPrefix(lower, adminNS):
		known = adminActions
	case strings.HasPrefix(lower, tagNS):
		known = tagActions
	default:
		return fmt.Errorf("action %q: the namespace must be kms: (key actions), kms-admin: (administrative actions) or tag: (tag actions)", a)
	}
	name := a[strings.IndexByte(a, ':')+1:]
	prefix, wildcard := strings.CutSuffix(name, "*")
	if strings.Contains(prefix, "*") {
		return fmt.Errorf("action %q: only a trailing * is a wildcard", a)
	}
	for _, k := range known {
		if wildcard && matchAction(a, k) || !wildcard && strings.EqualFold(a, k) {
			return nil
		}
	}
	if !wildcard && strings.HasPrefix(lower, keyNS) {
		for _, k := range adminActions {
			if strings.EqualFold(strings.TrimPrefix(k, adminNS), name) {
				return fmt.Errorf("action %q: credential actions are administrative: write %q", a, k)
			}
		}
	}
	if wildcard {
		return fmt.Errorf("action %q matches no action", a)
	}
	return fmt.Errorf("action %q is not an action (see the README for the list)", a)
}

func validateResource(r string) error {
	if r == "*" {
		return nil
	}
	id := r
	if _, ok := cutPrefixFold(r, "qcs:"); ok {
		if !strings.HasPrefix(r, "qcs:") {
			return fmt.Errorf("resource %q: write qcs in lower case", r)
		}
		service, res, ok := qcsParts(r)
		if !ok {
			return fmt.Errorf("resource %q: want qcs:<project>:kms:<region>:<account>:key/<keyId>", r)
		}
		if service != "kms" {
			return fmt.Errorf("resource %q: the service must be kms, not %q", r, service)
		}
		if res == "*" {
			return nil
		}
		k, ok := strings.CutPrefix(res, "key/")
		if !ok || k == "" {
			return fmt.Errorf("resource %q: the last part must be key/<keyId>, key/<prefix>*, key/* or *", r)
		}
		id = k
	} else if strings.HasPrefix(strings.ToLower(r), "key/") {
		return fmt.Errorf("resource %q: write the key id alone, or qcs::kms:<region>:<account>:%s", r, r)
	}
	prefix, wildcard := strings.CutSuffix(id, "*")
	switch {
	case wildcard && prefix == "":
		return nil
	case wildcard && validKeyIDPrefix(prefix):
		return nil
	case !wildcard && validKeyID(id):
		return nil
	case validKeyID(strings.ToLower(id)) || wildcard && validKeyIDPrefix(strings.ToLower(prefix)):
		return fmt.Errorf("resource %q: key ids are written in lower case", r)
	case strings.HasSuffix(id, "/"):
		return fmt.Errorf("resource %q: trailing /", r)
	}
	return fmt.Errorf("resource %q is not \"*\", a key id (lower case), a key id prefix followed by *, or qcs::kms:<region>:<account>:key/<keyId>", r)
}

// validKeyIDPrefix reports whether s is a proper prefix of some key id in
// canonical form.
func validKeyIDPrefix(s string) bool {
	if len(s) >= 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !keyIDCharOK(i, s[i]) {
			return false
		}
	}
	return true
}

func keyIDCharOK(i int, c byte) bool {
	if i == 8 || i == 13 || i == 18 || i == 23 {
		return c == '-'
	}
	_, ok := lowerHex(c)
	return ok
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// qcsParts splits "qcs:<project>:<service>:<region>:<account>:<resource>"
// without allocating (it runs on every authorisation).
func qcsParts(p string) (service, resource string, ok bool) {
	if !strings.HasPrefix(p, "qcs:") {
		return "", "", false
	}
	rest := p[4:]
	i := strings.IndexByte(rest, ':') // end of project
	if i < 0 {
		return "", "", false
	}
	rest = rest[i+1:]
	j := strings.IndexByte(rest, ':') // end of service
	if j < 0 {
		return "", "", false
	}
	service, rest = rest[:j], rest[j+1:]
	k := strings.IndexByte(rest, ':') // end of region
	if k < 0 {
		return "", "", false
	}
	rest = rest[k+1:]
	l := strings.IndexByte(rest, ':') // end of account
	if l < 0 {
		return "", "", false
	}
	resource = rest[l+1:]
	if strings.IndexByte(resource, ':') >= 0 {
		return "", "", false
	}
	return service, resource, true
}

// Allows reports whether the policy allows action ("kms:Encrypt",
// "kms-admin:CreateCredential") on resource (a key id, or "*" for actions
// that address no key).
func (p Policy) Allows(action, resource string) bool {
	allowed := false
	for i := range p.Statement {
		st := &p.Statement[i]
		if !st.matches(action, resource) {
			continue
		}
		if st.Effect == "deny" {
			return false
		}
		allowed = true
	}
	return allowed
}

func (st *Statement) matches(action, resource string) bool {
	if matchAny(st.Action, action, matchAction) && matchAny(st.Resource, resource, matchResource) {
		return true
	}
	return st.legacy && matchAny(st.Action, legacyActionName(action), legacyMatchAction) &&
		matchAny(st.Resource, resource, legacyMatchResource)
}

func matchAny(patterns []string, v string, match func(p, v string) bool) bool {
	for _, p := range patterns {
		if match(p, v) {
			return true
		}
	}
	return false
}

// matchAction matches an action pattern: "*" matches everything; a
// trailing "*" is a wildcard within the pattern's namespace (the pattern
// must name it: validation refuses "k*"); anything else is an exact,
// case-insensitive name. "kms:*" also matches the tag: actions (tags.go).
func matchAction(pattern, action string) bool {
	if pattern == "*" {
		return true
	}
	if len(action) > len(tagNS) && action[:len(tagNS)] == tagNS && strings.EqualFold(pattern, "kms:*") {
		return true // the whole key namespace includes tagging keys (tags.go)
	}
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		if strings.IndexByte(prefix, ':') < 0 {
			return false
		}
		return len(action) >= len(prefix) && strings.EqualFold(action[:len(prefix)], prefix)
	}
	return strings.EqualFold(pattern, action)
}

// matchResource matches a resource pattern against a key id or "*".
func matchResource(pattern, resource string) bool {
	p, ok := keyPart(pattern)
	if !ok {
		return false
	}
	if prefix, ok := strings.CutSuffix(p, "*"); ok {
		return strings.HasPrefix(resource, prefix)
	}
	return p == resource
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

// decodePolicyJSON decodes exactly one JSON object from doc into v, refusing
// unknown fields and anything but white space after the object (a stray
// "]" or "}" included, which json.Decoder.More does not report). Errors
// wrap ErrInvalidPolicy.
func decodePolicyJSON(doc string, v any) error {
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidPolicy, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: data after the policy object", ErrInvalidPolicy)
	}
	return nil
}
