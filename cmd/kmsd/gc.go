package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// defaultGCHeapFloor is kmsd's default -gc-heap-floor.
//
// kmsd's live heap is small (a few MiB with a few keys) while every
// request allocates a few KiB, so with the Go default (GOGC=100: the next
// collection when the heap has doubled, at least 4 MiB) it collected about
// 100 times a second under load, and the collections (marking, sweeping,
// assists) were ≈15 % of its CPU. Keeping the heap goal at no less than
// 64 MiB, side by side on 2 CPUs (BENCHMARKS.md): see "GC heap floor".
const defaultGCHeapFloor = 64 << 20

// gcPercent returns the GOGC that puts the next heap goal, live*(1+GOGC/100),
// at max(floor, 2*live): the Go default when the live heap is at least half
// the floor, a larger percentage below that (at most 10,000).
func gcPercent(live, floor uint64) int {
	if live == 0 {
		live = 1
	}
	if live >= floor/2 {
		return 100
	}
	return int(min(floor*100/live-100, 10000))
}

// tuneGC keeps the heap goal at least floor bytes until ctx ends or stop
// is called, by setting GOGC from the live heap (runtime/metrics) every
// interval. Between two adjustments the heap can grow past the goal by at
// most what is allocated in one interval. It restores GOGC=100 on stop.
func tuneGC(ctx context.Context, floor uint64, interval time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	cur := -1
	adjust := func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		p := gcPercent(sample[0].Value.Uint64(), floor)
		// Only changes of more than 10 % are applied: SetGCPercent
		// recomputes the pacer's goal.
		if cur < 0 || p*10 < cur*9 || p*10 > cur*11 {
			debug.SetGCPercent(p)
			cur = p
		}
	}
	adjust()
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				debug.SetGCPercent(100)
				return
			case <-t.C:
				adjust()
			}
		}
	}()
	return func() { cancel(); <-done }
}
