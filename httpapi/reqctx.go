package httpapi

import (
	"context"
	"sync"
	"time"
)

// withInfo returns the context a request is served under: parent's values
// and cancellation, a deadline timeout from now (or parent's, if earlier),
// and i, which infoFrom finds. The context lives inside i, so it costs no
// allocation beyond i itself. The caller calls i.ctx.stop when the request
// is done, as it would call a context.CancelFunc.
func withInfo(parent context.Context, i *reqInfo, timeout time.Duration) context.Context {
	i.ctx = reqCtx{parent: parent, deadline: time.Now().Add(timeout), info: i}
	return &i.ctx
}

// reqCtx is a request's context. Unlike context.WithTimeout it arms no
// timer and makes no channel until someone calls Done: on the hot path of
// a request nothing does (the HSM session pool waits by the deadline and
// polls Err, see hsm/p11), and the timer, its heap operations and the
// channel are a measurable share of a request's cost.
//
// It keeps context.Context's contract: Done is closed once the deadline
// has passed, the parent is done or stop was called, and Err is nil before
// that and the cause afterwards. Err also looks at the clock and the
// parent, so a deadline is observed by Err even if no one asked for Done;
// it then closes Done first. Safe for concurrent use.
type reqCtx struct {
	parent   context.Context
	deadline time.Time
	info     *reqInfo

	mu         sync.Mutex
	err        error
	done       chan struct{} // made by the first Done
	timer      *time.Timer   // armed by the first Done
	stopParent func() bool   // context.AfterFunc on the parent, by the first Done
}

func (c *reqCtx) Deadline() (time.Time, bool) {
	if d, ok := c.parent.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

func (c *reqCtx) Value(key any) any {
	if _, ok := key.(reqInfoKey); ok {
		return c.info
	}
	return c.parent.Value(key)
}

func (c *reqCtx) Err() error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := c.parent.Err(); err != nil {
		return c.cancel(err)
	}
	if !time.Now().Before(c.deadline) {
		return c.cancel(context.DeadlineExceeded)
	}
	return nil
}

func (c *reqCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.done
	}
	c.done = make(chan struct{})
	if c.err != nil {
		close(c.done)
		return c.done
	}
	d := time.Until(c.deadline)
	if d <= 0 {
		c.err = context.DeadlineExceeded
		close(c.done)
		return c.done
	}
	c.timer = time.AfterFunc(d, func() { c.cancel(context.DeadlineExceeded) })
	if c.parent.Done() != nil {
		c.stopParent = context.AfterFunc(c.parent, func() { c.cancel(c.parent.Err()) })
	}
	return c.done
}

// cancel ends the context with err unless it has ended already, and
// returns the error it ended with.
func (c *reqCtx) cancel(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.stopParent != nil {
		c.stopParent()
	}
	return err
}

// stop ends the context (context.Canceled) and releases its timer, if
// Done armed one. Call it when the request is done.
func (c *reqCtx) stop() { c.cancel(context.Canceled) }
