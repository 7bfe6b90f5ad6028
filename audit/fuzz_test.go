package audit

import (
	"strings"
	"testing"
)

func FuzzVerify(f *testing.F) {
	b, h := appendLine(nil, 1, zeroHash, event(1))
	b2, _ := appendLine(b, 2, h, event(2))
	for _, s := range []string{string(b), string(b2), "", "{}\n", `{"seq":1,"hash":"x"}` + "\n", strings.Repeat("a", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, trail string) {
		n, problems, err := Verify(strings.NewReader(trail))
		if err != nil {
			return // e.g. a line longer than the scanner accepts
		}
		for _, p := range problems {
			if p.Line < 1 || p.Line > n {
				t.Fatalf("problem on line %d of %d", p.Line, n)
			}
		}
	})
}
