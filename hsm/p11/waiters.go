package p11

import (
	"context"
	"sync"
	"time"
)

// waitPoll is how often the contexts of calls waiting for a session are
// looked at: a waiting call whose context ends returns within about this
// much time.
const waitPoll = 5 * time.Millisecond

// waiters are the calls waiting for a session. A waiter waits on the pool
// and on a wake channel of its own, not on its context's Done: a Done
// channel costs a channel and a timer per call (httpapi's request contexts
// make both only when asked), and at full load nearly every call waits. A
// reaper, armed only while someone waits, checks every waiter's ctx.Err
// every waitPoll and wakes those whose context has ended; goDown and Close
// wake every waiter at once. A woken waiter decides by itself why it was
// woken (a wake can be stale), so a wake is only ever a hint.
type waiters struct {
	mu     sync.Mutex
	head   *waiter
	n      int
	reaper *time.Timer // armed while n > 0
	armed  bool
	closed bool
}

type waiter struct {
	ctx        context.Context
	wake       chan struct{} // capacity 1
	prev, next *waiter
}

var waiterPool = sync.Pool{New: func() any { return &waiter{wake: make(chan struct{}, 1)} }}

// add registers a waiter for ctx; the caller must remove it.
func (ws *waiters) add(ctx context.Context) *waiter {
	w := waiterPool.Get().(*waiter)
	w.ctx = ctx
	ws.mu.Lock()
	w.next = ws.head
	if ws.head != nil {
		ws.head.prev = w
	}
	ws.head = w
	ws.n++
	if !ws.armed && !ws.closed {
		ws.armed = true
		if ws.reaper == nil {
			ws.reaper = time.AfterFunc(waitPoll, ws.reap)
		} else {
			ws.reaper.Reset(waitPoll)
		}
	}
	ws.mu.Unlock()
	return w
}

// remove unregisters w and recycles it.
func (ws *waiters) remove(w *waiter) {
	ws.mu.Lock()
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		ws.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	}
	ws.n--
	ws.mu.Unlock()
	w.prev, w.next, w.ctx = nil, nil, nil
	select {
	case <-w.wake: // sent before the removal; none can come after it
	default:
	}
	waiterPool.Put(w)
}

// reap wakes the waiters whose context has ended and re-arms itself while
// anyone waits.
func (ws *waiters) reap() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for w := ws.head; w != nil; w = w.next {
		if w.ctx.Err() != nil {
			w.signal()
		}
	}
	if ws.n > 0 && !ws.closed {
		ws.reaper.Reset(waitPoll)
	} else {
		ws.armed = false
	}
}

// wakeAll wakes every waiter (the Token went down or is closing).
func (ws *waiters) wakeAll() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for w := ws.head; w != nil; w = w.next {
		w.signal()
	}
}

// close wakes every waiter and disarms the reaper for good.
func (ws *waiters) close() {
	ws.mu.Lock()
	ws.closed = true
	if ws.reaper != nil {
		ws.reaper.Stop()
	}
	ws.armed = false
	ws.mu.Unlock()
	ws.wakeAll()
}

func (w *waiter) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}
