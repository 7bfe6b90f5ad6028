package kms

import (
	"bytes"
	"strconv"
	"testing"
)

func TestParseContextCached(t *testing.T) {
	for _, s := range []string{"", "{}", `{"app":"bench","tenant":"t1"}`, `{"b":"2","a":"1"}`, `{"a":1}`, `{"a":"x","a":"y"}`, "not json"} {
		for range 2 { // miss, then hit
			want, werr := ParseContext(s)
			got, gerr := parseContextCached(s)
			if (werr == nil) != (gerr == nil) || (werr != nil && werr.Error() != gerr.Error()) {
				t.Fatalf("%q: error %v, want %v", s, gerr, werr)
			}
			if !bytes.Equal(got.Canonical(), want.Canonical()) {
				t.Fatalf("%q: canonical %x, want %x", s, got.Canonical(), want.Canonical())
			}
		}
	}
	for i := range maxCachedContexts + 10 {
		if _, err := parseContextCached(`{"k":"` + strconv.Itoa(i) + `"}`); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(contexts.m); n > maxCachedContexts {
		t.Fatalf("%d cached contexts, bound %d", n, maxCachedContexts)
	}
	s := `{"app":"bench","tenant":"t1"}`
	parseContextCached(s)
	if n := testing.AllocsPerRun(100, func() { _, _ = parseContextCached(s) }); n != 0 {
		t.Fatalf("a cached context costs %.0f allocations", n)
	}
}
