package httpapi

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// reqCtx keeps context.Context's contract while arming nothing until Done.
func TestReqCtx(t *testing.T) {
	type otherKey struct{}
	tests := []struct {
		name    string
		timeout time.Duration
		// end ends the context (nil: the deadline does); parentCancel is
		// the parent's cancel function.
		end     func(c *reqCtx, parentCancel context.CancelFunc)
		wantErr error
	}{
		{"deadline", 30 * time.Millisecond, nil, context.DeadlineExceeded},
		{"parent cancelled", time.Hour, func(_ *reqCtx, cancel context.CancelFunc) { cancel() }, context.Canceled},
		{"stopped", time.Hour, func(c *reqCtx, _ context.CancelFunc) { c.stop() }, context.Canceled},
	}
	for _, tc := range tests {
		for _, doneFirst := range []bool{true, false} {
			name := tc.name + map[bool]string{true: "/Done armed", false: "/Err only"}[doneFirst]
			t.Run(name, func(t *testing.T) {
				parent, cancel := context.WithCancel(context.WithValue(context.Background(), otherKey{}, "v"))
				defer cancel()
				i := &reqInfo{requestID: "r"}
				ctx := withInfo(parent, i, tc.timeout)
				if infoFrom(ctx) != i || ctx.Value(otherKey{}) != "v" {
					t.Fatal("values lost")
				}
				if d, ok := ctx.Deadline(); !ok || time.Until(d) > tc.timeout {
					t.Fatalf("deadline %v, %v", d, ok)
				}
				if err := ctx.Err(); err != nil {
					t.Fatalf("Err before the end: %v", err)
				}
				var done <-chan struct{}
				if doneFirst {
					done = ctx.Done()
					select {
					case <-done:
						t.Fatal("Done closed early")
					default:
					}
				}
				if tc.end != nil {
					tc.end(&i.ctx, cancel)
				}
				if doneFirst {
					select {
					case <-done:
					case <-time.After(5 * time.Second):
						t.Fatal("Done not closed")
					}
				} else {
					// Without Done nothing is armed: Err notices the end
					// by itself (the clock, the parent).
					deadline := time.Now().Add(5 * time.Second)
					for ctx.Err() == nil {
						if time.Now().After(deadline) {
							t.Fatal("Err stayed nil")
						}
						time.Sleep(time.Millisecond)
					}
					select {
					case <-ctx.Done(): // made after the end: closed at once
					default:
						t.Fatal("Done open after Err reported the end")
					}
				}
				if err := ctx.Err(); !errors.Is(err, tc.wantErr) {
					t.Fatalf("Err = %v, want %v", err, tc.wantErr)
				}
				// The first cause sticks.
				i.ctx.stop()
				cancel()
				if err := ctx.Err(); !errors.Is(err, tc.wantErr) {
					t.Fatalf("Err after stop = %v, want %v", err, tc.wantErr)
				}
			})
		}
	}
}

// A parent's earlier deadline wins; contexts derived from a reqCtx see its
// end.
func TestReqCtxParentDeadlineAndChildren(t *testing.T) {
	parent, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	i := &reqInfo{}
	ctx := withInfo(parent, i, time.Hour)
	pd, _ := parent.Deadline()
	if d, _ := ctx.Deadline(); !d.Equal(pd) {
		t.Fatalf("deadline %v, want the parent's %v", d, pd)
	}
	child, cancelChild := context.WithCancel(ctx)
	defer cancelChild()
	i.ctx.stop()
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a derived context did not see stop")
	}
	if !errors.Is(child.Err(), context.Canceled) {
		t.Fatal(child.Err())
	}
}

// An ended context holds no timer: stop releases the one Done armed.
func TestReqCtxStopReleasesTimer(t *testing.T) {
	i := &reqInfo{}
	ctx := withInfo(context.Background(), i, time.Hour)
	_ = ctx.Done()
	if i.ctx.timer == nil {
		t.Fatal("Done armed no timer")
	}
	i.ctx.stop()
	if i.ctx.timer.Stop() {
		t.Fatal("the timer was still armed after stop")
	}
}

// Done, Err and stop from many goroutines at once (run under -race by
// make test's race pass).
func TestReqCtxConcurrent(t *testing.T) {
	for range 50 {
		i := &reqInfo{}
		ctx := withInfo(context.Background(), i, time.Millisecond)
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch g % 3 {
				case 0:
					<-ctx.Done()
				case 1:
					for ctx.Err() == nil {
						time.Sleep(100 * time.Microsecond)
					}
				default:
					time.Sleep(2 * time.Millisecond)
					i.ctx.stop()
				}
			}()
		}
		wg.Wait()
		select {
		case <-ctx.Done():
		default:
			t.Fatal("Done open at the end")
		}
		if ctx.Err() == nil {
			t.Fatal("Err nil at the end")
		}
	}
}

// The hot path's use (Value, Deadline, Err, stop) allocates nothing.
func TestReqCtxAllocs(t *testing.T) {
	if raceEnabled {
		t.Log("allocations are counted by make test's run without -race")
		return
	}
	i := &reqInfo{}
	if n := testing.AllocsPerRun(100, func() {
		ctx := withInfo(context.Background(), i, time.Minute)
		_ = infoFrom(ctx)
		_, _ = ctx.Deadline()
		_ = ctx.Err()
		i.ctx.stop()
	}); n != 0 {
		t.Fatalf("%.0f allocations, want 0", n)
	}
}
