package httpapi

import (
	"strconv"
	"testing"
	"time"
)

func TestNonceCache(t *testing.T) {
	c := newNonceCache(3)
	t0 := time.Unix(1795881600, 0)
	exp := t0.Add(SignatureWindow)
	if r := c.use("AKID\x001", exp, t0); r != nonceFresh {
		t.Fatalf("first use: %v", r)
	}
	if r := c.use("AKID\x001", exp, t0.Add(299*time.Second)); r != nonceReplayed {
		t.Fatalf("replay inside the window: %v", r)
	}
	if r := c.use("AKID2\x001", exp, t0); r != nonceFresh {
		t.Fatalf("same nonce, other SecretId: %v", r)
	}
	c.use("AKID\x002", exp, t0)
	if r := c.use("AKID\x003", exp, t0); r != nonceFull {
		t.Fatalf("over the bound: %v, want full", r)
	}
	// Once the window has passed, the entries are swept (and a nonce may
	// come again: its old timestamp is refused by the window check).
	later := exp.Add(2 * nonceBucket * time.Second)
	if r := c.use("AKID\x004", later.Add(SignatureWindow), later); r != nonceFresh {
		t.Fatalf("after the window: %v", r)
	}
	if len(c.seen) != 1 || len(c.buckets) != 1 {
		t.Fatalf("%d entries in %d buckets after the sweep, want 1 in 1", len(c.seen), len(c.buckets))
	}
}

func BenchmarkNonceCache(b *testing.B) {
	c := newNonceCache(1 << 30)
	now := time.Unix(1795881600, 0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.use("AKIDbench\x00"+strconv.Itoa(i), now.Add(SignatureWindow), now)
	}
}
