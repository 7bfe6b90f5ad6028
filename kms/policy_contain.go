package kms

import (
	"errors"
	"fmt"
	"sort"
)

// ErrExceedsCaller means a credential tried to grant, or to manage a
// credential holding, a right it does not hold itself. It wraps
// ErrUnauthorized.
var ErrExceedsCaller = fmt.Errorf("%w: a credential cannot grant or manage rights it does not hold itself", ErrUnauthorized)

// ErrSelfChange means a credential tried to change its own policy or state.
// It wraps ErrUnauthorized.
var ErrSelfChange = fmt.Errorf("%w: a credential cannot change its own policy or state", ErrUnauthorized)

// errTooComplex is returned by covers when it cannot build its set of
// resources within its budget; the caller refuses (fails closed).
var errTooComplex = errors.New("kms: the policies are too complex to compare")

// covers reports whether p allows every request that q allows: for every
// action and every resource it can be checked against (key actions that
// address a key: every key id; the others: "*"), q.Allows implies p.Allows.
// If not, it returns one (action, resource) that q allows and p does not.
//
// Actions are a finite set. Resources are not, but a policy's answer for a
// key id depends only on which of the patterns it holds match the id, and
// those are exact ids and prefixes; covers checks one id for each exact id
// of either policy and, for each prefix P (including the empty one), one id
// that starts with P and matches no longer prefix and no exact id. Every
// key id matches the same patterns as one of these, so checking them is
// checking all. Old-style (legacy) statements are included.
func covers(p, q Policy) (action, resource string, ok bool, err error) {
	keys, err := resourcePoints(p, q)
	if err != nil {
		return "", "", false, err
	}
	for _, list := range [][]string{keyActionsOnKeys, tagActions} {
		for _, a := range list {
			for _, r := range keys {
				if q.Allows(a, r) && !p.Allows(a, r) {
					return a, r, false, nil
				}
			}
		}
	}
	for _, list := range [][]string{keyActionsNoKey, adminActions} {
		for _, a := range list {
			if q.Allows(a, "*") && !p.Allows(a, "*") {
				return a, "*", false, nil
			}
		}
	}
	return "", "", true, nil
}

// resourcePoints returns the key ids covers checks for the policies ps.
func resourcePoints(ps ...Policy) ([]string, error) {
	exact, prefixes := map[string]bool{}, map[string]bool{"": true}
	for _, p := range ps {
		for _, st := range p.Statement {
			for _, r := range st.Resource {
				for _, part := range keyParts(r) {
					if prefix, ok := cutSuffixStar(part); ok {
						prefixes[prefix] = true
					} else if validKeyID(part) {
						exact[part] = true
					}
				}
			}
		}
	}
	out := make([]string, 0, len(exact)+len(prefixes))
	for id := range exact {
		out = append(out, id)
	}
	budget := 100000
	for prefix := range prefixes {
		id, ok := completeKeyID(prefix, exact, prefixes, &budget)
		if budget <= 0 {
			return nil, errTooComplex
		}
		if ok {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out, nil
}

// keyParts is what a resource pattern names now and what it named before.
func keyParts(r string) []string {
	var out []string
	if k, ok := keyPart(r); ok {
		out = append(out, k)
	}
	if k, ok := legacyKeyPart(r); ok {
		out = append(out, k)
	}
	return out
}

func cutSuffixStar(s string) (string, bool) {
	if len(s) > 0 && s[len(s)-1] == '*' {
		return s[:len(s)-1], true
	}
	return s, false
}

// completeKeyID returns a key id in canonical form that starts with start,
// is not in exact, and has no prefix in prefixes longer than start; false
// if there is none (or start cannot begin a key id). Each step spends one
// unit of budget.
func completeKeyID(start string, exact, prefixes map[string]bool, budget *int) (string, bool) {
	if !validKeyIDPrefix(start) {
		return "", false
	}
	const hex = "0123456789abcdef"
	buf := []byte(start)
	var walk func() bool
	walk = func() bool {
		*budget--
		if *budget <= 0 {
			return false
		}
		i := len(buf)
		if i == 36 {
			return !exact[string(buf)]
		}
		cands := hex
		if i == 8 || i == 13 || i == 18 || i == 23 {
			cands = "-"
		}
		for j := 0; j < len(cands); j++ {
			buf = append(buf, cands[j])
			if !prefixes[string(buf)] && walk() {
				return true
			}
			buf = buf[:i]
		}
		return false
	}
	if walk() {
		return string(buf), true
	}
	return "", false
}
