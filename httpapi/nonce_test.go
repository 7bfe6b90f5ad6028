package httpapi

import (
	"runtime"
	"strconv"
	"testing"
	"time"
)

func TestNonceCache(t *testing.T) {
	c := newNonceCache(3)
	t0 := time.Unix(1795881600, 0)
	exp := t0.Add(SignatureWindow)
	if r := c.use("AKID\x001", 0, exp, t0); r != nonceFresh {
		t.Fatalf("first use: %v", r)
	}
	if r := c.use("AKID\x001", 0, exp, t0.Add(299*time.Second)); r != nonceReplayed {
		t.Fatalf("replay inside the window: %v", r)
	}
	if r := c.use("AKID2\x001", 0, exp, t0); r != nonceFresh {
		t.Fatalf("same nonce, other SecretId: %v", r)
	}
	c.use("AKID\x002", 0, exp, t0)
	if r := c.use("AKID\x003", 0, exp, t0); r != nonceFull {
		t.Fatalf("over the bound: %v, want full", r)
	}
	// Once the window has passed, the entries are swept (and a nonce may
	// come again: its old timestamp is refused by the window check).
	later := exp.Add(2 * nonceSlot * time.Second)
	if r := c.use("AKID\x004", 0, later.Add(SignatureWindow), later); r != nonceFresh {
		t.Fatalf("after the window: %v", r)
	}
	if c.count != 1 || len(c.slots) != 1 {
		t.Fatalf("%d entries in %d slots after the sweep, want 1 in 1", c.count, len(c.slots))
	}
}

func BenchmarkNonceCache(b *testing.B) {
	c := newNonceCache(1 << 30)
	now := time.Unix(1795881600, 0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.use("AKIDbench\x00"+strconv.Itoa(i), 0, now.Add(SignatureWindow), now)
	}
}

// TestNonceCacheChurnBounded runs many windows of steady legacy traffic
// through the cache (a fresh nonce every request, each kept for the
// signature window) and checks that its memory stops growing once the
// window is full: a single map with a delete per expired nonce kept
// growing under this churn (deleted slots are not reused by Go's maps), as
// a 10-minute soak showed (+50 % RSS).
func TestNonceCacheChurnBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("churns a few million nonces")
	}
	perSecond := 2000
	if raceEnabled {
		perSecond = 300 // the race detector makes map operations ~10x slower
	}
	window := int64(SignatureWindow / time.Second)
	c := newNonceCache(1 << 30)
	t0 := time.Unix(1795881600, 0)
	heapAt := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	var afterFill uint64
	i := 0
	for sec := int64(0); sec < 8*window; sec++ {
		now := t0.Add(time.Duration(sec) * time.Second)
		for range perSecond {
			i++
			if r := c.use("AKID\x00"+strconv.Itoa(i), 0, now.Add(SignatureWindow), now); r != nonceFresh {
				t.Fatalf("second %d: fresh nonce refused: %v", sec, r)
			}
		}
		if sec == 2*window {
			afterFill = heapAt()
		}
		if sec%window == 0 && testing.Verbose() {
			t.Logf("second %d: heap in use %d MiB, %d entries in %d slots", sec, heapAt()>>20, c.count, len(c.slots))
		}
	}
	end := heapAt()
	t.Logf("heap in use: %d MiB once the window is full, %d MiB six windows later", afterFill>>20, end>>20)
	// The heap in use moves by ±15 % from window to window (span reuse);
	// the single map grew by 65 % in these six windows, and kept growing.
	if end > afterFill+afterFill/2 {
		t.Fatalf("the nonce cache grew from %d to %d MiB under steady churn", afterFill>>20, end>>20)
	}
	// A nonce seen is still refused inside its window, and is fresh again
	// once it has expired.
	now := t0.Add(time.Duration(8*window) * time.Second)
	if r := c.use("AKID\x00again", 0, now.Add(SignatureWindow), now); r != nonceFresh {
		t.Fatalf("new nonce: %v", r)
	}
	if r := c.use("AKID\x00again", 0, now.Add(SignatureWindow), now.Add(SignatureWindow)); r != nonceReplayed {
		t.Fatalf("replay at the end of the window: %v", r)
	}
	if r := c.use("AKID\x00again", 0, now.Add(2*SignatureWindow+time.Second), now.Add(SignatureWindow+time.Second)); r != nonceFresh {
		t.Fatalf("the same nonce after its expiry: %v", r)
	}
}
