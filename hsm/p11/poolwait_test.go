package p11

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"hsmkms/hsm"
)

// A call waiting for a session returns as soon as its context ends (it
// waits on ctx.Done, not by polling), and stops counting as waiting.
func TestWaiterEndsWithContext(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	id := []byte("waiter")
	mustGenerate(t, tok, id)
	s, err := tok.acquire(context.Background()) // hold the only session
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := make(chan error, 1)
	go func() {
		_, _, err := tok.Seal(ctx, id, []byte("x"), testAAD)
		res <- err
	}()
	eventually(t, "the call waits", func() error {
		if n := tok.waitingCalls(); n != 1 {
			return errors.New("not waiting yet")
		}
		return nil
	})
	select {
	case err := <-res:
		t.Fatalf("returned while its context was live: %v", err)
	default:
	}
	ended := time.Now()
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, hsm.ErrBusy) || !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want hsm.ErrBusy and context.Canceled", err)
		}
		if d := time.Since(ended); d > time.Second {
			t.Fatalf("noticed after %v, want at once", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the end of the context was not noticed")
	}
	if n := tok.waitingCalls(); n != 0 {
		t.Fatalf("%d calls still counted as waiting", n)
	}
	tok.pool <- s
	if _, _, err := tok.Seal(testCtx(t), id, []byte("x"), testAAD); err != nil {
		t.Fatalf("Seal after the session came back: %v", err)
	}
}

// Calls already waiting when the token goes down fail at once with
// hsm.ErrUnavailable, long before their deadline; those waiting for a
// session that comes back get it, one at a time.
func TestWaitersWokenByDownAndRelease(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	id := []byte("waiters")
	mustGenerate(t, tok, id)

	// Release: 8 waiters, each served as the session comes back.
	s, err := tok.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := tok.Seal(testCtx(t), id, []byte("x"), testAAD)
			errs <- err
		}()
	}
	eventually(t, "8 calls wait", func() error {
		if tok.waitingCalls() != 8 {
			return errors.New("not all waiting")
		}
		return nil
	})
	tok.pool <- s
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a waiting Seal: %v", err)
		}
	}

	// Down: waiters with an hour to go are turned away at once.
	if s, err = tok.acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 4)
	for range 4 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			_, _, err := tok.Seal(ctx, id, []byte("x"), testAAD)
			res <- err
		}()
	}
	eventually(t, "4 calls wait", func() error {
		if tok.waitingCalls() != 4 {
			return errors.New("not all waiting")
		}
		return nil
	})
	start := time.Now()
	tok.goDown()
	for range 4 {
		select {
		case err := <-res:
			if !errors.Is(err, hsm.ErrUnavailable) || errors.Is(err, hsm.ErrBusy) {
				t.Fatalf("waiting Seal when the token went down: %v, want hsm.ErrUnavailable", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a waiting call was not woken when the token went down")
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("waiters woken after %v", d)
	}
	tok.pool <- s // the recovery loop takes it and re-initialises
	eventually(t, "service resumes", func() error {
		_, _, err := tok.Seal(testCtx(t), id, []byte("x"), testAAD)
		return err
	})
}

// waitingCalls reports how many calls wait for a session, for tests.
func (t *Token) waitingCalls() int { return int(t.waiting.Load()) }
