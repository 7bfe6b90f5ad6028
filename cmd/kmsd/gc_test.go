package main

import (
	"context"
	"runtime/debug"
	"testing"
	"time"
)

func TestGCPercent(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		live, floor uint64
		want        int
	}{
		{2 * mib, 64 * mib, 3100},       // goal 2 MiB * 32 = 64 MiB
		{16 * mib, 64 * mib, 300},       // goal 64 MiB
		{32 * mib, 64 * mib, 100},       // 2*live reaches the floor: Go's default
		{200 * mib, 64 * mib, 100},      // large heaps: Go's default
		{0, 64 * mib, 10000},            // capped
		{1024, 64 * mib, 10000},         // capped
		{31 * mib, 64 * mib, 106},       // just below half the floor
		{mib, 0, 100},                   // no floor
		{3 * mib, 10 * mib, 233},        // integer arithmetic, rounded down
		{5 * mib, 10 * mib, 100},        // exactly half
		{5*mib - 1, 10 * mib, 100},      // 100.00002 % rounds down to 100
		{4 * mib, 10 * mib, 150},        // goal 10 MiB
		{1 << 40, 1 << 41, 100},         // no overflow
		{1 << 30, 1<<40 + 1<<39, 10000}, // 153,500 % capped
	} {
		if got := gcPercent(tc.live, tc.floor); got != tc.want {
			t.Errorf("gcPercent(%d, %d) = %d, want %d", tc.live, tc.floor, got, tc.want)
		}
	}
}

// currentGCPercent reads GOGC without changing it for long.
func currentGCPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

func TestTuneGCSetsAndRestores(t *testing.T) {
	before := currentGCPercent()
	defer debug.SetGCPercent(before)
	stop := tuneGC(context.Background(), 1<<40, 10*time.Millisecond)
	if p := currentGCPercent(); p <= 100 {
		stop()
		t.Fatalf("GOGC with a 1 TiB floor = %d, want > 100", p)
	}
	stop()
	if p := currentGCPercent(); p != 100 {
		t.Fatalf("GOGC after stop = %d, want 100", p)
	}
}
