package kms

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"
)

// EncryptionContext is a parsed encryptionContext: a set of string pairs
// with unique keys, bound to a ciphertext as additional authenticated data.
// The zero value is the empty context. It is immutable and safe to share.
//
// # Canonical form
//
// The pairs are sorted by key (byte-wise) and serialised as
//
//	uint32BE(count) { uint32BE(len(key)) key uint32BE(len(value)) value }...
//
// The length prefixes make the encoding unambiguous ({"ab":"c"} and
// {"a":"bc"} differ), and sorting makes it independent of the order of the
// keys in the JSON. Keys and values are compared after JSON unescaping, so
// {"a":"x"} and {"\u0061":"x"} are the same context.
//
// The empty object {} and the absence of a context ("") both canonicalise to
// uint32BE(0); they are interchangeable: a blob made with one decrypts with
// the other.
type EncryptionContext struct {
	pairs []contextPair // sorted by key, keys unique
}

type contextPair struct{ key, value string }

func invalidContext(reason string) error {
	return fmt.Errorf("%w: %s", ErrInvalidContext, reason)
}

// ParseContext parses an encryptionContext as the API receives it.
//
// "" means no context. Otherwise s must be valid UTF-8 of at most
// MaxContextChars characters (runes) holding exactly one JSON object (white
// space around it is allowed) whose values are all strings and whose keys are
// unique. Every failure wraps ErrInvalidContext with a reason. Lone UTF-16
// surrogate escapes (\ud800) decode to U+FFFD, as encoding/json does.
func ParseContext(s string) (EncryptionContext, error) {
	if s == "" {
		return EncryptionContext{}, nil
	}
	if len(s) > utf8.UTFMax*MaxContextChars {
		return EncryptionContext{}, invalidContext("too long")
	}
	if !utf8.ValidString(s) {
		return EncryptionContext{}, invalidContext("not valid UTF-8")
	}
	if utf8.RuneCountInString(s) > MaxContextChars {
		return EncryptionContext{}, invalidContext("too long")
	}
	dec := json.NewDecoder(strings.NewReader(s))
	tok, err := dec.Token()
	if err != nil {
		return EncryptionContext{}, invalidContext("not JSON")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return EncryptionContext{}, invalidContext("not a JSON object")
	}
	var pairs []contextPair
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return EncryptionContext{}, invalidContext("malformed JSON")
		}
		key, ok := tok.(string)
		if !ok {
			return EncryptionContext{}, invalidContext("malformed JSON")
		}
		tok, err = dec.Token()
		if err != nil {
			return EncryptionContext{}, invalidContext("malformed JSON")
		}
		value, ok := tok.(string)
		if !ok {
			return EncryptionContext{}, invalidContext("values must be strings")
		}
		pairs = append(pairs, contextPair{key, value})
	}
	tok, err = dec.Token()
	if err != nil {
		return EncryptionContext{}, invalidContext("malformed JSON")
	}
	if d, ok := tok.(json.Delim); !ok || d != '}' {
		return EncryptionContext{}, invalidContext("malformed JSON")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return EncryptionContext{}, invalidContext("data after the JSON object")
	}
	slices.SortFunc(pairs, func(a, b contextPair) int { return strings.Compare(a.key, b.key) })
	for i := 1; i < len(pairs); i++ {
		if pairs[i].key == pairs[i-1].key {
			return EncryptionContext{}, invalidContext("duplicate key")
		}
	}
	return EncryptionContext{pairs: pairs}, nil
}

// Len returns the number of pairs.
func (c EncryptionContext) Len() int { return len(c.pairs) }

// CanonicalLen returns the length of the canonical form.
func (c EncryptionContext) CanonicalLen() int {
	n := 4
	for _, p := range c.pairs {
		n += 8 + len(p.key) + len(p.value)
	}
	return n
}

// AppendCanonical appends the canonical form of c to dst.
func (c EncryptionContext) AppendCanonical(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(c.pairs)))
	for _, p := range c.pairs {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(p.key)))
		dst = append(dst, p.key...)
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(p.value)))
		dst = append(dst, p.value...)
	}
	return dst
}

// Canonical returns the canonical form of c.
func (c EncryptionContext) Canonical() []byte {
	return c.AppendCanonical(make([]byte, 0, c.CanonicalLen()))
}

// Map returns the pairs as a new map.
func (c EncryptionContext) Map() map[string]string {
	m := make(map[string]string, len(c.pairs))
	for _, p := range c.pairs {
		m[p.key] = p.value
	}
	return m
}
