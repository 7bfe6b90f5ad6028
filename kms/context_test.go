package kms

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

func mustContext(t testing.TB, s string) EncryptionContext {
	t.Helper()
	c, err := ParseContext(s)
	if err != nil {
		t.Fatalf("ParseContext(%q): %v", s, err)
	}
	return c
}

func TestParseContextValid(t *testing.T) {
	cases := []struct {
		in   string
		want map[string]string
	}{
		{``, map[string]string{}},
		{`{}`, map[string]string{}},
		{` { } `, map[string]string{}},
		{"\n{\"a\":\"b\"}\t", map[string]string{"a": "b"}},
		{`{"a":"b","c":"d"}`, map[string]string{"a": "b", "c": "d"}},
		{`{"":""}`, map[string]string{"": ""}},
		{`{"k":"\u00e9\n\"\\"}`, map[string]string{"k": "é\n\"\\"}},
		{`{"日本":"語"}`, map[string]string{"日本": "語"}},
		{`{"a":"b"}` + strings.Repeat(" ", MaxContextChars-9), map[string]string{"a": "b"}},
		{`{"k":"` + strings.Repeat("é", MaxContextChars-8) + `"}`, map[string]string{"k": strings.Repeat("é", MaxContextChars-8)}},
	}
	for _, c := range cases {
		got := mustContext(t, c.in).Map()
		if len(got) != len(c.want) {
			t.Errorf("%q: got %v", c.in, got)
			continue
		}
		for k, v := range c.want {
			if got[k] != v {
				t.Errorf("%q: got %v", c.in, got)
			}
		}
	}
}

func TestParseContextInvalid(t *testing.T) {
	cases := map[string]string{
		"not JSON":            `hello`,
		"truncated":           `{"a":"b"`,
		"array":               `["a","b"]`,
		"string":              `"a"`,
		"number":              `1`,
		"null":                `null`,
		"number value":        `{"a":1}`,
		"bool value":          `{"a":true}`,
		"null value":          `{"a":null}`,
		"nested object":       `{"a":{"b":"c"}}`,
		"array value":         `{"a":["b"]}`,
		"duplicate key":       `{"a":"b","a":"c"}`,
		"duplicate same":      `{"a":"b","a":"b"}`,
		"duplicate escaped":   `{"a":"b","\u0061":"c"}`,
		"trailing comma":      `{"a":"b",}`,
		"missing comma":       `{"a":"b" "c":"d"}`,
		"missing colon":       `{"a" "b"}`,
		"comma for colon":     `{"a","b"}`,
		"key not string":      `{1:"b"}`,
		"trailing object":     `{"a":"b"}{"c":"d"}`,
		"trailing garbage":    `{"a":"b"}x`,
		"trailing brace":      `{"a":"b"}}`,
		"trailing string":     `{} "x"`,
		"invalid UTF-8":       "{\"a\":\"\xff\"}",
		"invalid UTF-8 key":   "{\"\xc3\":\"b\"}",
		"too long runes":      `{"k":"` + strings.Repeat("é", MaxContextChars-7) + `"}`,
		"too long bytes":      `{"k":"` + strings.Repeat("a", 5000) + `"}`,
		"too long whitespace": `{"a":"b"}` + strings.Repeat(" ", MaxContextChars-8),
		"raw control char":    "{\"a\":\"\x01\"}",
		"single quotes":       `{'a':'b'}`,
		"whitespace only":     `   `,
	}
	for name, in := range cases {
		_, err := ParseContext(in)
		if !errors.Is(err, ErrInvalidContext) {
			t.Errorf("%s: ParseContext(%.40q) = %v, want ErrInvalidContext", name, in, err)
		} else if err == ErrInvalidContext {
			t.Errorf("%s: no reason", name)
		}
	}
}

func TestCanonical(t *testing.T) {
	none := mustContext(t, "").Canonical()
	empty := mustContext(t, "{}").Canonical()
	if !bytes.Equal(none, []byte{0, 0, 0, 0}) || !bytes.Equal(empty, none) {
		t.Fatalf("none %x, {} %x", none, empty)
	}
	// Unambiguous.
	if bytes.Equal(mustContext(t, `{"ab":"c"}`).Canonical(), mustContext(t, `{"a":"bc"}`).Canonical()) {
		t.Fatal("ambiguous")
	}
	// Order-independent, escape-independent.
	a := mustContext(t, `{"b":"2","a":"1","c":"3"}`).Canonical()
	b := mustContext(t, `{"c":"3", "a":"1", "b":"2"}`).Canonical()
	c := mustContext(t, `{"\u0061":"1","b":"\u0032","c":"3"}`).Canonical()
	if !bytes.Equal(a, b) || !bytes.Equal(a, c) {
		t.Fatal("order or escapes change the canonical form")
	}
	want := []byte{0, 0, 0, 3,
		0, 0, 0, 1, 'a', 0, 0, 0, 1, '1',
		0, 0, 0, 1, 'b', 0, 0, 0, 1, '2',
		0, 0, 0, 1, 'c', 0, 0, 0, 1, '3'}
	if !bytes.Equal(a, want) {
		t.Fatalf("canonical %x, want %x", a, want)
	}
	// Byte order, not rune or case order.
	d := mustContext(t, `{"a":"","B":"","é":""}`).Canonical()
	if !bytes.Equal(d[4:13], []byte{0, 0, 0, 1, 'B', 0, 0, 0, 0}) {
		t.Fatalf("sort order: %x", d)
	}
	if got := mustContext(t, `{"b":"2","a":"1"}`).CanonicalLen(); got != 4+2*(8+2) {
		t.Fatalf("CanonicalLen %d", got)
	}
}

// marshalPairs writes pairs as a JSON object in the given order.
func marshalPairs(keys []string, m map[string]string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		vb, _ := json.Marshal(m[k])
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.String()
}

func FuzzParseContext(f *testing.F) {
	for _, s := range []string{
		``, `{}`, `{"a":"b"}`, `{"b":"2","a":"1"}`, `{"ab":"c"}`, `{"a":"bc"}`,
		`{"a":"b","a":"c"}`, `{"a":1}`, `{"a":{"b":"c"}}`, `[]`, `null`, `{"a":"b"} x`,
		`{"\u0061":"\ud800"}`, `{"é":"日本"}`, "{\"a\":\"\xff\"}", `{"a":"b",}`,
	} {
		f.Add(s, uint64(1))
	}
	f.Fuzz(func(t *testing.T, s string, seed uint64) {
		c, err := ParseContext(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidContext) {
				t.Fatalf("error %v does not wrap ErrInvalidContext", err)
			}
			return
		}
		canon := c.Canonical()
		if len(canon) != c.CanonicalLen() {
			t.Fatalf("CanonicalLen %d, len %d", c.CanonicalLen(), len(canon))
		}
		// Deterministic.
		c2, err := ParseContext(s)
		if err != nil || !bytes.Equal(c2.Canonical(), canon) {
			t.Fatalf("second parse differs: %v", err)
		}
		// Agrees with encoding/json.
		m := c.Map()
		if s != "" {
			var std map[string]string
			if err := json.Unmarshal([]byte(s), &std); err != nil {
				t.Fatalf("accepted what encoding/json refuses: %v", err)
			}
			if len(std) != len(m) {
				t.Fatalf("pairs %v, encoding/json %v", m, std)
			}
			for k, v := range std {
				if m[k] != v {
					t.Fatalf("pairs %v, encoding/json %v", m, std)
				}
			}
		}
		// A permutation of the pairs gives the same canonical bytes.
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		rand.New(rand.NewPCG(seed, seed)).Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		perm := marshalPairs(keys, m)
		c3, err := ParseContext(perm)
		if err != nil {
			// Re-marshalling may escape more (e.g. U+2028, <) and exceed
			// the length limit; anything else is a bug.
			if strings.Contains(err.Error(), "too long") {
				return
			}
			t.Fatalf("permutation %q refused: %v", perm, err)
		}
		if !bytes.Equal(c3.Canonical(), canon) {
			t.Fatalf("permutation %q canonicalises differently", perm)
		}
	})
}
